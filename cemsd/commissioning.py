"""Commissioning tools: look at a device before trusting its data.

- probe: read registers once and show them raw and decoded in every data type and byte
  order, marking the decodings inside the channel's range (`cemsd probe`). When the daemon
  runs, the read goes through its bus owner (control op `probe`): one owner per link.
- poll once: every device of a configuration polled once through the daemon's own read
  plan, codec and validity, printed, nothing stored (`cemsd run --once`).
- a profile's register layout (`cemsd profiles NAME`), serial ports that do not exist
  (`cemsd check-config` warnings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cemsd.config import Channel, Config, Device, SerialBus, TcpBus
from cemsd.errors import CemsdError
from cemsd.plausibility import Limits, limits
from drivers.base import Transport
from drivers.codec import ByteOrder, DataType, decode
from drivers.registry import load_profile

if TYPE_CHECKING:
    from cemsd.daemon import Daemon
    from cemsd.plan import DevicePlan
    from cemsd.readings import Reading

KINDS = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
KIND_NAMES = {code: name for name, code in KINDS.items()}
NUMERIC_TYPES = tuple(t for t in DataType if t is not DataType.BOOL)


# --- probe -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeRequest:
    device_id: int
    function_code: int
    address: int
    count: int
    timeout: float = 1.0
    retries: int = 0


async def read_once(bus: TcpBus | SerialBus, request: ProbeRequest) -> list[int]:
    """One read on a link nobody else uses; the link is closed afterwards."""
    from cemsd.daemon import bus_transport

    transport = bus_transport(bus)  # pymodbus wants the running loop
    try:
        await transport.open(request.timeout)
        return await transport.read(request.device_id, request.function_code, request.address,
                                    request.count, request.timeout, request.retries)
    finally:
        await transport.close()


async def serve_probe(daemon: Daemon, request: dict[str, Any]) -> dict[str, Any]:
    """The control op `probe`: the link's bus owner reads between its polls. The request
    names a configured `device`, or a `bus` and any `device_id` on it (hunting for an id)."""
    function_code, address, count = (int(request[k]) for k in ("function_code", "address",
                                                               "count"))
    if "bus" in request:
        owner = next((o for o in daemon.owners if o.name == request["bus"]), None)
        if owner is None or not owner.plan.devices:
            raise CemsdError(f"no bus {request['bus']!r} with devices in the running "
                             "configuration")
        name, device_id = owner.plan.devices[0].name, int(request["device_id"])
    else:
        name = str(request["device"])
        owner = next((o for o in daemon.owners if o.device(name) is not None), None)
        if owner is None:
            raise CemsdError(f"no device {name!r} in the running configuration")
        device_id = None

    async def read(transport: Transport, plan: DevicePlan) -> list[int]:
        if not transport.connected:
            await transport.open(plan.timeout)
        return await transport.read(plan.device_id if device_id is None else device_id,
                                    function_code, address, count, plan.timeout, plan.retries)

    return {"registers": await owner.execute(name, read), "bus": owner.name}


def decode_lines(registers: Sequence[int], request: ProbeRequest,
                 channels: dict[str, Channel]) -> list[str]:
    """Raw words, then every decoding at every start address; `*` inside the range of the
    channel that starts there, `<` the channel's configured decoding."""
    kind = KIND_NAMES[request.function_code]
    lines = [f"{kind} {request.address}..{request.address + len(registers) - 1} of device "
             f"id {request.device_id}:"]
    if request.function_code in (1, 2):
        return lines + [f"  @{request.address + i:<5} {bit}" for i, bit in enumerate(registers)]
    lines += [f"  @{request.address + i:<5} 0x{w:04X}  {w:>5}  {w:016b}"
              for i, w in enumerate(registers)]
    at = {c.address: (k, c) for k, c in channels.items() if c.function_code ==
          request.function_code and c.kind != "status"}
    header = f"  {'address':<8} {'type':<8}" + "".join(f" {o.value:>14}" for o in ByteOrder)
    for offset in range(len(registers)):
        address = request.address + offset
        key, channel = at.get(address, (None, None))
        where = f"@{address}" + (f" ({key}, range {_range(channel)})" if channel else "")
        lines += ["", f"decoded from {where}:", header]
        for data_type in NUMERIC_TYPES:
            words = registers[offset:offset + data_type.registers]
            if len(words) < data_type.registers:
                continue
            cells = [_cell(decode(words, data_type, order), data_type, order, channel,
                           configured=key is not None and not key.startswith("@"))
                     for order in ByteOrder]
            lines.append(f"  {'':<8} {data_type.value:<8}" + "".join(f" {c:>14}" for c in cells))
    lines += ["", "* inside the channel's range; < the configured data type and byte order"]
    return lines


def _range(channel: Channel | None) -> str:
    if channel is None or channel.range is None:
        return "none"
    return f"[{channel.range[0]:g}, {channel.range[1]:g}] {channel.unit.value}"


