"""The hash chain: the canonical form as docs/TAMPER-EVIDENCE.md specifies it (its worked
example recomputed with hashlib alone), sealing final records once and in order, and
verification naming what was changed, deleted or re-ordered; on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update

from cemsd import chain
from cemsd.cli import main
from cemsd.records import audit
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import REPO, tampering, write_config

T0 = datetime(2026, 5, 31, 16, 0, tzinfo=UTC).timestamp()  # 2026-06-01 00:00 at +08:00
HOUR = 3600.0
CHANNELS = ("b.n2o", "a.n2o", "a.flow")  # inserted out of order on purpose
DOC = REPO / "docs" / "TAMPER-EVIDENCE.md"



def _hour(channel: str, ts: float, value: float | None, revision: int = 0,
          supersedes: int | None = None, audit_id: int | None = None) -> dict:
    return {"audit_id": audit_id, "channel": channel, "ts": ts, "value": value, "minimum": value,
            "maximum": None if value is None else value * 1.1, "n_valid": 60,
            "n_expected": 60, "flag": "N", "reason": None, "unit": "ppm",
            "created_at": ts + HOUR, "revision": revision, "supersedes": supersedes}


def _substitution(channel: str, ts: float, value: float) -> dict:
    return {"channel": channel, "ts": ts, "value": value, "unit": "ppm", "flag": "S",
            "method": "hj75.missing.before_after_mean", "period_kind": "missing",
            "period_start": ts, "period_hours": 1, "capture_rate": 0.9,
            "source_hours": json.dumps([ts - HOUR, ts + HOUR]), "created_at": ts + 2 * HOUR}


def _fill(db: Database, n_hours: int = 5) -> None:
    rows = [_hour(ch, T0 + h * HOUR, 100.0 + h + i / 3)
            for h in range(n_hours) for i, ch in enumerate(CHANNELS)]
    db.insert_aggregates(schema.hours, rows)
    with db.transaction() as conn:
        conn.execute(insert(schema.substitutions), [_substitution("a.n2o", T0 + HOUR, 42.5)])


def _links(db: Database) -> list:
    return db.fetch(select(schema.chain).order_by(schema.chain.c.seq))


# --- canonical form ----------------------------------------------------------------------------


def _doc_blocks() -> tuple[list[str], list[str]]:
    text = DOC.read_text()
    canonical = re.findall(r"```\n(\{.*\})\n```", text)
    hashes = re.findall(r"`([0-9a-f]{64})`", text)
    return canonical, hashes


def test_worked_example_in_the_docs_hashes_as_documented() -> None:
    (hour_text, sub_text), hashes = _doc_blocks()
    hour_hash = hashlib.sha256(hour_text.encode()).hexdigest()
    first_link = hashlib.sha256(("0" * 64 + hour_hash).encode()).hexdigest()
    sub_hash = hashlib.sha256(sub_text.encode()).hexdigest()
    second_link = hashlib.sha256((first_link + sub_hash).encode()).hexdigest()
    for value in (hour_hash, first_link, sub_hash, second_link):
        assert value in hashes


def test_the_code_produces_the_documented_canonical_form() -> None:
    (hour_text, sub_text), _ = _doc_blocks()
    at = datetime(2026, 5, 31, 21, tzinfo=UTC)
    hour = SimpleNamespace(
        channel="outlet-analyzer.n2o", ts=at, value=2138.55, minimum=1702.5, maximum=2410.25,
        n_valid=40, n_expected=60, flag="B", unit="ppm", revision=0, supersedes=None,
        reason="40 of 60 minutes valid, 45 needed; B communication fault: 20")
    sub = SimpleNamespace(
        channel="outlet.n2o_kg_h", ts=at, value=50.4867, unit="kg/h", flag="S",
        method="hj75.missing.before_after_mean", period_kind="missing", period_start=at,
        period_hours=1, capture_rate=0.95, revision=0, supersedes=None,
        source_hours='["2026-05-31T20:00:00Z", "2026-05-31T22:00:00Z"]')
    hours, subs = chain.KINDS["hours"], chain.KINDS["substitutions"]
    assert chain.canonical_json(chain.canonical_document(hours, hour)) == hour_text
    assert chain.canonical_json(chain.canonical_document(subs, sub)) == sub_text
    assert chain.record_hash(hours, hour) == hashlib.sha256(hour_text.encode()).hexdigest()


def test_canonical_serialisation_rules() -> None:
    assert chain.canonical_json({"b": 1, "a": 24.0, "c": None}) == '{"a":24,"b":1,"c":null}'
    assert chain.canonical_json(0.1) == "0.10000000000000001"
    assert chain.canonical_json(1e-7) == "9.9999999999999995e-08"
    assert chain.canonical_json(-0.5) == "-0.5"
    assert chain.canonical_json('é "q" \\ \n') == '"é \\"q\\" \\\\ \\n"'
    assert chain.canonical_json(float("nan")) == '"NaN"'
    assert chain.canonical_json([1, "x", [True]]) == '[1,"x",[true]]'
    assert chain.utc_text(datetime(2026, 6, 1, 0, 0, 0, 250000, tzinfo=UTC)) == \
        "2026-06-01T00:00:00.250000Z"


def _documented_form(value: object) -> str:
    """docs/TAMPER-EVIDENCE.md's serialisation, the plain way: the reference for the fast
    one the daemon seals with."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return '"NaN"'
        if value in (float("inf"), float("-inf")):
            return '"Infinity"' if value > 0 else '"-Infinity"'
        return format(value, ".17g")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_documented_form(v)}"
                              for k, v in sorted(value.items())) + "}"
    return "[" + ",".join(_documented_form(v) for v in value) + "]"  # type: ignore[union-attr]


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text())
_DOCUMENTS = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(), inner, max_size=4)), max_leaves=20)


