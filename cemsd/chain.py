"""Tamper evidence: sealed records are chained into one SHA-256 hash chain.

Each sealed record (an hour, a substituted hour, a production day, an audit-log entry)
gets a link in the `chain` table:

    record_hash = SHA-256(canonical form of the record)          (hex, lower case)
    chain_hash  = SHA-256(prev_hash + record_hash)               (the two hex strings, ASCII)
    prev_hash   = chain_hash of the previous link, GENESIS for the first

The canonical forms are specified in docs/TAMPER-EVIDENCE.md with worked examples, so a
registry can recompute them from the API's rows. Form 1 (hours and substitutions only) is
what cemsd wrote before; form 2 adds who corrected a revision (`audit_id`), when a record
was written, and for an hour the digest of the minutes under it. Links of either form
verify; new links are form 2.

Hours and substitutions are sealed once their hour ended at least `finalise_after_hours`
ago, in (ts, channel, table, id) order; production days and audit-log entries are final
when written and are sealed at the next pass, in id order. Each record is sealed exactly
once (unique link per record), and a revision above 0 only if it names an audited
correction (refused() lists the rows left out, for the daemon's alarm).

Rows are read raw and parsed here, not by SQLAlchemy, so that a malformed row (text in a
number column, a garbage timestamp) is a named record, never a crash: `Malformed`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Date,
    Float,
    Integer,
    Table,
    and_,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.types import NullType

from cemsd.periods import HOUR
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.store.schema import UTCDateTime

FORM = 2  # the canonical form new links are written in
FORMS = (1, 2)  # the forms verify understands
GENESIS = "0" * 64
PRODUCTION_CHANNEL = "production"  # the link's channel for a production day
_SEAL_BATCH = 5000  # records per table and transaction when sealing a backlog
_VERIFY_BATCH = 2000


class Malformed(ValueError):
    """A stored value the canonical form cannot represent (text in a number column...)."""


@dataclass(frozen=True)
class SealedKind:
    """A table whose rows are sealed, and the fields its canonical forms cover."""

    name: str
    table: Table
    fields: tuple[str, ...]  # form 2
    form1_fields: tuple[str, ...] = ()  # empty: the table was not sealed in form 1
    json_fields: tuple[str, ...] = ()  # text columns holding JSON: hashed as their value
    periodic: bool = True  # sealed when its hour is final (else: when written)

    def link_channel(self, row: Any) -> str:
        if self.name == "audit_log":
            return str(row.action)
        return PRODUCTION_CHANNEL if self.name == "production_days" else str(row.channel)

    def link_time(self, row: Any) -> datetime:
        if self.name == "audit_log":
            return row.at  # type: ignore[no-any-return]
        if self.name == "production_days":
            return datetime.combine(row.day, datetime.min.time(), UTC)
        return row.ts  # type: ignore[no-any-return]


_PERIOD_FIELDS = ("channel", "ts", "value", "minimum", "maximum", "n_valid", "n_expected",
                  "flag", "reason", "unit", "revision", "supersedes")
_SUBSTITUTION_FIELDS = ("channel", "ts", "value", "unit", "flag", "method", "period_kind",
                        "period_start", "period_hours", "capture_rate", "source_hours",
                        "revision", "supersedes")
_FORM2_EXTRA = ("audit_id", "created_at")
MINUTES_FIELD = "minutes_sha256"  # form 2 of an hour: the digest of the minutes under it

KINDS: dict[str, SealedKind] = {
    kind.name: kind
    for kind in (
        SealedKind("hours", schema.hours, (*_PERIOD_FIELDS, *_FORM2_EXTRA), _PERIOD_FIELDS),
        SealedKind("substitutions", schema.substitutions,
                   (*_SUBSTITUTION_FIELDS, *_FORM2_EXTRA), _SUBSTITUTION_FIELDS,
                   json_fields=("source_hours",)),
        SealedKind("production_days", schema.production_days,
                   ("day", "tonnes", "source", "revision", "supersedes", *_FORM2_EXTRA),
                   periodic=False),
        SealedKind("audit_log", schema.audit_log,
                   ("at", "actor", "action", "target", "reason", "before", "after", "host"),
                   json_fields=("before", "after"), periodic=False),
    )
}
# the minutes under an hour, as its digest covers them (not sealed on their own)
MINUTES = SealedKind("minutes", schema.minutes, (*_PERIOD_FIELDS, *_FORM2_EXTRA))
REVISED = (KINDS["hours"], KINDS["substitutions"], KINDS["production_days"], MINUTES)


# --- canonical form ----------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """Keys sorted, no spaces, floats as C printf %.17g, strings as JSON escapes them
    (non-ASCII kept, UTF-8 when hashed), None as null (forms 1 and 2 alike)."""
    # Sealing and verify canonicalise every minute under every hour: the exact types first
    # (a dict lookup), the isinstance chain for the rest (bool before int, subclasses).
    fast = _EXACT.get(type(value))
    if fast is not None:
        return fast(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict):
        return _object(value)
    if isinstance(value, list | tuple):
        return _array(value)
    raise TypeError(f"no canonical form for {type(value).__name__}")


_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


def _string(text: str) -> str:
    """As json.dumps(ensure_ascii=False) writes it; most strings need no escape at all."""
    if _NEEDS_ESCAPE.search(text) is None:
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False)


def _object(value: dict[Any, Any]) -> str:
    return "{" + ",".join([f"{_string(str(k))}:{canonical_json(v)}"
                           for k, v in sorted(value.items())]) + "}"


def _array(value: list[Any] | tuple[Any, ...]) -> str:
    return "[" + ",".join([canonical_json(v) for v in value]) + "]"


def _float(x: float) -> str:
    if math.isnan(x):
        return '"NaN"'
    if math.isinf(x):
        return '"Infinity"' if x > 0 else '"-Infinity"'
    return format(x, ".17g")


_EXACT: dict[type, Callable[[Any], str]] = {
    type(None): lambda _: "null", bool: lambda b: "true" if b else "false", int: str,
    float: _float, str: _string, dict: _object, list: _array, tuple: _array,
}


def utc_text(moment: datetime) -> str:
    """A timestamp in the canonical form: ISO 8601 UTC with Z, microseconds only if any."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def canonical_document(kind: SealedKind, row: Any, form: int = 1,
                       minutes_sha256: str | None = None) -> dict[str, Any]:
    """The fields of a record as the canonical form types them (by declared column type).
    Form 2 of an hour also carries the digest of its minutes (minutes_digest())."""
    names = kind.form1_fields if form == 1 else kind.fields
    if form not in FORMS or not names:
        raise Malformed(f"{kind.name} has no canonical form {form}")
    doc: dict[str, Any] = {"form": form, "table": kind.name}
    for name in names:
        doc[name] = _typed(kind, name, getattr(row, name))
    if form == 2 and kind.name == "hours":
        doc[MINUTES_FIELD] = minutes_sha256
    return doc


