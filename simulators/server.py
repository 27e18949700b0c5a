"""Simulated instruments served as real Modbus servers: TCP on 127.0.0.1 and RTU on a pty.

pymodbus 3.16's request handler reads and writes through
`server.context.async_getValues/async_setValues(device_id, fc, address, ...)` and
answers NoSuchIdException with silence when `ignore_missing_devices` is set. The
simulator puts its own context there, so every reply is computed at the moment of the
request from the clock. Corrupted frames are produced in the outgoing packet trace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import serial
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData
from pymodbus.simulator import SimDevice as PymodbusSimDevice

from cemsd.clock import Clock
from simulators.instrument import NoReply, ReadOutcome, SimulatedInstrument, corrupt
from simulators.line import PacedLine
from simulators.scenario import Scenario, SimBus

log = logging.getLogger(__name__)
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

# Write requests read their result back with their own function code (pymodbus 3.16
# WriteSingleCoilRequest.datastore_update): map them to the table they write.
TABLE_OF = {5: 1, 15: 1, 6: 3, 16: 3}


class SimulatedBus:
    """The instruments behind one bus, as a pymodbus server context."""

    def __init__(self, scenario: Scenario, bus: SimBus, clock: Clock) -> None:
        self.bus = bus
        self.clock = clock
        self.epoch = scenario.epoch
        self.instruments = {
            d.device_id: SimulatedInstrument(d, scenario)
            for d in scenario.devices
            if d.bus == bus.name
        }
        self._pending_corruption: str | None = None
        self.requests = 0
        self.requests_by_device: Counter[int] = Counter()

    def device_ids(self) -> list[int]:
        return list(self.instruments)

    def elapsed(self) -> float:
        return self.clock.now() - self.epoch

    def answer(self, device_id: int, func_code: int, address: int, count: int) -> ReadOutcome:
        """The instrument's answer to a read now; NoReply when it stays silent."""
        self.requests += 1
        self.requests_by_device[device_id] += 1
        instrument = self.instruments.get(device_id)
        if instrument is None:
            raise NoReply(f"no device {device_id}")
        return instrument.read(TABLE_OF.get(func_code, func_code), address, count,
                               self.elapsed())

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        try:
            outcome = self.answer(device_id, func_code, address, count)
        except NoReply:
            raise NoSuchIdException(f"device {device_id} is silent") from None
        if outcome.delay:
            await asyncio.sleep(outcome.delay)
        if outcome.exception is not None:
            return outcome.exception
        self._pending_corruption = outcome.corruption
        assert outcome.registers is not None
        if func_code in (1, 2):
            return [bool(v) for v in outcome.registers]
        return outcome.registers

    def accept_write(self, device_id: int, func_code: int, address: int,
                     values: list[int] | list[bool]) -> ExcCodes | None:
        """Carry out a write now; NoReply when the instrument stays silent."""
        instrument = self.instruments.get(device_id)
        if instrument is None or instrument.fault(self.elapsed()) is not None:
            raise NoReply(f"device {device_id} is silent")
        if func_code not in (5, 15):
            return ExcCodes.ILLEGAL_FUNCTION
        instrument.write_coils(address, [bool(v) for v in values], self.elapsed())
        return None

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        try:
            return self.accept_write(device_id, func_code, address, values)
        except NoReply as exc:
            raise NoSuchIdException(str(exc)) from None

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self._pending_corruption:
            kind, self._pending_corruption = self._pending_corruption, None
            return corrupt(kind, data, seed=self.requests)
        return data


def _placeholder_device() -> PymodbusSimDevice:
    # pymodbus wants a datastore at construction; the SimulatedBus replaces it.
    return PymodbusSimDevice(1, simdata=[SimData(0, values=[0], datatype=DataType.REGISTERS)])


