"""What every list endpoint shares: the time window in plant time, channel filter, keyset
pagination with an opaque cursor, JSON or CSV, and rows typed from the table itself.

A page is the next `limit` rows after the cursor in a fixed order (e.g. hour start,
channel, revision), so walking the pages while the daemon adds rows never skips or
repeats one. The cursor is base64url JSON of the last row's sort key; clients treat it
as opaque.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run
# time, and some name objects local to the function that builds the route.

import base64
import binascii
import csv
import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from inspect import isclass
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args
from zoneinfo import ZoneInfo

import pydantic_core
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, create_model
from sqlalchemy import Column, Float, Integer, Table, and_, or_, select
from sqlalchemy.sql.elements import ColumnElement

from cemsd.api.heavy import HeavyWork
from cemsd.chain import json_value, utc_text
from cemsd.hourly import parse_time
from cemsd.periods import local_label
from cemsd.settings.api import ApiConfig
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.store.schema import UTCDateTime

EARLIEST = 0.0  # 1970: nothing is stored before; keeps any asked range representable
LATEST = 32503680000.0  # 3000-01-01
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
Row = TypeVar("Row", bound=BaseModel)


@dataclass(frozen=True)
class ApiContext:
    db: Database
    tz: ZoneInfo
    settings: ApiConfig
    heavy: HeavyWork  # worker processes for reports and hour columns


def context(request: Request) -> ApiContext:
    return request.app.state.api


class Page(BaseModel, Generic[Row]):
    items: list[Row]
    next_cursor: str | None = None  # give it back as `cursor` for the next page; null: done


@dataclass(frozen=True)
class Window:
    """The parameters of one list request."""

    start: float
    end: float
    channels: tuple[str, ...]
    limit: int
    cursor: str | None
    fmt: Literal["json", "csv"]


def bad_request(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=message)


# The time and channel parameters every listing reads (and the bulk hour columns).
From = Annotated[str | None, Query(
    alias="from", max_length=64,
    description="Start, inclusive: ISO date or time; without an offset it is plant "
                "time (e.g. 2026-06-01T08:00); with one, that offset")]
To = Annotated[str | None, Query(
    alias="to", max_length=64, description="End, exclusive; same forms as `from`")]
Channels = Annotated[list[str] | None, Query(
    description="Only these channels (repeat the parameter)")]


def read_span(ctx: ApiContext, start: str | None, end: str | None,
              channel: list[str] | None) -> tuple[float, float, tuple[str, ...]]:
    """The asked [from, to) as epoch seconds (open ends: EARLIEST, LATEST) and the known,
    distinct channels asked for; a clear 400 otherwise."""
    t0 = read_time(start, ctx.tz, "from", EARLIEST)
    t1 = read_time(end, ctx.tz, "to", LATEST)
    if t0 > t1:
        raise bad_request("`from` is after `to`")
    channels = tuple(dict.fromkeys(channel or ()))
    _check_channels(ctx.db, channels)
    return t0, t1, channels


def window_dependency(settings: ApiConfig) -> Callable[..., Window]:
    """A FastAPI dependency reading the common list parameters, limits from the config."""

    def window(
        ctx: Annotated[ApiContext, Depends(context)],
        start: From = None,
        end: To = None,
        channel: Channels = None,
        limit: Annotated[int, Query(ge=1, le=settings.max_page_size,
                                    description="Rows per page")] = settings.default_page_size,
        cursor: Annotated[str | None, Query(
            max_length=512, description="`next_cursor` of the previous page")] = None,
        fmt: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
    ) -> Window:
        t0, t1, channels = read_span(ctx, start, end, channel)
        return Window(t0, t1, channels, limit, cursor, fmt)

    return window


def read_time(text: str | None, tz: ZoneInfo, name: str, default: float) -> float:
    """One end of an asked span as epoch seconds, clamped to [EARLIEST, LATEST]; a 400
    naming the parameter when it cannot be read."""
    if text is None:
        return default
    try:
        return min(max(parse_time(text, tz), EARLIEST), LATEST)
    except (ValueError, OverflowError) as exc:
        raise bad_request(f"`{name}`: {exc}") from None


def _check_channels(db: Database, channels: tuple[str, ...]) -> None:
    if not channels:
        return
    c = schema.channels.c
    known = {r.name for r in db.fetch(select(c.name).where(c.name.in_(channels)))}
    unknown = [name for name in channels if name not in known]
    if unknown:
        raise bad_request(f"unknown channel(s) {', '.join(unknown)}: see /v1/channels")


# --- keyset pagination ----------------------------------------------------------------------


def fetch_page(db: Database, query: Any, keys: Sequence[Column[Any]], window: Window
               ) -> tuple[list[Any], str | None]:
    """The rows of one page in `keys` order, and the cursor of the next page (or None)."""
    if window.cursor is not None:
        query = query.where(_after(keys, decode_cursor(window.cursor, keys)))
    rows = db.fetch(query.order_by(*keys).limit(window.limit + 1))
    if len(rows) <= window.limit:
        return rows, None
    rows = rows[: window.limit]
    return rows, encode_cursor([getattr(rows[-1], key.name) for key in keys])


def _after(keys: Sequence[Column[Any]], values: Sequence[Any]) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = keys[-1] > values[-1]
    for key, value in zip(reversed(keys[:-1]), reversed(values[:-1]), strict=True):
        condition = or_(key > value, and_(key == value, condition))
    # Implied by the condition, but an index on the first key can only use it in this form:
    # without it every page scans the rows of all the pages before it.
    return and_(keys[0] >= values[0], condition) if len(keys) > 1 else condition


def encode_cursor(values: Sequence[Any]) -> str:
    plain = [v.timestamp() if hasattr(v, "timestamp") else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, keys: Sequence[Column[Any]]) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad_request("`cursor` is not one this API gave out") from None
    if not isinstance(values, list) or len(values) != len(keys):
        raise bad_request("`cursor` is not one this API gave out")
    return [_cursor_value(key, value) for key, value in zip(keys, values, strict=True)]


def _cursor_value(key: Column[Any], value: Any) -> Any:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(key.type, UTCDateTime):
        if number and EARLIEST <= value <= LATEST:
            return float(value)
    elif isinstance(key.type, Integer):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
            return value
    elif isinstance(value, str):
        return value
    raise bad_request("`cursor` is not one this API gave out")


# --- responses --------------------------------------------------------------------------------


def respond(model: type[BaseModel], items: list[dict[str, Any]], next_cursor: str | None,
            window: Window, request: Request, response: Response) -> Any:
    """JSON (a Page) or CSV; the next page's cursor also in `X-Next-Cursor` and `Link`."""
    headers = {}
    if next_cursor is not None:
        headers["X-Next-Cursor"] = next_cursor
        headers["Link"] = f'<{request.url.include_query_params(cursor=next_cursor)}>; rel="next"'
    if window.fmt == "csv":
        return StreamingResponse(csv_chunks(model, items), media_type=CSV_MEDIA_TYPE,
                                 headers=headers)
    # The items are built from typed columns in the model's shape, so they are serialised
    # as they are: FastAPI's validation of a returned dict against the response model costs
    # more than everything else in a large page (docs/PERFORMANCE.md). The model still
    # documents the response (OpenAPI), and tests check the responses against it.
    body = pydantic_core.to_json({"items": items, "next_cursor": next_cursor})
    return Response(body, media_type="application/json", headers=headers)


CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}},
          "description": "JSON page, or CSV with `format=csv` (nested fields as a_b columns)"},
    400: {"description": "A parameter that cannot be read (time, channel, cursor)"},
}


CSV_CHUNK_ROWS = 500


def csv_chunks(model: type[BaseModel], items: list[dict[str, Any]]) -> Iterator[str]:
    """The CSV text in chunks of rows, streamed: never the whole page as one string."""
    columns = _columns(model)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow("_".join(path) for path in columns)
    for start in range(0, len(items), CSV_CHUNK_ROWS):
        for item in items[start:start + CSV_CHUNK_ROWS]:
            writer.writerow(_csv_cell(_dig(item, path)) for path in columns)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # the header of an empty page
        yield buffer.getvalue()


def _columns(model: type[BaseModel]) -> list[tuple[str, ...]]:
    columns: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        nested = next((a for a in (info.annotation, *get_args(info.annotation))
                       if isclass(a) and issubclass(a, BaseModel)), None)
        if nested is None:
            columns.append((name,))
        else:
            columns.extend((name, *path) for path in _columns(nested))
    return columns


def _dig(item: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    for key in path:
        if item is None:
            return None
        item = item.get(key)
    return item


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


# --- rows typed from their table ----------------------------------------------------------------


def finite(value: float | None) -> float | None:
    """NaN and infinities are not JSON numbers; they mean 'no value' here."""
    return value if value is None or math.isfinite(value) else None


def _column_type(column: Column[Any], json_columns: Sequence[str]) -> Any:
    if column.name in json_columns:
        return Any
    if isinstance(column.type, UTCDateTime):
        base: Any = str
    elif isinstance(column.type, Float):
        base = float
    elif isinstance(column.type, Integer):
        base = int
    else:
        base = str
    return base | None if column.nullable else base


LOCAL_SUFFIX = "_local"


def table_model(table: Table, local_times: Sequence[str] = (), json_columns: Sequence[str] = ()
                ) -> type[BaseModel]:
    """A response model with one field per column (times as UTC text, JSON text columns as
    their value) and a plant-time label `<column>_local` for each of `local_times`."""
    fields: dict[str, Any] = {}
    for column in table.columns:
        fields[column.name] = (_column_type(column, json_columns), ...)
        if column.name in local_times:
            fields[column.name + LOCAL_SUFFIX] = (str | None, ...)
    name = "".join(part.capitalize() for part in table.name.split("_")) + "Row"
    return create_model(name, **fields)


def table_item(row: Any, table: Table, tz: ZoneInfo, local_times: Sequence[str] = (),
               json_columns: Sequence[str] = ()) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for column in table.columns:
        value = getattr(row, column.name)
        if column.name in json_columns:
            item[column.name] = json_value(value)
        elif isinstance(column.type, UTCDateTime):
            item[column.name] = None if value is None else utc_text(value)
            if column.name in local_times:
                item[column.name + LOCAL_SUFFIX] = (
                    None if value is None else local_label(value.timestamp(), tz))
        elif isinstance(column.type, Float):
            item[column.name] = finite(value)
        else:
            item[column.name] = value
    return item


def table_listing(
    router: APIRouter,
    path: str,
    table: Table,
    settings: ApiConfig,
    *,
    summary: str,
    channel_filter: Callable[[tuple[str, ...]], ColumnElement[bool]] | None = None,
    keys: Sequence[Column[Any]] | None = None,
    json_columns: Sequence[str] = (),
) -> None:
    """Add GET `path` listing `table`: rows whose [started_at, ended_at) overlaps the window
    (or whose started_at / ts lies in it), in (start, id) order unless `keys` says."""
    c = table.c
    start = c.started_at if "started_at" in c else c.ts
    local_times = [name for name in ("started_at", "ended_at", "ts") if name in c]
    model = table_model(table, local_times, json_columns)
    order = list(keys) if keys is not None else [start, c.id]
    match = channel_filter or (lambda channels: c.channel.in_(channels))
    window_params = window_dependency(settings)

    def listing(
        request: Request,
        response: Response,
        ctx: Annotated[ApiContext, Depends(context)],
        window: Annotated[Window, Depends(window_params)],
    ) -> Any:
        query = select(table).where(start < window.end)
        if "ended_at" in c:
            query = query.where(or_(c.ended_at.is_(None), c.ended_at > window.start))
        else:
            query = query.where(start >= window.start)
        if window.channels:
            query = query.where(match(window.channels))
        rows, next_cursor = fetch_page(ctx.db, query, order, window)
        items = [table_item(row, table, ctx.tz, local_times, json_columns) for row in rows]
        return respond(model, items, next_cursor, window, request, response)

    router.add_api_route(path, listing, methods=["GET"], summary=summary,
                         response_model=Page[model], responses=CSV_RESPONSE)  # type: ignore[valid-type]
