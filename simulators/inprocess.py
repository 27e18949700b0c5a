"""The simulated instruments answering the daemon's bus owners in the same process, without
sockets or ptys (drivers/inprocess.py; decision 0241): for long simulated spans in tests
and benchmarks. The answers are the servers' answers (`SimulatedBus.answer`); the
failures are the ones the Modbus transports report for them."""

from __future__ import annotations

from cemsd.clock import Clock
from cemsd.errors import BadFrame, DeviceTimeout, ExceptionReply
from cemsd.plan import BusPlan
from drivers.base import Transport
from drivers.inprocess import InProcessTransport
from simulators.instrument import NoReply
from simulators.scenario import Scenario
from simulators.server import SimulatedBus


class DirectBus:
    """One simulated bus as the in-process transport's register source."""

    def __init__(self, bus: SimulatedBus) -> None:
        self.bus = bus

    def read(self, device_id: int, function_code: int, address: int, count: int,
             timeout: float) -> list[int]:
        try:
            outcome = self.bus.answer(device_id, function_code, address, count)
        except NoReply:
            raise DeviceTimeout(f"no reply within {timeout:g} s from "
                                f"{self._where(device_id)}") from None
        if outcome.delay >= timeout:
            raise DeviceTimeout(f"no reply within {timeout:g} s from "
                                f"{self._where(device_id)} (slow)")
        if outcome.exception is not None:
            raise ExceptionReply(int(outcome.exception))
        if outcome.corruption is not None:
            raise BadFrame(f"{outcome.corruption} reply from {self._where(device_id)}")
        assert outcome.registers is not None
        return outcome.registers  # a new list of ints for each read

    def _where(self, device_id: int) -> str:
        """Named only in an error: a read that succeeds builds no text."""
        return f"device id {device_id} on simulated bus {self.bus.bus.name}"

    def write_coil(self, device_id: int, address: int, value: bool) -> None:
        where = self._where(device_id)
        try:
            refused = self.bus.accept_write(device_id, 5, address, [value])
        except NoReply:
            raise DeviceTimeout(f"no reply from {where}") from None
        if refused is not None:
            raise ExceptionReply(int(refused))


class InProcessSimulator:
    """A scenario's instruments on the daemon's clock; `transport` is the daemon's
    `transport_factory`. A bus of the configuration the scenario lacks is an error naming it."""

    def __init__(self, scenario: Scenario, clock: Clock) -> None:
        self.buses = {b.name: SimulatedBus(scenario, b, clock) for b in scenario.buses}
        self.source = scenario.source

    def transport(self, plan: BusPlan) -> Transport:
        bus = self.buses.get(plan.name)
        if bus is None:
            raise KeyError(f"bus {plan.name!r} of the configuration is not in the scenario "
                           f"{self.source} (it has {', '.join(sorted(self.buses))})")
        return InProcessTransport(plan.name, DirectBus(bus))
