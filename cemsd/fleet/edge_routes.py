"""The edge API's other routes with the plant in the path (docs/SCALING.md, Fleet API):
channels, calibrations, maintenance, control periods, substitutions and bypass events in
the edge's row shapes, rebuilt from the events the plant published (edge_tables.py); the
chain's head from the witness's copy of the links; the plant's reports by the edge's code
(reports.py). Minutes are not kept centrally: that route says so.

Lists take the edge's parameters and answer like its listings (cemsd/api/listing.py):
the rows whose [started_at, ended_at) overlaps the window (or whose hour lies in it), in
the edge's order, paged with the same cursor, JSON or CSV."""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run
# time, and some name objects local to the function that builds the route.

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from sqlalchemy import select

from cemsd.api.listing import (
    CSV_RESPONSE,
    Page,
    Window,
    decode_cursor,
    encode_cursor,
    respond,
    table_item,
    table_model,
)
from cemsd.api.routes.chain import ChainHead, head_document
from cemsd.api.routes.channels import Channels
from cemsd.api.routes.keys import Keys, key_info
from cemsd.api.routes.reduction import (
    REPORT_RESPONSES,
    DayAfter,
    FirstDay,
    Period,
    ReportFormat,
    rendered,
    report_span,
)
from cemsd.config import Config, load_config
from cemsd.errors import CemsdError
from cemsd.fleet import edge_tables as tables
from cemsd.fleet import schema
from cemsd.fleet.api import FleetContext, allowed_plant, fleet, window_dependency
from cemsd.fleet.edge_tables import EventTable
from cemsd.fleet.reports import central_report
from cemsd.settings.api import ApiConfig

Plant = Annotated[str, Depends(allowed_plant)]
Context = Annotated[FleetContext, Depends(fleet)]
# (context, plant, channels asked) -> does a row belong to them
Matcher = Callable[[FleetContext, str, tuple[str, ...]], Callable[[Any], bool]]
NO_MINUTES = ("the collector keeps no minutes to list (only those under hours with bypass, "
              "for the reports: docs/SCALING.md); ask the plant's own API for /v1/minutes")


def edge_routes(router: APIRouter, settings: ApiConfig) -> None:
    @router.get("/plants/{plant}/channels", response_model=Channels,
                summary="The plant's series and their units, as it last published them")
    def channels(ctx: Context, plant: Plant) -> Any:
        rows = sorted(ctx.tables.rows(plant, tables.CHANNELS), key=lambda r: r.name)
        return {"items": [table_item(r, tables.CHANNELS.table, ctx.tz) for r in rows]}

    @router.get("/plants/{plant}/chain/head", response_model=ChainHead,
                summary="The newest link received of the plant's chain")
    def chain_head(ctx: Context, plant: Plant) -> Any:
        c = schema.links.c
        newest = ctx.store.db.fetch(select(schema.links).where(c.plant == plant)
                                    .order_by(c.seq.desc()).limit(1))
        return head_document(newest[0] if newest else None, ctx.tz)

    @router.get("/plants/{plant}/minutes", summary="Not kept centrally (404, saying so)",
                responses={404: {"description": NO_MINUTES}})
    def minutes(plant: Plant) -> Any:
        raise HTTPException(404, NO_MINUTES)

    _rebuilt_listing(router, "calibrations", tables.CALIBRATIONS, settings,
                     "Zero and span checks with drift and result")
    _rebuilt_listing(router, "maintenance", tables.MAINTENANCE, settings,
                     "Maintenance windows (a device or a channel)", match=_maintenance_of)
    _rebuilt_listing(router, "control-periods", tables.CONTROL_PERIODS, settings,
                     "Out-of-control and calibration-overdue periods")
    _rebuilt_listing(router, "substitutions", tables.SUBSTITUTIONS, settings,
                     "Every substitution record, all revisions (hours carry the current)",
                     keys=("ts", "channel", "revision"), json_columns=("source_hours",))
    _rebuilt_listing(router, "bypass-events", tables.BYPASS_EVENTS, settings,
                     "Bypass and venting events (open ones have no end)",
                     match=lambda ctx, plant, channels: lambda row: True,
                     json_columns=("triggers",))
    _report_route(router, settings)

    @router.get("/plants/{plant}/keys", response_model=Keys,
                summary="The public key that signs the plant's central bundles (the key in "
                        "its configuration's state_dir at the centre, not the box's)",
                responses={503: {"description": "No configuration for the plant"}})
    def keys(ctx: Context, plant: Plant) -> Any:
        return {"bundle_signing": key_info(_plant_config(ctx, plant))}


def _by_channel(ctx: FleetContext, plant: str, channels: tuple[str, ...]
                ) -> Callable[[Any], bool]:
    return lambda row: row.channel in channels