@settings(max_examples=400, deadline=None, database=None)
@given(_DOCUMENTS)
def test_the_fast_serialisation_is_the_documented_one(document: object) -> None:
    assert chain.canonical_json(document) == _documented_form(document)


# --- sealing -----------------------------------------------------------------------------------


def test_an_hour_is_due_once_it_ended_the_delay_ago() -> None:
    now = T0 + 3 * HOUR  # hour 1 ended at T0 + 2 h, one hour ago
    through = chain.due_before(now, finalise_after_hours=1)
    assert T0 + HOUR <= through < T0 + 2 * HOUR


def test_seal_due_seals_final_records_once_in_order(db: Database) -> None:
    _fill(db)
    through = T0 + 2 * HOUR  # hours 0, 1, 2 are final
    sealed = chain.seal_due(db, through, sealed_at=T0 + 5 * HOUR)
    assert sealed == 3 * len(CHANNELS) + 1  # and the substitution of hour 1
    links = _links(db)
    assert [link.seq for link in links] == list(range(1, sealed + 1))
    order = [(link.ts.timestamp(), link.channel, link.record_table) for link in links]
    assert order == sorted(order)
    assert ("a.n2o", "substitutions") in [(ln.channel, ln.record_table) for ln in links]
    assert links[0].prev_hash == chain.GENESIS
    for before, after in itertools.pairwise(links):
        assert after.prev_hash == before.chain_hash
        assert after.chain_hash == hashlib.sha256(
            (after.prev_hash + after.record_hash).encode()).hexdigest()
    assert chain.seal_due(db, through, sealed_at=T0 + 6 * HOUR) == 0  # exactly once

    # a late correction of hour 0 is appended after what is already sealed
    first = db.fetch(select(schema.hours).where(schema.hours.c.channel == "a.n2o")
                     .order_by(schema.hours.c.ts))[0]
    unaudited = _hour("a.n2o", T0, 99.0, revision=1, supersedes=first.id)
    db.insert_aggregates(schema.hours, [unaudited])
    assert chain.seal_due(db, through, sealed_at=T0 + 7 * HOUR) == 0  # refused: who? why?
    [refused] = chain.refused(db, through)
    assert (refused.table, refused.channel, refused.ts.timestamp()) == ("hours", "a.n2o", T0)
    with tampering(db) as conn:
        conn.execute(delete(schema.hours).where(schema.hours.c.revision == 1))
    audit_id = audit(db, T0 + 7 * HOUR, "tester", "correction.invalidate", "a.n2o", "test")
    db.insert_aggregates(schema.hours, [{**unaudited, "audit_id": audit_id,
                                         "created_at": T0 + 7 * HOUR}])
    assert chain.refused(db, through) == []
    assert chain.seal_due(db, through, sealed_at=T0 + 7 * HOUR) == 2  # and the audit entry
    last = _links(db)[-2]
    assert (last.seq, last.channel, last.ts.timestamp()) == (sealed + 1, "a.n2o", T0)
    report = chain.verify(db)
    assert report.ok and report.links == sealed + 2
    assert report.by_table == {"hours": sealed, "substitutions": 1, "audit_log": 1}
    assert chain.unsealed_count(db) == 2 * len(CHANNELS)  # hours 3 and 4


