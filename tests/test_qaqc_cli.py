"""The technicians' and auditors' commands on a database filled directly: calibration
records with their drift trend, the substitution share of a quarter or period, the audit
log, maintenance windows; and the acting commands with no daemon running."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from cemsd import records
from cemsd.cli import main
from cemsd.config import Config
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import analyzer_and_flow_plant, write_config

TZ = ZoneInfo("Asia/Shanghai")
H = 3600.0
DAY = 86400.0
Q2 = datetime(2026, 4, 1, tzinfo=TZ).timestamp()  # 2026-03-31T16:00Z
Q3 = datetime(2026, 7, 1, tzinfo=TZ).timestamp()  # 2026-06-30T16:00Z
SERIES = "inlet.n2o_kg_h"  # the default series of the one point


def plant() -> dict:
    return analyzer_and_flow_plant("qaqc-cli", 1502)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return write_config(tmp_path, plant())


@pytest.fixture
def db(config: Config) -> Iterator[Database]:
    database = Database(config.storage.database_url)
    database.upgrade()
    yield database
    database.close()


def cli(config: Config, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--config", str(config.source)])


def calibration(channel: str, kind: str, at: float, drift: float | None,
                result: str = "pass") -> dict:
    return {"channel": channel, "kind": kind, "mode": "manual", "started_at": at,
            "ended_at": at + 600, "reference": 0.0 if kind == "zero" else 80.0,
            "measured": None if drift is None else drift, "full_scale": 100.0,
            "drift_pct_fs": drift, "result": result, "pass_limit_pct": 2.5,
            "control_limit_pct": 5.0, "n_readings": 10, "stabilisation_s": 120.0,
            "technician": "wang", "note": None, "created_at": at + 600}


def hour(ts: float, value: float | None, flag: str = "N") -> dict:
    return {"channel": SERIES, "ts": ts, "value": value, "minimum": value, "maximum": value,
            "n_valid": 60 if flag == "N" else 0, "n_expected": 60, "flag": flag,
            "reason": None, "unit": "kg/h", "created_at": ts + H}


def substitution(ts: float, value: float) -> dict:
    return {"channel": SERIES, "ts": ts, "value": value, "unit": "kg/h", "flag": "S",
            "method": "hj75.missing.before_after_mean", "period_kind": "missing",
            "period_start": ts, "period_hours": 2, "capture_rate": 0.8,
            "source_hours": "[]", "created_at": ts + 2 * H}


# --- calibrations -------------------------------------------------------------------------------


def fill_calibrations(db: Database) -> None:
    start = datetime(2026, 5, 1, 8, 0, tzinfo=TZ).timestamp()
    span = "analyzer.n2o"
    for day, drift in ((0, 0.5), (1, 1.0), (3, 2.5)):
        records.insert_calibration(db, calibration(span, "span", start + day * DAY, drift))
    records.insert_calibration(db, calibration(span, "zero", start + 2 * H, 0.2))
    records.insert_calibration(db, calibration(span, "zero", start + 2 * DAY + 2 * H, -0.1))
    records.insert_calibration(db, calibration(span, "zero", start + 3 * DAY, None, "aborted"))
    records.insert_calibration(db, calibration("flow.velocity", "zero", start, 0.3))


def test_calibrations_as_json_with_the_drift_trend(config: Config, db: Database) -> None:
    fill_calibrations(db)
    result = cli(config, "calibrations", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [(c["id"], c["started"], c["kind"], c["drift_pct_fs"], c["result"])
            for c in out["calibrations"]] == [
        (1, "2026-05-01T08:00+08:00", "span", 0.5, "pass"),
        (7, "2026-05-01T08:00+08:00", "zero", 0.3, "pass"),
        (4, "2026-05-01T10:00+08:00", "zero", 0.2, "pass"),
        (2, "2026-05-02T08:00+08:00", "span", 1.0, "pass"),
        (5, "2026-05-03T10:00+08:00", "zero", -0.1, "pass"),
        (3, "2026-05-04T08:00+08:00", "span", 2.5, "pass"),
        (6, "2026-05-04T08:00+08:00", "zero", None, "aborted"),
    ]
    trends = {(t["channel"], t["kind"]): t for t in out["trends"]}
    # span: days 0, 1, 3 and drifts 0.5, 1.0, 2.5; means 4/3 and 4/3;
    # Sxy = 57/18, Sxx = 84/18 -> slope 57/84 % F.S. per day
    assert trends[("analyzer.n2o", "span")] == {
        "channel": "analyzer.n2o", "kind": "span", "checks": 3, "days": 3.0,
        "last_drift_pct_fs": 2.5, "slope_pct_fs_per_day": pytest.approx(57 / 84, rel=1e-6),
        "note": None}
    # zero: 0.2 then -0.1 two days later (the aborted check has no drift): two checks
    # are not a trend
    zero = trends[("analyzer.n2o", "zero")]
    assert (zero["checks"], zero["slope_pct_fs_per_day"]) == (2, None)
    assert zero["note"] == "not enough data (needs 3 checks over 2 days)"
    assert trends[("flow.velocity", "zero")]["slope_pct_fs_per_day"] is None  # one check
    assert len(trends) == 3
    # every record carries the limits it was judged against
    assert {(c["pass_limit_pct"], c["control_limit_pct"]) for c in out["calibrations"]} == \
        {(2.5, 5.0)}

    only = json.loads(cli(config, "calibrations", "--format", "json",
                          "--channel", "flow.velocity").stdout)
    assert [c["id"] for c in only["calibrations"]] == [7]


def test_calibrations_as_a_table(config: Config, db: Database) -> None:
    fill_calibrations(db)
    result = cli(config, "calibrations")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + 7 + 3
    assert lines[0].split() == ["id", "started", "(plant", "time)", "channel", "kind", "mode",
                                "drift", "%", "F.S.", "pass/control", "±%", "result",
                                "technician"]
    first = lines[1]
    assert first.split() == ["#1", "2026-05-01T08:00+08:00", "analyzer.n2o", "span", "manual",
                             "+0.50", "2.5/5", "pass", "wang"]
    assert lines[7].split()[5:8] == ["-", "2.5/5", "aborted"]  # aborted: no drift
    assert "trend analyzer.n2o span: 3 checks over 3 days, last +2.50 % F.S., " \
        "slope +0.68 % F.S./day" in lines
    assert "trend analyzer.n2o zero: 2 checks over 2 days, last -0.10 % F.S., " \
        "not enough data (needs 3 checks over 2 days)" in lines
    assert "trend flow.velocity zero: 1 checks over 0 days, last +0.30 % F.S., " \
        "not enough data (needs 3 checks over 2 days)" in lines


# --- substitutions ------------------------------------------------------------------------------


def fill_quarter(db: Database) -> None:
    """Around 2026Q2 (plant time): March and July hours lie outside it.
    Q2 + 0..5 h measured 10, 6 stopped, 7..8 no data (substituted 15 each), 9 measured 20;
    the last hour of the quarter measured 7."""
    rows = [hour(Q2 - i * H, 100.0) for i in (1, 2, 3)]
    rows += [hour(Q2 + i * H, 10.0) for i in range(6)]
    rows += [hour(Q2 + 6 * H, None, "F"), hour(Q2 + 7 * H, None, "D"),
             hour(Q2 + 8 * H, None, "D"), hour(Q2 + 9 * H, 20.0)]
    rows += [hour(Q3 - H, 7.0), hour(Q3, 1000.0), hour(Q3 + H, None, "D")]
    db.insert_aggregates(schema.hours, rows)
    db.insert_aggregates(schema.substitutions, [
        substitution(Q2 + 7 * H, 15.0), substitution(Q2 + 8 * H, 15.0),
        substitution(Q3 + H, 500.0), substitution(Q2 - 4 * H, 500.0)])


def test_substitutions_of_a_quarter(config: Config, db: Database) -> None:
    fill_quarter(db)
    result = cli(config, "substitutions", "--quarter", "2026Q2")
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)
    measured = 6 * 10.0 + 20.0 + 7.0
    assert report == {
        "channel": SERIES, "from": "2026-03-31T16:00:00Z", "to": "2026-06-30T16:00:00Z",
        "hours": 11, "stop_hours": 1, "operating_hours": 10, "valid_hours": 8,
        "substituted_hours": 2, "unsubstituted_hours": 0, "capture_rate": 0.8,
        "share_substituted_hours": 0.2, "measured_mass": measured, "substituted_mass": 30.0,
        "share_substituted_mass": pytest.approx(30.0 / (measured + 30.0)),
        "methods": ["hj75.missing.before_after_mean"],
    }


def test_substitutions_of_a_period(config: Config, db: Database) -> None:
    fill_quarter(db)
    result = cli(config, "substitutions", "--from", "2026-04-01T05:00",
                 "--to", "2026-04-01T09:00", "--series", SERIES)
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)
    assert report == {
        "channel": SERIES, "from": "2026-03-31T21:00:00Z", "to": "2026-04-01T01:00:00Z",
        "hours": 4, "stop_hours": 1, "operating_hours": 3, "valid_hours": 1,
        "substituted_hours": 2, "unsubstituted_hours": 0,
        "capture_rate": pytest.approx(1 / 3), "share_substituted_hours": pytest.approx(2 / 3),
        "measured_mass": 10.0, "substituted_mass": 30.0, "share_substituted_mass": 0.75,
        "methods": ["hj75.missing.before_after_mean"],
    }
    # 1 July: one measured hour and one substituted; the quarter before is not counted
    result = cli(config, "substitutions", "--from", "2026-07-01", "--to", "2026-07-02")
    [july] = json.loads(result.stdout)
    assert (july["hours"], july["valid_hours"], july["substituted_hours"],
            july["measured_mass"], july["substituted_mass"]) == (2, 1, 1, 1000.0, 500.0)


@pytest.mark.parametrize("args", [
    ["--quarter", "2026Q5"], ["--quarter", "2026-Q2"], ["--quarter", "Q2"],
    ["--from", "2026-04-01"], [],
])
def test_substitutions_refuses_a_bad_period(config: Config, db: Database,
                                            args: list[str]) -> None:
    result = cli(config, "substitutions", *args)
    assert result.exit_code == 2, result.output
    assert "--quarter" in result.output


def test_substitutions_refuses_an_unreadable_time(config: Config, db: Database) -> None:
    result = cli(config, "substitutions", "--from", "yesterday", "--to", "2026-04-02")
    assert result.exit_code == 2, result.output
    assert "cannot read time 'yesterday'" in result.output


# --- audit and maintenance ----------------------------------------------------------------------


def test_audit_filtered_by_action(config: Config, db: Database) -> None:
    at = datetime(2026, 5, 1, 8, 0, tzinfo=TZ).timestamp()
    records.audit(db, at, "cemsd", "config.load", "cemsd.toml", None, None, {"sha256": "ab"})
    records.audit(db, at + 60, "zhao", "maintenance.start", "analyzer", "filter change",
                  None, {"id": 1})
    records.audit(db, at + 120, "wang", "calibration.record", "analyzer.n2o", None)
    records.audit(db, at + 3600, "zhao", "maintenance.stop", "analyzer", "done",
                  {"id": 1, "ended_at": None}, {"id": 1, "ended_at": at + 3660})
    result = cli(config, "audit", "--action", "maintenance", "--json")
    assert result.exit_code == 0, result.output
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert entries == [
        {"id": 2, "at": "2026-05-01T08:01+08:00", "actor": "zhao",
         "action": "maintenance.start", "target": "analyzer", "reason": "filter change",
         "before": None, "after": {"id": 1}},
        {"id": 4, "at": "2026-05-01T09:00+08:00", "actor": "zhao",
         "action": "maintenance.stop", "target": "analyzer", "reason": "done",
         "before": {"id": 1, "ended_at": None},
         "after": {"id": 1, "ended_at": "2026-05-01T09:01+08:00"}},  # epochs in plant time
    ]
    everything = cli(config, "audit", "--json")
    assert [json.loads(line)["id"] for line in everything.stdout.splitlines()] == [1, 2, 3, 4]
    # by default: one readable line each, plant time, who, what, on what, why, what changed
    lines = cli(config, "audit").stdout.splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["#1", "2026-05-01T08:00+08:00", "cemsd", "config.load"],
        ["#2", "2026-05-01T08:01+08:00", "zhao", "maintenance.start"],
        ["#3", "2026-05-01T08:02+08:00", "wang", "calibration.record"],
        ["#4", "2026-05-01T09:00+08:00", "zhao", "maintenance.stop"]]
    assert lines[1].endswith("analyzer: filter change")
    assert lines[3].endswith("analyzer: done  [ended_at: - -> 2026-05-01T09:01+08:00]")
    assert lines[0].endswith("cemsd.toml  [sha256=ab]")


def test_maintenance_list(config: Config, db: Database) -> None:
    at = datetime(2026, 5, 1, 8, 0, tzinfo=TZ).timestamp()
    closed = records.insert_maintenance(db, {
        "device": "analyzer", "channel": None, "started_at": at, "ended_at": None,
        "reason": "filter change", "technician": "zhao", "created_at": at})
    records.end_maintenance(db, closed, at + 2 * H)
    records.insert_maintenance(db, {
        "device": None, "channel": "flow.velocity", "started_at": at + DAY, "ended_at": None,
        "reason": "probe cleaning", "technician": "li", "created_at": at + DAY})
    result = cli(config, "maintenance", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split() == ["#1", "analyzer", "2026-05-01T08:00+08:00", "..",
                                "2026-05-01T10:00+08:00", "zhao:", "filter", "change"]
    assert lines[1].split() == ["#2", "flow.velocity", "2026-05-02T08:00+08:00", "..",
                                "open", "li:", "probe", "cleaning"]


@pytest.mark.parametrize("args", [
    ["audit"], ["maintenance", "list"], ["calibrations"], ["substitutions", "--quarter", "2026Q2"],
])
def test_reading_commands_without_a_database_create_none(config: Config,
                                                          args: list[str]) -> None:
    """Before the daemon ever ran: a clear error naming the database, and no empty
    database file left behind (owned by whoever ran the command)."""
    path = config.storage.state_dir / "cemsd.db"
    result = cli(config, *args)
    assert result.exit_code == 1, result.output
    assert str(path) in result.output
    assert not path.exists()


# --- acting commands need the daemon ------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["calibrate", "--channel", "analyzer.n2o", "--zero", "--reference", "0"],
    ["calibrate", "--channel", "analyzer.n2o", "--span", "--reference", "80", "--manual",
     "--reading", "81.5"],
    ["maintenance", "start", "--device", "analyzer", "--reason", "filter change"],
    ["maintenance", "stop", "--device", "analyzer"],
])
def test_acting_without_a_daemon_is_a_clear_error(config: Config, db: Database,
                                                  args: list[str]) -> None:
    result = cli(config, *args)
    socket_path = config.storage.state_dir / "cemsd.sock"
    assert result.exit_code == 1, result.output
    assert f"the daemon is not running (no control socket at {socket_path})" in result.output
    for table in (schema.calibrations, schema.maintenance, schema.audit_log,
                  schema.control_periods):
        assert db._fetch(table.select()) == [], table.name
    assert not socket_path.exists()


def test_a_maintenance_duration_that_cannot_be_read_is_refused(config: Config,
                                                               db: Database) -> None:
    result = cli(config, "maintenance", "start", "--device", "analyzer", "--reason", "filter",
                 "--duration", "four hours")
    assert result.exit_code == 2, result.output
    assert "--duration" in result.output and "cannot read time offset 'four hours'" in \
        result.output
    assert db._fetch(schema.maintenance.select()) == []
