"""The audit log and the append-only records, on SQLite and PostgreSQL.

The database itself refuses to change or delete stored periods, calibrations,
substitutions and audit entries; maintenance windows and control periods can only be
closed, once; readings can be pruned but never changed; a correction is a new row that
supersedes the old one, which stays.
"""

from __future__ import annotations

import hashlib
import json
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from cemsd import records
from cemsd.qaqc.corrections import superseding
from cemsd.store import schema
from cemsd.store.database import Database

T0 = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
H = 3600.0
REFUSED = r"cemsd: "  # every trigger's message starts so



def period(channel: str, ts: float, value: float | None, flag: str = "N") -> dict:
    return {"channel": channel, "ts": ts, "value": value, "minimum": value, "maximum": value,
            "n_valid": 30 if flag == "N" else 0, "n_expected": 30, "flag": flag,
            "reason": None, "unit": "kg/h", "created_at": ts + 60}


def calibration(channel: str = "inlet-analyzer.n2o", at: float = T0) -> dict:
    return {"channel": channel, "kind": "zero", "mode": "manual", "started_at": at,
            "ended_at": at + 300, "reference": 0.0, "measured": 0.5, "full_scale": 100.0,
            "drift_pct_fs": 0.5, "result": "pass", "pass_limit_pct": 2.5,
            "control_limit_pct": 5.0, "n_readings": 10, "stabilisation_s": 120.0,
            "technician": "wang", "note": None, "created_at": at + 300}


def substitution(ts: float) -> dict:
    return {"channel": "outlet.n2o_kg_h", "ts": ts, "value": 4.0, "unit": "kg/h", "flag": "S",
            "method": "hj75.missing.before_after_mean", "period_kind": "missing",
            "period_start": ts, "period_hours": 1, "capture_rate": 0.95,
            "source_hours": "[]", "created_at": ts + H}


def maintenance_row(at: float = T0) -> dict:
    return {"device": "outlet-analyzer", "channel": None, "started_at": at, "ended_at": None,
            "reason": "filter change", "technician": "zhao", "created_at": at}


def control_period_row(at: float = T0) -> dict:
    return {"channel": "outlet-analyzer.n2o", "kind": "calibration_overdue", "started_at": at,
            "ended_at": None, "opened_by": None, "closed_by": None,
            "reason": "zero check overdue", "created_at": at}


def raw(db: Database, sql: str, **params: object) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(sql), params)


def table_rows(db: Database, table: str) -> list[tuple]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]


# --- the audit log ------------------------------------------------------------------------------


def test_audit_entries_keep_who_when_what_why_before_and_after(db: Database) -> None:
    first = records.audit(db, T0, "wang", "maintenance.start", "outlet-analyzer",
                          "filter change", None, {"id": 1, "since": "08:00"})
    second = records.audit(db, T0 + 60, "cemsd", "calibration.record", "inlet-analyzer.n2o",
                           None, {"result": None}, {"result": "pass", "drift": 0.5})
    records.audit(db, T0 + 120, "wang", "maintenance.stop", "outlet-analyzer", "done")
    assert second > first
    entries = records.audit_entries(db)
    assert [(e.id, e.at.timestamp(), e.actor, e.action, e.target, e.reason) for e in entries] == [
        (first, T0, "wang", "maintenance.start", "outlet-analyzer", "filter change"),
        (second, T0 + 60, "cemsd", "calibration.record", "inlet-analyzer.n2o", None),
        (entries[2].id, T0 + 120, "wang", "maintenance.stop", "outlet-analyzer", "done"),
    ]
    assert entries[0].before is None
    assert json.loads(entries[0].after) == {"id": 1, "since": "08:00"}
    assert json.loads(entries[1].before) == {"result": None}
    assert {e.host for e in entries} == {socket.gethostname()}
    assert [e.action for e in records.audit_entries(db, "maintenance")] == [
        "maintenance.start", "maintenance.stop"]
    assert records.audit_entries(db, "config") == []


