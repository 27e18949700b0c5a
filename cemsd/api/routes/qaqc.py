"""GET /v1/calibrations, /v1/maintenance, /v1/control-periods: the QA/QC records
(HJ 75-2017 §11-12) as stored, each a row of its table. A record is listed when its
[started_at, ended_at) overlaps the asked window (open records: ended_at null)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import or_, select

from cemsd.api.listing import table_listing
from cemsd.settings.api import ApiConfig
from cemsd.store import schema


def _maintenance_of(channels: tuple[str, ...]) -> Any:
    """Maintenance of a channel, or of the whole device the channel belongs to."""
    m, ch = schema.maintenance.c, schema.channels.c
    devices = select(ch.device).where(ch.name.in_(channels), ch.device.is_not(None))
    return or_(m.channel.in_(channels), m.device.in_(devices))


def routes(settings: ApiConfig) -> APIRouter:
    router = APIRouter()
    table_listing(router, "/calibrations", schema.calibrations, settings,
                  summary="Zero and span checks with drift and result")
    table_listing(router, "/maintenance", schema.maintenance, settings,
                  summary="Maintenance windows (a device or a channel)",
                  channel_filter=_maintenance_of)
    table_listing(router, "/control-periods", schema.control_periods, settings,
                  summary="Out-of-control and calibration-overdue periods")
    table_listing(router, "/substitutions", schema.substitutions, settings,
                  summary="Every substitution record, all revisions (hours carry the current)",
                  keys=[schema.substitutions.c.ts, schema.substitutions.c.channel,
                        schema.substitutions.c.revision],
                  json_columns=("source_hours",))
    return router
