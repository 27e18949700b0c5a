"""Reading stored hours back out: for the CLI, the demo and (later) the API."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from cemsd.periods import local_label, utc_label
from cemsd.store import schema
from cemsd.store.database import Database

FIELDS = ("hour_local", "hour_utc", "channel", "value", "unit", "flag", "n_valid",
          "n_expected", "minimum", "maximum", "reason")


def parse_time(text: str, tz: ZoneInfo) -> float:
    """An ISO date or datetime; without an offset it is read in the plant's zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"cannot read time {text!r}: use e.g. 2026-06-01 or "
                         "2026-06-01T08:00 or 2026-06-01T00:00:00+00:00") from None
    if len(text) == 10:  # a date: local midnight
        moment = datetime.combine(moment.date(), time(0))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


def query_hours(db: Database, t0: float, t1: float, tz: ZoneInfo,
                channels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    rows = db.aggregates_between(schema.hours, t0, t1, channels)
    out = []
    for r in rows:
        ts = r.ts.timestamp()
        out.append({
            "hour_local": local_label(ts, tz), "hour_utc": utc_label(ts), "channel": r.channel,
            "value": r.value, "unit": r.unit, "flag": r.flag, "n_valid": r.n_valid,
            "n_expected": r.n_expected, "minimum": r.minimum, "maximum": r.maximum,
            "reason": r.reason,
        })
    return out


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=1, ensure_ascii=False)


def to_table(rows: list[dict[str, Any]], channels: Sequence[str]) -> str:
    """One line per hour, one column per channel: value and flag."""
    by_hour: dict[str, dict[str, dict[str, Any]]] = {}
    units: dict[str, str] = {}
    for row in rows:
        by_hour.setdefault(row["hour_local"], {})[row["channel"]] = row
        units[row["channel"]] = row["unit"]
    columns = [c for c in channels if c in units]
    heads = [f"{c} [{units[c]}]" for c in columns]
    widths = [max(len(h), 12) for h in heads]
    lines = ["hour (plant time)".ljust(23) + "  ".join(h.rjust(w) for h, w in zip(heads, widths,
                                                                                 strict=True))]
    for hour, cells in by_hour.items():
        parts = []
        for column, width in zip(columns, widths, strict=True):
            cell = cells.get(column)
            parts.append(_cell(cell).rjust(width))
        lines.append(hour.ljust(23) + "  ".join(parts))
    return "\n".join(lines)


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    value = row["value"]
    shown = "-" if value is None or math.isnan(value) else f"{value:.6g}"
    return f"{shown} {row['flag']}"
