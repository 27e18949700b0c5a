"""Scenario files: which simulated instruments exist, what they measure, what goes wrong.

A scenario is TOML. Signals are pure functions of time, and events are time windows,
so a simulated instrument's answer depends only on the clock: runs are reproducible and
a test can compute the expected hourly mean analytically.

    start = "2026-06-01T00:00:00+08:00"   # scenario time zero
    seed = 7

    [[buses]]                             # tcp: host/port; serial: port (+ link for a pty pair)
    name = "analyzers"
    transport = "tcp"
    port = 15020

    [[devices]]
    name = "inlet-analyzer"
    bus = "analyzers"
    device_id = 1
    profile = "n2o-analyzer-percent"
    [devices.signals.n2o]                 # value = base + ramp + daily cycle + noise
    base = 24.0
    amplitude = 1.0                       # sine with `period` (default one day)
    noise = 0.05                          # standard deviation, seeded

    [[events]]                            # faults and plant states in time windows
    device = "outlet-analyzer"
    start = "5h"                          # offsets from start: seconds, "5h20m", "1d2h"
    end = "5h20m"
    kind = "no_reply"                     # no_reply exception garbage truncated oversized
                                          # bad_crc slow status set offset drift
"""

from __future__ import annotations

import math
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cemsd.config import pydantic_problems
from cemsd.errors import ConfigError, ConfigProblem
from cemsd.periods import parse_offset

Offset = Annotated[float, Field()]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Signal(Strict):
    """value(t) = base + ramp_per_hour*t/3600 + amplitude*sin(2*pi*(t - phase)/period) + noise."""

    base: float = 0.0
    ramp_per_hour: float = 0.0
    amplitude: float = 0.0
    period: Annotated[float, Field(gt=0)] = 86400.0
    phase: float = 0.0
    noise: Annotated[float, Field(ge=0)] = 0.0

    def deterministic(self, t: float) -> float:
        """The signal without noise, t in seconds since scenario start."""
        cycle = self.amplitude * math.sin(2 * math.pi * (t - self.phase) / self.period)
        return self.base + self.ramp_per_hour * t / 3600.0 + cycle

    def mean(self, t0: float, t1: float) -> float:
        """Analytic mean of the noiseless signal over [t0, t1)."""
        span = t1 - t0
        if span <= 0:
            return self.deterministic(t0)
        ramp = self.ramp_per_hour * (t0 + t1) / 2 / 3600.0
        w = 2 * math.pi / self.period
        cycle = 0.0
        if self.amplitude:
            cycle = self.amplitude * (
                math.cos(w * (t0 - self.phase)) - math.cos(w * (t1 - self.phase))
            ) / (w * span)
        return self.base + ramp + cycle


class SimBus(Strict):
    name: str
    transport: Literal["tcp", "serial"]
    host: str = "127.0.0.1"
    port: int | str  # TCP port number, or the serial device the simulator serves on
    link: str | None = None  # serial: create a pty pair; the daemon opens this end
    framer: Literal["socket", "rtu"] = "socket"
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    # serial with a link: pace the pair like a real line at `baudrate` with this many bits
    # per character (11 for 8E1; simulators/line.py); none: an instant socat pair
    line_bits_per_char: Annotated[int, Field(ge=7, le=12)] | None = None


class SimCalibration(Strict):
    """The calibration gases an analyzer reads while its valve coils are on."""

    channel: str
    zero_gas: float = 0.0
    span_gas: float | None = None


class SimDevice(Strict):
    name: str
    bus: str
    device_id: Annotated[int, Field(ge=0, le=255)]
    profile: str
    signals: dict[str, Signal] = {}
    calibration: SimCalibration | None = None


EventKind = Literal[
    "no_reply",
    "exception",
    "garbage",
    "truncated",
    "oversized",
    "bad_crc",
    "slow",
    "status",
    "set",
    "offset",
    "drift",
    "gain_drift",
]


