"""One channel's answer of GET /v1/hours/columns, with its sealed days pre-serialised
(decision 0260).

The database producing a year's 87,600 joined hour rows takes about 300 ms on its own
(docs/PERFORMANCE.md). A sealed hour is final (cemsd/chain.py), so each channel's UTC day
whose current hours are all sealed is kept as the JSON fragments of its arrays, in both
layouts of the answer (`hour_column_days`; the compact one's runs restart at each day,
decision 0261); an answer joins the kept fragments and queries only the rest (the open
tail, a partial first or last day, a day changed since it was kept). The bytes are those
of the arrays built from the rows in one go: JSON arrays concatenate by their items.
Usually the kept days of a span are consecutive, unchanged and of one unit: one aggregate
query then checks them and joins their fragments, with no Python per day.

A kept day is served only while it still matches the database:
- its fingerprint, the number of hour and substitution rows of the day (every revision)
  and the highest id of each, is unchanged: a correction (a new revision), a new
  substitution, a row deleted or added make it stale (checked for consecutive days at
  once: ids only grow, so the sums of the counts and the highest id do);
- its last link in the chain still has the chain hash it had: a chain rebuilt from an
  earlier record (the tamper that re-chains) makes it stale.
A stale day is answered from the rows and kept again if still sealed. The fingerprint is
read before the rows a day is kept from, so a change in between leaves the kept day
stale, never a stale day looking current. A value changed in place without re-chaining
keeps being served as it was sealed (what the chain says) and `cemsd verify`, which reads
the records and the chain, never this table, reports it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import Any

import pydantic_core
from sqlalchemy import (
    BigInteger,
    String,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from cemsd.api.columns_compact import (
    DELTAS,
    LAYOUT,
    RUNS,
    STEPS,
    encode_deltas,
    encode_runs,
    encode_steps,
)
from cemsd.api.routes.periods import current_revision
from cemsd.errors import StorageError
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.store.schema import UTCDateTime

log = logging.getLogger(__name__)

DAY = 86400
FIELDS = ("channel", "unit", "start_epoch", "value", "flag", "n_valid", "revision",
          "substitute_value", "substitute_method", "seal_seq")
ARRAYS = FIELDS[2:]  # one JSON array each, in this order after channel, unit and units
# hour_column_days' columns of each layout: each hour's unit, then one per array of ARRAYS
# (the compact layout shares `value`, decision 0261)
PARTS = {"arrays": tuple(f"json_{name}" for name in ("units", *ARRAYS)),
         LAYOUT: tuple("json_value" if name == "value" else f"compact_{name}"
                       for name in ("units", *ARRAYS))}

Fingerprint = tuple[int, int, int, int | None]  # hour rows, last hour id, substitutions, last id


class _EpochSeconds(FunctionElement[int]):
    """A UTC timestamp column as integer epoch seconds, computed by the database."""

    type = BigInteger()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(_EpochSeconds, "sqlite")
def _sqlite_epoch(element: _EpochSeconds, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    if compiler.dialect.dbapi.sqlite_version_info >= (3, 38, 0):
        return f"unixepoch({column})"  # about 15 % faster than strftime over a year's hours
    return f"CAST(strftime('%s', {column}) AS INTEGER)"


@compiles(_EpochSeconds)
def _epoch(element: _EpochSeconds, compiler: Any, **kw: Any) -> str:
    # PostgreSQL: the naive UTC timestamp's epoch is taken as UTC.
    column = compiler.process(element.clauses, **kw)
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {column})) AS BIGINT)"


def query(t0: float, t1: float, channels: tuple[str, ...]) -> Any:
    """Current hours of the span with their current substitution and link, in one query."""
    h, link, s = schema.hours.c, schema.chain.c, schema.substitutions.c
    # No time range here: SQLite would search each hour's substitute by that range instead
    # of by its (channel, ts) key, scanning the whole span per hour.
    substitutes = (select(s.channel, s.ts, s.value, s.method)
                   .where(current_revision(schema.substitutions)).subquery())
    sub = substitutes.c
    joined = (schema.hours
              .outerjoin(schema.chain, (link.record_table == "hours") & (link.record_id == h.id))
              .outerjoin(substitutes, (sub.channel == h.channel) & (sub.ts == h.ts)))
    query = (select(h.channel, h.unit, _EpochSeconds(h.ts), h.value, h.flag, h.n_valid,
                    h.revision, sub.value, sub.method, link.seq)
             .select_from(joined)
             .where(h.ts >= t0, h.ts < t1, current_revision(schema.hours))
             .order_by(h.channel, h.ts))
    if channels:
        query = query.where(h.channel.in_(channels))
    return query


# One channel's hours of a span, built once: constructing the query costs more than a
# small span's rows.
_CHANNEL_HOURS = query(bindparam("t0", type_=UTCDateTime), bindparam("t1", type_=UTCDateTime),
                       ()).where(schema.hours.c.channel == bindparam("name"))


@dataclass(frozen=True)
class Piece:
    """A run of one channel's hours within a UTC day (or whole kept days), as JSON
    fragments."""

    day: int | None  # the UTC day's start, epoch seconds (None: hours without a readable time)
    units: frozenset[str]
    last_unit: str
    parts: dict[str, tuple[bytes, ...]]  # per layout: as the columns of PARTS
    seal_seq: int | None  # the last link when every hour is sealed, else None
    days: int = 1  # kept days joined by the database: the whole days from `day`


def channel_json(db: Database, t0: float, t1: float, name: str, layout: str = "arrays"
                 ) -> bytes:
    """In a worker process: one channel's object of arrays in `layout` (empty without
    hours), from its kept sealed days and the rows of the rest; keeps the whole sealed
    days it built (in every layout)."""
    first, end = math.ceil(t0 / DAY) * DAY, math.floor(t1 / DAY) * DAY  # the span's whole days
    kept, stale = _kept(db, name, first, end, layout) if first < end else ([], [])
    pieces: list[Piece] = []
    built: list[Piece] = []
    prints: dict[int, Fingerprint] = {}
    for gap_or_kept in _plan(t0, t1, kept):
        if isinstance(gap_or_kept, Piece):
            pieces.append(gap_or_kept)
            continue
        a, b = gap_or_kept
        whole = (max(a, first), min(b, end))  # kept days are whole: so are the gaps' ends
        if whole[0] < whole[1]:  # read before the rows: see the module's docstring
            prints.update(_fingerprints(db, name, *whole))
        new = pieces_of(db.fetch(_CHANNEL_HOURS.params(name=name, t0=a, t1=b)))
        pieces.extend(new)
        built.extend(p for p in new if p.day is not None and first <= p.day < end)
    _keep(db, name, built, prints, stale)
    return assemble(name, pieces, layout)


def _plan(t0: float, t1: float, kept: Sequence[Piece]) -> Iterator[Piece | tuple[float, float]]:
    """The span in order: kept days, or a (start, end) span to query."""
    at = t0
    for piece in kept:
        assert piece.day is not None
        if piece.day > at:
            yield (at, piece.day)
        yield piece
        at = piece.day + piece.days * DAY
    if at < t1:
        yield (at, t1)


def pieces_of(rows: Sequence[Any]) -> list[Piece]:
    """One channel's rows in start order -> one piece per UTC day, in the same order."""
    columns = {field: list(map(itemgetter(i), rows)) for i, field in enumerate(FIELDS)}
    pieces, first = [], 0
    for day, hours in groupby(columns["start_epoch"], _day_of):
        last = first + sum(1 for _ in hours)
        units = columns["unit"][first:last]
        seals = columns["seal_seq"][first:last]
        parts = _parts(units, {f: columns[f][first:last] for f in ARRAYS})
        pieces.append(Piece(day, frozenset(units), units[-1], parts,
                            None if None in seals else max(seals)))
        first = last
    return pieces


