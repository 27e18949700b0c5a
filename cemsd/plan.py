"""Compile the configuration into a fixed read plan, once, at start-up.

Per bus and device: channels sorted by function code and address, contiguous (or, with
`max_gap`, nearly contiguous) ranges merged into block reads of at most 125 registers
(2000 bits); register reads are further limited by the device's `max_registers`.
Polling walks this plan and never reads the configuration again (Telegraf's
`request.go` pattern).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Literal

from cemsd import standards
from cemsd.config import Channel, Config, Device, SerialBus, TcpBus
from cemsd.units import Role, Unit
from drivers.codec import decoder

log = logging.getLogger(__name__)
# a channel's key, first and end register in its block, decoder, scale, offset
Decoding = tuple[str, int, int, Callable[[Sequence[int]], float], float, float]


@dataclass(frozen=True)
class ChannelPlan:
    name: str  # "<device>.<key>", unique in the plant
    key: str
    device: str
    spec: Channel
    point: str | None

    @property
    def unit(self) -> Unit:
        return self.spec.unit

    @property
    def role(self) -> Role | None:
        return self.spec.role

    @property
    def aggregate(self) -> Literal["mean", "last"]:
        return "last" if self.spec.kind == "counter" else "mean"


@dataclass(frozen=True)
class ReadBlock:
    function_code: int
    address: int
    count: int
    items: tuple[tuple[ChannelPlan, int], ...]  # channel and its offset in the block

    @functools.cached_property
    def decoding(self) -> tuple[Decoding, ...]:
        """Per channel: its key, its registers' slice of the block, its decoder and scaling;
        looked up once, as the block is decoded at every poll."""
        return tuple(
            (c.key, offset, offset + c.spec.data_type.registers,
             decoder(c.spec.data_type, c.spec.byte_order), c.spec.scale, c.spec.offset)
            for c, offset in self.items)

    def describe(self) -> str:
        return f"fc{self.function_code} @{self.address} x{self.count}"


@dataclass(frozen=True)
class DevicePlan:
    name: str
    bus: str
    device_id: int
    poll_interval: float
    timeout: float
    retries: int
    backoff_max: float
    blocks: tuple[ReadBlock, ...]
    channels: tuple[ChannelPlan, ...]

    @property
    def expected_per_minute(self) -> int:
        return max(1, round(60.0 / self.poll_interval))

    @property
    def failed_request_cost(self) -> float:
        """Bus time one silent request costs: every attempt waits its full timeout."""
        return self.timeout * (self.retries + 1)


@dataclass(frozen=True)
class BusPlan:
    bus: TcpBus | SerialBus
    devices: tuple[DevicePlan, ...]

    @property
    def name(self) -> str:
        return self.bus.name


@dataclass(frozen=True)
class Plan:
    buses: tuple[BusPlan, ...]

    @property
    def devices(self) -> tuple[DevicePlan, ...]:
        return tuple(d for b in self.buses for d in b.devices)

    @property
    def channels(self) -> tuple[ChannelPlan, ...]:
        return tuple(c for d in self.devices for c in d.channels)

    def channel(self, name: str) -> ChannelPlan:
        return next(c for c in self.channels if c.name == name)


def compile_plan(config: Config) -> Plan:
    buses = []
    for bus in config.buses:
        devices = tuple(
            _device_plan(config, bus, d) for d in config.devices if d.bus == bus.name and d.enabled
        )
        buses.append(BusPlan(bus=bus, devices=devices))
    return Plan(buses=tuple(buses))


def log_plan(plan: Plan) -> None:
    for device in plan.devices:
        blocks = ", ".join(b.describe() for b in device.blocks)
        log.info("read plan", extra={"device": device.name, "bus": device.bus, "blocks": blocks})


def _device_plan(config: Config, bus: TcpBus | SerialBus, device: Device) -> DevicePlan:
    channels = tuple(
        ChannelPlan(
            name=config.channel_name(device, key),
            key=key,
            device=device.name,
            spec=spec,
            point=config.channel_point(device, spec),
        )
        for key, spec in device.channels.items()
    )
    return DevicePlan(
        name=device.name,
        bus=bus.name,
        device_id=device.device_id,
        poll_interval=device.poll_interval,
        timeout=device.timeout or bus.timeout,
        retries=bus.retries if device.retries is None else device.retries,
        backoff_max=device.backoff_max,
        blocks=tuple(plan_blocks(channels, device.max_registers, device.max_gap)),
        channels=channels,
    )


def plan_blocks(
    channels: tuple[ChannelPlan, ...], max_registers: int, max_gap: int = 0
) -> list[ReadBlock]:
    """Merge channels into as few reads as the limits allow."""
    blocks: list[ReadBlock] = []
    ordered = sorted(channels, key=lambda c: (c.spec.function_code, c.spec.address))
    for fc, group in groupby(ordered, key=lambda c: c.spec.function_code):
        limit = (
            int(standards.MODBUS_MAX_READ_BITS.value)
            if fc in (1, 2)
            else min(max_registers, int(standards.MODBUS_MAX_READ_REGISTERS.value))
        )
        start = end = -1
        items: list[tuple[ChannelPlan, int]] = []
        for ch in group:
            ch_end = ch.spec.address + ch.spec.data_type.registers
            fits = items and ch.spec.address <= end + max_gap and max(end, ch_end) - start <= limit
            if not fits:
                if items:
                    blocks.append(ReadBlock(fc, start, end - start, tuple(items)))
                start, end, items = ch.spec.address, ch_end, []
            end = max(end, ch_end)
            items.append((ch, ch.spec.address - start))
        if items:
            blocks.append(ReadBlock(fc, start, end - start, tuple(items)))
    return blocks


def minute_threshold(expected: int, min_readings: int, min_fraction: float) -> int:
    """Valid readings a minute needs: HJ 212 Annex C/D (>= 75 % of expected and >= 12)."""
    return max(min_readings, math.ceil(min_fraction * expected - 1e-9))