@pytest.mark.parametrize("batch", [2, 4, 5000])  # 2: fewer than one hour's records
def test_a_backlog_is_sealed_in_batches_in_order(db: Database, batch: int) -> None:
    _fill(db, n_hours=30)
    sealed = chain.seal_due(db, T0 + 100 * HOUR, sealed_at=T0 + 100 * HOUR, batch=batch)
    assert sealed == 30 * len(CHANNELS) + 1
    links = _links(db)
    order = [(ln.ts.timestamp(), ln.channel, ln.record_table, ln.record_id) for ln in links]
    assert order == sorted(order)
    assert len(set(order)) == sealed
    assert chain.verify(db).ok


# --- verification --------------------------------------------------------------------------------


def _sealed(db: Database) -> list:
    _fill(db)
    chain.seal_due(db, T0 + 4 * HOUR, sealed_at=T0 + 6 * HOUR)
    return _links(db)


def test_verify_names_a_changed_value(db: Database) -> None:
    links = _sealed(db)
    target = next(ln for ln in links if ln.record_table == "hours" and ln.seq > 5)
    with tampering(db) as conn:
        conn.execute(update(schema.hours).where(schema.hours.c.id == target.record_id)
                     .values(value=schema.hours.c.value + 0.001))
    report = chain.verify(db)
    assert [(b.seq, b.problem) for b in report.breaks] == [(target.seq, "record changed")]
    assert (report.breaks[0].channel, report.breaks[0].ts) == (target.channel, target.ts)
    assert report.links == len(links)


def test_verify_names_a_deleted_record(db: Database) -> None:
    links = _sealed(db)
    target = next(ln for ln in links if ln.record_table == "substitutions")
    with tampering(db) as conn:
        conn.execute(delete(schema.substitutions)
                     .where(schema.substitutions.c.id == target.record_id))
    report = chain.verify(db)
    assert [(b.seq, b.problem) for b in report.breaks] == [(target.seq, "record deleted")]


def test_verify_detects_a_reordered_chain(db: Database) -> None:
    _sealed(db)
    c = schema.chain.c
    with tampering(db) as conn:  # swap links 3 and 4
        conn.execute(update(schema.chain).where(c.seq == 3).values(seq=-1))
        conn.execute(update(schema.chain).where(c.seq == 4).values(seq=3))
        conn.execute(update(schema.chain).where(c.seq == -1).values(seq=4))
    report = chain.verify(db)
    assert report.breaks[0].seq == 3
    assert report.breaks[0].problem == "chain link broken"


