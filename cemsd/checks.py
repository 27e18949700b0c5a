"""Plausibility checks on each channel's readings, configured per channel (`checks`).

- stuck: the value has not changed (within `stuck_tolerance`) for `stuck_minutes`: a
  frozen analyzer output or a stale register looks valid but is not;
- spike: the value changed faster than `max_rate_per_s` since the previous reading;
- negative: the value is below minus `negative_tolerance` (a zero drifting away).

A failing reading is flagged D with the check named in its reason. The checks keep a
little state per channel (the previous value), so they run once per reading in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from cemsd.flags import Flag
from cemsd.plan import ChannelPlan, Plan
from cemsd.readings import Reading
from cemsd.settings.qaqc import ValueChecks
from cemsd.validity import Condition


@dataclass
class _History:
    value: float
    ts: float
    unchanged_since: float


class ChannelChecks:
    """One callable for validity: runs each channel's configured checks."""

    def __init__(self, plan: Plan) -> None:
        self.settings: dict[str, ValueChecks] = {
            c.name: c.spec.checks for c in plan.channels if c.spec.checks is not None
        }
        self._history: dict[str, _History] = {}

    def __call__(self, reading: Reading, channel: ChannelPlan) -> Condition | None:
        checks = self.settings.get(channel.name)
        if checks is None or reading.value is None:
            return None
        value, ts = reading.value, reading.ts
        previous = self._history.get(channel.name)
        condition = _negative(checks, value, channel) or _spike(checks, previous, value, ts,
                                                                channel)
        unchanged_since = ts
        if previous is not None and abs(value - previous.value) <= checks.stuck_tolerance:
            unchanged_since = previous.unchanged_since
        self._history[channel.name] = _History(value, ts, unchanged_since)
        return condition or _stuck(checks, unchanged_since, ts, value, channel)


def _negative(checks: ValueChecks, value: float, channel: ChannelPlan) -> Condition | None:
    if checks.negative_tolerance is not None and value < -checks.negative_tolerance:
        return Flag.D, (f"negative beyond tolerance: {value:g} < -{checks.negative_tolerance:g} "
                        f"{channel.unit}")
    return None


def _spike(checks: ValueChecks, previous: _History | None, value: float, ts: float,
           channel: ChannelPlan) -> Condition | None:
    if checks.max_rate_per_s is None or previous is None or ts <= previous.ts:
        return None
    rate = abs(value - previous.value) / (ts - previous.ts)
    if rate > checks.max_rate_per_s:
        return Flag.D, (f"spike: changed {value - previous.value:+g} {channel.unit} in "
                        f"{ts - previous.ts:g} s (limit {checks.max_rate_per_s:g}/s)")
    return None


def _stuck(checks: ValueChecks, since: float, ts: float, value: float,
           channel: ChannelPlan) -> Condition | None:
    if checks.stuck_minutes is None or ts - since < checks.stuck_minutes * 60:
        return None
    return Flag.D, (f"stuck: {value:g} {channel.unit} unchanged for "
                    f"{(ts - since) / 60:.0f} min (limit {checks.stuck_minutes:g})")
