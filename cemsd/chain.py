"""Tamper evidence: finalised records are sealed into one SHA-256 hash chain.

Each sealed record (an hour, a substituted hour) gets a link in the `chain` table:

    record_hash = SHA-256(canonical form of the record)          (hex, lower case)
    chain_hash  = SHA-256(prev_hash + record_hash)               (the two hex strings, ASCII)
    prev_hash   = chain_hash of the previous link, GENESIS for the first

The canonical form (form 1) is specified in docs/TAMPER-EVIDENCE.md with a worked example,
so a registry can recompute it from the API's rows. Records are sealed once their hour
ended at least `finalise_after_hours` ago, in (ts, channel, table, id) order, each exactly
once (unique link per record). Stored periods are never changed in place (corrections are
new revisions), so a sealed record that no longer hashes to its link was changed outside
cemsd. `verify` walks the chain and names the first broken link.

What the chain cannot show on its own: someone who rewrites a record *and* rebuilds every
later link, or cuts the chain's tail. The registry pins the chain head (GET
/v1/chain/head) and checks it later; that closes both.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Float, Integer, Table, exists, func, insert, select

from cemsd.periods import HOUR
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.store.schema import UTCDateTime

FORM = 1
GENESIS = "0" * 64
_SEAL_BATCH = 5000  # records per table and transaction when sealing a backlog
_VERIFY_BATCH = 2000


@dataclass(frozen=True)
class SealedKind:
    """A table whose rows are sealed, and the fields its canonical form covers."""

    name: str
    table: Table
    fields: tuple[str, ...]
    json_fields: tuple[str, ...] = ()  # text columns holding JSON: hashed as their value


_PERIOD_FIELDS = ("channel", "ts", "value", "minimum", "maximum", "n_valid", "n_expected",
                  "flag", "reason", "unit", "revision", "supersedes")
_SUBSTITUTION_FIELDS = ("channel", "ts", "value", "unit", "flag", "method", "period_kind",
                        "period_start", "period_hours", "capture_rate", "source_hours",
                        "revision", "supersedes")

KINDS: dict[str, SealedKind] = {
    kind.name: kind
    for kind in (
        SealedKind("hours", schema.hours, _PERIOD_FIELDS),
        SealedKind("substitutions", schema.substitutions, _SUBSTITUTION_FIELDS,
                   json_fields=("source_hours",)),
    )
}


# --- canonical form ----------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """Form 1 serialisation: keys sorted, no spaces, floats as C printf %.17g, strings as
    JSON escapes them (non-ASCII kept, UTF-8 when hashed), None as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{canonical_json(str(k))}:{canonical_json(v)}"
                              for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    raise TypeError(f"no canonical form for {type(value).__name__}")


def _float(x: float) -> str:
    if math.isnan(x):
        return '"NaN"'
    if math.isinf(x):
        return '"Infinity"' if x > 0 else '"-Infinity"'
    return format(x, ".17g")


def utc_text(moment: datetime) -> str:
    """A timestamp in the canonical form: ISO 8601 UTC with Z, microseconds only if any."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def canonical_document(kind: SealedKind, row: Any) -> dict[str, Any]:
    """The fields of a record as the canonical form types them (by declared column type)."""
    doc: dict[str, Any] = {"form": FORM, "table": kind.name}
    for name in kind.fields:
        doc[name] = _typed(kind, name, getattr(row, name))
    return doc


def _typed(kind: SealedKind, name: str, value: Any) -> Any:
    if value is None:
        return None
    column_type = kind.table.c[name].type
    if name in kind.json_fields:
        return json_value(value)
    if isinstance(column_type, UTCDateTime):
        return utc_text(value)
    if isinstance(column_type, Float):
        return float(value)
    if isinstance(column_type, Integer):
        return int(value)
    return str(value)


def json_value(text: str | None) -> Any:
    """A JSON text column's value; text that is not JSON stands for itself."""
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return text


def record_hash(kind: SealedKind, row: Any) -> str:
    text = canonical_json(canonical_document(kind, row))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def link_hash(prev_hash: str, rec_hash: str) -> str:
    return hashlib.sha256((prev_hash + rec_hash).encode("ascii")).hexdigest()


# --- sealing ---------------------------------------------------------------------------------


def due_before(now: float, finalise_after_hours: float) -> float:
    """Periods starting at or before this (epoch) have ended at least the delay ago."""
    return now - HOUR - finalise_after_hours * HOUR


def seal_due(db: Database, through: float, sealed_at: float, batch: int = _SEAL_BATCH) -> int:
    """Seal every unsealed record whose period starts at or before `through`; returns how
    many. A backlog is sealed `batch` records per transaction, whole periods at a time."""
    sealed = 0
    while records := _next_due(db, through, batch):
        records.sort(key=lambda r: r[:4])
        _append(db, [(kind, row) for *_, kind, row in records], sealed_at)
        sealed += len(records)
    return sealed


def _next_due(db: Database, through: float, batch: int) -> list[tuple[Any, ...]]:
    """The earliest unsealed due records of every table, cut at a period boundary."""
    fetched = []
    for kind in KINDS.values():
        t = kind.table.c
        rows = db.fetch(_unsealed(kind).where(t.ts <= through).order_by(t.ts, t.id)
                        .limit(batch))
        fetched.append((kind, rows, len(rows) == batch))
    # a table that filled its batch may have more records in its last period: leave that
    # period (and later ones of the other tables) for the next round
    cut = min((rows[-1].ts for _, rows, full in fetched if full), default=None)
    records = [(row.ts.timestamp(), row.channel, kind.name, row.id, kind, row)
               for kind, rows, _ in fetched for row in rows if cut is None or row.ts < cut]
    if not records and cut is not None:  # one period holds more than a batch: take it whole
        records = [(row.ts.timestamp(), row.channel, kind.name, row.id, kind, row)
                   for kind in KINDS.values()
                   for row in db.fetch(_unsealed(kind).where(kind.table.c.ts == cut))]
    return records


