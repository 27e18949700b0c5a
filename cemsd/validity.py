"""Reading-level validity: every polled value leaves here with a flag and, if not N, a reason.

Sources of flags, in the order they are applied:
1. the communication result (set by the bus owner: B for no/garbled reply or no link,
   D for an exception reply);
2. the value itself (a float that is NaN or infinite is an instrument fault, D);
3. the analyzer's status word (bits or codes mapped to flags in the register map);
4. value checks, each a small callable (over range -> T, implausible -> D from
   cemsd/plausibility.py, both by default; QA/QC adds stuck, spike, ...);
5. the plant and technician state at that moment (`context`: maintenance M,
   calibration C, out of control D, source stopped F), which applies to failed readings
   too: a declared maintenance explains a silent analyzer.

When several conditions hold, flags.PRECEDENCE decides which one the reading carries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cemsd.config import Channel, Config
from cemsd.flags import CODE, Flag
from cemsd.plan import ChannelPlan, DevicePlan
from cemsd.readings import Reading

Condition = tuple[Flag, str]
ValueCheck = Callable[[Reading, ChannelPlan], Condition | None]
Context = Callable[[ChannelPlan, float], list[Condition]]


def over_range(reading: Reading, channel: ChannelPlan) -> Condition | None:
    """HJ 212 Table 8: T when the value is above the measuring range (full scale)."""
    span = channel.spec.range
    if span is None or reading.value is None or reading.value <= span[1]:
        return None
    return Flag.T, f"over range: {reading.value:g} > {span[1]:g} {channel.unit}"


def default_checks(config: Config | None = None) -> tuple[ValueCheck, ...]:
    """Over range (T) and plausibility (D); a fresh set per user, as plausibility has state.
    With the configuration, plausibility also compares flows with velocity x duct area."""
    from cemsd.plausibility import PlausibilityChecks

    if config is None:
        return over_range, PlausibilityChecks()
    return over_range, PlausibilityChecks(config.points,
                                          {d.name: d.point for d in config.devices})


def status_conditions(spec: Channel, word: int) -> list[Condition]:
    """Flags raised by a status word: each set bit, or the code, mapped in the profile."""
    found = [(m.flag, m.text) for bit, m in spec.bits.items() if word >> bit & 1]
    if word in spec.codes:
        found.append((spec.codes[word].flag, spec.codes[word].text))
    return found


def apply(reading: Reading, condition: Condition) -> None:
    """Raise the reading's flag to the condition's if that takes precedence."""
    flag, reason = condition
    if CODE[flag] < CODE[reading.flag]:
        reading.flag = flag
        reading.reason = reason


@dataclass(frozen=True)
class _Governed:
    status: ChannelPlan
    targets: tuple[str, ...]


class DeviceValidator:
    """Turns one poll of one device into flagged readings."""

    def __init__(
        self,
        device: DevicePlan,
        checks: Iterable[ValueCheck] | None = None,
        context: Context | None = None,
    ) -> None:
        self.device = device
        self.checks = default_checks() if checks is None else tuple(checks)
        self.context = context
        analog = tuple(c.key for c in device.channels if c.spec.kind == "analog")
        self._status = tuple(
            _Governed(c, tuple(c.spec.applies_to) if c.spec.applies_to is not None else analog)
            for c in device.channels
            if c.spec.kind == "status"
        )
        self._checked = tuple(c for c in device.channels if c.spec.kind != "status")

    def readings(
        self, ts: float, values: dict[str, float], failures: dict[str, Condition]
    ) -> list[Reading]:
        by_key: dict[str, Reading] = {}
        for ch in self.device.channels:
            if ch.key in failures:
                flag, reason = failures[ch.key]
                by_key[ch.key] = Reading(ch.name, ts, None, flag, reason)
                continue
            value = values[ch.key]
            if math.isfinite(value):
                by_key[ch.key] = Reading(ch.name, ts, value, Flag.N)
            else:
                by_key[ch.key] = Reading(ch.name, ts, None, Flag.D,
                                      f"implausible: {ch.key} is {value}, not a finite number")
        for governed in self._status:
            self._apply_status(governed, by_key)
        for ch in self._checked:
            reading = by_key[ch.key]
            if reading.value is not None:
                for check in self.checks:
                    if (condition := check(reading, ch)) is not None:
                        apply(reading, condition)
            if self.context is not None:
                for condition in self.context(ch, ts):
                    apply(reading, condition)
        return list(by_key.values())

    def _apply_status(self, governed: _Governed, by_key: dict[str, Reading]) -> None:
        status = by_key[governed.status.key]
        if status.value is None:
            # A value read without its status cannot be trusted; one that failed itself
            # already says why.
            conditions = [(Flag.B, f"status word {governed.status.name} unreadable")]
        else:
            spec = governed.status.spec
            word = int(status.value) & ((1 << (16 * spec.data_type.registers)) - 1)
            conditions = status_conditions(spec, word)
        for target in governed.targets:
            if by_key[target].value is None:
                continue
            for condition in conditions:
                apply(by_key[target], condition)
