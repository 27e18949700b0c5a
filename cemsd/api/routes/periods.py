"""GET /v1/hours and /v1/minutes: stored periods with their flags and counts; hours also
with their seal (hash chain link) and the substitute value when QA/QC substituted them."""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run
# time, and some name objects local to the function that builds the route.

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import Table, exists, select

from cemsd.api.listing import (
    CSV_RESPONSE,
    ApiContext,
    Page,
    Window,
    context,
    fetch_page,
    finite,
    respond,
    window_dependency,
)
from cemsd.chain import json_value, seals_for, utc_text
from cemsd.periods import local_label
from cemsd.settings.api import ApiConfig
from cemsd.store import schema


class Seal(BaseModel):
    """The record's link in the hash chain (docs/TAMPER-EVIDENCE.md); null until sealed."""

    seq: int
    record_hash: str
    chain_hash: str


class Substitute(BaseModel):
    """The value that replaces an invalid hour (HJ 75-2017), flag S."""

    id: int
    value: float | None
    unit: str
    flag: str
    method: Annotated[str, Field(description="e.g. hj75.missing.before_after_mean")]
    period_kind: Annotated[str, Field(description="missing | out_of_control")]
    period_start_utc: Annotated[str, Field(description="start of the substituted period")]
    period_hours: Annotated[int, Field(description="length of the substituted period")]
    capture_rate: Annotated[float | None, Field(
        description="the quarter's valid-hour rate that chose the HJ 75 tier")]
    source_hours: Annotated[Any, Field(description="the hours the value was computed from")]
    revision: int
    supersedes: int | None
    created_at: str
    seal: Seal | None


class PeriodRow(BaseModel):
    id: int
    start_utc: Annotated[str, Field(description="period start, UTC")]
    start_local: Annotated[str, Field(description="period start in plant time, with offset")]
    channel: str
    value: float | None
    minimum: float | None
    maximum: float | None
    unit: str
    flag: Annotated[str, Field(description="HJ 212-2017 flag: N valid, else the cause")]
    n_valid: Annotated[int, Field(
        description="valid sub-values: readings in a minute, minutes in an hour")]
    n_expected: int
    reason: str | None
    revision: Annotated[int, Field(description="0, or the correction number; highest is current")]
    supersedes: Annotated[int | None, Field(description="id of the row this one corrects")]
    audit_id: Annotated[int | None, Field(
        description="the audit-log entry of the correction behind a revision above 0")]
    created_at: str


class HourRow(PeriodRow):
    seal: Seal | None
    substitute: Substitute | None


Revisions = Annotated[Literal["current", "all"], Query(
    description="`current`: the highest revision of each period; `all`: every stored row")]


def routes(settings: ApiConfig) -> APIRouter:
    router = APIRouter()
    _period_route(router, settings, "/hours", schema.hours, HourRow, _attach_to_hours,
                  "Hourly values in plant-local clock hours")
    _period_route(router, settings, "/minutes", schema.minutes, PeriodRow, None,
                  "Minute values")
    return router


Attach = Callable[[ApiContext, list[dict[str, Any]], Sequence[Any]], None]


def _period_route(router: APIRouter, settings: ApiConfig, path: str, table: Table,
                  model: type[PeriodRow], attach: Attach | None, summary: str) -> None:
    window_params = window_dependency(settings)

    def periods(
        request: Request,
        response: Response,
        ctx: Annotated[ApiContext, Depends(context)],
        window: Annotated[Window, Depends(window_params)],
        revisions: Revisions = "current",
    ) -> Any:
        rows, next_cursor = _periods(ctx, table, window, revisions)
        labels = _TimeLabels(ctx.tz)
        items = [_period_item(labels, row) for row in rows]
        if attach is not None:
            attach(ctx, items, rows)
        return respond(model, items, next_cursor, window, request, response)

    router.add_api_route(path, periods, methods=["GET"], summary=summary,
                         response_model=Page[model], responses=CSV_RESPONSE)  # type: ignore[valid-type]


