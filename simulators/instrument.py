"""A simulated instrument: its register image at time t, computed from the scenario.

The register layout is the instrument's profile (the same file the daemon's driver uses);
values are encoded with drivers.codec.encode. Tests check that codec against pymodbus'
own encoding, so a shared mistake cannot hide.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes

from cemsd.config import Channel
from drivers.codec import encoder
from drivers.registry import load_profile
from simulators.scenario import Event, Scenario, SimDevice

FAULT_KINDS = ("no_reply", "exception", "garbage", "truncated", "oversized", "bad_crc", "slow")
CORRUPTIONS = ("garbage", "truncated", "oversized", "bad_crc")


class NoReply(Exception):
    """The instrument stays silent."""


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where one channel sits in its table, and its encoder (built once)."""

    key: str
    channel: Channel
    address: int
    end: int
    encode: Callable[[float], list[int]]
    status: bool  # the value is the status word


@dataclass
class ReadOutcome:
    registers: list[int] | None = None
    exception: ExcCodes | None = None
    corruption: str | None = None
    delay: float = 0.0


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def gaussian(seed: int, stream: int, t: float) -> float:
    """A standard normal number fixed by (seed, stream, t to the millisecond)."""
    x = _splitmix64((seed * 0x100000001B3) ^ (stream << 20) ^ round(t * 1000))
    y = _splitmix64(x)
    u1 = ((x >> 11) + 1) / float(1 << 53)
    u2 = (y >> 11) / float(1 << 53)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2 * math.pi * u2)