class SimulatorServer:
    """All buses of a scenario, served until stop()."""

    def __init__(self, scenario: Scenario, clock: Clock) -> None:
        self.scenario = scenario
        self.clock = clock
        self.buses = {b.name: SimulatedBus(scenario, b, clock) for b in scenario.buses}
        self._servers: dict[str, ModbusTcpServer | ModbusSerialServer] = {}
        self._ptys: dict[str, subprocess.Popen[bytes]] = {}
        self._lines: dict[str, PacedLine] = {}

    async def start(self) -> None:
        for bus in self.scenario.buses:
            await self.start_bus(bus.name)

    async def start_bus(self, name: str) -> None:
        """Serve one bus (again): a test can break a link and restore it."""
        bus = next(b for b in self.scenario.buses if b.name == name)
        context = self.buses[name]
        if bus.transport == "tcp":
            server: ModbusTcpServer | ModbusSerialServer = ModbusTcpServer(
                _placeholder_device(),
                framer=FramerType.RTU if bus.framer == "rtu" else FramerType.SOCKET,
                address=(bus.host, int(bus.port)),
                ignore_missing_devices=True,
                trace_packet=context.trace_packet,
            )
        else:
            port = str(bus.port)
            if bus.link and bus.line_bits_per_char:
                self._lines[name] = PacedLine(Path(port), Path(bus.link), bus.baudrate,
                                              bus.line_bits_per_char).start()
            elif bus.link:
                self._ptys[name] = open_pty_pair(Path(port), Path(bus.link))
            check_serial_port(port, bus.baudrate, bus.parity, bus.stopbits)
            server = ModbusSerialServer(
                _placeholder_device(),
                framer=FramerType.RTU,
                port=port,
                baudrate=bus.baudrate,
                parity=bus.parity,
                stopbits=bus.stopbits,
                ignore_missing_devices=True,
                trace_packet=context.trace_packet,
            )
        server.context = context  # type: ignore[assignment]
        try:
            await _listen(server)
        except RuntimeError as exc:  # pymodbus names neither the port nor the cause
            where = f"{bus.host}:{bus.port}" if bus.transport == "tcp" else str(bus.port)
            raise RuntimeError(f"bus {bus.name}: cannot serve on {where} ({exc}); is "
                               "another process using it?") from None
        self._servers[name] = server
        log.info("simulated bus up", extra={"bus": bus.name, "at": str(bus.port),
                                            "devices": sorted(context.instruments)})

    async def stop_bus(self, name: str) -> None:
        """Stop serving one bus: TCP connections drop, a pty pair disappears."""
        server = self._servers.pop(name, None)
        if server is not None:
            await server.shutdown()
        line = self._lines.pop(name, None)
        if line is not None:
            line.stop()
        proc = self._ptys.pop(name, None)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()

    async def stop(self) -> None:
        for name in list(self._servers):
            await self.stop_bus(name)


async def _listen(server: ModbusTcpServer | ModbusSerialServer, attempts: int = 40) -> None:
    """Start serving; a port just released by a stopped server may need a moment."""
    for attempt in range(attempts):
        try:
            await server.serve_forever(background=True)
            return
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05)


def check_serial_port(port: str, baudrate: int, parity: str, stopbits: int) -> None:
    """Open and close the port once: pymodbus' serial server retries forever silently."""
    try:
        serial.Serial(port, baudrate=baudrate, parity=parity, stopbits=stopbits).close()
    except (serial.SerialException, OSError) as exc:
        raise RuntimeError(
            f"cannot open serial port {port} at {baudrate} {parity}{stopbits}: {exc}"
        ) from None


def open_pty_pair(one: Path, other: Path, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Create a connected pty pair with socat; both ends appear as symlinks."""
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed (apt-get install socat)")
    for path in (one, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
    proc = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={one}", f"pty,raw,echo=0,link={other}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while not (os.path.exists(one) and os.path.exists(other)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"socat did not create the pty pair {one} <-> {other}")
        time.sleep(0.02)
    return proc
