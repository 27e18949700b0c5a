"""Modbus TCP and RTU transports over pymodbus 3.16 async clients.

One client per bus. pymodbus serialises requests on a client with its own lock; the bus
owner is the only caller, so there is exactly one lock and one request in flight.
Decisions that depend on pymodbus internals (pinned to 3.16.x):

- `reconnect_delay=0` turns pymodbus' background reconnect off: the bus owner reopens
  the link itself, with back-off, so a dead link is retried on our schedule only.
- Timeout and retries are per device, so they are set on the client's transaction
  manager (`ctx.comm_params.timeout_connect`, `ctx.retries`) before each request.
  That is safe because this transport is the client's only user.
- pymodbus reports a silent device and an unreadable reply alike (ModbusIOException
  after its timeout). A packet trace counts the bytes received during the request, so
  the reason can tell "no reply" from "garbage".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

import serial
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType

from cemsd.errors import BadFrame, DeviceTimeout, ExceptionReply, NoConnection, describe
from drivers.base import Transport

# pymodbus logs every failed request at ERROR with a frame dump; the bus owner logs
# each fault episode once instead.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)


class ModbusTransport(Transport):
    def __init__(self, name: str, make_client: Callable[[Callable[[bool, bytes], bytes]], Any],
                 endpoint: str = "", serial_port: str | None = None):
        self.name = name
        self.endpoint = endpoint or name  # host:port or the serial device, for messages
        self._serial_port = serial_port
        self._received = 0
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient = make_client(self._trace)

    @classmethod
    def tcp(cls, name: str, host: str, port: int, framer: str = "socket") -> ModbusTransport:
        return cls(
            name,
            lambda trace: AsyncModbusTcpClient(
                host,
                port=port,
                framer=FramerType.RTU if framer == "rtu" else FramerType.SOCKET,
                timeout=1.0,
                retries=0,
                reconnect_delay=0,
                trace_packet=trace,
            ),
            endpoint=f"{host}:{port}",
        )

    @classmethod
    def serial(
        cls,
        name: str,
        port: str,
        baudrate: int,
        parity: str,
        stopbits: int = 1,
        bytesize: int = 8,
    ) -> ModbusTransport:
        return cls(
            name,
            lambda trace: AsyncModbusSerialClient(
                port,
                framer=FramerType.RTU,
                baudrate=baudrate,
                parity=parity,
                stopbits=stopbits,
                bytesize=bytesize,
                timeout=1.0,
                retries=0,
                reconnect_delay=0,
                trace_packet=trace,
            ),
            endpoint=port, serial_port=port,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._received += len(data)
        return data

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def open(self, timeout: float) -> None:
        self._client.ctx.comm_params.timeout_connect = timeout
        try:
            ok = await self._client.connect()
        except Exception as exc:  # e.g. OSError, UnicodeError (a bad host name), termios.error
            raise NoConnection(f"cannot open {self.name} ({self.endpoint}): "
                               f"{describe(exc)}") from None
        if not ok:
            # pymodbus logs the cause (silenced above) and returns False: ask again
            if self._serial_port is not None:
                cause = serial_open_problem(self._serial_port)
            else:
                cause = await asyncio.to_thread(tcp_open_problem, self.endpoint, timeout)
            raise NoConnection(f"cannot open {self.name} ({self.endpoint}): {cause}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing must never raise
            self._client.close()

    async def read(
        self,
        device_id: int,
        function_code: int,
        address: int,
        count: int,
        timeout: float,
        retries: int,
    ) -> list[int]:
        call = {
            1: self._client.read_coils,
            2: self._client.read_discrete_inputs,
            3: self._client.read_holding_registers,
            4: self._client.read_input_registers,
        }[function_code]
        response = await self._execute(call, timeout, retries, address, count=count,
                                       device_id=device_id)
        if function_code in (1, 2):
            bits = list(getattr(response, "bits", []))
            if len(bits) < count:
                raise BadFrame(f"asked for {count} bits, got {len(bits)}")
            return [1 if b else 0 for b in bits[:count]]
        registers = list(getattr(response, "registers", []))
        if len(registers) != count:
            raise BadFrame(f"asked for {count} registers, got {len(registers)}")
        return registers

    async def write_coil(
        self, device_id: int, address: int, value: bool, timeout: float, retries: int
    ) -> None:
        await self._execute(self._client.write_coil, timeout, retries, address, value,
                            device_id=device_id)

    async def _execute(self, call: Any, timeout: float, retries: int, *args: Any,
                       **kwargs: Any) -> Any:
        ctx = self._client.ctx
        ctx.comm_params.timeout_connect = timeout
        ctx.retries = retries
        self._received = 0
        try:
            response = await call(*args, **kwargs)
        except ConnectionException as exc:
            raise NoConnection(str(exc) or "connection lost") from None
        except ModbusIOException as exc:
            if self._received:
                raise BadFrame(
                    f"{self._received} bytes received but no valid reply ({exc})"
                ) from None
            raise DeviceTimeout(f"no reply within {timeout:g} s x {retries + 1} from device id "
                                f"{kwargs.get('device_id')} at {self.endpoint}") from None
        except Exception as exc:  # whatever the link raised: no link, with its cause
            raise NoConnection(describe(exc)) from None
        if response.isError():
            raise ExceptionReply(int(getattr(response, "exception_code", 0)))
        return response


_SERIAL_HINTS = {
    errno.ENOENT: "no such device: check the adapter and the port name "
                  "(ls -l /dev/serial/by-id/)",
    errno.EACCES: "the service user needs the dialout group (usermod -aG dialout cemsd); "
                  "under systemd the unit's DeviceAllow= must cover this device "
                  "(docs/OPERATIONS.md)",
    errno.EAGAIN: "another process holds the port (find it with: fuser -v PORT); "
                  "one program only may own a serial link",
}
_SERIAL_HINTS[errno.EPERM] = _SERIAL_HINTS[errno.EACCES]
_SERIAL_HINTS[errno.EBUSY] = _SERIAL_HINTS[errno.EAGAIN]


def serial_open_problem(port: str) -> str:
    """Why a serial port does not open: pyserial's message with its errno, and a hint."""
    try:
        serial.Serial(port, exclusive=True).close()  # pymodbus opens it exclusively too
    except (serial.SerialException, OSError) as exc:
        code = getattr(exc, "errno", None)
        hint = _SERIAL_HINTS.get(code) if isinstance(code, int) else None
        text = str(exc)
        return f"{text} (errno {code}; hint: {hint.replace('PORT', port)})" if hint \
            else f"{text} (errno {code})"
    return "the port opened on a second try: a transient failure"


def tcp_open_problem(endpoint: str, timeout: float) -> str:
    """Why a TCP connection does not open: the socket's error with its errno."""
    host, _, port = endpoint.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except TimeoutError:
        return f"no answer within {timeout:g} s (host down, or a firewall drops the packets)"
    except OSError as exc:
        return f"{exc.strerror or exc} (errno {exc.errno})"
    return "the connection opened on a second try: a transient failure"
