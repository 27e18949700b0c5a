"""How much N2O skipped the abatement unit in a time window, from stored minutes.

Minute by minute (partial minutes at the edges count pro rata), in this order:

1. measured_inlet_x_bypass_flow: a flow meter in the unit's bypass duct (its
   `bypass_point`) and the unit's inlet concentration, both valid: C [mg/m3] x Q [m3/h] / 60 min;
2. measured_inlet: the whole inlet stream is counted as bypassed (no bypass-duct meter,
   or it failed): conservative, since part of the gas may still have gone through the unit;
3. estimated_max_hourly_inlet_<N>h: the inlet was not measured either (unmonitored
   venting): the largest valid hourly inlet N2O mass of the N hours before the window,
   an alternative method that counts toward the 25 % share.

Each abatement unit is counted from its own points (config [[units]]).
All masses in kg, volumes in m3 (dry, standard state).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func, select

from cemsd.config import AbatementUnit
from cemsd.periods import MINUTE
from cemsd.settings.reduction import ReductionSettings
from cemsd.store import schema
from cemsd.store.database import Database


@dataclass
class BypassMass:
    n2o_kg: float = 0.0
    n2o_estimated_kg: float = 0.0
    gas_volume_nm3: float = 0.0
    minutes: Counter[str] = field(default_factory=Counter)  # method -> minutes

    @property
    def method(self) -> str:
        return "; ".join(f"{m}: {n:g} min" for m, n in sorted(self.minutes.items()))

    def add(self, other: BypassMass) -> None:
        self.n2o_kg += other.n2o_kg
        self.n2o_estimated_kg += other.n2o_estimated_kg
        self.gas_volume_nm3 += other.gas_volume_nm3
        self.minutes.update(other.minutes)


def series_names(unit: AbatementUnit) -> dict[str, str | None]:
    inlet, bypass = unit.inlet, unit.bypass_point
    return {
        "inlet_conc": f"{inlet}.n2o_mg_m3",
        "inlet_mass": f"{inlet}.n2o_kg_h",
        "inlet_flow": f"{inlet}.flow_nm3_h",
        "bypass_flow": f"{bypass}.flow_nm3_h" if bypass else None,
    }


def largest_inlet_hour(db: Database, settings: ReductionSettings, unit: AbatementUnit,
                       before: float) -> float | None:
    """The largest valid hourly inlet N2O mass (kg/h) of a unit in the look-back before a
    time."""
    h = schema.hours.c
    since = before - settings.bypass.vent_lookback_hours * 3600
    rows = db.fetch(select(func.max(h.value)).where(
        h.channel == series_names(unit)["inlet_mass"], h.flag == "N", h.ts >= since,
        h.ts < before - 3600 + 1e-6))
    return rows[0][0] if rows and rows[0][0] is not None else None


def bypass_mass(db: Database, settings: ReductionSettings, unit: AbatementUnit, t0: float,
                t1: float, estimate_before: float | None = None) -> BypassMass:
    """N2O that skipped the unit in [t0, t1), from the stored minutes."""
    names = series_names(unit)
    wanted = [n for n in names.values() if n]
    first = math.floor(t0 / MINUTE) * MINUTE
    rows = db.aggregates_between(schema.minutes, first, t1, wanted)
    by_minute: dict[float, dict[str, float | None]] = {}
    for row in rows:
        valid = row.flag == "N" and row.value is not None
        by_minute.setdefault(row.ts.timestamp(), {})[row.channel] = row.value if valid else None
    estimate: float | None = None
    out = BypassMass()
    lookback = settings.bypass.vent_lookback_hours
    m = first
    while m < t1:
        share = (min(m + MINUTE, t1) - max(m, t0)) / MINUTE
        values = by_minute.get(m, {})
        conc, mass = values.get(names["inlet_conc"]), values.get(names["inlet_mass"])
        q_bypass = values.get(names["bypass_flow"]) if names["bypass_flow"] else None
        if conc is not None and q_bypass is not None:
            out.n2o_kg += conc * q_bypass * 1e-6 * share / 60
            out.gas_volume_nm3 += q_bypass * share / 60
            out.minutes["measured_inlet_x_bypass_flow"] += share
        elif mass is not None:
            out.n2o_kg += mass * share / 60
            q_inlet = values.get(names["inlet_flow"])
            out.gas_volume_nm3 += (q_inlet or 0.0) * share / 60
            out.minutes["measured_inlet"] += share
        else:
            if estimate is None:
                estimate = largest_inlet_hour(db, settings, unit, estimate_before or t0) or 0.0
            out.n2o_kg += estimate * share / 60
            out.n2o_estimated_kg += estimate * share / 60
            out.minutes[f"estimated_max_hourly_inlet_{lookback}h"] += share
        m += MINUTE
    return out
