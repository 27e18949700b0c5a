"""The hourly inputs of a reduction calculation, assembled from stored records.

Per abatement unit (config [[units]], or the plant's one implicit unit), from its own
points and its own bypass events, for each plant-local hour of the period:
- inlet and outlet N2O mass: the current hour of `<point>.n2o_kg_h` when valid (N:
  "measured"), else its substitute (the method), else missing. The inlet feeds the
  baseline: only a lower-side substitute counts there (qaqc/substitution.py); an HJ 75
  maximum stored for it (by a version before decision 0170) is not used and the hour is
  missing, so counted as 0;
- bypassed N2O: the bypass events overlapping the hour, recomputed minute by minute for the
  hour (masses.py), split into measured and estimated;
- whether the unit ran (an hour fully covered by a bypass event did not treat gas);
- whether the source was stopped (the inlet hour is F) and whether the hour lies in the
  start-up test period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import or_, select

from cemsd.config import AbatementUnit, Config
from cemsd.periods import HOUR
from cemsd.qaqc.substitution import baseline_safe, stored_substitutions
from cemsd.reduction.calculator import MEASURED, MISSING, HourInput
from cemsd.reduction.masses import BypassMass, bypass_mass
from cemsd.store import schema
from cemsd.store.database import Database


@dataclass(frozen=True)
class HourDetail:
    """What a report shows of an hour beside its calculation inputs."""

    inlet_flag: str
    outlet_flag: str
    events: tuple[int, ...]


def startup_end(config: Config) -> float | None:
    settings = config.reduction
    if settings.installation_date is None:
        return None
    day = settings.installation_date
    month = day.month - 1 + settings.startup_months
    end = date(day.year + month // 12, month % 12 + 1, 1)
    end = end.replace(day=min(day.day, _days_in_month(end)))
    return datetime.combine(end, time(0), config.plant.tz).timestamp()


def _days_in_month(first: date) -> int:
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return (nxt - first).days


def bypass_events(db: Database, t0: float, t1: float, config: Config | None = None,
                  unit: AbatementUnit | None = None) -> list[Any]:
    """Events overlapping [t0, t1): all of them, or one unit's. Events stored before units
    existed (no unit) belong to the first unit; with one unit every event is its own."""
    b = schema.bypass_events.c
    query = select(schema.bypass_events).where(
        b.started_at < t1, or_(b.ended_at.is_(None), b.ended_at > t0))
    units = config.abatement_units() if config is not None else []
    if unit is not None and len(units) > 1:
        mine = b.unit == unit.name
        query = query.where(or_(mine, b.unit.is_(None)) if unit == units[0] else mine)
    return db.fetch(query.order_by(b.started_at))


def units_inputs(db: Database, config: Config, t0: float, t1: float, now: float
                 ) -> dict[str, tuple[list[HourInput], list[HourDetail], list[Any]]]:
    """hour_inputs of every abatement unit, by unit name, in the configuration's order."""
    return {u.name: hour_inputs(db, config, t0, t1, now, u) for u in config.abatement_units()}


def hour_inputs(db: Database, config: Config, t0: float, t1: float, now: float,
                unit: AbatementUnit | None = None
                ) -> tuple[list[HourInput], list[HourDetail], list[Any]]:
    """One unit's hours (default: the first unit), their details and its bypass events."""
    unit = unit or config.abatement_units()[0]
    inlet = f"{unit.inlet}.n2o_kg_h"
    outlet = f"{unit.outlet}.n2o_kg_h"
    rows = {(r.channel, r.ts.timestamp()): r
            for r in db.aggregates_between(schema.hours, t0, t1, [inlet, outlet])}
    subs = {name: stored_substitutions(db, name, t0, t1) for name in (inlet, outlet)}
    events = bypass_events(db, t0, t1, config, unit)
    startup = startup_end(config)
    hours, details = [], []
    h = t0
    while h < t1:
        in_sub = subs[inlet].get(h)
        in_kg, in_method, in_flag = _mass(rows.get((inlet, h)), in_sub if in_sub is None
                                          or baseline_safe(in_sub.method) else None)
        out_kg, out_method, out_flag = _mass(rows.get((outlet, h)), subs[outlet].get(h))
        bypass, covered, ids = _bypass(db, config, unit, events, h, now)
        measured = bypass.n2o_kg - bypass.n2o_estimated_kg
        estimated_method = next((m for m in bypass.minutes if m.startswith("estimated")), "")
        hours.append(HourInput(
            ts=h, inlet_kg=in_kg, inlet_method=in_method, outlet_kg=out_kg,
            outlet_method=out_method,
            bypass_kg=measured, bypass_method=_measured_methods(bypass),
            vent_kg=bypass.n2o_estimated_kg, vent_method=estimated_method,
            unit_running=covered < HOUR - 1e-6, stopped=in_flag == "F",
            startup=startup is not None and h < startup))
        details.append(HourDetail(in_flag, out_flag, ids))
        h += HOUR
    return hours, details, events


def _mass(row: Any, substitute: Any) -> tuple[float | None, str, str]:
    """kg in the hour (its kg/h mean over one hour), how it was obtained, the hour's flag."""
    if row is None:
        return None, MISSING, "-"
    if row.flag == "N" and row.value is not None:
        return row.value, MEASURED, row.flag
    if substitute is not None:
        return substitute.value, substitute.method, row.flag
    return None, MISSING, row.flag


def _bypass(db: Database, config: Config, unit: AbatementUnit, events: list[Any], h: float,
            now: float) -> tuple[BypassMass, float, tuple[int, ...]]:
    total, covered, ids = BypassMass(), 0.0, []
    for event in events:
        start = event.started_at.timestamp()
        end = event.ended_at.timestamp() if event.ended_at else now
        a, b = max(start, h), min(end, h + HOUR)
        if b <= a:
            continue
        total.add(bypass_mass(db, config.reduction, unit, a, b, estimate_before=start))
        covered += b - a
        ids.append(event.id)
    return total, covered, tuple(ids)


def _measured_methods(mass: BypassMass) -> str:
    return "; ".join(f"{m}: {n:g} min" for m, n in sorted(mass.minutes.items())
                     if not m.startswith("estimated"))
