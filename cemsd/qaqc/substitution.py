"""Substitution of invalid hours per HJ 75-2017 §12 [U] (spec hj75-hj212.md §4).

Applies to the hourly emission series (by default each point's N2O mass, kg/h). An
invalid hour (any flag but N) while the source operates (not F) belongs to a period of
consecutive such hours, of one of two kinds:

- out_of_control: the channel was out of control or its calibration overdue;
- missing: any other reason (no data, fault, calibration, maintenance, ...).

The quarter's capture rate a = valid hours / (hours - stop hours), over the plant-local
calendar quarter from its start to the end of the period, picks the rule:

| a          | out of control, N h                  | missing, N h                           |
|------------|--------------------------------------|----------------------------------------|
| >= 90 %    | <= 24: max of the 180 valid h before | <= 24: mean of the valid hours just    |
|            | the check that found it              | before and just after                  |
|            | > 24: max of the 720 valid h before  | > 24: max of the 720 valid h before    |
| 75 - 90 %  | max of the 2160 valid h before       | max of the 2160 valid h before         |
| < 75 %     | no rule: left unsubstituted, and reported as such                     |

A period is substituted once it has ended (a valid or stop hour follows it): its length,
and for short gaps the hour after it, are known only then. Substitutes are stored in
their own table, flagged S, with the method and the source hours; a measured hour is
never overwritten. When fewer look-back hours exist than the rule names (a young system),
the hours that exist are used and listed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from cemsd import standards
from cemsd.periods import HOUR, utc_label
from cemsd.store import schema
from cemsd.store.database import Database, as_epoch

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)

HIGH = standards.CAPTURE_RATE_HIGH.value
LOW = standards.CAPTURE_RATE_LOW.value
SHORT = standards.SHORT_PERIOD_HOURS.value
HISTORY_HOURS = int(standards.LOOKBACK_LOW_TIER.value) + 92 * 24  # a low-tier look-back + a quarter


@dataclass(frozen=True)
class Hour:
    ts: float
    value: float | None
    flag: str
    out_of_control: bool = False

    @property
    def valid(self) -> bool:
        return self.flag == "N" and self.value is not None and math.isfinite(self.value)

    @property
    def stopped(self) -> bool:
        return self.flag == "F"


@dataclass(frozen=True)
class Period:
    kind: str  # missing | out_of_control
    hours: tuple[float, ...]  # starts of its hours
    found_at: float | None = None  # out of control: when the failed check started

    @property
    def start(self) -> float:
        return self.hours[0]

    @property
    def end(self) -> float:
        return self.hours[-1] + HOUR


@dataclass(frozen=True)
class Substitute:
    ts: float
    value: float
    method: str
    period: Period
    capture_rate: float
    source_hours: tuple[float, ...]


def find_periods(series: Sequence[Hour], found_at: dict[float, float] | None = None
                 ) -> list[tuple[Period, bool]]:
    """Periods of consecutive invalid operating hours; True when the period has ended."""
    periods: list[tuple[Period, bool]] = []
    run: list[Hour] = []
    for hour in [*series, None]:
        if hour is not None and not hour.valid and not hour.stopped and (
                not run or hour.out_of_control == run[-1].out_of_control):
            run.append(hour)
            continue
        if run:
            kind = "out_of_control" if run[0].out_of_control else "missing"
            found = (found_at or {}).get(run[0].ts)
            periods.append((Period(kind, tuple(h.ts for h in run), found), hour is not None))
            run = []
        if hour is not None and not hour.valid and not hour.stopped:
            run = [hour]  # a period of the other kind starts right away
    return periods


def capture_rate(series: Sequence[Hour], t0: float, t1: float) -> float | None:
    """Valid hours / (hours - stop hours) in [t0, t1) (HJ 75-2017 §12 [U])."""
    window = [h for h in series if t0 <= h.ts < t1]
    operating = [h for h in window if not h.stopped]
    if not operating:
        return None
    return sum(h.valid for h in operating) / len(operating)


def quarter_start(t: float, tz: ZoneInfo) -> float:
    local = datetime.fromtimestamp(t, tz)
    month = 3 * ((local.month - 1) // 3) + 1
    return local.replace(month=month, day=1, hour=0, minute=0, second=0, microsecond=0
                         ).timestamp()


def substitute(period: Period, series: Sequence[Hour], alpha: float) -> list[Substitute] | None:
    """The HJ 75 substitutes of one ended period, or None where no rule applies."""
    if alpha < LOW:
        return None
    n = len(period.hours)
    if alpha < HIGH:
        value, sources = _max_before(series, period.start, int(standards.LOOKBACK_LOW_TIER.value))
        method = f"hj75.{period.kind}.max_2160h_before"
    elif period.kind == "out_of_control" and n <= SHORT:
        ref = period.found_at if period.found_at is not None else period.start
        value, sources = _max_before(series, ref,
                                     int(standards.LOOKBACK_OUT_OF_CONTROL_SHORT.value))
        method = "hj75.out_of_control.max_180h_before_check"
    elif n > SHORT:
        value, sources = _max_before(series, period.start, int(standards.LOOKBACK_LONG.value))
        method = f"hj75.{period.kind}.max_720h_before"
    else:
        value, sources = _mean_around(series, period)
        method = "hj75.missing.before_after_mean"
    if value is None:
        return None
    return [Substitute(ts, value, method, period, alpha, sources) for ts in period.hours]


def _max_before(series: Sequence[Hour], before: float, count: int
                ) -> tuple[float | None, tuple[float, ...]]:
    valid = [h for h in series if h.ts + HOUR <= before and h.valid][-count:]
    if not valid:
        return None, ()
    return max(h.value for h in valid), tuple(h.ts for h in valid)  # type: ignore[type-var]


def _mean_around(series: Sequence[Hour], period: Period
                 ) -> tuple[float | None, tuple[float, ...]]:
    before = next((h for h in reversed(series) if h.ts < period.start and h.valid), None)
    after = next((h for h in series if h.ts >= period.end and h.valid), None)
    used = [h for h in (before, after) if h is not None]
    if not used:
        return None, ()
    return sum(h.value for h in used) / len(used), tuple(h.ts for h in used)  # type: ignore[misc]


# --- the database side ----------------------------------------------------------------------


def load_series(db: Database, channel: str, inputs: Sequence[str], t0: float, t1: float
                ) -> tuple[list[Hour], dict[float, float]]:
    """Current hours of a series, marked out of control where the series or one of its
    measured inputs was, and when each such period's failing check started."""
    hours = db.aggregates_between(schema.hours, t0, t1, [channel])
    periods = _control_periods(db, [channel, *inputs], t0, t1)
    out, found = [], {}
    for row in hours:
        ts = row.ts.timestamp()
        covering = [p for p in periods if p[0] < ts + HOUR and (p[1] is None or p[1] > ts)]
        out.append(Hour(ts, row.value, row.flag, bool(covering)))
        if covering and covering[0][2] is not None:
            found[ts] = covering[0][2]
    return out, found


