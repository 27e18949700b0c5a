"""What the fault-injection tests share: a wall clock the test can set (as an operator or
NTP would), a daemon running on it with its simulators, a small plant, log counting."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cemsd.clock import WallClock
from cemsd.config import Config
from cemsd.daemon import Daemon
from helpers import free_port, write_config, write_scenario
from simulators.scenario import Scenario
from simulators.server import SimulatorServer

START = "2026-06-01T00:00:00+08:00"
HEALTHY_VALUE, OTHER_VALUE = 100.0, 12.0


class SettableWallClock(WallClock):
    """The real WallClock (same sleeps, same step detection) reading the system clock plus
    an offset the test sets, so a test can start just before a minute end and step the
    clock without touching the machine's clock."""

    def __init__(self, now: float) -> None:
        super().__init__()
        self.offset = now - time.time()

    def now(self) -> float:
        return time.time() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


def small_plant(tmp: Path, poll: float, storage: dict[str, Any] | None = None,
                **sections: Any) -> tuple[Config, Scenario]:
    """Two analyzers on one TCP link (an N2O and an O2 one at the same point); `sections`
    are added to the configuration (e.g. metrics)."""
    port = free_port()
    devices = [("n2o-analyzer", 1, HEALTHY_VALUE), ("o2-analyzer", 2, OTHER_VALUE)]
    scenario = write_scenario(tmp, {
        "start": START,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [{"name": n, "bus": "bus", "device_id": i, "profile": "n2o-analyzer-ppm",
                     "signals": {"n2o": {"base": v}}} for n, i, v in devices],
    })
    channels = {
        "n2o-analyzer": {"n2o": {"range": [0, 5000]}},
        "o2-analyzer": {"n2o": {"role": "o2", "unit": "%vol", "range": [0, 25],
                                "point": "outlet"}},
    }
    config = write_config(tmp, {
        "plant": {"id": "faults"},
        "storage": storage or {},
        "points": {"outlet": {}},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.2, "retries": 0}],
        "devices": [{"name": n, "bus": "bus", "device_id": i, "profile": "n2o-analyzer-ppm",
                     "poll_interval": poll, "channels": channels[n]} for n, i, _ in devices],
        **sections,
    })
    return config, scenario


@asynccontextmanager
async def daemon_on(config: Config, scenario: Scenario, clock: WallClock
                    ) -> AsyncIterator[Daemon]:
    """The daemon and its simulators on `clock`, running until the block ends."""
    sim = SimulatorServer(scenario, clock)
    await sim.start()
    daemon = Daemon(config, clock, clock_name="wall (test offset)")
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    try:
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            await task  # raises what start-up raised
        yield daemon
    finally:
        if not task.done():
            daemon.request_stop("test ended")
        await task
        await sim.stop()


async def wall_until(clock: WallClock, t: float) -> None:
    """Wait (as a test, not a clock participant) until the clock shows t."""
    while clock.now() < t:  # noqa: ASYNC110 - the test steps this clock itself
        await asyncio.sleep(0.05)


def messages(records: list[logging.LogRecord], text: str) -> list[logging.LogRecord]:
    return [r for r in records if r.getMessage() == text]


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