def _typed(kind: SealedKind, name: str, value: Any) -> Any:
    if value is None:
        return None
    convert = _CONVERTERS.get((kind.name, name))
    if convert is None:
        convert = _CONVERTERS[kind.name, name] = _converter(kind, name)
    return convert(value)


_CONVERTERS: dict[tuple[str, str], Callable[[Any], Any]] = {}


def _converter(kind: SealedKind, name: str) -> Callable[[Any], Any]:
    """How a column's value is typed in the canonical form (by its declared type)."""
    column_type = kind.table.c[name].type
    if name in kind.json_fields:
        return json_value
    if isinstance(column_type, UTCDateTime):
        return utc_text
    if isinstance(column_type, Date):
        return lambda value: value.isoformat()
    if isinstance(column_type, Float):
        return float
    if isinstance(column_type, Integer):
        return int
    return str


def json_value(text: str | None) -> Any:
    """A JSON text column's value; text that is not JSON stands for itself."""
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return text


def record_hash(kind: SealedKind, row: Any, form: int = 1,
                minutes_sha256: str | None = None) -> str:
    text = canonical_json(canonical_document(kind, row, form, minutes_sha256))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def minutes_digest(minutes: Iterable[Any]) -> str:
    """SHA-256 of the canonical JSON list of the minutes' form 2 documents, in (ts,
    revision, id) order: every revision of every minute under an hour as it was written."""
    ordered = sorted(minutes, key=lambda m: (m.ts, m.revision, m.id))
    text = canonical_json([canonical_document(MINUTES, m, 2) for m in ordered])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def link_hash(prev_hash: str, rec_hash: str) -> str:
    return hashlib.sha256((prev_hash + rec_hash).encode("ascii")).hexdigest()