def test_verify_detects_a_removed_link_and_a_rewritten_record_hash(db: Database) -> None:
    links = _sealed(db)
    c = schema.chain.c
    victim = links[6]
    with tampering(db) as conn:
        conn.execute(delete(schema.chain).where(c.seq == 2))
        # the record changed and its record_hash "fixed", but not the chain after it
        conn.execute(update(schema.hours).where(schema.hours.c.id == victim.record_id)
                     .values(flag="C"))
    row = db.fetch(select(schema.hours).where(schema.hours.c.id == victim.record_id))[0]
    with tampering(db) as conn:
        conn.execute(update(schema.chain).where(c.seq == victim.seq).values(
            record_hash=chain.record_hash(chain.KINDS["hours"], row)))
    report = chain.verify(db)
    assert [(b.seq, b.problem) for b in report.breaks] == [
        (3, "chain link missing"), (victim.seq, "chain link altered")]


def test_cli_verify_names_the_first_broken_hour_in_plant_time(tmp_path: Path) -> None:
    config = write_config(tmp_path, {
        "plant": {"id": "v", "timezone": "Asia/Shanghai"}, "buses": [], "devices": []})
    db = Database(config.storage.database_url)
    db.upgrade()
    _fill(db)
    chain.seal_due(db, T0 + 4 * HOUR, sealed_at=T0 + 6 * HOUR)
    args = ["verify", "--config", str(config.source)]
    clean = CliRunner().invoke(main, args)
    assert clean.exit_code == 0, clean.output
    assert f"chain OK: {5 * len(CHANNELS) + 1} sealed record(s)" in clean.output
    h = schema.hours.c
    with tampering(db) as conn:  # hour 02 local of b.n2o, then a later one
        conn.execute(update(schema.hours).where(h.channel == "b.n2o", h.ts == T0 + 2 * HOUR)
                     .values(value=1.0))
        conn.execute(update(schema.hours).where(h.channel == "a.n2o", h.ts == T0 + 3 * HOUR)
                     .values(n_valid=59))
    db.close()
    broken = CliRunner().invoke(main, args)
    assert broken.exit_code == 1
    first = broken.output.splitlines()[0]
    assert first.startswith("chain BROKEN at link ")
    assert "hour 2026-06-01T02:00+08:00 b.n2o" in first and "record changed" in first
    assert "hour 2026-06-01T03:00+08:00 a.n2o" in broken.output
    assert "2 finding(s)" in broken.output


# --- canonical form 2 (docs/TAMPER-EVIDENCE.md, "Worked example, form 2") ------------------------