class SimulatedInstrument:
    def __init__(self, device: SimDevice, scenario: Scenario) -> None:
        self.device = device
        self.scenario = scenario
        profile = load_profile(device.profile)
        self.profile = profile
        self.channels = {k: Channel.model_validate(v) for k, v in profile.channels.items()}
        self.events = [e for e in scenario.events if e.device == device.name]
        self.coils: dict[int, bool] = {}
        self.adjusted_at = float("-inf")  # drift before this moment was corrected
        self._streams = {k: zlib.crc32(f"{device.name}.{k}".encode()) for k in self.channels}
        self._spans = self._address_spans()
        # looked up per register read: a month in process makes millions of them
        self._of_channel = {k: [e for e in self.events if e.channel == k] for k in self.channels}
        self._gas_channel = device.calibration.channel if device.calibration else None
        self._status_events = [e for e in self.events if e.kind == "status"]
        self._fault_events = [e for e in self.events if e.kind in FAULT_KINDS]
        self._by_function: dict[int, list[_Slot]] = {}
        for key, ch in self.channels.items():
            self._by_function.setdefault(ch.function_code, []).append(_Slot(
                key, ch, ch.address, ch.address + ch.data_type.registers,
                encoder(ch.data_type, ch.byte_order), ch.kind == "status"))

    # --- values ------------------------------------------------------------------------

    def value(self, key: str, t: float) -> float:
        """Engineering value of a channel at t seconds after scenario start.

        What the analyzer sees (the sample, or a calibration gas while a valve is open),
        plus its own error (drift since its last adjustment, offsets), plus noise; a `set`
        event overrides everything.
        """
        signal = self.device.signals.get(key)
        seen = self._calibration_gas(key) if key == self._gas_channel else None
        if seen is None:
            seen = signal.deterministic(t) if signal else 0.0
        events = self._of_channel.get(key)
        value = seen
        if events:  # most channels have none
            value = seen * (1 + self._gain_error(key, t) / 100.0) + self._offset_error(key, t)
        if signal and signal.noise:
            value += signal.noise * gaussian(self.scenario.seed, self._streams[key], t)
        for event in events or ():
            if event.kind == "set" and event.active(t):
                assert event.value is not None
                value = event.value
        return value

    def _calibration_gas(self, key: str) -> float | None:
        cal, remote = self.device.calibration, self.profile.remote_calibration
        if cal is None or cal.channel != key:
            return None
        if self.coils.get(remote.get("span_valve_coil", -1)) and cal.span_gas is not None:
            return cal.span_gas
        if self.coils.get(remote.get("zero_valve_coil", -1)):
            return cal.zero_gas
        return None

    def _drifted(self, event: Event, t: float) -> float:
        """Hours of drift the event has built up since the last adjustment."""
        start = max(event.start, self.adjusted_at)
        until = t if event.end is None else min(t, event.end)
        return max(0.0, until - start) / 3600.0

    def _offset_error(self, key: str, t: float) -> float:
        error = 0.0
        for event in self._of_channel.get(key, ()):
            if event.kind == "drift" and t >= event.start:
                error += event.per_hour * self._drifted(event, t)
            elif event.kind == "offset" and event.active(t) and event.value is not None:
                error += event.value
        return error

    def _gain_error(self, key: str, t: float) -> float:
        return sum(e.per_hour * self._drifted(e, t) for e in self._of_channel.get(key, ())
                   if e.kind == "gain_drift" and t >= e.start)

    def status_word(self, key: str, t: float) -> int:
        word = int(self.value(key, t))
        for event in self._status_events:
            if event.active(t) and event.channel in (None, key):
                if event.value is not None:
                    word = int(event.value)
                for bit in event.bits:
                    word |= 1 << bit
        return word

    def fault(self, t: float) -> Event | None:
        return next((e for e in self._fault_events if e.active(t)), None)

    # --- registers -----------------------------------------------------------------------

    def _address_spans(self) -> dict[int, tuple[int, int]]:
        spans: dict[int, tuple[int, int]] = {}
        for ch in self.channels.values():
            low, high = spans.get(ch.function_code, (ch.address, ch.address))
            end = ch.address + ch.data_type.registers
            spans[ch.function_code] = (min(low, ch.address), max(high, end))
        return spans

    def image(self, function_code: int, t: float) -> dict[int, int]:
        """Every register (or bit) of one table that a channel or a coil sets."""
        words: dict[int, int] = {}
        for slot in self._by_function.get(function_code, ()):
            for i, word in enumerate(self._encoded(slot, t)):
                words[slot.address + i] = word
        if function_code == 1:
            words.update({a: int(v) for a, v in self.coils.items()})
        return words

    def _encoded(self, slot: _Slot, t: float) -> list[int]:
        ch = slot.channel
        engineering = float(self.status_word(slot.key, t)) if slot.status else \
            self.value(slot.key, t)
        return slot.encode((engineering - ch.offset) / ch.scale)

    def _registers(self, function_code: int, address: int, count: int, t: float) -> list[int]:
        """What a read of [address, address + count) returns, as `image` would give it;
        only the channels that reach into it are computed (a read is one block)."""
        registers = [0] * count
        end = address + count
        for slot in self._by_function.get(function_code, ()):
            if slot.end <= address or slot.address >= end:
                continue
            for i, word in enumerate(self._encoded(slot, t), slot.address - address):
                if 0 <= i < count:
                    registers[i] = word
        if function_code == 1:
            for a, on in self.coils.items():
                if address <= a < end:
                    registers[a - address] = int(on)
        return registers

    def read(self, function_code: int, address: int, count: int, t: float) -> ReadOutcome:
        fault = self.fault(t) if self._fault_events else None
        if fault is not None and fault.kind == "no_reply":
            raise NoReply(self.device.name)
        if fault is not None and fault.kind == "exception":
            return ReadOutcome(exception=ExcCodes(fault.code))
        span = self._spans.get(function_code)
        if function_code == 1 and span is None:
            span = (0, 16)  # coils for calibration valves, even if no channel maps them
        if span is None or address < span[0] or address + count > max(span[1], span[0] + 1):
            return ReadOutcome(exception=ExcCodes.ILLEGAL_ADDRESS)
        outcome = ReadOutcome(registers=self._registers(function_code, address, count, t))
        if fault is not None and fault.kind in CORRUPTIONS:
            outcome.corruption = fault.kind
        if fault is not None and fault.kind == "slow":
            outcome.delay = fault.delay
        return outcome

    def write_coils(self, address: int, values: list[bool], t: float) -> None:
        adjust = self.profile.remote_calibration.get("adjust_coil")
        for i, value in enumerate(values):
            self.coils[address + i] = bool(value)
            if address + i == adjust and value:
                self.adjusted_at = t  # the analyzer applies its correction now


def corrupt(kind: str, data: bytes, seed: int = 0) -> bytes:
    """What a misbehaving instrument puts on the wire instead of its reply."""
    if kind == "truncated":
        return data[: max(1, len(data) // 2)]
    if kind == "oversized":
        return data + bytes(300)
    if kind == "bad_crc":
        return data[:-1] + bytes([data[-1] ^ 0xFF])
    junk = bytearray()
    state = seed or 0xC0FFEE
    while len(junk) < len(data):
        state = _splitmix64(state)
        junk += state.to_bytes(8, "little")
    return bytes(junk[: len(data)])
