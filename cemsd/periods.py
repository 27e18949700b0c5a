"""Period boundaries. Minutes are UTC minutes; hours (and days) follow the plant's clock.

Every zone in use today has offsets in whole quarter hours, so minute boundaries are
the same in UTC and local time; an hour starts where the local clock shows :00. Times
are stored in UTC and shown in the plant's zone.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

MINUTE = 60.0
HOUR = 3600.0


def minute_floor(t: float) -> float:
    return math.floor(t / MINUTE) * MINUTE


def hour_floor(t: float, tz: ZoneInfo) -> float:
    """Start (UTC epoch) of the plant-local hour containing t."""
    local = datetime.fromtimestamp(t, tz)
    return local.replace(minute=0, second=0, microsecond=0).timestamp()


def is_hour_start(t: float, tz: ZoneInfo) -> bool:
    return hour_floor(t, tz) == t


def local_label(t: float, tz: ZoneInfo) -> str:
    """How an operator reads a period start: plant-local time with its offset."""
    return datetime.fromtimestamp(t, tz).isoformat(timespec="minutes")


def utc_label(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_OFFSET = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?"
                     r"(?:(\d+(?:\.\d+)?)s)?$")


def parse_offset(value: float | int | str) -> float:
    """Seconds from a number or a "1d2h30m10s" string."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    match = _OFFSET.match(text)
    if not text or not match:
        raise ValueError(f"cannot read time offset {value!r} (use seconds or e.g. '5h20m')")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds
