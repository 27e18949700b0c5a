"""The closer aggregates a minute from the readings the pipeline handed to the writer,
after flushing it, instead of reading them back (0240), and the in-process transport
(0241) answers as the simulators' servers do. The minutes closed live must equal the
minutes the read-back path (recovery after a crash) computes from the stored readings."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cemsd.aggregate import aggregate, aggregate_many
from cemsd.clock import VirtualClock
from cemsd.closer import Closer
from cemsd.config import Config
from cemsd.daemon import Daemon
from cemsd.flags import CODE, Flag
from cemsd.periods import MINUTE
from cemsd.pipeline import HandedReadings, Pipeline
from cemsd.plan import compile_plan
from cemsd.readings import Reading
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.store.writer import Store
from helpers import analyzer_and_flow_plant, database, write_config, write_scenario
from simulators.inprocess import InProcessSimulator
from simulators.scenario import Scenario

START = "2026-06-01T00:00:00+08:00"
MINUTES = 20
PERIOD_FIELDS = ("channel", "ts", "value", "minimum", "maximum", "n_valid", "n_expected",
                 "flag", "reason", "unit")


def _plant(tmp: Path) -> tuple[Config, Scenario]:
    config = write_config(tmp, analyzer_and_flow_plant("memory", 1))
    scenario = write_scenario(tmp, {
        "start": START, "seed": 3,
        "buses": [{"name": "bus", "transport": "tcp", "port": 1}],
        "devices": [
            {"name": "analyzer", "bus": "bus", "device_id": 1, "profile": "n2o-analyzer-percent",
             "signals": {"n2o": {"base": 24.0, "amplitude": 1.0, "noise": 0.05}}},
            {"name": "flow", "bus": "bus", "device_id": 2, "profile": "stack-flow-meter",
             "signals": {"velocity": {"base": 14.0, "noise": 0.1}}},
        ],
        "events": [  # every kind of failure the transport reports, and a status bit
            {"device": "analyzer", "kind": "no_reply", "start": "3m", "end": "5m30s"},
            {"device": "analyzer", "kind": "exception", "code": 2, "start": "8m", "end": "9m"},
            {"device": "flow", "kind": "garbage", "start": "11m", "end": "11m30s"},
            {"device": "analyzer", "kind": "status", "bits": [2], "start": "14m", "end": "16m"},
        ],
    })
    return config, scenario


class _Capture:
    """The database as the read-back closer sees it, keeping the periods it would insert."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.minutes: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def insert_aggregates(self, table: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if table is schema.minutes:
            self.minutes.extend(rows)
        return []


def _key(row: Any) -> tuple[Any, ...]:
    values = dict(row) if isinstance(row, dict) else row._asdict()
    ts = values["ts"]
    values["ts"] = ts if isinstance(ts, float) else ts.timestamp()
    return tuple(values[f] for f in PERIOD_FIELDS)


async def _read_back(config: Config, t0: float, t1: float) -> list[dict[str, Any]]:
    """Every minute of [t0, t1) as the read-back path computes it from stored readings."""
    store = Store(database(config))
    capture = _Capture(store.db)
    store.db = capture  # type: ignore[assignment]
    closer = Closer(config, compile_plan(config), store, VirtualClock(t1))
    closer.run_started, closer.next_minute, closer.next_hour = t0, t0, t0
    try:
        await closer.close_through(t1)
    finally:
        await store.close()
    return capture.minutes


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Scenario, list[float]]:
    config, scenario = _plant(tmp_path_factory.mktemp("memory"))
    read_back: list[float] = []
    original = Database.readings_between

    def counted(db: Database, t0: float, t1: float) -> list[Any]:
        read_back.append(t0)
        return original(db, t0, t1)

    async def run() -> None:
        clock = VirtualClock(scenario.epoch)
        sim = InProcessSimulator(scenario, clock)
        daemon = Daemon(config, clock, clock_name="virtual",
                        until=scenario.epoch + MINUTES * MINUTE, transport_factory=sim.transport)
        await daemon.run()

    Database.readings_between = counted  # type: ignore[method-assign]
    try:
        asyncio.run(run())
    finally:
        Database.readings_between = original  # type: ignore[method-assign]
    return config, scenario, read_back


