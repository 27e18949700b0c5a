"""GET /v1/bypass-events and /v1/reports: what the emission-reduction work stores and
computes. A report is computed on request from the stored hours (the same function as
`cemsd report`); a period that cannot be reported (production missing for some days) is a
409 naming the days, never a server error."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import click
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from sqlalchemy import true

from cemsd.api.limits import BUSY_DESCRIPTION
from cemsd.api.listing import ApiContext, context, table_listing
from cemsd.errors import CemsdError
from cemsd.reduction.cli import FIRST_REPORT_DAY
from cemsd.settings.api import ApiConfig
from cemsd.store import schema
from cemsd.store.database import Database

REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "A period that cannot be read, or outside the limits (longer than "
                         "`max_report_days`, before 2000)"},
    409: {"description": "The period cannot be reported (e.g. production missing for "
                         "some days, named)"},
    503: {"description": f"{BUSY_DESCRIPTION}; or the database is unavailable; or no "
                         f"configuration to report with"},
}


# The parameters of a report (the fleet API's plant reports take the same).
Period = Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")]
FirstDay = Annotated[str | None, Query(alias="from", pattern=r"^\d{4}-\d{2}-\d{2}$")]
DayAfter = Annotated[str | None, Query(alias="to", pattern=r"^\d{4}-\d{2}-\d{2}$")]
ReportFormat = Annotated[str, Query(pattern="^(json|csv|html)$")]


def report_span(config: Any, period: str | None, start: str | None, end: str | None,
                max_days: int) -> tuple[float, float]:
    """The report's [t0, t1) in epoch seconds, or a 400 naming the limit."""
    from cemsd.reduction.cli import period_bounds, period_days

    try:
        first, after = period_days(period, start, end)
    except click.ClickException as exc:
        raise HTTPException(400, f"give period=YYYY-MM or from/to dates: "
                                 f"{exc.format_message()}") from None
    if (after - first).days > max_days:
        raise HTTPException(400, f"{(after - first).days} days from {first} to {after}: at "
                                 f"most {max_days} days per report (max_report_days); ask "
                                 f"for a longer span in several reports")
    return period_bounds(config, period, start, end)


def report_body(db: Database, config: Any, t0: float, t1: float, now: float, fmt: str
                ) -> tuple[bytes, str]:
    """In a worker process (heavy.py): the report, rendered."""
    from cemsd.reduction.report import build_report

    return rendered(build_report(db, config, t0, t1, now), fmt)


def rendered(result: dict[str, Any], fmt: str) -> tuple[bytes, str]:
    """A report's body and media type in `fmt` (json, csv or html)."""
    from cemsd.reduction.html import to_html
    from cemsd.reduction.report import to_csv

    if fmt == "html":
        return to_html(result).encode(), "text/html; charset=utf-8"
    if fmt == "csv":
        return to_csv(result).encode(), "text/csv; charset=utf-8"
    text = json.dumps(jsonable_encoder(result), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":"))
    return text.encode(), "application/json"


def routes(settings: ApiConfig) -> APIRouter:
    router = APIRouter()
    table_listing(router, "/bypass-events", schema.bypass_events, settings,
                  summary="Bypass and venting events (open ones have no end)",
                  channel_filter=lambda channels: true(), json_columns=("triggers",))

    @router.get("/reports", summary="Emission reductions of a period (JSON, CSV or HTML)",
                description=f"A month (`period`) or `from`/`to` dates, plant time, at most "
                            f"`max_report_days` ({settings.max_report_days}) days, from "
                            f"{FIRST_REPORT_DAY} on.",
                responses=REPORT_RESPONSES)
    def report(request: Request, ctx: Annotated[ApiContext, Depends(context)],
               period: Period = None, start: FirstDay = None, end: DayAfter = None,
               format: ReportFormat = "json") -> Any:
        config = getattr(request.app.state, "config", None)
        if config is None:
            raise HTTPException(503, "reports need the daemon's configuration")
        t0, t1 = report_span(config, period, start, end, settings.max_report_days)
        try:
            body, media_type = ctx.heavy.run(report_body, config, t0, t1, time.time(), format)
        except CemsdError as exc:
            raise HTTPException(409, str(exc)) from None
        return Response(body, media_type=media_type)

    return router
