"""`cemsd sim`: serve a scenario's instruments until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from cemsd.clock import Clock, FileClock, WallClock
from simulators.scenario import Scenario
from simulators.server import SimulatorServer

log = logging.getLogger(__name__)


class _ShiftedClock(WallClock):
    """The wall clock, read as if the scenario had started when the simulator did."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset


async def run_simulator(scenario: Scenario, clock_file: str | None, start_now: bool) -> None:
    clock: Clock
    if clock_file:
        clock = FileClock(clock_file)
    elif start_now:
        clock = _ShiftedClock(scenario.epoch - time.time())
    else:
        clock = WallClock()
    server = SimulatorServer(scenario, clock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info("simulator ready", extra={"scenario": str(scenario.source),
                                       "devices": len(scenario.devices)})
    try:
        await stop.wait()
    finally:
        await server.stop()