def _control_periods(db: Database, channels: list[str], t0: float, t1: float
                     ) -> list[tuple[float, float | None, float | None]]:
    c, k = schema.control_periods.c, schema.calibrations.c
    # earliest first, and among periods starting together the one a failing check opened
    query = (select(c.started_at, c.ended_at, k.started_at)
             .select_from(schema.control_periods.outerjoin(schema.calibrations,
                                                           c.opened_by == k.id))
             .where(c.channel.in_(channels), c.started_at < t1)
             .order_by(c.started_at, k.started_at.is_(None), c.id))
    out = []
    for started, ended, check in db.fetch(query):
        end = as_epoch(ended)
        if end is None or end > t0:
            out.append((as_epoch(started), end, as_epoch(check)))  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


def stored_substitutions(db: Database, channel: str, t0: float, t1: float) -> dict[float, Any]:
    s = schema.substitutions.c
    rows = db.fetch(select(schema.substitutions).where(s.channel == channel, s.ts >= t0,
                                                        s.ts < t1).order_by(s.ts, s.revision))
    return {r.ts.timestamp(): r for r in rows}


def substitution_rows(channel: str, unit: str, substitutes: list[Substitute], now: float
                      ) -> list[dict[str, Any]]:
    return [{
        "channel": channel, "ts": s.ts, "value": s.value, "unit": unit, "flag": "S",
        "method": s.method, "period_kind": s.period.kind, "period_start": s.period.start,
        "period_hours": len(s.period.hours), "capture_rate": s.capture_rate,
        "source_hours": json.dumps([utc_label(t) for t in s.source_hours]),
        "created_at": now,
    } for s in substitutes]


def plan_substitutions(db: Database, channel: str, inputs: Sequence[str], now: float,
                       tz: ZoneInfo) -> tuple[list[Substitute], list[Period]]:
    """Substitutes for every ended, not yet substituted period; and periods left without
    a rule (capture rate below 75 %)."""
    since = history_start(db, channel, now, tz)
    series, found = load_series(db, channel, inputs, since, now)
    done = stored_substitutions(db, channel, since, now)
    out: list[Substitute] = []
    unruled: list[Period] = []
    for period, ended in find_periods(series, found):
        if not ended or all(ts in done for ts in period.hours):
            continue
        alpha = capture_rate(series, quarter_start(period.start, tz), period.end)
        if _awaits_hour_after(period, series, alpha):
            continue
        subs = substitute(period, series, alpha if alpha is not None else 0.0)
        if subs is None:
            unruled.append(period)
        else:
            out.extend(s for s in subs if s.ts not in done)
    return out, unruled


