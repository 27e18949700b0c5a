"""`cemsd probe`: read registers once, raw and decoded every way (an mbpoll for cemsd)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import click

from cemsd.errors import CemsdError, ExceptionReply


def register(main: click.Group, load_config: Callable[[str], Any]) -> None:
    @main.command()
    @click.option("--config", "config_file", type=click.Path(dir_okay=False),
                  help="Take the link and device from this configuration (with --device).")
    @click.option("--device", "device_name", help="A device of the configuration.")
    @click.option("--bus", "bus_name",
                  help="A bus of the configuration (with --unit and --address): any device id.")
    @click.option("--host", help="Modbus TCP host (without --config).")
    @click.option("--port", type=click.IntRange(1, 65535), default=502, show_default=True)
    @click.option("--framer", type=click.Choice(["socket", "rtu"]), default="socket",
                  show_default=True, help="rtu: RTU frames through a TCP gateway.")
    @click.option("--serial-port", help="Serial device, e.g. /dev/ttyUSB0 (without --config).")
    @click.option("--baudrate", type=int, default=9600, show_default=True)
    @click.option("--parity", type=click.Choice(["N", "E", "O"]), default="N", show_default=True)
    @click.option("--stopbits", type=click.Choice(["1", "2"]), default="1", show_default=True)
    @click.option("--bytesize", type=click.Choice(["7", "8"]), default="8", show_default=True)
    @click.option("--unit", "--device-id", "device_id", type=click.IntRange(0, 255),
                  help="Modbus device id (unit id, slave address).")
    @click.option("--address", type=click.IntRange(0, 65535),
                  help="First register (0-based); default with --device: its whole map.")
    @click.option("--count", type=click.IntRange(1, 125), default=4, show_default=True)
    @click.option("--kind", type=click.Choice(["holding", "input", "coil", "discrete"]),
                  default="holding", show_default=True)
    @click.option("--range", "span", type=float, nargs=2, default=None,
                  help="Mark decodings inside LOW HIGH (default: the channel's range).")
    @click.option("--timeout", type=click.FloatRange(0.05, 30), default=1.0, show_default=True)
    @click.option("--direct", is_flag=True,
                  help="Open the link even if a daemon runs (TCP only; serial is exclusive).")
    def probe(config_file: str | None, device_name: str | None, bus_name: str | None,
              host: str | None, port: int,
              framer: str, serial_port: str | None, baudrate: int, parity: str, stopbits: str,
              bytesize: str, device_id: int | None, address: int | None, count: int, kind: str,
              span: tuple[float, float] | None, timeout: float, direct: bool) -> None:
        """Read registers once; print them raw and decoded in every data type and byte order.

        Either --config F --device NAME, or --config F --bus NAME with --unit and --address
        (both through the running daemon if it owns the bus), or --host/--serial-port with
        --unit and --address."""
        from cemsd.commissioning import KINDS, ProbeRequest, decode_lines

        if config_file and (device_name or bus_name):
            config = load_config(config_file)
            if device_name:
                channels, requests, read = _from_device(config, device_name, address, count,
                                                        kind, direct)
            else:
                channels, requests, read = {}, *_from_bus(config, bus_name, device_id,
                                                          address, count, kind, direct)
        elif host or serial_port:
            if device_id is None or address is None:
                raise click.UsageError("an ad-hoc probe needs --unit and --address")
            channels = {}
            requests = [ProbeRequest(device_id, KINDS[kind], address, count, timeout)]
            read = _direct_reader(_adhoc_bus(host, port, framer, serial_port, baudrate, parity,
                                             int(stopbits), int(bytesize), timeout))
        else:
            raise click.UsageError("give --config F --device NAME (or --bus NAME), or --host / "
                                   "--serial-port")
        if span is not None:
            channels = _with_range(channels, requests[0], span)
        failed = False
        for request in requests:
            try:
                registers = read(request)
            except (CemsdError, ExceptionReply) as exc:
                click.echo(f"cemsd probe: {_describe(request)}: {type(exc).__name__}: {exc}",
                           err=True)
                failed = True
                continue
            click.echo("\n".join(decode_lines(registers, request, channels)))
        sys.exit(1 if failed else 0)


Reader = Callable[[Any], list[int]]


def _from_device(config: Any, name: str, address: int | None, count: int, kind: str,
                 direct: bool) -> tuple[dict[str, Any], list[Any], Reader]:
    device = next((d for d in config.devices if d.name == name), None)
    if device is None:
        raise click.BadParameter(f"no device {name!r} in {config.source} "
                                 f"(devices: {', '.join(d.name for d in config.devices)})")
    return (dict(device.channels), _configured_requests(config, device, address, count, kind),
            _config_reader(config, device.bus, {"device": device.name}, direct))


def _from_bus(config: Any, name: str, device_id: int | None, address: int | None, count: int,
              kind: str, direct: bool) -> tuple[list[Any], Reader]:
    """Any device id on a configured bus (through the daemon that owns it)."""
    from cemsd.commissioning import KINDS, ProbeRequest

    if name not in {b.name for b in config.buses}:
        raise click.BadParameter(f"no bus {name!r} in {config.source}")
    if device_id is None or address is None:
        raise click.UsageError("--bus needs --unit and --address")
    bus = config.bus(name)
    requests = [ProbeRequest(device_id, KINDS[kind], address, count, bus.timeout, bus.retries)]
    return requests, _config_reader(config, name, {"bus": name, "device_id": device_id},
                                    direct)


def _describe(request: Any) -> str:
    from cemsd.commissioning import KIND_NAMES

    return (f"device id {request.device_id} {KIND_NAMES[request.function_code]} "
            f"{request.address} x{request.count}")


def _configured_requests(config: Any, device: Any, address: int | None, count: int,
                         kind: str) -> list[Any]:
    from cemsd.commissioning import KINDS, ProbeRequest, device_reads

    if address is None:
        return device_reads(config, device)
    bus = config.bus(device.bus)
    return [ProbeRequest(device.device_id, KINDS[kind], address, count,
                         device.timeout or bus.timeout)]


def _config_reader(config: Any, bus: str, target: dict[str, Any], direct: bool
                   ) -> Callable[[Any], list[int]]:
    """Through the daemon when it answers on its control socket, else the link itself."""
    from cemsd.control import ControlError, request

    socket_path = config.qaqc.control_socket or config.storage.state_dir / "cemsd.sock"
    direct_read = _direct_reader(config.bus(bus))

    def read(probe: Any) -> list[int]:
        if direct or not socket_path.exists():
            return direct_read(probe)
        try:
            replies = list(request(socket_path, {
                "op": "probe", **target, "function_code": probe.function_code,
                "address": probe.address, "count": probe.count}, timeout=60.0))
        except ControlError:
            return direct_read(probe)  # a socket left behind: nobody owns the link
        answer = replies[-1] if replies else {"ok": False, "error": "no answer"}
        if not answer.get("ok"):
            raise CemsdError(f"through the daemon: {answer.get('error')}")
        click.echo(f"(read by the running daemon's owner of bus {answer['result']['bus']})",
                   err=True)
        return list(answer["result"]["registers"])

    return read


def _direct_reader(bus: Any) -> Callable[[Any], list[int]]:
    from cemsd.commissioning import read_once

    return lambda probe: asyncio.run(read_once(bus, probe))


def _adhoc_bus(host: str | None, port: int, framer: str, serial_port: str | None,
               baudrate: int, parity: str, stopbits: int, bytesize: int, timeout: float) -> Any:
    from cemsd.config import SerialBus, TcpBus

    if serial_port:
        return SerialBus(name="probe", transport="serial", port=serial_port,
                         baudrate=baudrate, parity=parity, stopbits=stopbits,  # type: ignore
                         bytesize=bytesize, timeout=timeout)  # type: ignore[arg-type]
    return TcpBus(name="probe", transport="tcp", host=str(host), port=port,
                  framer=framer, timeout=timeout)  # type: ignore[arg-type]


def _with_range(channels: dict[str, Any], request: Any, span: tuple[float, float]
                ) -> dict[str, Any]:
    """--range: every start address of the read is judged against LOW HIGH."""
    from cemsd.config import Channel
    from cemsd.units import Unit

    low, high = span
    if not low < high:
        raise click.BadParameter("--range takes LOW HIGH with LOW < HIGH")
    return {f"@{a}": Channel(function_code=request.function_code, address=a, unit=Unit.NONE,
                             range=(low, high))
            for a in range(request.address, request.address + request.count)}