def _day_of(start: int | None) -> int | None:
    return None if start is None else start - start % DAY


def _parts(units: list[str], columns: dict[str, list[Any]]) -> dict[str, tuple[bytes, ...]]:
    """A day's fragments in every layout."""
    arrays = {f: _fragment(columns[f]) for f in ARRAYS}
    compact = {f: _fragment(_ENCODE[f](columns[f])) if f in _ENCODE else arrays[f]
               for f in ARRAYS}
    return {"arrays": (_fragment(units), *arrays.values()),
            LAYOUT: (_fragment(encode_runs(units)), *compact.values())}


_ENCODE = {**dict.fromkeys(RUNS, encode_runs), **dict.fromkeys(STEPS, encode_steps),
           **dict.fromkeys(DELTAS, encode_deltas)}


def _fragment(values: list[Any]) -> bytes:
    # NaN is not a JSON number, it means "no value" (as listing.respond serialises it)
    return pydantic_core.to_json(values, inf_nan_mode="null")[1:-1]


def assemble(name: str, pieces: Sequence[Piece], layout: str = "arrays") -> bytes:
    """The channel's object of arrays in `layout` from its pieces in start order (empty
    without any), byte for byte what building them from all the rows at once gives."""
    if not pieces:
        return b""
    head = pydantic_core.to_json({"channel": name, "unit": pieces[-1].last_unit})[:-1]
    joined = [b",".join(p.parts[layout][i] for p in pieces) for i in range(len(ARRAYS) + 1)]
    mixed = len(frozenset().union(*(p.units for p in pieces))) > 1
    body = [head, b',"units":', b"[" + joined[0] + b"]" if mixed else b"null"]
    arrays = zip(ARRAYS, joined[1:], strict=True)
    body.extend(b',"%s":[%s]' % (field.encode(), part) for field, part in arrays)
    return b"".join(body) + b"}"