def test_audit_action_filter_is_a_plain_prefix_on_every_database(db: Database) -> None:
    """`cemsd audit --action` gives the same answer on SQLite and PostgreSQL: a
    case-sensitive prefix, with no LIKE wildcards."""
    records.audit(db, T0, "wang", "maintenance.start")
    records.audit(db, T0, "wang", "config.load")
    assert [e.action for e in records.audit_entries(db, "maint")] == ["maintenance.start"]
    assert records.audit_entries(db, "MAINT") == []
    assert records.audit_entries(db, "config_") == []
    assert records.audit_entries(db, "%load") == []


def test_audit_config_records_the_first_config_and_each_change(db: Database,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "cemsd.toml"
    first_text = '[plant]\nid = "p1"\ntimezone = "Asia/Shanghai"\n# 注释\n'
    path.write_text(first_text, encoding="utf-8")
    first_hash = hashlib.sha256(first_text.encode("utf-8")).hexdigest()

    assert records.audit_config(db, T0, path) == "config.load"
    [load] = records.audit_entries(db, "config")
    assert (load.action, load.actor, load.target, load.at.timestamp()) == (
        "config.load", "cemsd", str(path), T0)
    assert load.before is None
    assert json.loads(load.after) == {"sha256": first_hash, "path": str(path),
                                      "text": first_text}
    assert str(path) in load.reason

    # the same configuration again (a restart) adds nothing
    assert records.audit_config(db, T0 + H, path) is None
    assert len(records.audit_entries(db)) == 1

    second_text = first_text.replace("p1", "p2")
    path.write_text(second_text, encoding="utf-8")
    second_hash = hashlib.sha256(second_text.encode("utf-8")).hexdigest()
    assert second_hash != first_hash
    assert records.audit_config(db, T0 + 2 * H, path) == "config.change"
    # an unrelated entry in between does not hide the last configuration
    records.audit(db, T0 + 3 * H, "wang", "maintenance.start", "x", "y")
    assert records.audit_config(db, T0 + 4 * H, path) is None

    path.write_text(first_text, encoding="utf-8")  # back to the first: a change too
    assert records.audit_config(db, T0 + 5 * H, path) == "config.change"

    entries = records.audit_entries(db, "config")
    assert [e.action for e in entries] == ["config.load", "config.change", "config.change"]
    change, back = entries[1], entries[2]
    assert json.loads(change.before) == {"sha256": first_hash, "path": str(path)}
    assert json.loads(change.after) == {"sha256": second_hash, "path": str(path),
                                        "text": second_text}
    assert json.loads(back.before)["sha256"] == second_hash
    assert json.loads(back.after)["sha256"] == first_hash
    assert [e.at.timestamp() for e in entries] == [T0, T0 + 2 * H, T0 + 5 * H]


# --- append-only --------------------------------------------------------------------------------


def fill(db: Database) -> dict[str, int]:
    """One row in each table; returns the ids."""
    db.insert_aggregates(schema.minutes, [period("inlet.n2o_kg_h", T0, 5.0)])
    db.insert_aggregates(schema.hours, [period("inlet.n2o_kg_h", T0, 5.0)])
    db.insert_aggregates(schema.substitutions, [substitution(T0)])
    db.insert_readings([{"channel": "inlet-analyzer.n2o", "ts": T0 + i, "value": 1.0 + i,
                         "flag": "N", "reason": None} for i in range(3)])
    return {
        "minutes": table_rows(db, "minutes")[0][0],
        "hours": table_rows(db, "hours")[0][0],
        "substitutions": table_rows(db, "substitutions")[0][0],
        "calibrations": records.insert_calibration(db, calibration()),
        "audit_log": records.audit(db, T0, "wang", "calibration.record", "x", "why"),
    }


CHANGES = {  # a real change of each table
    "minutes": "value = 99", "hours": "value = 99, flag = 'N'", "substitutions": "value = 0",
    "calibrations": "result = 'pass', drift_pct_fs = 0", "audit_log": "reason = 'rewritten'",
}


@pytest.mark.parametrize("table", sorted(CHANGES))
def test_stored_records_cannot_be_changed_or_deleted(db: Database, table: str) -> None:
    ids = fill(db)
    before = table_rows(db, table)
    with pytest.raises(DBAPIError, match=REFUSED):
        raw(db, f"UPDATE {table} SET {CHANGES[table]} WHERE id = :id", id=ids[table])
    with pytest.raises(DBAPIError, match=REFUSED):
        raw(db, f"DELETE FROM {table} WHERE id = :id", id=ids[table])
    with pytest.raises(DBAPIError, match=REFUSED):
        raw(db, f"DELETE FROM {table}")
    assert table_rows(db, table) == before


def test_readings_can_be_pruned_but_not_changed(db: Database) -> None:
    fill(db)
    with pytest.raises(DBAPIError, match=REFUSED):
        raw(db, "UPDATE reading_blocks SET n = 0")
    assert [r.value for r in db.readings_between(T0, T0 + 10)] == [1.0, 2.0, 3.0]
    assert db.prune_readings(T0 + 2) == 2
    assert [r.value for r in db.readings_between(T0, T0 + 10)] == [3.0]


@pytest.mark.parametrize("table", ["hours", "minutes"])
def test_replacing_a_stored_period_on_insert_is_refused(db: Database, table: str) -> None:
    """An upsert that overwrites the stored row of a (channel, ts, revision) is a change
    like any other."""
    fill(db)
    before = table_rows(db, table)
    tbl = getattr(schema, table)
    row = period("inlet.n2o_kg_h", T0, 99.0)
    dialect = postgresql if db.dialect == "postgresql" else sqlite
    upsert = dialect.insert(tbl).values(**row)
    upsert = upsert.on_conflict_do_update(index_elements=["channel", "ts", "revision"],
                                          set_={"value": upsert.excluded.value})
    with pytest.raises(DBAPIError, match=REFUSED), db.engine.begin() as conn:
        conn.execute(upsert)
    if db.dialect == "sqlite":  # REPLACE deletes the old row, then inserts
        with pytest.raises(DBAPIError, match=REFUSED), db.engine.begin() as conn:
            conn.execute(insert(tbl).prefix_with("OR REPLACE").values(**row))
    assert table_rows(db, table) == before


def test_postgres_truncate_is_refused(pg_url: str) -> None:
    """PostgreSQL's TRUNCATE empties a table without firing row triggers (SQLite has no
    TRUNCATE: its DELETE without WHERE fires them, see above)."""
    db = Database(pg_url)
    try:
        db.upgrade()
        fill(db)
        records.insert_maintenance(db, maintenance_row())
        records.insert_control_period(db, control_period_row())
        for table in ("minutes", "hours", "calibrations", "substitutions", "audit_log",
                      "maintenance", "control_periods"):
            before = table_rows(db, table)
            with pytest.raises(DBAPIError, match=REFUSED):
                raw(db, f"TRUNCATE {table}")
            assert table_rows(db, table) == before, table
    finally:
        db.close()


def test_a_maintenance_window_closes_once(db: Database) -> None:
    window = records.insert_maintenance(db, maintenance_row())
    with pytest.raises(DBAPIError, match=REFUSED):  # an open window cannot be edited
        raw(db, "UPDATE maintenance SET reason = 'other' WHERE id = :id", id=window)
    with pytest.raises(DBAPIError, match=REFUSED):
        raw(db, "UPDATE maintenance SET started_at = :t WHERE id = :id", id=window,
            t=datetime.fromtimestamp(T0 - H, UTC).replace(tzinfo=None))

    records.end_maintenance(db, window, T0 + H)
    [closed] = records.maintenance_windows(db)
    assert closed.ended_at.timestamp() == T0 + H
    records.end_maintenance(db, window, T0 + 2 * H)  # a second stop changes nothing
    assert records.maintenance_windows(db)[0].ended_at.timestamp() == T0 + H

    for sql in ("UPDATE maintenance SET ended_at = :t WHERE id = :id",
                "UPDATE maintenance SET ended_at = NULL WHERE id = :id",
                "UPDATE maintenance SET technician = 'li' WHERE id = :id",
                "DELETE FROM maintenance WHERE id = :id"):
        with pytest.raises(DBAPIError, match=REFUSED):
            raw(db, sql, id=window, t=datetime.fromtimestamp(T0 + 3 * H, UTC).replace(
                tzinfo=None))
    assert [tuple(r) for r in records.maintenance_windows(db)] == [tuple(closed)]


def test_a_control_period_closes_once(db: Database) -> None:
    passed = records.insert_calibration(db, calibration("outlet-analyzer.n2o", T0 + H))
    first = records.insert_control_period(db, control_period_row())
    other = records.insert_control_period(db, {**control_period_row(T0 + 10),
                                               "channel": "inlet-analyzer.n2o"})
    with pytest.raises(DBAPIError, match=REFUSED):  # open, but its reason is fixed
        raw(db, "UPDATE control_periods SET reason = 'x' WHERE id = :id", id=first)
    with pytest.raises(DBAPIError, match=REFUSED):  # closing while changing its kind
        raw(db, "UPDATE control_periods SET ended_at = started_at, kind = 'out_of_control' "
                "WHERE id = :id", id=first)
    with pytest.raises(DBAPIError, match=REFUSED):
        raw(db, "DELETE FROM control_periods WHERE id = :id", id=first)

    assert records.close_control_periods(db, "outlet-analyzer.n2o",
                                         ("calibration_overdue",), T0 + H + 300,
                                         passed) == [first]
    rows = {r.id: r for r in records.control_periods(db)}
    assert (rows[first].ended_at.timestamp(), rows[first].closed_by) == (T0 + H + 300, passed)
    assert rows[other].ended_at is None
    assert [r.id for r in records.open_control_periods(db)] == [other]

    for sql in ("UPDATE control_periods SET ended_at = NULL, closed_by = NULL WHERE id = :id",
                "UPDATE control_periods SET closed_by = NULL WHERE id = :id",
                "UPDATE control_periods SET ended_at = created_at WHERE id = :id",
                "DELETE FROM control_periods WHERE id = :id"):
        with pytest.raises(DBAPIError, match=REFUSED):
            raw(db, sql, id=first)
    assert tuple({r.id: r for r in records.control_periods(db)}[first]) == tuple(rows[first])


# --- corrections ---------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["hours", "minutes"])
def test_a_correction_supersedes_and_the_old_row_stays(db: Database, table: str) -> None:
    tbl = getattr(schema, table)
    db.insert_aggregates(tbl, [period("inlet.n2o_kg_h", T0, 5.0),
                               period("outlet.n2o_kg_h", T0, 1.0),
                               period("inlet.n2o_kg_h", T0 + H, 6.0)])
    [original] = db.aggregates_between(tbl, T0, T0 + 1, ["inlet.n2o_kg_h"])
    assert original.revision == 0

    fix = superseding(original, T0 + 5 * H, 7, flag="D", n_valid=0, reason="out of control")
    assert (fix["revision"], fix["supersedes"], fix["ts"], fix["value"], fix["audit_id"]) == (
        1, original.id, T0, 5.0, 7)
    db.insert_aggregates(tbl, [fix])

    current = db.aggregates_between(tbl, T0, T0 + 2 * H)
    assert [(r.channel, r.ts.timestamp(), r.flag, r.revision, r.supersedes) for r in current] == [
        ("inlet.n2o_kg_h", T0, "D", 1, original.id),
        ("outlet.n2o_kg_h", T0, "N", 0, None),
        ("inlet.n2o_kg_h", T0 + H, "N", 0, None),
    ]
    assert current[0].created_at.timestamp() == T0 + 5 * H
    everything = db.aggregates_between(tbl, T0, T0 + 1, ["inlet.n2o_kg_h"], current=False)
    assert [(r.id, r.flag, r.revision) for r in everything] == [
        (original.id, "N", 0), (current[0].id, "D", 1)]

    # the same correction again is not a second revision; a further one is
    db.insert_aggregates(tbl, [{**fix, "flag": "M"}])
    db.insert_aggregates(tbl, [superseding(current[0], T0 + 6 * H, 8, value=4.5, flag="N")])
    rows = db.aggregates_between(tbl, T0, T0 + 1, ["inlet.n2o_kg_h"], current=False)
    assert [(r.flag, r.value, r.revision) for r in rows] == [
        ("N", 5.0, 0), ("D", 5.0, 1), ("N", 4.5, 2)]
    [latest] = db.aggregates_between(tbl, T0, T0 + 1, ["inlet.n2o_kg_h"])
    assert (latest.revision, latest.supersedes, latest.value) == (2, current[0].id, 4.5)
