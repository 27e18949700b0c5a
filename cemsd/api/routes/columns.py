"""GET /v1/hours/columns: the current hours of a span (up to a year) in one compact answer
for registry pulls: per channel, parallel arrays instead of one object per hour.

/v1/hours pages through rows of 17 fields with two SHA-256 strings each; a year of 10
channels is 46 MB of JSON and seconds of per-row Python on both ends (docs/PERFORMANCE.md).
Here the hour start is epoch seconds computed by the database, each hour's link in the hash
chain is its sequence number (the hashes are in /v1/chain/links), and each channel's rows
go from one query into the arrays and out through one serialisation, without per-row
objects. The answer is streamed channel by channel, so a request holds one channel's year
in memory, not the plant's (decision 0112).
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run
# time.

from collections.abc import Iterator
from itertools import groupby
from operator import itemgetter
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from cemsd.api.heavy import HeavyWork
from cemsd.api.limits import BUSY_DESCRIPTION
from cemsd.api.listing import (
    LATEST,
    ApiContext,
    Channels,
    From,
    To,
    bad_request,
    context,
    read_span,
)
from cemsd.api.routes.periods import current_revision
from cemsd.settings.api import ApiConfig
from cemsd.store import schema
from cemsd.store.database import Database

MAX_SPAN_DAYS = 366  # a leap year of all channels in one answer: about 9 MB for 10 channels
DAY = 86400.0


class ChannelColumns(BaseModel):
    """One channel's hours in start order; item i of every array is the same hour."""

    channel: str
    unit: Annotated[str, Field(description="the unit of the channel's latest hour in the span")]
    units: Annotated[list[str] | None, Field(
        description="each hour's unit, only when the unit changed within the span; else null")]
    start_epoch: Annotated[list[int], Field(
        description="hour start as integer epoch seconds, UTC")]
    value: Annotated[list[float | None], Field(description="hourly mean; null when none")]
    flag: Annotated[list[str], Field(description="HJ 212-2017 flag: N valid, else the cause")]
    n_valid: Annotated[list[int], Field(description="valid minutes in the hour")]
    revision: Annotated[list[int], Field(
        description="the hour's current revision (0, or the correction number)")]
    substitute_value: Annotated[list[float | None], Field(
        description="the current substitute value (HJ 75-2017, flag S) where the hour is "
                    "substituted; null otherwise")]
    substitute_method: Annotated[list[str | None], Field(
        description="how the substitute was computed, e.g. hj75.missing.before_after_mean; "
                    "null where not substituted")]
    seal_seq: Annotated[list[int | None], Field(
        description="the hour's link in the hash chain (`seq` in /v1/chain/links); null "
                    "while not yet sealed")]


class HourColumns(BaseModel):
    timezone: Annotated[str, Field(
        description="the plant's time zone (IANA); every time in the answer is UTC")]
    from_epoch: Annotated[float, Field(description="span start, inclusive, epoch seconds UTC")]
    to_epoch: Annotated[float, Field(description="span end, exclusive, epoch seconds UTC")]
    channels: Annotated[list[ChannelColumns], Field(
        description="the channels with hours in the span, by name")]


DESCRIPTION = f"""The current revision of every hour in [`from`, `to`), as /v1/hours serves
them, in one answer: per channel, parallel arrays (hour start as integer epoch seconds UTC,
value, flag, valid minutes, revision, substitute value and method, seal sequence number).
`from` and `to` are required and at most {MAX_SPAN_DAYS} days apart; same forms and errors
as /v1/hours. Not paged. Verify an hour against the hash chain with its `seal_seq` in
/v1/chain/links."""


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


def routes(settings: ApiConfig) -> APIRouter:
    router = APIRouter()

    @router.get("/hours/columns", response_model=HourColumns,
                summary="A span of hours (up to a year) as arrays per channel",
                description=DESCRIPTION,
                responses={400: {"description": "A parameter that cannot be read (time, "
                                                "channel), or a span over the limit"},
                           503: {"description": f"{BUSY_DESCRIPTION}; or the database is "
                                                f"unavailable"}})
    def hour_columns(ctx: Annotated[ApiContext, Depends(context)], start: From = None,
                     end: To = None, channel: Channels = None) -> Any:
        t0, t1, channels = read_span(ctx, start, end, channel)
        _check_span(start, end, t0, t1)
        names = _channels_with_hours(ctx.db, t0, t1, channels)
        head = {"timezone": str(ctx.tz), "from_epoch": t0, "to_epoch": t1}
        return StreamingResponse(_stream(ctx.heavy, head, t0, t1, names),
                                 media_type="application/json")

    return router


def _check_span(start: str | None, end: str | None, t0: float, t1: float) -> None:
    if start is None or end is None or t1 >= LATEST:
        raise bad_request(f"`from` and `to` are required, at most {MAX_SPAN_DAYS} days apart")
    if t1 - t0 > MAX_SPAN_DAYS * DAY:
        raise bad_request(f"span of {(t1 - t0) / DAY:.1f} days: at most {MAX_SPAN_DAYS} days "
                          f"per request; ask for a longer span in several requests")


FIELDS = ("channel", "unit", "start_epoch", "value", "flag", "n_valid", "revision",
          "substitute_value", "substitute_method", "seal_seq")


def _query(t0: float, t1: float, channels: tuple[str, ...]) -> Any:
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


def _channels_with_hours(db: Database, t0: float, t1: float, asked: tuple[str, ...]
                         ) -> list[str]:
    """The channels (of those asked, if any) with hours in the span, by name."""
    h = schema.hours.c
    query = select(h.channel).distinct().where(h.ts >= t0, h.ts < t1)
    if asked:
        query = query.where(h.channel.in_(asked))
    return sorted(row.channel for row in db.fetch(query))


def _stream(heavy: HeavyWork, head: dict[str, Any], t0: float, t1: float, names: list[str]
            ) -> Iterator[bytes]:
    """The answer one channel at a time, each computed in a worker process: memory holds
    one channel's year, not every channel's, and the polling thread keeps the GIL."""
    yield pydantic_core.to_json(head)[:-1] + b',"channels":['
    separator = b""
    for name in names:
        body = heavy.run(channel_json, t0, t1, name)
        if body:
            yield separator + body
            separator = b","
    yield b"]}"


def channel_json(db: Database, t0: float, t1: float, name: str) -> bytes:
    """In a worker process: one channel's object of arrays (empty without hours)."""
    # The arrays are built from typed columns in the model's shape: serialised as they
    # are (see listing.respond); NaN is not a JSON number, it means "no value".
    return b"".join(pydantic_core.to_json(item, inf_nan_mode="null")
                    for item in _columns(db.fetch(_query(t0, t1, (name,)))))


def _columns(rows: list[Any]) -> list[dict[str, Any]]:
    """Rows in (channel, start) order -> one object of arrays per channel, by name."""
    if not rows:
        return []
    # column by column: a transposing zip(*rows) is over twice as slow for a year's rows
    columns = {field: list(map(itemgetter(i), rows)) for i, field in enumerate(FIELDS)}
    answer = []
    first = 0
    for name, hours in groupby(columns["channel"]):
        last = first + sum(1 for _ in hours)
        item = {field: columns[field][first:last] for field in FIELDS[2:]}
        units = columns["unit"][first:last]
        mixed = len(set(units)) > 1
        answer.append({"channel": name, "unit": units[-1], "units": units if mixed else None,
                       **item})
        first = last
    return sorted(answer, key=lambda item: item["channel"])