def test_live_minutes_equal_the_minutes_read_back(live_run: tuple[Config, Scenario, list[float]]
                                                 ) -> None:
    config, scenario, read_back = live_run
    t0, t1 = scenario.epoch, scenario.epoch + MINUTES * MINUTE
    db = database(config)
    stored = db.aggregates_between(schema.minutes, t0, t1)
    db.close()
    recomputed = asyncio.run(_read_back(config, t0, t1))
    assert len(stored) == MINUTES * len({m.channel for m in stored})
    assert sorted(map(_key, stored)) == sorted(map(_key, recomputed))
    # only the minute the run started in was read back; the others came from memory
    assert read_back == [t0]


def test_in_process_failures_flag_as_over_a_link(live_run: tuple[Config, Scenario, list[float]]
                                                ) -> None:
    config, scenario, _ = live_run
    db = database(config)
    minutes = {(m.channel, round(m.ts.timestamp() - scenario.epoch)): m
               for m in db.aggregates_between(schema.minutes, 0, 2e9)}
    db.close()
    silent, refused = minutes[("analyzer.n2o", 4 * 60)], minutes[("analyzer.n2o", 8 * 60)]
    assert (silent.flag, silent.n_valid) == ("B", 0) and "no reply" in silent.reason
    assert (refused.flag, refused.n_valid) == ("D", 0) and "illegal data address" in refused.reason
    garbage = minutes[("flow.velocity", 11 * 60)]
    # garbled replies for half the minute, then the device's back-off: too few valid
    assert garbage.flag == "B" and 0 < garbage.n_valid < 6, garbage
    assert "unreadable reply: garbage reply" in garbage.reason, garbage
    assert minutes[("analyzer.n2o", 14 * 60)].flag == "C"
    assert minutes[("analyzer.n2o", 17 * 60)].flag == "N"


def test_readings_the_writer_dropped_are_read_back(tmp_path: Path) -> None:
    """Past its bound the writer drops the oldest readings while the closer's copy still
    holds them: the minute is read back and counts only what was stored."""
    config, scenario = _plant(tmp_path)
    t0 = scenario.epoch + 10 * MINUTE

    async def run() -> list[Any]:
        db = Database(config.storage.database_url)
        db.upgrade()
        store = Store(db, max_pending=8)
        pipeline = Pipeline(store)
        pipeline.handed = HandedReadings(limit=100)  # only the writer drops
        closer = Closer(config, compile_plan(config), store, VirtualClock(t0 + MINUTE),
                        handed=pipeline.handed)
        closer.run_started = closer.next_minute = closer.next_hour = t0
        closer.memory_from = t0  # as if the run had started earlier
        pipeline.ingest([Reading("analyzer.n2o", t0 + 5 * i, 24.0, Flag.N) for i in range(12)])
        assert store.dropped_readings == 4
        await closer.close_through(t0 + MINUTE)
        await store.close()
        return db.aggregates_between(schema.minutes, t0, t0 + MINUTE, ["analyzer.n2o"])

    [minute] = asyncio.run(run())
    assert (minute.n_valid, minute.flag) == (8, "B") and "4 never received" in minute.reason


def test_the_copy_of_handed_readings_is_bounded() -> None:
    handed = HandedReadings(limit=5)
    handed.extend([Reading("c", float(t), 1.0, Flag.N) for t in range(8)])
    assert len(handed) == 5 and handed.lost_through == 2.0
    assert [r.ts for r in handed.before(math.inf)] == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_one_kernel_call_for_many_series_equals_one_call_each() -> None:
    rng = np.random.default_rng(5)
    flags = [CODE[f] for f in (Flag.N, Flag.N, Flag.N, Flag.D, Flag.B, Flag.C)]
    series = []
    for size in (0, 40, 7, 120):  # a series without readings too
        bucket = np.sort(rng.integers(0, 10, size))
        values = rng.normal(5.0, 1.0, size)
        values[rng.random(size) < 0.1] = np.nan
        codes = rng.choice(flags, size)
        causes = [None if c == CODE[Flag.N] else f"cause {c % 2}" for c in codes]
        series.append((bucket, values, codes, causes))
    together = aggregate_many(series, 10, 12, 9, "mean")
    for (bucket, values, codes, causes), many in zip(series, together, strict=True):
        one = aggregate(bucket, values, codes, 10, 12, 9, how="mean", causes=causes)
        for field in ("value", "minimum", "maximum", "n_valid", "n_present", "flag", "counts"):
            np.testing.assert_array_equal(getattr(many, field), getattr(one, field))
        assert many.causes == one.causes
        assert [many.reason(i) for i in range(10)] == [one.reason(i) for i in range(10)]
