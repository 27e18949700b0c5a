"""A transport without a link: requests go to a register source in this process.

For simulations only (tests and benchmarks; decision 0241): a configuration cannot select
it, the daemon gets it as its `transport_factory`. The bus owner's path is unchanged:
the registers a read returns are decoded, validated and stored exactly as those of a
Modbus reply. What it leaves out is the wire: no PDU is framed or parsed, so a corrupted
reply is reported by the source as BadFrame instead of being found by pymodbus, and a
failed request costs no wall time (the virtual clock charges it, as for a real link).
"""

from __future__ import annotations

from typing import Protocol

from cemsd.errors import BadFrame, DeviceTimeout
from drivers.base import Transport


class RegisterSource(Protocol):
    """What answers the requests: registers, or DeviceTimeout / BadFrame / ExceptionReply."""

    def read(self, device_id: int, function_code: int, address: int, count: int,
             timeout: float) -> list[int]: ...

    def write_coil(self, device_id: int, address: int, value: bool) -> None: ...


class InProcessTransport(Transport):
    def __init__(self, name: str, source: RegisterSource) -> None:
        self.name = name
        self.source = source
        self._open = False

    @property
    def connected(self) -> bool:
        return self._open

    async def open(self, timeout: float) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def read(self, device_id: int, function_code: int, address: int, count: int,
                   timeout: float, retries: int) -> list[int]:
        attempts = retries + 1  # as pymodbus, a request without a usable reply is repeated
        while True:
            attempts -= 1
            try:
                return self.source.read(device_id, function_code, address, count, timeout)
            except (DeviceTimeout, BadFrame):
                if attempts == 0:
                    raise

    async def write_coil(self, device_id: int, address: int, value: bool, timeout: float,
                         retries: int) -> None:
        self.source.write_coil(device_id, address, value)