def _unsealed(kind: SealedKind) -> Any:
    t, c = kind.table, schema.chain.c
    linked = exists().where(c.record_table == kind.name, c.record_id == t.c.id)
    return select(t).where(~linked)


def _append(db: Database, records: Sequence[tuple[SealedKind, Any]], sealed_at: float) -> None:
    c = schema.chain.c
    with db.transaction() as conn:
        head = conn.execute(select(c.seq, c.chain_hash).order_by(c.seq.desc()).limit(1)).first()
        seq, prev = (int(head.seq), head.chain_hash) if head else (0, GENESIS)
        links = []
        for kind, row in records:
            rec = record_hash(kind, row)
            seq += 1
            chained = link_hash(prev, rec)
            links.append({"seq": seq, "record_table": kind.name, "record_id": row.id,
                          "channel": row.channel, "ts": row.ts, "form": FORM,
                          "record_hash": rec, "prev_hash": prev, "chain_hash": chained,
                          "sealed_at": sealed_at})
            prev = chained
        if links:
            conn.execute(insert(schema.chain), links)


# --- reading the chain --------------------------------------------------------------------------


def head(db: Database) -> Any | None:
    """The newest link, or None while nothing is sealed."""
    c = schema.chain.c
    rows = db.fetch(select(schema.chain).order_by(c.seq.desc()).limit(1))
    return rows[0] if rows else None


def links_after(db: Database, after_seq: int, limit: int) -> list[Any]:
    c = schema.chain.c
    return db.fetch(select(schema.chain).where(c.seq > after_seq).order_by(c.seq).limit(limit))


def seals_for(db: Database, table: str, record_ids: Iterable[int]) -> dict[int, Any]:
    """Links of the given records of one table, by record id."""
    ids = list(record_ids)
    if not ids:
        return {}
    c = schema.chain.c
    rows = db.fetch(select(c.seq, c.record_id, c.record_hash, c.chain_hash)
                    .where(c.record_table == table, c.record_id.in_(ids)))
    return {int(r.record_id): r for r in rows}


# --- verification ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Break:
    seq: int
    record_table: str
    record_id: int
    channel: str
    ts: datetime
    problem: str  # record changed | record deleted | chain link broken | link altered | ...
    detail: str


@dataclass
class Verification:
    links: int = 0
    by_table: Counter[str] = field(default_factory=Counter)
    head: Any | None = None
    breaks: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks


def verify(db: Database) -> Verification:
    """Recompute every sealed record's hash from its current row and check every link.
    Each link is checked against the previous link as stored, so one changed record
    breaks one link and the report names it."""
    report = Verification()
    expected_seq, prev_hash, after = 1, GENESIS, 0
    while batch := links_after(db, after, _VERIFY_BATCH):
        rows = _records(db, batch)
        for link in batch:
            problem = _check(link, rows.get((link.record_table, int(link.record_id))),
                             expected_seq, prev_hash)
            if problem is not None:
                report.breaks.append(Break(int(link.seq), link.record_table,
                                           int(link.record_id), link.channel, link.ts,
                                           *problem))
            report.links += 1
            report.by_table[link.record_table] += 1
            expected_seq, prev_hash = int(link.seq) + 1, link.chain_hash
        after = int(batch[-1].seq)
        report.head = batch[-1]
    return report


def _records(db: Database, links: Sequence[Any]) -> dict[tuple[str, int], Any]:
    wanted: dict[str, list[int]] = {}
    for link in links:
        wanted.setdefault(link.record_table, []).append(int(link.record_id))
    found = {}
    for name, ids in wanted.items():
        kind = KINDS.get(name)
        if kind is None:
            continue
        for row in db.fetch(select(kind.table).where(kind.table.c.id.in_(ids))):
            found[(name, int(row.id))] = row
    return found


def _check(link: Any, row: Any | None, expected_seq: int, prev_hash: str
           ) -> tuple[str, str] | None:
    if int(link.seq) != expected_seq:
        return ("chain link missing",
                f"expected link {expected_seq} before this one; the chain has a gap")
    if link.prev_hash != prev_hash:
        return ("chain link broken",
                f"prev_hash {link.prev_hash[:16]}... is not the previous link's chain_hash "
                f"{prev_hash[:16]}... (links re-ordered, removed or rewritten)")
    if link.chain_hash != link_hash(link.prev_hash, link.record_hash):
        return ("chain link altered", "chain_hash is not SHA-256(prev_hash + record_hash)")
    kind = KINDS.get(link.record_table)
    if kind is None:
        return ("chain link altered", f"unknown record table {link.record_table!r}")
    if row is None:
        return ("record deleted", f"{link.record_table} row id {link.record_id} is gone")
    if link.form != FORM:
        return ("chain link altered", f"unknown canonical form {link.form}")
    recomputed = record_hash(kind, row)
    if recomputed != link.record_hash:
        return ("record changed", f"stored record hashes to {recomputed[:16]}..., sealed as "
                                  f"{link.record_hash[:16]}...")
    if (row.channel, row.ts) != (link.channel, link.ts):
        return ("chain link altered", "the link's channel or hour differs from its record's")
    return None


def unsealed_count(db: Database) -> int:
    """Stored records without a link (not final yet, or the daemon has not sealed them)."""
    total = 0
    for kind in KINDS.values():
        query = _unsealed(kind).subquery()
        total += int(db.fetch(select(func.count()).select_from(query))[0][0])
    return total
