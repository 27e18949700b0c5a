"""GET /v1/bypass-events and /v1/reports: what the emission-reduction work stores and
computes. A report is computed on request from the stored hours (the same function as
`cemsd report`); a period that cannot be reported (production missing for some days) is a
409 naming the days, never a server error."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from sqlalchemy import true

from cemsd.api.listing import ApiContext, context, table_listing
from cemsd.errors import CemsdError
from cemsd.settings.api import ApiConfig
from cemsd.store import schema


def routes(settings: ApiConfig) -> APIRouter:
    router = APIRouter()
    table_listing(router, "/bypass-events", schema.bypass_events, settings,
                  summary="Bypass and venting events (open ones have no end)",
                  channel_filter=lambda channels: true(), json_columns=("triggers",))

    @router.get("/reports", summary="Emission reductions of a period (JSON, CSV or HTML)")
    def report(request: Request, ctx: Annotated[ApiContext, Depends(context)],
               period: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")] = None,
               start: Annotated[str | None, Query(alias="from",
                                                  pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
               end: Annotated[str | None, Query(alias="to",
                                                pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
               format: Annotated[str, Query(pattern="^(json|csv|html)$")] = "json") -> Any:
        from cemsd.reduction.cli import period_bounds
        from cemsd.reduction.html import to_html
        from cemsd.reduction.report import build_report, to_csv

        config = getattr(request.app.state, "config", None)
        if config is None:
            raise HTTPException(503, "reports need the daemon's configuration")
        try:
            t0, t1 = period_bounds(config, period, start, end)
        except Exception as exc:  # click's parameter errors carry the reason
            raise HTTPException(400, f"give period=YYYY-MM or from/to dates: {exc}") from None
        try:
            result = build_report(ctx.db, config, t0, t1, time.time())
        except CemsdError as exc:
            raise HTTPException(409, str(exc)) from None
        if format == "html":
            return HTMLResponse(to_html(result))
        if format == "csv":
            return PlainTextResponse(to_csv(result), media_type="text/csv")
        return result

    return router
