"""A channel's calibration drift trend: a least-squares slope in % F.S. per day.

A slope from two checks minutes apart says nothing (it printed "+194745.78 % F.S./day"):
a trend is given only from at least TREND_MIN_CHECKS checks spanning TREND_MIN_DAYS days,
otherwise the trend says "not enough data". These are cemsd's choices, not a standard's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TREND_MIN_CHECKS = 3
TREND_MIN_DAYS = 2.0
NOT_ENOUGH = (f"not enough data (needs {TREND_MIN_CHECKS} checks over "
              f"{TREND_MIN_DAYS:g} days)")


def drift_trends(rows: list[Any]) -> list[dict[str, Any]]:
    """Per channel and kind: number of checks, days covered, last drift, slope per day
    (None with a note when there is not enough data)."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        if r.drift_pct_fs is not None:
            groups.setdefault((r.channel, r.kind), []).append(r)
    out = []
    for (channel, kind), items in sorted(groups.items()):
        days = np.array([r.started_at.timestamp() / 86400 for r in items])
        drifts = np.array([r.drift_pct_fs for r in items])
        spanned = float(np.ptp(days))
        enough = len(items) >= TREND_MIN_CHECKS and spanned >= TREND_MIN_DAYS
        slope = float(np.polyfit(days, drifts, 1)[0]) if enough else None
        out.append({"channel": channel, "kind": kind, "checks": len(items),
                    "days": round(spanned, 2), "last_drift_pct_fs": float(drifts[-1]),
                    "slope_pct_fs_per_day": slope, "note": None if enough else NOT_ENOUGH})
    return out
