"""The fleet registry API, served by the collector: the edge's routes with the plant in
the path (`/v1/plants/{plant}/hours` ...), JSON or CSV with the edge's paging (cemsd/api/
listing.py), tokens scoped to plants, the witness's heads and alarms, and `/metrics`.

A token sees only its plants: another plant answers 404, as if it did not exist."""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run
# time, and some name objects local to the function that builds the route.

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParameter
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import Column, Table, select

from cemsd import __version__
from cemsd.api import columns_compact
from cemsd.api.auth import CHALLENGE, bearer
from cemsd.api.listing import (
    CSV_RESPONSE,
    EARLIEST,
    LATEST,
    Channels,
    From,
    Page,
    To,
    Window,
    bad_request,
    fetch_page,
    read_time,
    respond,
    table_item,
    table_model,
)
from cemsd.api.routes.columns import (
    COMPACT_DESCRIPTION,
    CompactHourColumns,
    HourColumns,
    Layout,
    check_span,
)
from cemsd.api.routes.columns import DESCRIPTION as COLUMNS_DESCRIPTION
from cemsd.chain import utc_text
from cemsd.errors import StorageError
from cemsd.fleet import schema
from cemsd.fleet.columns import plant_columns
from cemsd.fleet.metrics import metrics_text
from cemsd.fleet.store import FleetStore
from cemsd.fleet.tokens import Scope, scope_of
from cemsd.settings.api import ApiConfig

if TYPE_CHECKING:
    from cemsd.fleet.edge_tables import RebuiltRows

API_PREFIX = "/v1"
PlantId = Annotated[str, PathParameter(max_length=64,
                                       description="The plant's id (its MQTT prefix)")]


@dataclass(frozen=True)
class FleetContext:
    store: FleetStore
    settings: ApiConfig
    tz: ZoneInfo
    collector: Any  # the running Collector (counts for /metrics), or None
    tables: "RebuiltRows"  # the edge's tables rebuilt from the events
    plant_configs: Mapping[str, Path] = field(default_factory=dict)  # for reports


def fleet(request: Request) -> FleetContext:
    return request.app.state.fleet