def _attach_to_hours(ctx: ApiContext, items: list[dict[str, Any]], rows: Sequence[Any]
                     ) -> None:
    for item, row in zip(items, rows, strict=True):  # the seal came joined to the row
        item["seal"] = _seal(None if row.seq is None else row)
    _attach_substitutes(ctx, items, rows)


def current_revision(table: Table) -> Any:
    """No row of the same channel and period has a higher revision."""
    newer = table.alias("newer")
    return ~exists().where(newer.c.channel == table.c.channel, newer.c.ts == table.c.ts,
                           newer.c.revision > table.c.revision)


def _periods(ctx: ApiContext, table: Table, window: Window, revisions: str
             ) -> tuple[list[Any], str | None]:
    c = table.c
    query = select(table).where(c.ts >= window.start, c.ts < window.end)
    if table is schema.hours:  # each hour with its link in the chain, if sealed
        link = schema.chain.c
        query = query.add_columns(link.seq, link.record_hash, link.chain_hash).outerjoin(
            schema.chain, (link.record_table == "hours") & (link.record_id == c.id))
    if window.channels:
        query = query.where(c.channel.in_(window.channels))
    if revisions == "current":
        query = query.where(current_revision(table))
    return fetch_page(ctx.db, query, [c.ts, c.channel, c.revision], window)


class _TimeLabels:
    """UTC text and plant-local label of each distinct time on a page, computed once: the
    channels of one period share its start, and the rows of one closing their created_at."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._utc: dict[datetime, str] = {}
        self._local: dict[datetime, str] = {}

    def utc(self, moment: datetime) -> str:
        text = self._utc.get(moment)
        if text is None:
            text = self._utc[moment] = utc_text(moment)
        return text

    def local(self, moment: datetime) -> str:
        text = self._local.get(moment)
        if text is None:
            text = self._local[moment] = local_label(moment.timestamp(), self.tz)
        return text


def _period_item(labels: _TimeLabels, row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "start_utc": labels.utc(row.ts), "start_local": labels.local(row.ts),
        "channel": row.channel, "value": finite(row.value), "minimum": finite(row.minimum),
        "maximum": finite(row.maximum), "unit": row.unit, "flag": row.flag,
        "n_valid": row.n_valid, "n_expected": row.n_expected, "reason": row.reason,
        "revision": row.revision, "supersedes": row.supersedes, "audit_id": row.audit_id,
        "created_at": labels.utc(row.created_at),
    }


def _seal(link: Any | None) -> dict[str, Any] | None:
    if link is None:
        return None
    return {"seq": int(link.seq), "record_hash": link.record_hash, "chain_hash": link.chain_hash}


def _attach_substitutes(ctx: ApiContext, items: list[dict[str, Any]],
                        rows: Sequence[Any]) -> None:
    """The current substitution of each hour on the page, if any."""
    for item in items:
        item["substitute"] = None
    if not rows:
        return
    s = schema.substitutions.c
    query = (select(schema.substitutions)
             .where(s.ts >= rows[0].ts, s.ts <= rows[-1].ts,
                    s.channel.in_(sorted({row.channel for row in rows})),
                    current_revision(schema.substitutions)))
    found = {(sub.channel, sub.ts): sub for sub in ctx.db.fetch(query)}
    if not found:
        return
    links = seals_for(ctx.db, "substitutions", [sub.id for sub in found.values()])
    for item, row in zip(items, rows, strict=True):
        sub = found.get((row.channel, row.ts))
        if sub is not None:
            item["substitute"] = _substitute_item(sub, links.get(int(sub.id)))


def _substitute_item(sub: Any, link: Any | None) -> dict[str, Any]:
    return {
        "id": sub.id, "value": finite(sub.value), "unit": sub.unit, "flag": sub.flag,
        "method": sub.method, "period_kind": sub.period_kind,
        "period_start_utc": utc_text(sub.period_start), "period_hours": sub.period_hours,
        "capture_rate": finite(sub.capture_rate), "source_hours": json_value(sub.source_hours),
        "revision": sub.revision, "supersedes": sub.supersedes,
        "created_at": utc_text(sub.created_at), "seal": _seal(link),
    }
