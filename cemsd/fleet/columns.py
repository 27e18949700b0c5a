"""GET /v1/plants/{plant}/hours/columns: a plant's current hours of a span as the edge's
/v1/hours/columns answers them (cemsd/api/routes/columns.py: the same model, limits and
arrays), from the fleet database.

Per channel, in hour order: the current revision of each hour (the highest received), the
substitute the plant published for it (`substitution` events, decision 0204) and its
link in the plant's chain as the witness received it: the highest seq sealing that
channel and hour (links do not name the revision; a correction is sealed after the hour it
corrects, so until it is sealed this is the previous revision's link, where the edge
answers null). The edge's pre-serialised sealed days and worker processes are not
used: they serve a box's year from SQLite; here one query per array kind does."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import distinct_on

from cemsd.fleet import schema
from cemsd.fleet.store import FleetStore
from cemsd.qaqc.substitution import SUBSTITUTION_EVENT


def plant_columns(store: FleetStore, plant: str, t0: float, t1: float,
                  channels: tuple[str, ...]) -> list[dict[str, Any]]:
    """The `channels` of the edge's HourColumns answer, by channel name."""
    a, b = _utc(t0), _utc(t1)
    h = schema.hours.c
    query = select(h.channel, h.ts, h.value, h.flag, h.n_valid, h.revision, h.unit).where(
        h.plant == plant, h.ts >= a, h.ts < b)
    if channels:
        query = query.where(h.channel.in_(channels))
    rows = store.db.fetch(query.order_by(h.channel, h.ts, h.revision.desc())
                          .ext(distinct_on(h.channel, h.ts)))
    seals = _seals(store, plant, a, b)
    substitutes = _substitutes(store, plant, a, b)
    by_channel: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_channel[row.channel].append(row)
    return [_channel(name, hours, seals, substitutes) for name, hours in by_channel.items()]


def _channel(name: str, hours: list[Any], seals: dict[tuple[str, datetime], int],
             substitutes: dict[tuple[str, datetime], dict[str, Any]]) -> dict[str, Any]:
    units = [r.unit for r in hours]
    subs = [substitutes.get((name, r.ts)) for r in hours]
    return {
        "channel": name, "unit": units[-1], "units": units if len(set(units)) > 1 else None,
        "start_epoch": [int(r.ts.timestamp()) for r in hours],
        "value": [r.value for r in hours], "flag": [r.flag for r in hours],
        "n_valid": [r.n_valid for r in hours], "revision": [r.revision for r in hours],
        "substitute_value": [s["value"] if s else None for s in subs],
        "substitute_method": [s["method"] if s else None for s in subs],
        "seal_seq": [seals.get((name, r.ts)) for r in hours],
    }


def _seals(store: FleetStore, plant: str, a: datetime, b: datetime
           ) -> dict[tuple[str, datetime], int]:
    c = schema.links.c
    rows = store.db.fetch(select(c.channel, c.ts, func.max(c.seq)).where(
        c.plant == plant, c.record_table == "hours", c.ts >= a, c.ts < b)
        .group_by(c.channel, c.ts))
    return {(channel, ts): int(seq) for channel, ts, seq in rows}


def _substitutes(store: FleetStore, plant: str, a: datetime, b: datetime
                 ) -> dict[tuple[str, datetime], dict[str, Any]]:
    """The current substitute of each hour (the highest revision received)."""
    e = schema.events.c
    out: dict[tuple[str, datetime], dict[str, Any]] = {}
    for (data,) in store.db.fetch(select(e.data).where(
            e.plant == plant, e.kind == SUBSTITUTION_EVENT).order_by(e.message_id)):
        for row in json.loads(data)["rows"]:
            ts = datetime.fromisoformat(row["ts"].replace("Z", "+00:00"))
            key = (row["channel"], ts)
            if a <= ts < b and row.get("revision", 0) >= out.get(key, {}).get("revision", 0):
                out[key] = row
    return out


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
