"""The driver contract: what a bus owner needs from a transport (python-can's BusABC idea).

A transport is one physical link (a TCP connection or a serial port) with any number of
devices behind it. It carries single requests; it does not schedule, retry across cycles,
decode values or store anything. Failures are typed, so validity can say why:

- DeviceTimeout: no reply after the attempts        -> flag B
- BadFrame:      bytes came back but not a reply    -> flag B
- NoConnection:  the link could not be opened/lost  -> flag B
- ExceptionReply: the device refused the request    -> flag D
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Transport(ABC):
    """One link, one owner. Implementations: ModbusTransport, VirtualTransport."""

    name: str

    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @abstractmethod
    async def open(self, timeout: float) -> None:
        """Open the link; raise NoConnection on failure."""

    @abstractmethod
    async def close(self) -> None:
        """Close the link. Idempotent and never raises."""

    @abstractmethod
    async def read(
        self,
        device_id: int,
        function_code: int,
        address: int,
        count: int,
        timeout: float,
        retries: int,
    ) -> list[int]:
        """Read `count` registers (or bits, as 0/1) starting at `address`."""

    @abstractmethod
    async def write_coil(
        self, device_id: int, address: int, value: bool, timeout: float, retries: int
    ) -> None:
        """Switch one coil (calibration valves)."""

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