def _form2_blocks() -> tuple[list[str], list[str]]:
    section = DOC.read_text().split("### Worked example, form 2", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```text\n(.*)\n```", section), re.findall(r"`([0-9a-f]{64})`", section)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_form_2_worked_example_hashes_as_documented() -> None:
    (minutes_text, hour_text, day_text), hashes = _form2_blocks()
    digest = hashlib.sha256(minutes_text.encode()).hexdigest()
    assert f'"minutes_sha256":"{digest}"' in hour_text
    hour_hash = hashlib.sha256(hour_text.encode()).hexdigest()
    third = hashlib.sha256((hashes[2] + hour_hash).encode()).hexdigest()
    day_hash = hashlib.sha256(day_text.encode()).hexdigest()
    fourth = hashlib.sha256((third + day_hash).encode()).hexdigest()
    assert [digest, hour_hash, third, day_hash, fourth] == \
        [hashes[0], hashes[1], hashes[3], hashes[4], hashes[5]]
    (form1_hour, form1_sub), _ = _doc_blocks()  # it follows the form 1 example's 2nd link
    first = hashlib.sha256((chain.GENESIS + hashlib.sha256(form1_hour.encode()).hexdigest())
                           .encode()).hexdigest()
    assert hashes[2] == hashlib.sha256(
        (first + hashlib.sha256(form1_sub.encode()).hexdigest()).encode()).hexdigest()


def test_the_code_produces_the_documented_form_2() -> None:
    (minutes_text, hour_text, day_text), _ = _form2_blocks()
    minute = {"channel": "outlet-analyzer.n2o", "n_valid": 12, "n_expected": 12, "flag": "N",
              "reason": None, "unit": "ppm", "revision": 0, "supersedes": None,
              "audit_id": None}
    minutes = [  # given out of order: the digest orders them
        SimpleNamespace(**minute, id=2, ts=_at("2026-05-31T21:59"), value=2175.6,
                        minimum=2150.0, maximum=2199.75,
                        created_at=_at("2026-05-31T22:00:00.5")),
        SimpleNamespace(**minute, id=1, ts=_at("2026-05-31T21:58"), value=2101.5,
                        minimum=2087.25, maximum=2120.0,
                        created_at=_at("2026-05-31T21:59:00.5"))]
    hour = SimpleNamespace(
        channel="outlet-analyzer.n2o", ts=_at("2026-05-31T21:00"), value=2138.55,
        minimum=2087.25, maximum=2199.75, n_valid=2, n_expected=60, flag="B", unit="ppm",
        reason="2 of 60 minutes valid, 45 needed; B no data: 58", revision=0,
        supersedes=None, audit_id=None, created_at=_at("2026-05-31T22:00:01"))
    under = {(hour.channel, hour.ts): minutes}
    digest = chain.hour_minutes_digest(hour, under)
    assert digest == hashlib.sha256(minutes_text.encode()).hexdigest()
    hours = chain.KINDS["hours"]
    assert chain.canonical_json(chain.canonical_document(hours, hour, 2, digest)) == hour_text
    assert chain.hash_record(hours, hour, 2, under) == \
        hashlib.sha256(hour_text.encode()).hexdigest()
    late = SimpleNamespace(**{**vars(minutes[0]), "id": 3, "revision": 1,
                              "created_at": _at("2026-06-01T09:00")})
    assert chain.hour_minutes_digest(hour, {(hour.channel, hour.ts): [*minutes, late]}) == \
        digest  # a minute written after the hour is not under its seal
    day = SimpleNamespace(day=date(2026, 6, 1), tonnes=401.5, revision=1, supersedes=8,
                          source="import:production-2026-06.csv", audit_id=17,
                          created_at=_at("2026-06-02T01:30"))
    assert chain.canonical_json(chain.canonical_document(
        chain.KINDS["production_days"], day, 2)) == day_text
    with pytest.raises(chain.Malformed):  # production days have no form 1
        chain.canonical_document(chain.KINDS["production_days"], day, 1)


def test_minutes_under_hours_far_apart_are_sealed_and_checked(db: Database) -> None:
    """Two hours two days apart sealed in one pass (as a late correction is): each seal
    covers its own minutes, and a changed minute names its hour."""
    far = T0 + 50 * HOUR
    minutes = [{**_hour("a.n2o", start + i * 60, 10.0 + i), "n_expected": 12,
                "created_at": start + (i + 1) * 60} for start in (T0, far) for i in range(3)]
    db.insert_aggregates(schema.minutes, minutes)
    db.insert_aggregates(schema.hours, [_hour("a.n2o", T0, 11.0), _hour("a.n2o", far, 11.0)])
    assert chain.seal_due(db, far, sealed_at=far + 2 * HOUR) == 2
    links = _links(db)
    assert all(ln.form == 2 and ln.minutes_sha256 for ln in links)
    assert links[0].minutes_sha256 != links[1].minutes_sha256
    assert chain.verify(db).ok
    m = schema.minutes.c
    with tampering(db) as conn:
        conn.execute(update(schema.minutes).where(m.ts == far + 60).values(value=0.0))
    report = chain.verify(db)
    assert [(b.seq, b.problem) for b in report.breaks] == [(2, "minutes changed")]