def _cell(raw: float, data_type: DataType, order: ByteOrder, channel: Channel | None,
          configured: bool) -> str:
    value = raw if channel is None else raw * channel.scale + channel.offset
    text = f"{value:.6g}" if math.isfinite(value) else str(value)
    if channel is None:
        return text
    inside = channel.range is not None and math.isfinite(value) and \
        channel.range[0] <= value <= channel.range[1]
    configured = configured and channel.data_type is data_type and \
        _same_order(channel, data_type, order)
    return text + ("*" if inside else "") + ("<" if configured else "")


def _same_order(channel: Channel, data_type: DataType, order: ByteOrder) -> bool:
    if data_type.registers == 1:  # only the byte swap matters to one word
        return channel.byte_order.byte_swap == order.byte_swap
    return channel.byte_order is order


def device_reads(config: Config, device: Device) -> list[ProbeRequest]:
    """A configured device's probes: each block of its read plan."""
    from cemsd.plan import compile_plan

    plan = next(d for d in compile_plan(config).devices if d.name == device.name)
    return [ProbeRequest(device.device_id, b.function_code, b.address, b.count, plan.timeout,
                         plan.retries) for b in plan.blocks]


# --- poll once ---------------------------------------------------------------------------------


async def poll_once(config: Config) -> list[tuple[DevicePlan, list[Reading], str | None]]:
    """Every device polled once through the daemon's plan, codec and validity; no storage."""
    from cemsd.acquisition import BusOwner
    from cemsd.clock import WallClock
    from cemsd.daemon import modbus_transport
    from cemsd.plan import compile_plan
    from cemsd.validity import DeviceValidator, default_checks

    results = []
    plan = compile_plan(config)
    checks = default_checks(config)
    validators = {d.name: DeviceValidator(d, checks) for d in plan.devices}
    for bus in plan.buses:
        collected: list[Reading] = []
        owner = BusOwner(bus, modbus_transport(bus), WallClock(), collected.extend,
                         validators=validators)
        try:
            for device in bus.devices:
                readings = await owner.poll(device)
                results.append((device, readings, owner.health[device.name].last_error))
        finally:
            await owner.transport.close()
    return results


def reading_lines(results: list[tuple[DevicePlan, list[Reading], str | None]],
                  config: Config) -> list[str]:
    lines: list[str] = []
    for device, readings, error in results:
        bus = config.bus(device.bus)
        lines.append(f"{device.name} (id {device.device_id} on {bus.name}, {bus.endpoint}): "
                     f"{error or 'ok'}")
        for reading, channel in zip(readings, device.channels, strict=True):
            value = "-" if reading.value is None else f"{reading.value:.6g}"
            lines.append(f"  {channel.key:<20} {value:>14} {channel.unit.value:<6} "
                         f"{reading.flag.value}  {reading.reason or ''}".rstrip())
    return lines


# --- profiles and ports ------------------------------------------------------------------------


def profile_lines(name: str) -> list[str]:
    """A profile's register layout, one channel a line, with its status bits and codes."""
    profile = load_profile(name)
    lines = [f"{profile.name}: {profile.description}", f"file: {profile.path}"]
    if profile.extends:
        lines.append(f"extends: {profile.extends}")
    lines.append(f"{'channel':<20} {'fc':>2} {'address':>7} {'type':<8} {'order':<5} "
                 f"{'scale':>7} {'offset':>6} {'unit':<6} {'range':<16} {'kind':<8} role")
    for key, raw in profile.channels.items():
        c = Channel.model_validate(raw)
        span = f"[{c.range[0]:g}, {c.range[1]:g}]" if c.range else "-"
        lines.append(f"{key:<20} {c.function_code:>2} {c.address:>7} {c.data_type.value:<8} "
                     f"{c.byte_order.value:<5} {c.scale:>7g} {c.offset:>6g} {c.unit.value:<6} "
                     f"{span:<16} {c.kind:<8} {c.role.value if c.role else '-'}")
        if (bounds := limits(c)) is not None:
            lines.append(f"    {_plausible(bounds, c)}")
        for bit, meaning in c.bits.items():
            lines.append(f"    bit {bit:<2} -> {meaning.flag.value}: {meaning.text}")
        for code, meaning in c.codes.items():
            lines.append(f"    code {code} -> {meaning.flag.value}: {meaning.text}")
    if profile.remote_calibration:
        coils = ", ".join(f"{k} = {v}" for k, v in profile.remote_calibration.items())
        lines.append(f"remote calibration (coils): {coils}")
    return lines


def _plausible(bounds: Limits, channel: Channel) -> str:
    low = "-" if bounds.low is None else f"{bounds.low:g}"
    high = "-" if bounds.high is None else f"{bounds.high:g}"
    frozen = f", frozen after {bounds.frozen_s / 60:g} min" if bounds.frozen_s else ""
    return f"plausible {low} .. {high} {channel.unit.value}{frozen} (else D)"


def serial_port_warnings(config: Config) -> list[str]:
    """Serial ports that do not exist now (a USB adapter not plugged in, a typo)."""
    return [f"warning: bus {bus.name!r}: serial port {bus.port} does not exist (adapter not "
            "plugged in, or a typo? stable names: ls -l /dev/serial/by-id/)"
            for bus in config.buses
            if isinstance(bus, SerialBus) and not Path(bus.port).exists()]
