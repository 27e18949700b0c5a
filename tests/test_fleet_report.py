"""The central report equals the edge's (issue 16): a real edge daemon on a virtual clock
publishes to a real mosquitto, the collector stores into a real PostgreSQL, and the report
of the day taken from the fleet database (`cemsd collect report`) is the edge's report,
bypass event included; the central verification bundle carries the edge's chain and
passes `cemsd verify-bundle`, and a central hour changed in PostgreSQL fails it."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from reduction_line import reduction_line
from sqlalchemy import select, update

from cemsd import records
from cemsd.chain import head as chain_head
from cemsd.chainhead import head_pin
from cemsd.cli import main
from cemsd.fleet import schema as fleet
from cemsd.fleet.api import create_app
from cemsd.fleet.messages import Rejected, parse
from cemsd.fleet.reports import CentralReportError, central_report, edge_copy
from cemsd.fleet.store import FleetStore
from cemsd.fleet.tokens import create_token
from cemsd.qaqc.calibration import CONTROL_PERIOD_EVENT
from cemsd.reduction.bundle import _table_csv as table_csv
from cemsd.reduction.bundle import read_bundle
from cemsd.reduction.report import build_report, to_csv
from cemsd.settings.api import ApiConfig
from cemsd.store import schema
from cemsd.store.database import Database
from fleet_helpers import (
    TZ,
    central_events,
    collector_settings,
    edge_events_sent,
    running_collector,
    until_counted,
)
from helpers import RunningDaemon, database
from mqtt_helpers import Mosquitto, wait_until

pytestmark = pytest.mark.postgres

DAY = 24 * 3600


def _cemsd(*args: str) -> Result:
    """A command in this process: one at a time, never beside another CliRunner."""
    return CliRunner().invoke(main, list(args))


async def test_the_central_report_equals_the_edge_report(broker: Mosquitto, pg_url: str,
                                                         tmp_path: Path) -> None:
    """Five hours of a line whose outlet analyzer is silent 03:00-03:30 (the hour is
    substituted) and whose bypass valve is open 00:59:30-01:30, with the day's production
    imported: the central report of the day, JSON for JSON, is the edge's; the central
    bundle verifies against the edge's chain, and fails it once a central hour changed."""
    config, scenario = reduction_line(
        tmp_path, [{"device": "outlet-analyzer", "kind": "no_reply", "start": "3h",
                    "end": "3h30m"},
                   # opened at 00:59:30, stored after 00:00-01:00 closed (the debounce)
                   {"device": "plant", "kind": "set", "channel": "bypass_position",
                    "value": 100.0, "start": "59m30s", "end": "1h30m"}],
        storage={"state_dir": str(tmp_path / "state"), "finalise_after_hours": 0},
        mqtt={"host": "127.0.0.1", "port": broker.port, "backoff_initial": 0.05,
              "backoff_max": 0.5, "batch_size": 200})
    (tmp_path / "production.csv").write_text("date,tonnes\n2026-06-01,420\n")
    edge = database(config)
    edge.upgrade()
    edge.close()
    imported = _cemsd("production", "import", "--config", str(config.source),
                      str(tmp_path / "production.csv"))
    assert imported.exit_code == 0, imported.output
    t0 = scenario.epoch
    kinds = ("substitution", "production", "bypass", "bypass.minutes")
    async with running_collector(collector_settings(pg_url, broker.port)) as collector:
        async with RunningDaemon(config, scenario, until=t0 + 5 * 3600 + 60) as run:
            await run.finished()
        edge = database(config)
        hours = len(edge.fetch(select(schema.hours)))
        substituted = edge.fetch(select(schema.substitutions))
        edge_report = build_report(edge, config, t0, t0 + DAY, t0 + DAY)
        edge_head = head_pin(chain_head(edge)).as_json()
        edge.close()
        await until_counted(collector, "hours", hours)
        sent = edge_events_sent(config, kinds)
        store = FleetStore(pg_url)
        try:
            await wait_until(lambda: central_events(store, kinds) == sent, 20, "events")
        finally:
            store.close()
    assert [s.channel for s in substituted] == ["outlet.n2o_kg_h"]
    assert edge_report["production"]["total_t"] == 420
    assert edge_report["hours"][3]["outlet_method"] == substituted[0].method
    [event] = edge_report["bypass_events"]
    # ~30.5 measured minutes; a reply lost to a loaded machine may turn one into an estimate
    assert "measured_inlet: " in event["method"]
    by_hour = [h["bypass_kg"] for h in edge_report["hours"][:2]]
    assert all(kg > 0 for kg in by_hour)
    assert sum(by_hour) == pytest.approx(event["n2o_kg"], rel=1e-9)

    collector_file = tmp_path / "collector.toml"
    collector_file.write_text(f'[collector]\ndatabase_url = "{pg_url}"\n')
    asked = ("--config", str(collector_file), "--plant-config", str(config.source),
             "--from", "2026-06-01", "--to", "2026-06-02")
    done = _cemsd("collect", "report", *asked)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == edge_report
    # the fleet API's plant report: the same, from the collector's [collector.plants]
    store = FleetStore(pg_url)
    app = create_app(store, ApiConfig(), TZ, plant_configs={"aa": config.source})
    token = create_token(store.db, "registry", ["aa"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        day = {"from": "2026-06-01", "to": "2026-06-02"}
        assert (await client.get("/v1/plants/aa/reports", params=day)).json() == edge_report
        as_csv = await client.get("/v1/plants/aa/reports", params={**day, "format": "csv"})
        assert as_csv.text == to_csv(edge_report)
    store.close()

    bundle = tmp_path / "central.tar.gz"
    made = _cemsd("collect", "report", *asked, "--bundle", str(bundle))
    assert made.exit_code == 0, made.output
    verified = _cemsd("verify-bundle", str(bundle))
    assert verified.exit_code == 0, verified.output
    # the edge's links: the hours of the day checked against them, minutes where carried
    assert re.search(r"checked against their links: ([1-9]\d*) hours, 1 substitutions, "
                     r"1 production_days, 0 audit_log \(([1-9]\d*) minutes",
                     verified.output), verified.output
    assert "hours without their minutes in this bundle (made by the collector)" in \
        verified.output
    assert json.loads(read_bundle(bundle).files["chain/head.json"]) == edge_head
    assert f"chain/head.json head {edge_head['seq']}: matches" in verified.output
    assert "Made by the collector" in read_bundle(bundle).text("README.md")

    _tamper(pg_url, "inlet.n2o_kg_h", t0 + 2 * 3600)
    tampered = tmp_path / "tampered.tar.gz"
    made = _cemsd("collect", "report", *asked, "--bundle", str(tampered))
    assert made.exit_code == 0, made.output
    verified = _cemsd("verify-bundle", str(tampered))
    assert verified.exit_code != 0
    assert re.search(r"inlet\.n2o_kg_h 2026-05-31T18:00:00\+00:00\): changed, does not "
                     r"hash to chain link \d+", verified.output), verified.output


def _tamper(url: str, channel: str, hour: float) -> None:
    """A central hour changed in PostgreSQL, behind the collector's back."""
    store = FleetStore(url)
    try:
        c = fleet.hours.c
        with store.db.transaction() as conn:
            changed = conn.execute(update(fleet.hours).where(
                c.channel == channel, c.ts == datetime.fromtimestamp(hour, UTC))
                .values(value=c.value * 1.01)).rowcount
        assert changed == 1
    finally:
        store.close()


def test_a_bypass_event_open_or_without_its_minutes_is_refused_naming_it(
        pg_url: str, tmp_path: Path) -> None:
    """An open event's mass grows at the edge; a closed one is recomputed from the minutes
    of its hours: without them the central report is refused, naming the event and hour."""
    config, scenario = reduction_line(tmp_path, [])
    store = FleetStore(pg_url)
    try:
        store.upgrade()
        at = scenario.epoch + 3600
        event = {"active": True, "id": 4, "unit": "main", "started_at": at}
        opened = {"id": 7, "plant": "aa", "kind": "bypass", "at": "2026-05-31T17:00:00Z",
                  "data": event}
        store.ingest([parse("cemsd/aa/events/bypass", json.dumps(opened).encode())],
                     datetime.fromtimestamp(at, UTC))
        with pytest.raises(CentralReportError, match=r"bypass event 4 .* still open"):
            central_report(store, config, scenario.epoch, scenario.epoch + DAY, at)
        closed = {**opened, "id": 8, "data": {**event, "active": False,
                                              "ended_at": at + 1800, "n2o_kg": 1.0}}
        store.ingest([parse("cemsd/aa/events/bypass", json.dumps(closed).encode())],
                     datetime.fromtimestamp(at, UTC))
        with pytest.raises(CentralReportError, match=r"bypass event 4 .* the minutes of the "
                           r"hour 2026-05-31 17:00 UTC \(bypass.minutes\) have not been"):
            central_report(store, config, scenario.epoch, scenario.epoch + DAY, at)
        with pytest.raises(CentralReportError, match="'other': nothing received"):
            central_report(store, config.model_copy(update={
                "plant": config.plant.model_copy(update={"id": "other"})}),
                scenario.epoch, scenario.epoch + DAY, at)
    finally:
        store.close()


def test_the_central_copy_holds_the_edges_qaqc_records(pg_url: str, tmp_path: Path) -> None:
    """Calibrations, a maintenance window and control periods, published as the daemon
    publishes them (a window's start then its close; a control period opened then
    closed), are in the central copy as the edge stores them: the bundle's QA/QC files
    are the edge's (rebuilt as the fleet API's lists are: edge_tables.merged_rows)."""
    config, scenario = reduction_line(tmp_path, [])
    edge = database(config)
    edge.upgrade()
    t = scenario.epoch + 3600.125
    published: list[tuple[str, dict[str, object]]] = []
    calibration = {
        "channel": "inlet-analyzer.n2o", "kind": "span", "mode": "remote", "started_at": t,
        "ended_at": t + 300.5, "reference": 20.0, "measured": 20.9, "full_scale": 30.0,
        "drift_pct_fs": 3.0, "result": "out_of_control", "pass_limit_pct": 2.0,
        "control_limit_pct": 2.5, "n_readings": 12, "stabilisation_s": 120.0,
        "technician": "Li", "note": None, "created_at": t + 301.0}
    calibration["id"] = records.insert_calibration(edge, calibration)
    published.append(("calibration", calibration))
    window = {"device": "outlet-flow", "channel": None, "started_at": t, "ended_at": None,
              "planned_end_at": t + 3600, "reason": "probe cleaning", "technician": "Li",
              "created_at": t}
    window["id"] = records.insert_maintenance(edge, window)
    published.append(("maintenance", dict(window)))
    records.end_maintenance(edge, window["id"], t + 1800)
    published.append(("maintenance", {**{k: window[k] for k in (
        "id", "device", "channel", "started_at", "planned_end_at", "reason")},
        "ended_at": t + 1800}))
    # the close of a window whose start never came: no row (its start is unknown)
    published.append(("maintenance", {"id": window["id"] + 1, "ended_at": t + 1800}))
    period = records.insert_control_period(edge, {
        "channel": "inlet-analyzer.n2o", "kind": "out_of_control", "started_at": t + 300.5,
        "ended_at": None, "opened_by": calibration["id"], "closed_by": None,
        "reason": "out of control", "created_at": t + 301.0})
    published.append(_control_period(edge, period))  # opened
    records.close_control_periods(edge, "inlet-analyzer.n2o", ("out_of_control",), t + 7200,
                                  calibration["id"])
    published.append(_control_period(edge, period))  # closed by a passing check
    store = FleetStore(pg_url)
    try:
        store.upgrade()
        store.ingest([parse(f"cemsd/aa/events/{kind}", json.dumps({
            "id": n, "plant": "aa", "kind": kind, "at": "2026-05-31T17:00:00Z",
            "data": data}).encode()) for n, (kind, data) in enumerate(published, start=1)],
            datetime.fromtimestamp(t, UTC))
        t0, tz = scenario.epoch, config.plant.tz
        with edge_copy(store, config, t0, t0 + DAY) as copy:
            for table in (schema.calibrations, schema.maintenance, schema.control_periods):
                central = table_csv(copy, table, t0, t0 + DAY, tz)
                assert central == table_csv(edge, table, t0, t0 + DAY, tz)
                assert len(central.splitlines()) == 2, central  # the header and the row
    finally:
        store.close()
        edge.close()


def _control_period(edge: Database, period: int) -> tuple[str, dict[str, object]]:
    """The event the daemon publishes (qaqc.calibration.publish_control_periods)."""
    rows = records.control_periods_by_id(edge, [period])
    return CONTROL_PERIOD_EVENT, {"rows": [records.row_document(r) for r in rows]}


def test_bypass_minutes_are_kept_once_and_a_differing_resend_is_a_conflict(
        pg_url: str) -> None:
    """A re-sent `bypass.minutes` changes nothing; a minute that differs from the one kept
    is a conflict (the first stays); a minute without its count is refused, named."""
    minute = {"id": 11, "channel": "inlet.n2o_kg_h", "ts": "2026-05-31T17:01:00Z",
              "value": 5.5, "minimum": 5.4, "maximum": 5.6, "n_valid": 12, "n_expected": 12,
              "flag": "N", "reason": None, "unit": "kg/h", "revision": 0, "supersedes": None,
              "audit_id": None, "created_at": "2026-05-31T17:02:00.250000Z"}

    def message(n: int, **changed: object) -> bytes:
        return json.dumps({"id": n, "plant": "aa", "kind": "bypass.minutes",
                           "at": "2026-05-31T18:00:05Z", "data": {
                               "unit": "main", "hour": "2026-05-31T17:00:00Z",
                               "minutes": [{**minute, **changed}]}}).encode()

    topic, now = "cemsd/aa/events/bypass.minutes", datetime(2026, 5, 31, 18, tzinfo=UTC)
    store = FleetStore(pg_url)
    try:
        store.upgrade()
        first = store.ingest([parse(topic, message(1))], now)
        again = store.ingest([parse(topic, message(1))], now)
        changed = store.ingest([parse(topic, message(2, value=6.0))], now)
        refused = parse(topic, message(3, n_valid=None))
        kept = store.db.fetch(select(fleet.minutes))
    finally:
        store.close()
    assert (first.events, first.duplicates, first.conflicts) == (1, 0, [])
    assert (again.events, again.duplicates, again.conflicts) == (0, 2, [])
    assert [(c.record, c.stored["value"], c.received["value"]) for c in changed.conflicts] \
        == [("minute", 5.5, 6.0)]
    assert [(m.value, m.edge_id, m.created_at.microsecond) for m in kept] == [(5.5, 11, 250000)]
    assert isinstance(refused, Rejected)
    assert "minute 11: id, n_valid and created_at needed" in refused.why
