"""Closing a minute overlaps the next minute's polling on the virtual clock (decision 0242).

The clock: while a participant works `overlapping(as_of, bound)`, time runs on to at most
`bound` and the participant's own now() reads `as_of`. The daemon: a run that closes its
minutes overlapping polling stores the same minutes, hours, checks and hash chain as
another such run and as a run with overlapping turned off (time held still while closing).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cemsd import chain
from cemsd.clock import VirtualClock
from cemsd.config import Config
from cemsd.records import calibrations, control_periods
from cemsd.store import schema
from helpers import calibration_plant, database, run_virtual
from simulators.scenario import Scenario

START = "2026-06-01T00:00:00+08:00"


# --- the clock --------------------------------------------------------------------------------


async def _overlap_then_poll(clock: VirtualClock) -> tuple[list[float], list[float]]:
    """A 'closer' works overlapping from t=60 (bound 120) while a 'poller' sleeps 10 s steps.
    Returns the closer's now() inside the block and the poller's wake-up times until the
    closer is done."""
    closer_seen: list[float] = []
    polled: list[float] = []
    released = asyncio.Event()

    async def poller() -> None:
        with clock.participant():
            t = clock.now()
            while not released.is_set():
                t += 10
                await clock.sleep_until(t)
                if not released.is_set():
                    polled.append(clock.now())

    async def closer() -> None:
        with clock.participant():
            await clock.sleep_until(60)
            with clock.overlapping(clock.now(), 120):
                for _ in range(50):  # work that yields to the loop, as database calls do
                    await asyncio.sleep(0)
                    closer_seen.append(clock.now())
            released.set()

    await asyncio.gather(poller(), closer())
    return closer_seen, polled


def test_time_runs_on_to_the_bound_while_a_close_overlaps() -> None:
    seen, polled = asyncio.run(_overlap_then_poll(VirtualClock(0.0, overlap=True)))
    assert set(seen) == {60.0}  # the closer's own clock stays at the minute's end
    assert max(polled) == 120.0  # the poller ran on, and no further than the bound


def test_without_overlap_time_stands_still_while_closing() -> None:
    seen, polled = asyncio.run(_overlap_then_poll(VirtualClock(0.0, overlap=False)))
    assert set(seen) == {60.0}
    assert max(polled) == 60.0  # the poller waited for the close


def test_an_overlapping_task_may_wait_on_the_clock() -> None:
    """A wait inside the block (a listener sleeping) must not count the task twice."""
    clock = VirtualClock(0.0, overlap=True)

    async def main() -> float:
        with clock.participant():
            with clock.overlapping(0.0, 30.0):
                await clock.sleep_until(20.0)
            assert clock.participants_active == 1
            await clock.sleep_until(40.0)
        return clock.now()

    assert asyncio.run(main()) == 40.0


# --- the daemon -------------------------------------------------------------------------------


class RecordingClock(VirtualClock):
    """A virtual clock that records how far time ran on during each overlapping close."""

    def __init__(self, start: float, overlap: bool) -> None:
        super().__init__(start, overlap=overlap)
        self.ran_on: list[float] = []

    @contextmanager
    def overlapping(self, as_of: float, bound: float) -> Iterator[None]:
        with super().overlapping(as_of, bound):
            yield
        self.ran_on.append(self._now - as_of)


def _plant(tmp: Path) -> tuple[Config, Scenario]:
    """A plant with scheduled zero and span checks (QA/QC windows, results, the calibration
    state the minute listeners read, an overdue check each hour), every hour sealed at
    once, polled every 5 s."""
    return calibration_plant(
        tmp, START, {"mode": "automatic", "zero_at": "00:30", "span_at": "01:10",
                     "stabilisation_s": 120, "purge_s": 60, "readings": 6,
                     "span_reference": 4000.0, "interval_hours": 1},
        storage={"finalise_after_hours": 0})


def _run(config: Config, scenario: Scenario, overlap: bool
         ) -> tuple[dict[str, Any], RecordingClock]:
    """Two hours and five minutes from an empty state directory (the same path each run:
    the audit log, sealed too, records the configuration's path)."""
    shutil.rmtree(config.storage.state_dir, ignore_errors=True)
    clock = RecordingClock(scenario.epoch, overlap)
    asyncio.run(run_virtual(config, scenario, scenario.epoch + 2 * 3600 + 300, clock=clock))
    db = database(config)
    try:
        def periods(table: Any) -> list[tuple[Any, ...]]:
            rows = db.aggregates_between(table, 0, 2e9, None, current=False)
            return [(r.channel, r.ts, r.value, r.minimum, r.maximum, r.n_valid, r.flag,
                     r.reason, r.created_at) for r in rows]

        link = chain.head(db)
        return {
            "minutes": periods(schema.minutes),
            "hours": periods(schema.hours),
            "calibrations": [(c.kind, c.started_at, c.result, c.measured)
                             for c in calibrations(db)],
            "periods": [(p.channel, p.kind, p.started_at, p.ended_at, p.created_at)
                        for p in control_periods(db)],
            "chain": (link.seq, link.chain_hash) if link is not None else None,
        }, clock
    finally:
        db.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict[str, Any], RecordingClock]]:
    config, scenario = _plant(tmp_path_factory.mktemp("overlap"))
    return [_run(config, scenario, overlap) for overlap in (True, True, False)]


def test_the_runs_closed_and_sealed_something(runs: list) -> None:
    result, clock = runs[0]
    assert len(result["minutes"]) > 2 * 60 and len(result["hours"]) >= 2
    assert [c[0] for c in result["calibrations"]] == ["zero", "span"]
    assert result["chain"] is not None and result["chain"][0] > 0
    # time did run on during closes in the overlapped runs, never in the serial one
    assert len(clock.ran_on) >= 2 * 60 and max(clock.ran_on) > 0
    assert max(clock.ran_on) <= 60.0
    assert set(runs[2][1].ran_on) == {0.0}


def test_overlapped_runs_are_identical(runs: list) -> None:
    assert runs[0][0] == runs[1][0]


def test_overlapped_run_equals_the_serialised_one(runs: list) -> None:
    assert runs[0][0] == runs[2][0]
