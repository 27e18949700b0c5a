"""What the plant and the technicians say about each channel right now.

Readings are flagged from this state at the moment they are polled (validity consults
`conditions`):

- M while a maintenance window covers the channel or its device;
- C while a calibration (zero/span check, including its purge time) runs on it;
- D while the channel is out of control (a failed check, until a passing one) or its
  calibration is overdue (HJ 75-2017 §11: 24 h automatic, 7 days manual, ...);
- F while the plant's production-running signal says the source is stopped.

The state is loaded from the database at start-up (open windows and control periods,
last passing calibrations), so a restart keeps flagging what it flagged before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cemsd.config import Config
from cemsd.flags import Flag
from cemsd.periods import local_label
from cemsd.plan import ChannelPlan, Plan
from cemsd.readings import Reading
from cemsd.units import GAS_ROLES, Role
from cemsd.validity import Condition

log = logging.getLogger(__name__)


@dataclass
class Window:
    """A span of time during which a flag applies to some channels."""

    key: str  # e.g. "maintenance:3", "calibration:inlet-analyzer.n2o", "control:7"
    channels: frozenset[str]
    start: float
    end: float | None  # open while None
    flag: Flag
    reason: str

    def covers(self, channel: str, ts: float) -> bool:
        return channel in self.channels and self.start <= ts and (self.end is None or ts < self.end)


class PlantState:
    def __init__(self, config: Config, plan: Plan) -> None:
        self.tz = config.plant.tz
        self.max_production_age = config.qaqc.production_signal_max_age_s
        self.channels = {c.name: c for c in plan.channels}
        self.by_device: dict[str, frozenset[str]] = {
            d.name: frozenset(c.name for c in d.channels) for d in plan.devices
        }
        self.stoppable = frozenset(
            c.name for c in plan.channels if c.role in GAS_ROLES and c.spec.kind == "analog"
        )
        self.production_channel = next(
            (c.name for c in plan.channels if c.role is Role.PRODUCTION_RUNNING), None
        )
        self.windows: dict[str, Window] = {}
        self.calibration_due: dict[str, tuple[float, str]] = {}  # channel -> (due, since what)
        self.production: tuple[float, float] | None = None  # (value, ts)

    # --- what flags a reading -----------------------------------------------------------

    def conditions(self, channel: ChannelPlan, ts: float) -> list[Condition]:
        name = channel.name  # this runs for every reading: most of the time no window is open
        found = [(w.flag, w.reason) for w in self.windows.values() if w.covers(name, ts)
                 ] if self.windows else []
        due = self.calibration_due.get(name)
        if due is not None and ts >= due[0]:
            found.append((Flag.D, f"calibration overdue since {local_label(due[0], self.tz)} "
                                  f"({due[1]})"))
        if self.production is not None and name in self.stoppable and self._source_stopped(ts):
            found.append((Flag.F, f"source stopped ({self.production_channel} = 0)"))
        return found

    def _source_stopped(self, ts: float) -> bool:
        if self.production is None:
            return False
        value, seen = self.production
        return value < 0.5 and ts - seen <= self.max_production_age

    def observe(self, readings: list[Reading]) -> None:
        """Live listener: follow the production-running signal."""
        for reading in readings:
            if reading.channel == self.production_channel and reading.value is not None:
                self.production = (reading.value, reading.ts)

    # --- windows --------------------------------------------------------------------------

    def open_window(self, window: Window) -> None:
        self.windows[window.key] = window

    def close_window(self, key: str, end: float) -> Window | None:
        window = self.windows.get(key)
        if window is not None:
            window.end = end
        return window

    def drop_closed(self, before: float) -> None:
        """Forget windows that ended before `before`: no reading can fall in them anymore."""
        for key in [k for k, w in self.windows.items() if w.end is not None and w.end < before]:
            del self.windows[key]

    def device_channels(self, device: str | None, channel: str | None) -> frozenset[str]:
        if device is not None:
            return self.by_device.get(device, frozenset())
        return frozenset([channel]) if channel else frozenset()

    def active(self, prefix: str) -> list[Window]:
        return [w for k, w in self.windows.items() if k.startswith(prefix)]

    # --- loading ------------------------------------------------------------------------------

    def load(self, maintenance: Iterable[Any], control: Iterable[Any], now: float) -> None:
        for row in maintenance:
            self.open_window(maintenance_window(self, row))
        for row in control:
            if row.kind == "out_of_control":
                self.open_window(control_window(row))
        self.drop_closed(now)


def maintenance_window(state: PlantState, row: Any) -> Window:
    target = row.device or row.channel
    return Window(
        key=f"maintenance:{row.id}",
        channels=state.device_channels(row.device, row.channel),
        start=_epoch(row.started_at),
        end=_epoch(row.ended_at),
        flag=Flag.M,
        reason=f"maintenance #{row.id} of {target}: {row.reason}",
    )


def control_window(row: Any) -> Window:
    return Window(
        key=f"control:{row.id}",
        channels=frozenset([row.channel]),
        start=_epoch(row.started_at),
        end=_epoch(row.ended_at),
        flag=Flag.D,
        reason=row.reason,
    )


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    return value if isinstance(value, float | int) else value.timestamp()