class Event(Strict):
    device: str
    kind: EventKind
    start: Offset
    end: Offset | None = None  # open-ended when missing
    channel: str | None = None  # set / offset / drift / status
    value: float | None = None  # set: the value; offset: the amount; status: the word
    bits: list[int] = []  # status: bits to raise
    code: Literal[1, 2, 3, 4, 5, 6, 7, 8, 10, 11] = 4  # exception: the Modbus exception code
    # slow: wall-clock seconds before replying. Keep it below the daemon's timeout: when a
    # reply comes later, pymodbus 3.16's server labels it with the next request's id.
    delay: float = 0.5
    per_hour: float = 0.0  # drift: change per hour (gain_drift: % of the reading per hour)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _offset(cls, value: Any) -> Any:
        return None if value is None else parse_offset(value)

    def active(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


class Scenario(Strict):
    start: datetime
    seed: int = 1
    buses: list[SimBus]
    devices: list[SimDevice]
    events: list[Event] = []
    source: Path = Path("<memory>")

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("start needs a UTC offset, e.g. 2026-06-01T00:00:00+08:00")
        return value

    @property
    def epoch(self) -> float:
        return self.start.timestamp()

    def device(self, name: str) -> SimDevice:
        return next(d for d in self.devices if d.name == name)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"not UTF-8 text: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"TOML syntax: {exc}")]) from None
    _resolve_paths(raw, path.parent)
    try:
        scenario = Scenario.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        raise ConfigError(pydantic_problems(exc, str(path))) from None
    problems = _cross_check(scenario)
    if problems:
        raise ConfigError(problems)
    return scenario


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    buses = raw.get("buses")
    for bus in buses if isinstance(buses, list) else []:
        if isinstance(bus, dict) and bus.get("transport") == "serial":
            for key in ("port", "link"):
                value = bus.get(key)
                if isinstance(value, str) and not value.startswith("/"):
                    bus[key] = str((base / value).resolve())


def _cross_check(scenario: Scenario) -> list[ConfigProblem]:
    from drivers.registry import load_profile  # the registry imports nothing of ours

    file = str(scenario.source)
    problems = []
    buses = {b.name for b in scenario.buses}
    names = {d.name for d in scenario.devices}
    channels: dict[str, set[str]] = {}
    seen_ids: dict[tuple[str, int], int] = {}
    for i, device in enumerate(scenario.devices):
        slot = (device.bus, device.device_id)
        if slot in seen_ids:
            problems.append(ConfigProblem(
                file, f"devices[{i}].device_id",
                f"device id {device.device_id} is already used on bus {device.bus!r} "
                f"by devices[{seen_ids[slot]}]"))
        seen_ids.setdefault(slot, i)
        if device.bus not in buses:
            problems.append(ConfigProblem(file, f"devices[{i}].bus", f"no bus {device.bus!r}"))
        try:
            profile = load_profile(device.profile)
        except Exception as exc:
            problems.append(ConfigProblem(file, f"devices[{i}].profile", str(exc)))
            continue
        channels[device.name] = set(profile.channels)
        cal = device.calibration
        if cal is not None and cal.channel not in profile.channels:
            problems.append(ConfigProblem(file, f"devices[{i}].calibration.channel",
                                          f"profile {device.profile!r} has no channel "
                                          f"{cal.channel!r}"))
        if cal is not None and not profile.remote_calibration:
            problems.append(ConfigProblem(file, f"devices[{i}].calibration",
                                          f"profile {device.profile!r} has no calibration "
                                          "valves (remote_calibration)"))
        for key in device.signals:
            if key not in profile.channels:
                problems.append(
                    ConfigProblem(file, f"devices[{i}].signals.{key}",
                                  f"profile {device.profile!r} has no channel {key!r}")
                )
    for i, event in enumerate(scenario.events):
        if event.device not in names:
            problems.append(ConfigProblem(file, f"events[{i}].device",
                                          f"no device {event.device!r}"))
        if event.kind in ("set", "offset", "drift", "gain_drift") and not event.channel:
            problems.append(ConfigProblem(file, f"events[{i}].channel",
                                          f"a {event.kind} event needs a channel"))
        known = channels.get(event.device)
        if event.channel and known is not None and event.channel not in known:
            problems.append(ConfigProblem(file, f"events[{i}].channel",
                                          f"device {event.device!r} has no channel "
                                          f"{event.channel!r}"))
        if event.end is not None and event.end <= event.start:
            problems.append(ConfigProblem(file, f"events[{i}].end", "end must be after start"))
    return problems
