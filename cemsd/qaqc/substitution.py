"""Substitution of invalid hours per HJ 75-2017 §12 [U] (spec hj75-hj212.md §4).

Applies to the hourly emission series (by default each point's N2O mass, kg/h). An
invalid hour (any flag but N) while the source operates (not F) belongs to a period of
consecutive such hours, of one of two kinds:

- out_of_control: the channel was out of control or its calibration overdue;
- missing: any other reason (no data, fault, calibration, maintenance, ...).

The capture rate a = valid hours / (hours - stop hours) picks the rule. By default it is
taken over the trailing 2160 operating hours ending with the period (so a gap early in a
quarter is judged on a full window, decision 0171); `[qaqc] capture_rate_window =
"quarter"` takes it from the start of the plant-local calendar quarter instead.

| a          | out of control, N h                  | missing, N h                           |
|------------|--------------------------------------|----------------------------------------|
| >= 90 %    | <= 24: max of the 180 valid h before | <= 24: mean of the valid hours just    |
|            | the check that found it              | before and just after                  |
|            | > 24: max of the 720 valid h before  | > 24: max of the 720 valid h before    |
| 75 - 90 %  | max of the 2160 valid h before       | max of the 2160 valid h before         |
| < 75 %     | no rule: left unsubstituted, and reported as such                     |

The table's maxima are conservative for a series feeding project emissions (outlet,
bypass: the PROJECT side). For a series feeding the baseline (the inlet's N2O mass, so
N2O generated: the BASELINE side) a maximum would inflate credits, so the same tier takes
the lower side (interpretation [U], decision 0170, docs/SUBSTITUTION.md): the lowest valid
hour of the look-back the tier names (the lower of the two neighbours for the short-gap
rule), and zero where no rule applies or no valid hour exists; `[qaqc]
baseline_substitution = "zero"` substitutes every baseline gap with zero.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from cemsd import standards
from cemsd.chain import utc_text
from cemsd.periods import HOUR, utc_label
from cemsd.store import schema
from cemsd.store.database import Database, as_epoch

if TYPE_CHECKING:
    from cemsd.config import Config
    from cemsd.daemon import Daemon
    from cemsd.points import DerivedChannel

log = logging.getLogger(__name__)

HIGH = standards.CAPTURE_RATE_HIGH.value
LOW = standards.CAPTURE_RATE_LOW.value
SHORT = standards.SHORT_PERIOD_HOURS.value
HISTORY_HOURS = int(standards.LOOKBACK_LOW_TIER.value) + 92 * 24  # a low-tier look-back + a quarter
WINDOW_HOURS = int(standards.CAPTURE_RATE_WINDOW.value)

PROJECT = "project"  # feeds project emissions (outlet, bypass): the HJ 75 maxima
BASELINE = "baseline"  # feeds the baseline (inlet, N2O generated): the lower side


def baseline_safe(method: str) -> bool:
    """A substitute of the lower side (or zero): one a baseline-side series may use."""
    return method.startswith("zero.") or ".min_" in method or method.endswith("_min")


@dataclass(frozen=True)
class Rules:
    """How a series is substituted: its side, the baseline rule, the capture-rate window."""

    side: str = PROJECT
    baseline: str = "lowest"  # lowest | zero ([qaqc] baseline_substitution)
    window: str = "trailing"  # trailing | quarter ([qaqc] capture_rate_window)


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


def trailing_capture_rate(series: Sequence[Hour], t1: float, count: int = WINDOW_HOURS
                          ) -> float | None:
    """Valid hours / operating hours over the last `count` operating hours before t1."""
    operating = [h for h in series if h.ts < t1 and not h.stopped][-count:]
    if not operating:
        return None
    return sum(h.valid for h in operating) / len(operating)


def period_capture_rate(series: Sequence[Hour], period: Period, window: str, tz: ZoneInfo
                        ) -> float | None:
    """The capture rate that picks a period's tier, over the window the rules name."""
    if window == "quarter":
        return capture_rate(series, quarter_start(period.start, tz), period.end)
    return trailing_capture_rate(series, period.end)