# --- reading rows raw: a malformed value is a finding, not a crash ----------------------------


def raw_select(table: Table) -> Any:
    """Every column of the table, untouched by SQLAlchemy's type processing."""
    return select(*[type_coerce(c, NullType()).label(c.name) for c in table.c])


def parse_row(table: Table, raw: Any) -> SimpleNamespace:
    """A raw row with each value checked and typed by its declared column, or Malformed
    naming the column and the value."""
    return _typed_row(table, {c.name: getattr(raw, c.name) for c in table.c},
                      f"{table.name} id {getattr(raw, 'id', '?')}", _parse)


def _typed_row(table: Table, values: dict[str, Any], where: str,
               convert: Callable[[Any, Any], Any]) -> SimpleNamespace:
    typed = {}
    for column in table.c:
        value = values.get(column.name)
        try:
            typed[column.name] = None if value is None else convert(column.type, value)
        except (TypeError, ValueError, OverflowError):
            raise Malformed(f"{where}: {column.name} = {value!r} is not a "
                            f"{_type_name(column.type)}") from None
    return SimpleNamespace(**typed)


def _parse(column_type: Any, value: Any) -> Any:
    if isinstance(column_type, UTCDateTime):
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
        if moment.tzinfo is not None:
            raise ValueError("stored with a zone")
        return moment.replace(tzinfo=UTC)
    if isinstance(column_type, Date):
        return value if isinstance(value, date) else date.fromisoformat(value)
    if isinstance(column_type, Float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("not a number")
        return float(value)
    if isinstance(column_type, Integer):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("not an integer")
        return value
    if not isinstance(value, str):
        raise TypeError("not text")
    return value


def parse_text(table: Table, values: dict[str, Any], where: str) -> SimpleNamespace:
    """A row written as text (a bundle's CSV cells or JSON strings; empty or null = None)
    typed by its declared columns, as parse_row would read it from the database; Malformed
    names `where`, the column and the value. Columns absent from `values` are None."""
    texts = {name: None if text in (None, "") else str(text) for name, text in values.items()}
    return _typed_row(table, texts, where,
                      lambda column_type, text: _parse(column_type, _from_text(column_type, text)))


def _from_text(column_type: Any, text: str) -> Any:
    if isinstance(column_type, UTCDateTime):
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
    if isinstance(column_type, Float):
        return float(text)
    if isinstance(column_type, Integer):
        return int(text)
    return text


def _type_name(column_type: Any) -> str:
    if isinstance(column_type, UTCDateTime):
        return "timestamp"
    if isinstance(column_type, Date):
        return "date"
    return {Float: "number", Integer: "integer"}.get(
        next((t for t in (Float, Integer) if isinstance(column_type, t)), str), "text")


@dataclass
class Loaded:
    """Rows read raw: the ones that parse, by id, and what is wrong with the others."""

    rows: dict[int, SimpleNamespace] = field(default_factory=dict)
    malformed: dict[int, str] = field(default_factory=dict)


def load(db: Database, table: Table, query: Any) -> Loaded:
    """Rows of a raw_select() query, parsed; rows without a usable id are skipped."""
    out = Loaded()
    for raw in db.fetch(query):
        key = raw.id if isinstance(raw.id, int) else None
        if key is None:
            continue
        try:
            out.rows[key] = parse_row(table, raw)
        except Malformed as exc:
            out.malformed[key] = str(exc)
    return out


def minutes_under(db: Database, hours: Sequence[Any]) -> dict[tuple[str, datetime], list[Any]]:
    """The minutes of each hour (channel, start), every revision, read raw; a malformed
    minute raises Malformed when its hour's digest is taken (it cannot be hashed)."""
    if not hours:
        return {}
    loaded = Loaded()
    for cluster in _clusters(hours):  # a late correction of an old hour: read two spans
        m = schema.minutes.c
        part = load(db, schema.minutes, raw_select(schema.minutes).where(
            m.channel.in_(sorted({h.channel for h in cluster})), m.ts >= cluster[0].ts,
            m.ts < cluster[-1].ts.timestamp() + HOUR))
        loaded.rows.update(part.rows)
        loaded.malformed.update(part.malformed)
    return group_minutes(hours, loaded.rows.values(), list(loaded.malformed.values()))


def group_minutes(hours: Sequence[Any], minutes: Iterable[Any], malformed: Sequence[str] = ()
                  ) -> dict[tuple[str, datetime], list[Any]]:
    """The minutes under each hour (channel, start); minutes under no given hour are left
    out. A malformed minute cannot be placed under an hour: every hour gets it (and its
    digest raises Malformed). (hour_key places a minute for the bundle's verifier too.)"""
    starts = {(h.channel, h.ts) for h in hours}
    offsets = hour_offsets(hours)
    under: dict[tuple[str, datetime], list[Any]] = defaultdict(list)
    for minute in minutes:
        key = hour_key(minute, offsets)
        if key in starts:
            under[key].append(minute)  # type: ignore[index]
    if malformed:  # cannot tell which hour it lies under: every hour is suspect
        problem = "; ".join(malformed)
        for h in hours:
            under[(h.channel, h.ts)].append(Malformed(problem))
    return under


def _clusters(hours: Sequence[Any], gap: float = 24 * HOUR) -> list[list[Any]]:
    """Hours sorted by start, split where more than `gap` lies between two."""
    ordered = sorted(hours, key=lambda h: h.ts)
    out = [[ordered[0]]]
    for hour in ordered[1:]:
        if (hour.ts - out[-1][-1].ts).total_seconds() > gap:
            out.append([])
        out[-1].append(hour)
    return out


def hour_offsets(hours: Iterable[Any]) -> dict[str, float]:
    """Where each channel's hours start within a UTC hour (s): plant hours may be offset."""
    return {h.channel: h.ts.timestamp() % HOUR for h in hours}


def hour_key(minute: Any, offsets: dict[str, float]) -> tuple[str, datetime] | None:
    """(channel, start) of the hour a minute lies under, None for a channel without hours."""
    base = offsets.get(minute.channel)
    if base is None:
        return None
    start = (minute.ts.timestamp() - base) // HOUR * HOUR + base
    return (minute.channel, datetime.fromtimestamp(start, UTC))


def hour_minutes_digest(hour: Any, under: dict[tuple[str, datetime], list[Any]]) -> str:
    """The digest of the minutes an hour covers: those written no later than the hour."""
    minutes = under.get((hour.channel, hour.ts), [])
    bad = next((m for m in minutes if isinstance(m, Malformed)), None)
    if bad is not None:
        raise bad
    return minutes_digest(m for m in minutes if m.created_at <= hour.created_at)


def hash_record(kind: SealedKind, row: Any, form: int,
                under: dict[tuple[str, datetime], list[Any]]) -> str:
    """record_hash in the given form, with the hour's minute digest where form 2 needs it."""
    digest = (hour_minutes_digest(row, under) if form == 2 and kind.name == "hours"
              else None)
    return record_hash(kind, row, form, digest)


# --- sealing ---------------------------------------------------------------------------------


def due_before(now: float, finalise_after_hours: float) -> float:
    """Periods starting at or before this (epoch) have ended at least the delay ago."""
    return now - HOUR - finalise_after_hours * HOUR


def audited_clause(t: Table) -> Any:
    """SQL: the row is revision 0, or names an audited correction written no later. The
    audit actions that may stand behind a revision: `correction.*`, `production.import`."""
    a = schema.audit_log.c
    correction = or_(func.substr(a.action, 1, 11) == "correction.",
                     a.action == "production.import")
    return or_(t.c.revision == 0, exists().where(
        a.id == t.c.audit_id, correction, a.at <= t.c.created_at))


def unsealed_clause(kind: SealedKind) -> Any:
    t, c = kind.table, schema.chain.c
    return ~exists().where(c.record_table == kind.name, c.record_id == t.c.id)


def _sealable(kind: SealedKind, through: float) -> Any:
    t = kind.table
    where = [unsealed_clause(kind)]
    if kind.periodic:
        where.append(t.c.ts <= through)
    if "revision" in t.c:
        where.append(audited_clause(t))
    return and_(*where)


def seal_due(db: Database, through: float, sealed_at: float, batch: int = _SEAL_BATCH) -> int:
    """Seal every unsealed record that is final at `sealed_at` (periods starting at or
    before `through`, every production day and audit entry); returns how many. A backlog
    is sealed `batch` records per transaction, whole periods at a time. Rows refused (a
    revision without an audited correction, a malformed row) stay unsealed: refused()."""
    sealed, skip = 0, set[tuple[str, int]]()
    while True:
        records, bad = _next_due(db, through, batch, skip)
        skip |= bad
        if records:
            records.sort(key=lambda r: r[:4])
            _append(db, [(kind, row, hashes) for *_, kind, row, hashes in records], sealed_at)
            sealed += len(records)
        elif not bad:
            return sealed


def _next_due(db: Database, through: float, batch: int, skip: set[tuple[str, int]]
              ) -> tuple[list[tuple[Any, ...]], set[tuple[str, int]]]:
    """The earliest unsealed due records of every table, cut at a period boundary, and the
    ids of rows found malformed (to skip)."""
    fetched, bad = [], set()
    for kind in KINDS.values():
        t = kind.table.c
        skipped = [i for name, i in skip if name == kind.name]
        query = (raw_select(kind.table).where(_sealable(kind, through), t.id.not_in(skipped))
                 .order_by(t.ts if kind.periodic else t.id, t.id).limit(batch))
        loaded = load(db, kind.table, query)
        bad |= {(kind.name, i) for i in loaded.malformed}
        rows = list(loaded.rows.values())
        under = minutes_under(db, rows) if kind.name == "hours" else {}
        good = []
        for row in rows:
            try:  # hashed once: what cannot be hashed is skipped, the rest sealed with it
                good.append((row, _seal_hashes(kind, row, under)))
            except (Malformed, TypeError, ValueError):
                bad.add((kind.name, row.id))
        full = kind.periodic and len(loaded.rows) + len(loaded.malformed) == batch
        fetched.append((kind, good, full and good))
    # a table that filled its batch may have more records in its last period: leave that
    # period (and later ones of the other tables) for the next round
    cut = min((rows[-1][0].ts for _, rows, full in fetched if full), default=None)
    records = [(kind.link_time(row).timestamp(), kind.link_channel(row), kind.name, row.id,
                kind, row, hashes)
               for kind, rows, _ in fetched for row, hashes in rows
               if cut is None or not kind.periodic or row.ts < cut]
    if not records and cut is not None and not bad:  # one period holds more than a batch
        records = _whole_period(db, cut)
    return records, bad


def _whole_period(db: Database, start: datetime) -> list[tuple[Any, ...]]:
    out = []
    for kind in KINDS.values():
        if not kind.periodic:
            continue
        loaded = load(db, kind.table, raw_select(kind.table).where(
            _sealable(kind, start.timestamp()), kind.table.c.ts == start))
        rows = list(loaded.rows.values())
        under = minutes_under(db, rows) if kind.name == "hours" else {}
        out += [(start.timestamp(), row.channel, kind.name, row.id, kind, row,
                 _seal_hashes(kind, row, under)) for row in rows]
    return out


def _seal_hashes(kind: SealedKind, row: Any, under: dict[tuple[str, datetime], list[Any]]
                 ) -> tuple[str, str | None]:
    """(record hash, minutes digest) of a record in the form sealing writes."""
    digest = hour_minutes_digest(row, under) if kind.name == "hours" and FORM == 2 \
        else None  # form 1 does not cover the minutes
    return record_hash(kind, row, FORM, digest), digest


def _append(db: Database, records: Sequence[tuple[SealedKind, Any, tuple[str, str | None]]],
            sealed_at: float) -> None:
    c = schema.chain.c
    with db.transaction() as conn:
        head = conn.execute(select(c.seq, c.chain_hash).order_by(c.seq.desc()).limit(1)).first()
        seq, prev = (int(head.seq), head.chain_hash) if head else (0, GENESIS)
        links = []
        for kind, row, (rec, digest) in records:
            seq += 1
            chained = link_hash(prev, rec)
            links.append({"seq": seq, "record_table": kind.name, "record_id": row.id,
                          "channel": kind.link_channel(row), "ts": kind.link_time(row),
                          "form": FORM, "record_hash": rec, "prev_hash": prev,
                          "chain_hash": chained, "sealed_at": sealed_at,
                          "minutes_sha256": digest})
            prev = chained
        if links:
            conn.execute(insert(schema.chain), links)


@dataclass(frozen=True)
class Refused:
    """A row the daemon will not seal, and why."""

    table: str
    record_id: int
    channel: str
    ts: datetime | None
    revision: Any
    why: str


def refused(db: Database, through: float) -> list[Refused]:
    """Unsealed rows due for sealing that cannot be sealed: a revision above 0 without an
    audited correction, or a malformed row."""
    out = []
    for kind in REVISED[:3]:
        t = kind.table
        query = raw_select(t).where(unsealed_clause(kind), not_(audited_clause(t)))
        if kind.periodic:
            query = query.where(t.c.ts <= through)
        for row in db.fetch(query):
            out.append(Refused(kind.name, row.id, str(getattr(row, "channel", PRODUCTION_CHANNEL)),
                               time_or_none(row.ts if kind.periodic else row.created_at),
                               row.revision, "revision above 0 without an audited correction"))
    return out


def time_or_none(value: Any) -> datetime | None:
    try:
        return _parse(UTCDateTime(), value)  # type: ignore[no-any-return]
    except (TypeError, ValueError):
        return None


# --- reading the chain --------------------------------------------------------------------------


def head(db: Database) -> Any | None:
    """The newest link, or None while nothing is sealed."""
    c = schema.chain.c
    rows = db.fetch(select(schema.chain).order_by(c.seq.desc()).limit(1))
    return rows[0] if rows else None


def links_after(db: Database, after_seq: int, limit: int) -> list[Any]:
    c = schema.chain.c
    return db.fetch(select(schema.chain).where(c.seq > after_seq).order_by(c.seq).limit(limit))


def link_document(link: Any) -> dict[str, Any]:
    """A link as JSON (MQTT `chain.links`, docs/MQTT.md): what a witness needs to recompute
    it from the previous link and the record (cemsd/fleet/witness.py)."""
    return {"seq": int(link.seq), "table": link.record_table, "record_id": int(link.record_id),
            "channel": link.channel, "ts": utc_text(link.ts), "form": int(link.form),
            "record_hash": link.record_hash, "minutes_sha256": link.minutes_sha256,
            "prev_hash": link.prev_hash, "chain_hash": link.chain_hash,
            "sealed_at": utc_text(link.sealed_at)}


def seals_for(db: Database, table: str, record_ids: Iterable[int]) -> dict[int, Any]:
    """Links of the given records of one table, by record id."""
    ids = list(record_ids)
    if not ids:
        return {}
    c = schema.chain.c
    rows = db.fetch(select(c.seq, c.record_id, c.record_hash, c.chain_hash)
                    .where(c.record_table == table, c.record_id.in_(ids)))
    return {int(r.record_id): r for r in rows}


def unsealed_count(db: Database) -> int:
    """Stored records without a link (not final yet, or the daemon has not sealed them)."""
    total = 0
    for kind in KINDS.values():
        query = select(kind.table.c.id).where(unsealed_clause(kind)).subquery()
        total += int(db.fetch(select(func.count()).select_from(query))[0][0])
    return total


# --- verification of the links ----------------------------------------------------------------


@dataclass(frozen=True)
class Break:
    """A finding: a broken link (seq), or a record or chain fault outside a link (seq None)."""

    seq: int | None
    record_table: str
    record_id: int | None
    channel: str
    ts: datetime | None
    problem: str  # record changed | record deleted | chain link broken | ... (see docs)
    detail: str


@dataclass
class Verification:
    links: int = 0
    by_table: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    head: Any | None = None
    breaks: list[Break] = field(default_factory=list)
    # sealed hours (channel, start): the newest sealed revision's created_at, and the newest
    # minute under the hour (a later minute is not covered by any seal)
    hour_written: dict[tuple[str, datetime], datetime] = field(default_factory=dict)
    minute_written: dict[tuple[str, datetime], datetime] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.breaks


def verify(db: Database) -> Verification:
    """Recompute every sealed record's hash from its current row and check every link.
    Each link is checked against the previous link as stored, so one changed record
    breaks one link and the report names it. A malformed link or record is a break."""
    report = Verification()
    expected_seq, prev_hash, after = 1, GENESIS, 0
    c = schema.chain.c
    while raw := db.fetch(raw_select(schema.chain).where(c.seq > after).order_by(c.seq)
                          .limit(_VERIFY_BATCH)):
        links = [_parse_link(r) for r in raw]
        records = _records(db, [ln for ln in links if not isinstance(ln, Break)])
        for link in links:
            if isinstance(link, Break):
                report.breaks.append(link)
                continue
            problem = _check(link, records, expected_seq, prev_hash)
            if problem is not None:
                report.breaks.append(Break(link.seq, link.record_table, link.record_id,
                                           link.channel, link.ts, *problem))
            elif link.record_table == "hours":
                _note_cover(report, records[("hours", link.record_id)], records["minutes"])
            report.by_table[link.record_table] += 1
            expected_seq, prev_hash = link.seq + 1, link.chain_hash
            report.head = link
        report.links += len(raw)
        after = int(raw[-1].seq)
    return report


def _note_cover(report: Verification, hour: Any,
                under: dict[tuple[str, datetime], list[Any]]) -> None:
    key = (hour.channel, hour.ts)
    report.hour_written[key] = max(hour.created_at, report.hour_written.get(key, hour.created_at))
    for minute in under.get(key, []):
        newest = report.minute_written.get(key, minute.created_at)
        report.minute_written[key] = max(newest, minute.created_at)


def _parse_link(raw: Any) -> Any:
    try:
        return parse_row(schema.chain, raw)
    except Malformed as exc:
        return Break(raw.seq, str(raw.record_table), None, str(raw.channel), None,
                     "chain link malformed", str(exc))


def _records(db: Database, links: Sequence[Any]) -> dict[tuple[str, int], Any]:
    """The sealed records (parsed, or the Malformed found) and the minutes under hours."""
    wanted: dict[str, list[int]] = defaultdict(list)
    for link in links:
        wanted[link.record_table].append(link.record_id)
    found: dict[Any, Any] = {}
    for name, ids in wanted.items():
        kind = KINDS.get(name)
        if kind is None:
            continue
        loaded = load(db, kind.table, raw_select(kind.table).where(kind.table.c.id.in_(ids)))
        found.update({(name, i): row for i, row in loaded.rows.items()})
        found.update({(name, i): Malformed(why) for i, why in loaded.malformed.items()})
        if name == "hours":
            found["minutes"] = minutes_under(db, list(loaded.rows.values()))
    return found


def _check(link: Any, records: dict[Any, Any], expected_seq: int, prev_hash: str
           ) -> tuple[str, str] | None:
    if link.seq != expected_seq:
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
    row = records.get((link.record_table, link.record_id))
    if row is None:
        return ("record deleted", f"{link.record_table} row id {link.record_id} is gone")
    if isinstance(row, Malformed):
        return ("record malformed", str(row))
    return check_record(kind, row, link, records.get("minutes", {}))


def check_record(kind: SealedKind, row: Any, link: Any,
                 under: dict[tuple[str, datetime], list[Any]]) -> tuple[str, str] | None:
    """A record against its link (form, record_hash, minutes_sha256, channel, ts): None if
    it hashes to the link, else (problem, detail). `under`: the minutes under the hours."""
    try:
        recomputed = hash_record(kind, row, link.form, under)
    except Malformed as exc:
        return ("record malformed", str(exc))
    if recomputed != link.record_hash:
        return _changed(kind, row, link, under)
    if (kind.link_channel(row), kind.link_time(row)) != (link.channel, link.ts):
        return ("chain link altered", "the link's channel or time differs from its record's")
    return None


def _changed(kind: SealedKind, row: Any, link: Any,
             under: dict[tuple[str, datetime], list[Any]]) -> tuple[str, str]:
    """Which part changed: the record itself, or (form 2 hour) only the minutes under it
    (the hour's fields still hash to the seal with the minute digest the link kept)."""
    if link.form == 2 and kind.name == "hours" and link.minutes_sha256 is not None \
            and record_hash(kind, row, 2, link.minutes_sha256) == link.record_hash:
        digest = hour_minutes_digest(row, under)
        return ("minutes changed", f"the minutes under this hour digest to {digest[:16]}"
                                   f"..., sealed as {link.minutes_sha256[:16]}...")
    return ("record changed", f"the stored record no longer hashes to "
                              f"{link.record_hash[:16]}...")