def _fingerprints(db: Database, name: str, first: int, end: int) -> dict[int, Fingerprint]:
    """Per UTC day of [first, end) with hours: its rows' count and highest id, hours and
    substitutions, every revision (what a kept day must still match)."""
    counts: list[dict[int, tuple[int, int]]] = []
    for table in (schema.hours, schema.substitutions):
        c = table.c
        day = _EpochSeconds(c.ts) // literal_column(str(DAY))  # one expression for GROUP BY
        rows = db.fetch(select(day, func.count(), func.max(c.id))
                        .where(c.channel == name, c.ts >= first, c.ts < end).group_by(day))
        # a time that is not one has no day (verify names the row); its day's count drops
        counts.append({n * DAY: (count, last) for n, count, last in rows if n is not None})
    hours, substitutions = counts
    return {day: (n, last, *substitutions.get(day, (0, None))) for day, (n, last) in hours.items()}


def _kept(db: Database, name: str, first: int, end: int, layout: str
          ) -> tuple[list[Piece], list[int]]:
    """The kept days of [first, end) in `layout` that still match their last link and
    fingerprint, in day order, and the kept days that no longer do."""
    whole = _whole_run(db, name, first, end, layout)
    return ([whole], []) if whole is not None else _day_by_day(db, name, first, end, layout)


def _kept_days(name: str, first: int, end: int, layout: str) -> Any:
    """The kept days with `linked`: 1 where the day's last link still has its chain hash."""
    k, link = schema.hour_column_days.c, schema.chain.c
    linked = case((k.chain_hash == link.chain_hash, 1), else_=0).label("linked")
    return (select(k.day, k.hours, k.last_hour_id, k.substitutions, k.last_substitution_id,
                   k.units, k.last_unit, k.last_seq, linked, *(k[p] for p in PARTS[layout]))
            .outerjoin_from(schema.hour_column_days, schema.chain, link.seq == k.last_seq)
            .where(k.channel == name, k.day >= first, k.day < end).order_by(k.day))


def _whole_run_query(layout: str) -> Any:
    """The aggregate of _whole_run, of the channel `name`'s days [`first`, `end`)."""
    o = _kept_days(bindparam("name"), bindparam("first"), bindparam("end"), layout
                   ).subquery().c
    return select(
        func.count(), func.min(o.day), func.max(o.day), func.sum(o.linked),
        func.count(o.units.distinct()), func.max(o.units), func.max(o.last_unit),
        func.sum(o.hours), func.max(o.last_hour_id), func.sum(o.substitutions),
        func.max(o.last_substitution_id), func.aggregate_strings(cast(o.day, String), ","),
        *(func.aggregate_strings(o[part], ",") for part in PARTS[layout]))


# Built once per layout, as _CHANNEL_HOURS: building them took about a fifth of a year
# pull's time in the worker.
_WHOLE_RUN = {layout: _whole_run_query(layout) for layout in PARTS}


def _whole_run(db: Database, name: str, first: int, end: int, layout: str) -> Piece | None:
    """The usual case at once: the kept days are consecutive, all still linked, of one
    unit and unchanged, and the database joins their fragments (no Python per day).
    None when any of that does not hold."""
    row = db.fetch(_WHOLE_RUN[layout].params(name=name, first=first, end=end))[0]
    n, start, last, linked, n_units, units, last_unit, *prints, days = row[:12]
    if not n or linked != n or n_units != 1 or (last - start) // DAY + 1 != n:
        return None
    if days != ",".join(map(str, range(start, last + DAY, DAY))):  # aggregated out of order
        return None
    if not _unchanged(db, name, start, last + DAY, tuple(prints)):
        return None
    return Piece(start, frozenset(json.loads(units)), last_unit,
                 {layout: tuple(part.encode() for part in row[12:])}, None, n)