def quarter_start(t: float, tz: ZoneInfo) -> float:
    local = datetime.fromtimestamp(t, tz)
    month = 3 * ((local.month - 1) // 3) + 1
    return local.replace(month=month, day=1, hour=0, minute=0, second=0, microsecond=0
                         ).timestamp()


def substitute(period: Period, series: Sequence[Hour], alpha: float,
               side: str = PROJECT, baseline: str = "lowest") -> list[Substitute] | None:
    """The substitutes of one ended period, or None where no rule applies (project side
    only: the baseline side then takes zero)."""
    if side == BASELINE and baseline == "zero":
        return _fill(period, alpha, 0.0, "zero.configured", ())
    if alpha < LOW:
        return None if side == PROJECT else _fill(period, alpha, 0.0,
                                                  "zero.capture_rate_below_75", ())
    name, ref, count = _tier(period, alpha)
    if count is None:
        value, sources = _around(series, period, side)
        method = f"hj75.{period.kind}.{name}_{'mean' if side == PROJECT else 'min'}"
    else:
        value, sources = _extreme_before(series, ref, count, max if side == PROJECT else min)
        method = f"hj75.{period.kind}.{'max' if side == PROJECT else 'min'}_{name}"
    if value is None:
        return None if side == PROJECT else _fill(period, alpha, 0.0,
                                                  "zero.no_valid_hour_before", ())
    return _fill(period, alpha, value, method, sources)


def _fill(period: Period, alpha: float, value: float, method: str,
          sources: tuple[float, ...]) -> list[Substitute]:
    return [Substitute(ts, value, method, period, alpha, sources) for ts in period.hours]


def _tier(period: Period, alpha: float) -> tuple[str, float, int | None]:
    """The HJ 75 tier: its name, where its look-back ends and how many valid hours it
    names (None: the valid hours just before and just after the period)."""
    n = len(period.hours)
    if alpha < HIGH:
        return "2160h_before", period.start, int(standards.LOOKBACK_LOW_TIER.value)
    if period.kind == "out_of_control" and n <= SHORT:
        ref = period.found_at if period.found_at is not None else period.start
        return "180h_before_check", ref, int(standards.LOOKBACK_OUT_OF_CONTROL_SHORT.value)
    if n > SHORT:
        return "720h_before", period.start, int(standards.LOOKBACK_LONG.value)
    return "before_after", period.start, None


def _extreme_before(series: Sequence[Hour], before: float, count: int,
                    pick: Callable[[list[float]], float]
                    ) -> tuple[float | None, tuple[float, ...]]:
    valid = [h for h in series if h.ts + HOUR <= before and h.valid][-count:]
    if not valid:
        return None, ()
    return pick([h.value for h in valid]), tuple(h.ts for h in valid)  # type: ignore[misc]


def _around(series: Sequence[Hour], period: Period, side: str
            ) -> tuple[float | None, tuple[float, ...]]:
    """The mean (project side) or the lower (baseline side) of the valid hours just before
    and just after the period."""
    before = next((h for h in reversed(series) if h.ts < period.start and h.valid), None)
    after = next((h for h in series if h.ts >= period.end and h.valid), None)
    used = [h for h in (before, after) if h is not None]
    if not used:
        return None, ()
    values: list[float] = [h.value for h in used]  # type: ignore[misc]
    value = sum(values) / len(values) if side == PROJECT else min(values)
    return value, tuple(h.ts for h in used)


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


SUBSTITUTION_EVENT = "substitution"
SUBSTITUTION_TIMES = ("ts", "period_start", "created_at")


def substitution_document(row: dict[str, Any]) -> dict[str, Any]:
    """A stored substitution row as an event publishes it: times as UTC labels, the write
    time to the microsecond as the database keeps it (a central copy hashes to the row's
    seal, docs/decisions/0211)."""
    return {k: _time_label(v) if k in SUBSTITUTION_TIMES else v for k, v in row.items()}


def _time_label(t: float) -> str:
    return utc_text(datetime.fromtimestamp(t, UTC))


def with_ids(db: Database, channel: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The new (revision 0) rows of a channel with the ids the database gave them: the
    collector lists them as the plant's API does, id included."""
    s = schema.substitutions.c
    times = [row["ts"] for row in rows]
    ids = {r.ts.timestamp(): r.id for r in db.fetch(select(s.id, s.ts).where(
        s.channel == channel, s.revision == 0, s.ts >= min(times), s.ts <= max(times)))}
    return [{"id": ids.get(row["ts"]), **row} for row in rows]


def plan_substitutions(db: Database, channel: str, inputs: Sequence[str], now: float,
                       tz: ZoneInfo, rules: Rules = Rules()
                       ) -> tuple[list[Substitute], list[Period]]:
    """Substitutes for every ended, not yet substituted period; and periods left without
    a rule (project side, capture rate below 75 %)."""
    since = history_start(db, channel, now, tz)
    series, found = load_series(db, channel, inputs, since, now)
    done = stored_substitutions(db, channel, since, now)
    out: list[Substitute] = []
    unruled: list[Period] = []
    for period, ended in find_periods(series, found):
        if not ended or all(ts in done for ts in period.hours):
            continue
        alpha = period_capture_rate(series, period, rules.window, tz)
        if _awaits_hour_after(period, series, alpha):
            continue
        subs = substitute(period, series, alpha if alpha is not None else 0.0, rules.side,
                          rules.baseline)
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


def series_rules(config: Config, derived: Iterable[DerivedChannel], names: Iterable[str]
                 ) -> dict[str, Rules]:
    """Each series' rules: the baseline side for the reduction's inlet point (its derived
    series and their measured inputs), the project side for everything else."""
    inlet = config.reduction.inlet_point
    baseline = {n for d in derived if d.point == inlet for n in (d.name, *d.inputs)}
    qaqc = config.qaqc
    return {name: Rules(BASELINE if name in baseline else PROJECT, qaqc.baseline_substitution,
                        qaqc.capture_rate_window) for name in names}


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
        self.rules = series_rules(daemon.config, derived.values(), self.series)
        self._reported: set[tuple[str, float]] = set()

    async def on_hours(self, rows: list[dict[str, Any]]) -> None:
        store = self.daemon.store
        assert store is not None
        now = self.daemon.clock.now()
        for channel, (unit, inputs) in self.series.items():
            subs, unruled = await store.call(plan_substitutions, store.db, channel, inputs, now,
                                             self.daemon.config.plant.tz, self.rules[channel])
            if subs:
                rows = substitution_rows(channel, unit, subs, now)
                await store.call(store.db.insert_aggregates, schema.substitutions, rows)
                rows = await store.call(with_ids, store.db, channel, rows)
                # the collector keeps them for central reports (docs/decisions/0204)
                await self.daemon.publish_event(SUBSTITUTION_EVENT, {
                    "rows": [substitution_document(row) for row in rows]})
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
