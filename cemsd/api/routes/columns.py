"""GET /v1/hours/columns: the current hours of a span (up to a year) in one compact answer
for registry pulls: per channel, parallel arrays instead of one object per hour.

/v1/hours pages through rows of 17 fields with two SHA-256 strings each; a year of 10
channels is 46 MB of JSON and seconds of per-row Python on both ends (docs/PERFORMANCE.md).
Here the hour start is epoch seconds computed by the database, each hour's link in the hash
chain is its sequence number (the hashes are in /v1/chain/links), and each channel's rows
go from one query into the arrays and out through one serialisation, without per-row
objects. The answer is streamed channel by channel, so a request holds one channel's year
in memory, not the plant's (decision 0112); each channel's sealed days are kept
pre-serialised and joined as stored (cemsd/api/routes/sealed_days.py, decision 0260).
`layout=compact` gives the same answer with the almost constant arrays as runs: half the
bytes to join, pickle from the worker and send (cemsd/api/columns_compact.py, decision
0261).
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run
# time.

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import pydantic_core
from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import exists, func, select

from cemsd.api import columns_compact
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
from cemsd.api.routes.sealed_days import channel_json
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


Runs = Annotated[list[Any], Field(
    description="runs, flat: item, count, item, count, ...: count hours of that item")]


class CompactChannelColumns(BaseModel):
    """One channel's hours in start order, the almost constant arrays as runs (restarting
    at each UTC day); decoded, each is the array of the default layout."""

    channel: str
    unit: Annotated[str, Field(description="the unit of the channel's latest hour in the span")]
    units: Annotated[Runs | None, Field(
        description="runs (item, count, ...) of each hour's unit, only when the unit "
                    "changed within the span")]
    start_epoch: Annotated[list[int | None], Field(
        description="hour starts (integer epoch seconds, UTC) as runs, flat: first, step, "
                    "count, ...: count hours starting at first, first + step, ...")]
    value: Annotated[list[float | None], Field(description="hourly mean; null when none")]
    flag: Runs
    n_valid: Runs
    revision: Runs
    substitute_value: Runs
    substitute_method: Runs
    seal_seq: Annotated[list[list[int | None]], Field(
        description="runs [first, delta, ...] of sealed hours: the first's link in the hash "
                    "chain, each next one the previous plus its delta; [null, count]: "
                    "count hours not sealed")]


class HourColumns(BaseModel):
    timezone: Annotated[str, Field(
        description="the plant's time zone (IANA); every time in the answer is UTC")]
    from_epoch: Annotated[float, Field(description="span start, inclusive, epoch seconds UTC")]
    to_epoch: Annotated[float, Field(description="span end, exclusive, epoch seconds UTC")]
    channels: Annotated[list[ChannelColumns], Field(
        description="the channels with hours in the span, by name")]


class CompactHourColumns(BaseModel):
    layout: Literal["compact"]
    timezone: str
    from_epoch: float
    to_epoch: float
    channels: list[CompactChannelColumns]


Layout = Annotated[Literal["arrays", "compact"], Query(
    description="`arrays` (default): one item per hour in every array; `compact`: the "
                "same information with the almost constant arrays as runs")]

DESCRIPTION = f"""The current revision of every hour in [`from`, `to`), as /v1/hours serves
them, in one answer: per channel, parallel arrays (hour start as integer epoch seconds UTC,
value, flag, valid minutes, revision, substitute value and method, seal sequence number).
`from` and `to` are required and at most {MAX_SPAN_DAYS} days apart; same forms and errors
as /v1/hours. Not paged. Verify an hour against the hash chain with its `seal_seq` in
/v1/chain/links."""

COMPACT_DESCRIPTION = """

`layout=compact`: the same answer in about half the bytes, with `"layout": "compact"`.
`value` is the same array; `flag`, `n_valid`, `revision`, `substitute_value`,
`substitute_method` and `units` (null when one unit) are runs, flat in one array:
`item, count, item, count, ...`; `start_epoch` runs `first, step, count, ...` (first,
first + step, ...); `seal_seq` a list of runs `[first, delta, delta, ...]` of sealed hours
(first, first + delta, ...) and `[null, count]` of hours not sealed. Runs restart at each
UTC day. Decoding the runs
gives exactly the default answer (a decoder in Python: cemsd/api/columns_compact.py,
standard library only)."""


def routes(settings: ApiConfig) -> APIRouter:
    router = APIRouter()

    @router.get("/hours/columns", response_model=HourColumns | CompactHourColumns,
                summary="A span of hours (up to a year) as arrays per channel",
                description=DESCRIPTION + COMPACT_DESCRIPTION,
                responses={400: {"description": "A parameter that cannot be read (time, "
                                                "channel), or a span over the limit"},
                           503: {"description": f"{BUSY_DESCRIPTION}; or the database is "
                                                f"unavailable"}})
    def hour_columns(ctx: Annotated[ApiContext, Depends(context)], start: From = None,
                     end: To = None, channel: Channels = None, layout: Layout = "arrays"
                     ) -> Any:
        t0, t1, channels = read_span(ctx, start, end, channel)
        check_span(start, end, t0, t1)
        names = _channels_with_hours(ctx.db, t0, t1, channels)
        head = {"timezone": str(ctx.tz), "from_epoch": t0, "to_epoch": t1}
        if layout == columns_compact.LAYOUT:
            head = {"layout": layout, **head}
        return StreamingResponse(_stream(ctx.heavy, head, t0, t1, names, layout),
                                 media_type="application/json")

    return router


def check_span(start: str | None, end: str | None, t0: float, t1: float) -> None:
    if start is None or end is None or t1 >= LATEST:
        raise bad_request(f"`from` and `to` are required, at most {MAX_SPAN_DAYS} days apart")
    if t1 - t0 > MAX_SPAN_DAYS * DAY:
        raise bad_request(f"span of {(t1 - t0) / DAY:.1f} days: at most {MAX_SPAN_DAYS} days "
                          f"per request; ask for a longer span in several requests")


def _channels_with_hours(db: Database, t0: float, t1: float, asked: tuple[str, ...]
                         ) -> list[str]:
    """The channels (of those asked, if any) with hours in the span, by name: the distinct
    channels walked one by one along the (channel, ts) index, each probed for an hour in
    the span, instead of a DISTINCT over every hour of the span (over 100 ms for a year)."""
    h = schema.hours.c
    walk = select(func.min(h.channel).label("name")).cte("channel_walk", recursive=True)
    following = select(func.min(h.channel)).where(h.channel > walk.c.name).scalar_subquery()
    walk = walk.union_all(select(following).where(walk.c.name.is_not(None)))
    query = select(walk.c.name).where(walk.c.name.is_not(None), exists().where(
        h.channel == walk.c.name, h.ts >= t0, h.ts < t1))
    if asked:
        query = query.where(walk.c.name.in_(asked))
    return sorted(row.name for row in db.fetch(query))


def _stream(heavy: HeavyWork, head: dict[str, Any], t0: float, t1: float, names: list[str],
            layout: str) -> Iterator[bytes]:
    """The answer one channel at a time, each computed in a worker process: memory holds
    one channel's year, not every channel's, and the polling thread keeps the GIL."""
    yield pydantic_core.to_json(head)[:-1] + b',"channels":['
    separator = b""
    for name in names:
        body = heavy.run(channel_json, t0, t1, name, layout)
        if body:
            yield separator + body
            separator = b","
    yield b"]}"
