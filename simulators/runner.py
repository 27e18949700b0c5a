"""`cemsd sim`: serve a scenario's instruments until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

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


async def run_simulator(scenario: Scenario, clock_file: str | None, start_now: bool,
                        ready_file: str | None = None) -> None:
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
    if ready_file:  # whoever started us knows it is us serving, not whoever held a port
        _say_ready(Path(ready_file))
    try:
        await stop.wait()
    finally:
        await server.stop()


def _say_ready(path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(str(os.getpid()))
    partial.replace(path)  # whole or absent: the reader never sees half a pid