def _awaits_hour_after(period: Period, series: Sequence[Hour], alpha: float | None) -> bool:
    """The mean rule needs the valid hour after a short gap; after a stop or a period of the
    other kind it is not known yet: wait for it, so the result does not depend on when it
    was computed."""
    return (alpha is not None and alpha >= HIGH and period.kind == "missing"
            and len(period.hours) <= SHORT
            and not any(h.valid for h in series if h.ts >= period.end))


def history_start(db: Database, channel: str, now: float, tz: ZoneInfo) -> float:
    """Far enough back for every rule: the low tier's 2160 valid hours before the periods
    still open to substitution, and the start of their quarter, however long a shutdown
    came in between."""
    h = schema.hours.c
    recent = now - HISTORY_HOURS * HOUR
    query = (select(h.ts).where(h.channel == channel, h.flag == "N", h.ts < recent)
             .order_by(h.ts.desc()).offset(int(standards.LOOKBACK_LOW_TIER.value) - 1).limit(1))
    rows = db.fetch(query)
    deepest = as_epoch(rows[0][0]) if rows else None
    if deepest is None:  # fewer than 2160 valid hours before: everything there is
        first = db.fetch(select(func.min(h.ts)).where(h.channel == channel))[0][0]
        deepest = as_epoch(first) if first is not None else recent
    return min(recent, deepest, quarter_start(recent, tz))


class Substituter:
    """Substitutes ended periods of the configured series each time hours close."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        assert daemon.closer is not None
        derived = {d.name: d for d in daemon.closer.calculator.derived}
        wanted = daemon.config.qaqc.substitute
        names = wanted if wanted is not None else [d for d in derived if d.endswith(".n2o_kg_h")]
        self.series = {  # name -> (unit, measured inputs)
            name: (daemon.closer.series[name].unit,
                   derived[name].inputs if name in derived else ())
            for name in names if name in daemon.closer.series
        }
        self._reported: set[tuple[str, float]] = set()

    async def on_hours(self, rows: list[dict[str, Any]]) -> None:
        store = self.daemon.store
        assert store is not None
        now = self.daemon.clock.now()
        for channel, (unit, inputs) in self.series.items():
            subs, unruled = await store.call(plan_substitutions, store.db, channel, inputs, now,
                                             self.daemon.config.plant.tz)
            if subs:
                await store.call(store.db.insert_aggregates, schema.substitutions,
                                 substitution_rows(channel, unit, subs, now))
                log.info("hours substituted", extra={"channel": channel, "hours": len(subs),
                                                      "method": subs[0].method})
            for period in unruled:
                if (channel, period.start) not in self._reported:
                    self._reported.add((channel, period.start))
                    log.warning("period left unsubstituted: capture rate below 75 %",
                                extra={"channel": channel, "from": utc_label(period.start),
                                       "hours": len(period.hours)})


def share_report(db: Database, channel: str, t0: float, t1: float) -> dict[str, Any]:
    """How much of [t0, t1) rests on substituted hours: by hours and by mass."""
    hours = db.aggregates_between(schema.hours, t0, t1, [channel])
    subs = stored_substitutions(db, channel, t0, t1)
    operating = [h for h in hours if h.flag != "F"]
    valid = [h for h in operating if h.flag == "N" and h.value is not None]
    invalid = [h for h in operating if not (h.flag == "N" and h.value is not None)]
    substituted = [subs[h.ts.timestamp()] for h in invalid if h.ts.timestamp() in subs]
    measured_mass = sum(h.value for h in valid)
    substituted_mass = sum(s.value for s in substituted)
    total_mass = measured_mass + substituted_mass
    return {
        "channel": channel, "from": utc_label(t0), "to": utc_label(t1),
        "hours": len(hours), "stop_hours": len(hours) - len(operating),
        "operating_hours": len(operating), "valid_hours": len(valid),
        "substituted_hours": len(substituted),
        "unsubstituted_hours": len(invalid) - len(substituted),
        "capture_rate": len(valid) / len(operating) if operating else None,
        "share_substituted_hours": len(substituted) / len(operating) if operating else None,
        "measured_mass": measured_mass, "substituted_mass": substituted_mass,
        "share_substituted_mass": substituted_mass / total_mass if total_mass else None,
        "methods": sorted({s.method for s in substituted}),
    }
