"""Prometheus metrics scraped over HTTP from a daemon on a virtual clock and parsed with the
Prometheus text parser; expected values come from the scenario's timeline.

Simulated time stands still while the test scrapes (the test holds the clock as a
participant), so counts and ages are exact: a healthy device polled every 5 s from t0 has
had 121 polls at t0 + 602.5 s, its last reading is 2.5 s old, ten minutes are closed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from cemsd import __version__
from cemsd.metrics import MetricsServer, read_database_state
from cemsd.outbox import Outbox, OutboxMessage
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import (
    MetricSamples,
    RunningDaemon,
    free_port,
    scrape_metrics,
    write_config,
    write_scenario,
)
from helpers import metric_value as _value

START = "2026-06-01T00:00:00+08:00"
POLL = 5.0


def _plant(tmp: Path) -> tuple[Any, Any]:
    live_port, dead_port = free_port(), free_port()
    scenario = write_scenario(tmp, {
        "start": START,
        "buses": [{"name": "a", "transport": "tcp", "port": live_port},
                  {"name": "b", "transport": "tcp", "port": dead_port}],
        "devices": [
            {"name": "analyzer", "bus": "a", "device_id": 1, "profile": "n2o-analyzer-ppm",
             "signals": {"n2o": {"base": 80.0}}},
            {"name": "spare", "bus": "b", "device_id": 1, "profile": "n2o-analyzer"},
        ],
        "events": [{"device": "spare", "kind": "no_reply", "start": 0}],
    })
    config = write_config(tmp, {
        "plant": {"id": "metrics", "timezone": "Asia/Shanghai"},
        "points": {"outlet": {}},
        "buses": [{"name": n, "transport": "tcp", "host": "127.0.0.1", "port": p,
                   "timeout": 0.2, "retries": 0} for n, p in (("a", live_port), ("b", dead_port))],
        "devices": [
            {"name": "analyzer", "bus": "a", "device_id": 1, "profile": "n2o-analyzer-ppm",
             "poll_interval": POLL},
            {"name": "spare", "bus": "b", "device_id": 1, "profile": "n2o-analyzer",
             "poll_interval": POLL},
        ],
        # No broker listens here: every message stays in the outbox.
        "mqtt": {"host": "127.0.0.1", "port": free_port(), "backoff_max": 0.5},
        "metrics": {"address": "127.0.0.1", "port": free_port()},
    })
    return config, scenario


def _names(samples: MetricSamples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for n, labels in samples if n == name}


def _add_qaqc_records(db: Database, now: float) -> None:
    """Two completed calibrations and an aborted one; an open out-of-control period."""
    common = {"channel": "analyzer.n2o", "kind": "span", "mode": "automatic",
              "reference": 4000.0, "full_scale": 5000.0, "pass_limit_pct": 2.5,
              "control_limit_pct": 5.0, "technician": "test", "created_at": now}
    with db.engine.begin() as conn:
        conn.execute(insert(schema.calibrations), [
            {**common, "started_at": now - 1300, "ended_at": now - 1000, "result": "pass"},
            {**common, "started_at": now - 400, "ended_at": now - 100, "result": "adjust"},
            {**common, "started_at": now - 40, "ended_at": now - 10, "result": "aborted"},
        ])
        conn.execute(insert(schema.control_periods), [
            {"channel": "analyzer.n2o", "kind": "out_of_control", "started_at": now - 100,
             "ended_at": None, "reason": "span drift beyond the control limit", "created_at": now},
            {"channel": "spare.n2o", "kind": "calibration_overdue", "started_at": now - 900,
             "ended_at": now - 300, "reason": "test", "created_at": now},
        ])


def _count_minutes(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.minutes)).scalar_one())


def _count_head_messages(db: Database) -> int:
    """The retained chain head, published when the head moves (the start's audit record),
    each after the `chain.links` message with the links it adds."""
    o = schema.mqtt_outbox.c
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(
            o.topic.like("%/chain/head") | o.topic.like("%/events/chain.links"))).scalar_one())


async def test_metrics_match_the_simulated_plant(tmp_path: Path) -> None:
    config, scenario = _plant(tmp_path)
    t0 = scenario.epoch
    first, second = t0 + 600 + 2.5, t0 + 900 + 2.5  # between polls: no poll in progress
    async with RunningDaemon(config, scenario, until=t0 + 1200) as run:
        server = next(c for c in run.daemon.components if isinstance(c, MetricsServer))
        assert server.port == config.metrics.port
        store = run.daemon.store
        assert store is not None
        with run.clock.participant():
            await run.clock.sleep_until(first)
            await run.closed_through(first)
            samples = await scrape_metrics(server.port)
            polls = (first - t0) // POLL + 1
            assert _value(samples, "cemsd_device_up", device="analyzer") == 1
            assert _value(samples, "cemsd_device_up", device="spare") == 0
            assert _value(samples, "cemsd_modbus_requests_total", device="analyzer",
                          result="ok") == polls
            assert _value(samples, "cemsd_modbus_request_duration_seconds_count",
                          device="analyzer") == polls
            assert _value(samples, "cemsd_modbus_requests_total", device="spare",
                          result="timeout") >= 1
            assert ("cemsd_modbus_requests_total",
                    frozenset({("device", "spare"), ("result", "ok")})) not in samples
            # The last poll was at t0 + 600; the silent device never gave a reading.
            assert _value(samples, "cemsd_last_reading_age_seconds", channel="analyzer.n2o") == 2.5
            assert _names(samples, "cemsd_last_reading_age_seconds", "channel") == {
                "analyzer.n2o", "analyzer.status"}
            assert _value(samples, "cemsd_current_hour_valid_minute_periods",
                          channel="analyzer.n2o") == 10
            assert _value(samples, "cemsd_current_hour_valid_minute_periods",
                          channel="spare.n2o") == 0
            # Every closed minute is one MQTT message, each chain head one, and the channel
            # list at start one; none sent: there is no broker.
            minutes = await store.call(_count_minutes, store.db)
            heads = await store.call(_count_head_messages, store.db)
            unsent = await store.call(Outbox(store.db).unsent_count)
            assert _value(samples, "cemsd_outbox_messages") == unsent == minutes + heads + 1
            assert minutes > 0
            assert _value(samples, "cemsd_mqtt_connected") == 0
            assert _value(samples, "cemsd_database_write_failing") == 0
            assert _value(samples, "cemsd_readings_dropped_total") == 0
            assert _value(samples, "cemsd_readings_queued") >= 0  # exposed; the disk test fills it
            assert _value(samples, "cemsd_bypass_active") == 0
            assert _value(samples, "cemsd_build_info", version=__version__) == 1
            assert _value(samples, "cemsd_calibration_state", channel="analyzer.n2o",
                          state="in_control") == 1
            assert "cemsd_calibration_age_seconds" not in {n for n, _ in samples}

            await store.call(_add_qaqc_records, store.db, first)
            await run.daemon.publish_event("bypass", {"active": True, "valve": "bypass"})
            samples = await scrape_metrics(server.port)
            assert _value(samples, "cemsd_calibration_age_seconds", channel="analyzer.n2o") == 100
            states = {s: _value(samples, "cemsd_calibration_state", channel="analyzer.n2o",
                                state=s)
                      for s in ("out_of_control", "calibration_overdue", "in_control")}
            assert states == {"out_of_control": 1, "calibration_overdue": 0, "in_control": 0}
            assert _value(samples, "cemsd_bypass_active") == 1
            assert _value(samples, "cemsd_outbox_messages") == unsent + 1  # the bypass event

            await run.clock.sleep_until(second)
            await run.closed_through(second)
            samples = await scrape_metrics(server.port)
            assert _value(samples, "cemsd_modbus_requests_total", device="analyzer",
                          result="ok") == (second - t0) // POLL + 1
            assert _value(samples, "cemsd_current_hour_valid_minute_periods",
                          channel="analyzer.n2o") == 15
            assert _value(samples, "cemsd_calibration_age_seconds",
                          channel="analyzer.n2o") == 100 + (second - first)
        await run.finished()


async def test_taken_port_does_not_stop_the_daemon(tmp_path: Path) -> None:
    config, scenario = _plant(tmp_path)
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", config.metrics.port)
    try:
        async with RunningDaemon(config, scenario, until=scenario.epoch + 120) as run:
            await run.finished()
    finally:
        blocker.close()
        await blocker.wait_closed()
    server = next(c for c in run.daemon.components if isinstance(c, MetricsServer))
    assert server.port is None
    assert run.daemon.exit_reason == "reached --until"


def test_database_state_on_both_databases(db: Database) -> None:
    now = datetime(2026, 6, 1, 3, 30, tzinfo=UTC).timestamp()
    hour = now - 1800
    minute = {"value": 1.0, "minimum": 1.0, "maximum": 1.0, "n_valid": 12, "n_expected": 12,
              "reason": None, "unit": "ppm", "created_at": now, "revision": 0}
    db.insert_aggregates(schema.minutes, [
        {**minute, "channel": "analyzer.n2o", "ts": hour - 60, "flag": "N"},  # last hour
        {**minute, "channel": "analyzer.n2o", "ts": hour, "flag": "N"},
        {**minute, "channel": "analyzer.n2o", "ts": hour + 60, "flag": "B"},
        {**minute, "channel": "analyzer.n2o", "ts": hour + 120, "flag": "N"},
        {**minute, "channel": "analyzer.n2o", "ts": hour + 120, "flag": "N", "revision": 1},
    ])
    _add_qaqc_records(db, now)
    Outbox(db).append([OutboxMessage("t", "{}")] * 3, now)
    state = read_database_state(db, hour, now)
    assert state.valid_minutes == {"analyzer.n2o": 2}  # a corrected minute counts once
    assert state.last_calibration == {"analyzer.n2o": now - 100}
    assert state.open_control_periods == {"analyzer.n2o": {"out_of_control"}}
    assert state.outbox_messages == 3