def _maintenance_of(ctx: FleetContext, plant: str, channels: tuple[str, ...]
                    ) -> Callable[[Any], bool]:
    """Maintenance of a channel, or of the whole device the channel belongs to."""
    devices = {r.device for r in ctx.tables.rows(plant, tables.CHANNELS)
               if r.name in channels and r.device is not None}
    return lambda row: row.channel in channels or row.device in devices


def _rebuilt_listing(router: APIRouter, name: str, spec: EventTable, settings: ApiConfig,
                     summary: str, *, keys: Sequence[str] | None = None,
                     match: Matcher = _by_channel, json_columns: Sequence[str] = ()) -> None:
    """GET /plants/{plant}/`name`: the edge's listing of `spec.table` (table_listing)."""
    c = spec.table.c
    start = "started_at" if "started_at" in c else "ts"
    local = [n for n in ("started_at", "ended_at", "ts") if n in c]
    model = table_model(spec.table, local, json_columns)
    order = [c[n] for n in (keys or (start, "id"))]
    window_params = window_dependency(settings)

    def listing(request: Request, response: Response, ctx: Context, plant: Plant,
                window: Annotated[Window, Depends(window_params)]) -> Any:
        belongs = match(ctx, plant, window.channels) if window.channels else None
        rows = sorted((r for r in ctx.tables.rows(plant, spec)
                       if _overlaps(r, start, window) and (belongs is None or belongs(r))),
                      key=lambda r: _sort_key(r, order))
        if window.cursor is not None:
            after = tuple(decode_cursor(window.cursor, order))
            rows = [r for r in rows if _sort_key(r, order) > after]
        page, next_cursor = rows[:window.limit], None
        if len(rows) > window.limit:
            next_cursor = encode_cursor([getattr(page[-1], key.name) for key in order])
        items = [table_item(r, spec.table, ctx.tz, local, json_columns) for r in page]
        return respond(model, items, next_cursor, window, request, response)

    router.add_api_route(f"/plants/{{plant}}/{name}", listing, methods=["GET"],
                         summary=f"{summary} (rebuilt from the plant's events)",
                         response_model=Page[model], responses=CSV_RESPONSE)  # type: ignore[valid-type]


def _overlaps(row: SimpleNamespace, start: str, window: Window) -> bool:
    """As the edge's listing: [started_at, ended_at) overlaps the window, or ts lies in it."""
    begin = getattr(row, start)
    if begin is None or begin.timestamp() >= window.end:
        return False
    if not hasattr(row, "ended_at"):
        return begin.timestamp() >= window.start
    return row.ended_at is None or row.ended_at.timestamp() > window.start


def _sort_key(row: SimpleNamespace, order: Sequence[Any]) -> tuple[Any, ...]:
    """The row's keys as the cursor carries them (times as epoch seconds)."""
    values = (getattr(row, key.name) for key in order)
    return tuple(v.timestamp() if isinstance(v, datetime) else -1 if v is None else v
                 for v in values)


def _report_route(router: APIRouter, settings: ApiConfig) -> None:
    @router.get("/plants/{plant}/reports",
                summary="The plant's emission reductions of a period from the fleet database "
                        "(JSON, CSV or HTML)",
                description=f"As the plant's `/v1/reports`: a month (`period`) or `from`/`to` "
                            f"dates, plant time, at most {settings.max_report_days} days. "
                            f"By the edge's report code on the central records "
                            f"(docs/decisions/0204). A 409 names why a period cannot be "
                            f"reported: as at the edge (production missing), or a bypass "
                            f"event still open or the `bypass.minutes` of one of its hours "
                            f"not received (decisions 0209, 0210).",
                responses=REPORT_RESPONSES)
    def report(ctx: Context, plant: Plant, period: Period = None, start: FirstDay = None,
               end: DayAfter = None, format: ReportFormat = "json") -> Any:
        config = _plant_config(ctx, plant)
        t0, t1 = report_span(config, period, start, end, settings.max_report_days)
        try:
            result = central_report(ctx.store, config, t0, t1, time.time())
        except CemsdError as exc:  # the copy's refusals (CentralReportError), the edge's
            raise HTTPException(409, str(exc)) from None
        body, media_type = rendered(result, format)
        return Response(body, media_type=media_type)


def _plant_config(ctx: FleetContext, plant: str) -> Config:
    """The plant's configuration named in the collector's `[collector.plants]`; a 503
    naming what is missing or wrong."""
    path = ctx.plant_configs.get(plant)
    if path is None:
        raise HTTPException(503, f"reports of plant {plant!r} need its configuration: name "
                                 f"it in the collector's [collector.plants]")
    try:
        config = load_config(path)
    except CemsdError as exc:
        raise HTTPException(503, f"plant {plant!r}: {exc}") from None
    if config.plant.id != plant:
        raise HTTPException(503, f"{path} is the configuration of plant "
                                 f"{config.plant.id!r}, not {plant!r}")
    return config