def require_scope(request: Request, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Scope:
    scope = scope_of(fleet(request).store.db, credentials.credentials if credentials else None)
    if scope is None:
        raise HTTPException(401, "missing or unknown API token", headers=CHALLENGE)
    if scope.revoked:
        raise HTTPException(403, "this API token was revoked")
    return scope


def allowed_plant(plant: PlantId, scope: Annotated[Scope, Depends(require_scope)]) -> str:
    if not scope.allows(plant):
        raise HTTPException(404, f"no plant {plant!r} for this token")
    return plant


def create_app(store: FleetStore, settings: ApiConfig, tz: ZoneInfo,
               collector: Any = None, plant_configs: Mapping[str, Path] | None = None
               ) -> FastAPI:
    """`plant_configs`: each plant's configuration file, for its reports."""
    app = FastAPI(title="cemsd fleet registry API", version=__version__,
                  description="Every plant's hours, events and chain as the collector "
                              "received them (docs/SCALING.md). Times without an offset "
                              "are in the collector's time zone.")
    from cemsd.fleet.edge_routes import edge_routes  # it builds on this module's parts
    from cemsd.fleet.edge_tables import RebuiltRows

    app.state.fleet = FleetContext(store, settings, tz, collector, RebuiltRows(store),
                                   plant_configs or {})
    app.add_exception_handler(StorageError, _database_unavailable)

    @app.get("/health", summary="Liveness and database reachability (no token)")
    def health() -> JSONResponse:
        try:
            store.db.fetch(select(1))
        except StorageError as exc:
            return JSONResponse({"status": "degraded", "database": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    @app.get("/metrics", summary="Prometheus metrics of the collector and the fleet",
             response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics_text(store, collector, datetime.now(UTC)),
                                 media_type="text/plain; version=0.0.4")

    protected = APIRouter(prefix=API_PREFIX, responses={
        401: {"description": "Missing or unknown token"}, 403: {"description": "Revoked"},
        404: {"description": "No such plant for this token"}})
    _plant_routes(protected, settings)
    edge_routes(protected, settings)
    app.include_router(protected)
    return app


def _plant_routes(router: APIRouter, settings: ApiConfig) -> None:
    @router.get("/plants", summary="The plants this token may read, with their progress")
    def plants(ctx: Annotated[FleetContext, Depends(fleet)],
               scope: Annotated[Scope, Depends(require_scope)]) -> list[dict[str, Any]]:
        return [p for p in ctx.store.progress(datetime.now(UTC)) if scope.allows(p["plant"])]

    @router.get("/plants/{plant}/gaps", summary="Hours missing between the first and last")
    def gaps(ctx: Annotated[FleetContext, Depends(fleet)],
             plant: Annotated[str, Depends(allowed_plant)]) -> list[dict[str, str]]:
        return [{"start_utc": utc_text(a), "end_utc": utc_text(b)}
                for a, b in ctx.store.gaps(plant)]

    @router.get("/plants/{plant}/hours/columns",
                response_model=HourColumns | CompactHourColumns,
                summary="A span of a plant's hours (up to a year) as arrays per channel",
                description=(COLUMNS_DESCRIPTION + COMPACT_DESCRIPTION).replace(
                    "/v1/chain/links", "/v1/plants/{plant}/chain/links"),
                responses={400: {"description": "A time that cannot be read, or a span "
                                                "over the limit"}})
    def hour_columns(ctx: Annotated[FleetContext, Depends(fleet)],
                     plant: Annotated[str, Depends(allowed_plant)], start: From = None,
                     end: To = None, channel: Channels = None, layout: Layout = "arrays"
                     ) -> dict[str, Any]:
        t0 = read_time(start, ctx.tz, "from", EARLIEST)
        t1 = read_time(end, ctx.tz, "to", LATEST)
        check_span(start, end, t0, t1)
        channels = plant_columns(ctx.store, plant, t0, t1, tuple(dict.fromkeys(channel or ())))
        head = {"timezone": str(ctx.tz), "from_epoch": t0, "to_epoch": t1}
        if layout == columns_compact.LAYOUT:
            return {"layout": layout, **head,
                    "channels": [columns_compact.encode_channel(c) for c in channels]}
        return {**head, "channels": channels}

    c = schema
    _listing(router, "/plants/{plant}/hours", c.hours, settings, c.hours.c.ts,
             [c.hours.c.ts, c.hours.c.channel, c.hours.c.revision], "Hours as received")
    _listing(router, "/plants/{plant}/events", c.events, settings, c.events.c.at,
             [c.events.c.at, c.events.c.message_id], "Events as received", ("data",))
    _listing(router, "/plants/{plant}/chain/links", c.links, settings, c.links.c.ts,
             [c.links.c.seq], "The chain's links as received (the witness's copy)")
    _listing(router, "/plants/{plant}/chain/heads", c.heads, settings, c.heads.c.received_at,
             [c.heads.c.id], "Every chain head received, with the witness's verdict")
    _listing(router, "/plants/{plant}/alarms", c.alarms, settings, c.alarms.c.raised_at,
             [c.alarms.c.id], "What the witness raised: rewritten, shortened, altered chains")
    _listing(router, "/plants/{plant}/conflicts", c.conflicts, settings,
             c.conflicts.c.received_at, [c.conflicts.c.id],
             "Records that differed from what was received before (the first is kept)",
             ("stored", "received"))


def _listing(router: APIRouter, path: str, table: Table, settings: ApiConfig,
             start: Column[Any], keys: Sequence[Column[Any]], summary: str,
             json_columns: Sequence[str] = ()) -> None:
    """GET `path`: the plant's rows of `table` with `start` in [from, to), in `keys` order."""
    local = [name for name in ("ts", "at") if name in table.c]
    model = table_model(table, local, json_columns)
    window_params = window_dependency(settings)

    def listing(request: Request, response: Response,
                ctx: Annotated[FleetContext, Depends(fleet)],
                plant: Annotated[str, Depends(allowed_plant)],
                window: Annotated[Window, Depends(window_params)]) -> Any:
        query = select(table).where(table.c.plant == plant, start >= utc(window.start),
                                    start < utc(window.end))
        if window.channels and "channel" in table.c:
            query = query.where(table.c.channel.in_(window.channels))
        rows, next_cursor = fetch_page(ctx.store.db, query, keys, window)
        items = [table_item(row, table, ctx.tz, local, json_columns) for row in rows]
        return respond(model, items, next_cursor, window, request, response)

    router.add_api_route(path, listing, methods=["GET"], summary=summary,
                         response_model=Page[model], responses=CSV_RESPONSE)  # type: ignore[valid-type]


def window_dependency(settings: ApiConfig) -> Callable[..., Window]:
    def window(ctx: Annotated[FleetContext, Depends(fleet)], start: From = None,
               end: To = None, channel: Channels = None,
               limit: Annotated[int, Query(ge=1, le=settings.max_page_size)]
               = settings.default_page_size,
               cursor: Annotated[str | None, Query(max_length=512)] = None,
               fmt: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
               ) -> Window:
        t0 = read_time(start, ctx.tz, "from", EARLIEST)
        t1 = read_time(end, ctx.tz, "to", LATEST)
        if t0 > t1:
            raise bad_request("`from` is after `to`")
        return Window(t0, t1, tuple(dict.fromkeys(channel or ())), limit, cursor, fmt)

    return window


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"database unavailable: {exc}"}, status_code=503)