def _day_by_day(db: Database, name: str, first: int, end: int, layout: str
                ) -> tuple[list[Piece], list[int]]:
    """The kept days checked run by run of consecutive days, and day by day in a run
    that changed."""
    rows = db.fetch(_kept_days(name, first, end, layout))
    current, stale = [], [row for row in rows if not row.linked]
    for run in _runs([row for row in rows if row.linked]):
        totals = (sum(r.hours for r in run), max(r.last_hour_id for r in run),
                  sum(r.substitutions for r in run),
                  max((r.last_substitution_id for r in run
                       if r.last_substitution_id is not None), default=None))
        if _unchanged(db, name, run[0].day, run[-1].day + DAY, totals):
            current.extend(run)
            continue
        prints = _fingerprints(db, name, run[0].day, run[-1].day + DAY)
        for row in run:
            (current if prints.get(row.day) == tuple(row[1:5]) else stale).append(row)
    pieces = [Piece(row.day, frozenset(json.loads(row.units)), row.last_unit,
                    {layout: tuple(row._mapping[part].encode() for part in PARTS[layout])},
                    row.last_seq)
              for row in current]
    return sorted(pieces, key=lambda p: p.day or 0), [row.day for row in stale]


def _runs(rows: Sequence[Any]) -> Iterator[list[Any]]:
    """Kept days in day order -> runs of consecutive days."""
    run: list[Any] = []
    for row in rows:
        if run and row.day != run[-1].day + DAY:
            yield run
            run = []
        run.append(row)
    if run:
        yield run


def _unchanged(db: Database, name: str, t0: int, t1: int, prints: Fingerprint) -> bool:
    """Whether consecutive kept days [t0, t1) still have the rows they were built from, at
    once: ids only grow, so a row added anywhere among them raises the highest id, a row
    removed lowers the count. Two counts over the (channel, ts) index, not one per day."""
    return (*_count(db, schema.hours, name, t0, t1),
            *_count(db, schema.substitutions, name, t0, t1)) == prints


def _count_query(table: Any) -> Any:
    c = table.c
    return select(func.count(), func.max(c.id)).where(
        c.channel == bindparam("name"), c.ts >= bindparam("t0", type_=UTCDateTime),
        c.ts < bindparam("t1", type_=UTCDateTime))


_COUNT = {table: _count_query(table) for table in (schema.hours, schema.substitutions)}


def _count(db: Database, table: Any, name: str, t0: int, t1: int) -> tuple[int, int | None]:
    row = db.fetch(_COUNT[table].params(name=name, t0=t0, t1=t1))[0]
    return row[0], row[1]


def _keep(db: Database, name: str, pieces: Sequence[Piece], prints: dict[int, Fingerprint],
          stale: Sequence[int]) -> None:
    """Keep the sealed whole days among `pieces` with the fingerprint read before their
    rows, and drop the `stale` kept days. A cache: when it cannot be written the answer is
    still right, only slower."""
    due = [p for p in pieces if p.seal_seq is not None and p.day in prints]
    if not due and not stale:
        return
    link, table = schema.chain.c, schema.hour_column_days
    try:
        hashes = dict(db.fetch(select(link.seq, link.chain_hash)
                               .where(link.seq.in_([p.seal_seq for p in due]))))
        rows = [_kept_row(name, p, prints[p.day], hashes[p.seal_seq])
                for p in due if p.seal_seq in hashes]
        with db.transaction() as conn:
            conn.execute(delete(table).where(
                table.c.channel == name, table.c.day.in_([*stale, *(p.day for p in due)])))
            if rows:
                conn.execute(insert(table), rows)
    except StorageError as exc:  # e.g. another worker kept the same day at the same time
        log.warning("sealed days not kept", extra={"channel": name, "error": str(exc)})


def _kept_row(name: str, piece: Piece, fingerprint: Fingerprint, chain_hash: str
              ) -> dict[str, Any]:
    hours, last_hour, substitutions, last_substitution = fingerprint
    return {"channel": name, "day": piece.day, "hours": hours, "last_hour_id": last_hour,
            "substitutions": substitutions, "last_substitution_id": last_substitution,
            "last_seq": piece.seal_seq, "chain_hash": chain_hash,
            "units": json.dumps(sorted(piece.units)), "last_unit": piece.last_unit,
            **{column: part.decode() for layout, columns in PARTS.items()
               for column, part in zip(columns, piece.parts[layout], strict=True)}}
