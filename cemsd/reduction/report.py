"""The period report: every figure reproducible from the hours it lists.

A report holds the parameters (each with its source), the software version, the hourly
inputs (with flags, methods and masses), production and cap, the bypass events, the
calculation's result, and the SHA-256 of the canonical inputs: the same inputs always give
the same digest and the same figures, whether computed from the database or from a
verification bundle (bundle.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import asdict, fields
from datetime import date
from typing import Any

from cemsd import __version__, standards
from cemsd.config import IMPLICIT_UNIT, AbatementUnit, Config
from cemsd.periods import local_label, utc_label
from cemsd.qaqc.substitution import share_report
from cemsd.reduction.calculator import HourInput, Parameters, compute
from cemsd.reduction.inputs import HourDetail, startup_end, units_inputs
from cemsd.reduction.production import period_production, prorated_cap
from cemsd.store.database import Database

FORMAT_VERSION = 1
HOUR_FIELDS = [f.name for f in fields(HourInput)]


def parameters_of(config: Config) -> dict[str, Any]:
    r = config.reduction
    end = startup_end(config)
    return {
        "gwp": r.gwp, "gwp_source": _gwp_source(r.gwp),
        "baseline": r.baseline, "baseline_destruction": r.baseline_destruction,
        "baseline_source": standards.BASELINE_DESTRUCTION.source,
        "cap_mode": r.cap_mode, "production_cap_t_per_year": r.production_cap_t_per_year,
        "share_limit": r.share_limit,
        "share_limit_source": standards.ALTERNATIVE_SHARE_LIMIT.source,
        "installation_date": str(r.installation_date) if r.installation_date else None,
        "startup_months": r.startup_months,
        "startup_end_utc": utc_label(end) if end is not None else None,
        "production_source": r.production,
        **_unit_parameters(config),
        "vent_lookback_hours": r.bypass.vent_lookback_hours,
        "standard_state": config.processing.standard_state,
    }


def _unit_parameters(config: Config) -> dict[str, Any]:
    """Which series each unit is computed from (a plant without [[units]]: as before)."""
    def series(unit: AbatementUnit) -> dict[str, Any]:
        return {"inlet_series": f"{unit.inlet}.n2o_kg_h",
                "outlet_series": f"{unit.outlet}.n2o_kg_h", "bypass_point": unit.bypass_point}

    units = config.abatement_units()
    if not config.units:
        return series(units[0])
    return {"units": [{"name": u.name, **series(u)} for u in units]}


def _gwp_source(gwp: float) -> str:
    known = (standards.GWP_N2O_AR5, standards.GWP_N2O_AR6, standards.GWP_N2O_AR4)
    return next((g.source for g in known if g.value == gwp), "set in the configuration")


def calculation(units: dict[str, list[HourInput]], production: dict[date, float],
                params: dict[str, Any]) -> dict[str, Any]:
    """Result and digest from inputs alone: what a verifier recomputes.

    Each unit is computed from its own hours; the plant from every unit's hours together,
    so its totals are the units' sums; production and the cap are the plant's, so every
    unit and the plant share one cap factor (docs/decisions/0140)."""
    total = sum(production.values())
    cap = params["production_cap_t_per_year"]
    cap_t = prorated_cap(cap, production) if cap is not None else None
    parameters = Parameters(params["gwp"], params["baseline"], params["baseline_destruction"],
                            params["cap_mode"], params["share_limit"])
    every_hour = [h for hours in units.values() for h in hours]
    return {"result": compute(every_hour, parameters, total, cap_t).to_dict(),
            "units": {name: {"result": compute(hours, parameters, total, cap_t).to_dict()}
                      for name, hours in units.items()},
            "production_t": total, "cap_t": cap_t,
            "inputs_sha256": digest(units, production, params)}


def digest(units: dict[str, list[HourInput]], production: dict[date, float],
           params: dict[str, Any]) -> str:
    """SHA-256 of the canonical inputs; a plant of one unit digests as before units."""
    named = len(units) > 1
    canonical = json.dumps({
        "hours": [[*([name] if named else []), *(getattr(h, f) for f in HOUR_FIELDS)]
                  for name, hours in units.items() for h in hours],
        "production": [[str(d), t] for d, t in sorted(production.items())],
        "parameters": params,
    }, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_report(db: Database, config: Config, t0: float, t1: float, now: float
                 ) -> dict[str, Any]:
    tz = config.plant.tz
    production = period_production(db, config, t0, t1)
    inputs = units_inputs(db, config, t0, t1, now)
    params = parameters_of(config)
    calc = calculation({name: hours for name, (hours, _, _) in inputs.items()}, production,
                       params)
    units = {u.name: u for u in config.abatement_units()}
    events = {e.id: e for _, _, unit_events in inputs.values() for e in unit_events}
    return {
        "report": "cemsd N2O emission reductions", "format_version": FORMAT_VERSION,
        "plant": {"id": config.plant.id, "name": config.plant.name,
                  "timezone": config.plant.timezone},
        "period": {"from": local_label(t0, tz), "to": local_label(t1, tz),
                   "from_utc": utc_label(t0), "to_utc": utc_label(t1),
                   "hours": len(next(iter(inputs.values()))[0])},
        "software": {"cemsd": __version__},
        "parameters": params,
        "production": {"days": [{"date": str(d), "tonnes": t} for d, t in production.items()],
                       "total_t": calc["production_t"], "cap_t": calc["cap_t"]},
        **{k: calc[k] for k in ("result", "inputs_sha256")},
        "hj75_substitution": _substitution(db, next(iter(units.values())), t0, t1),
        "units": {name: {**calc["units"][name], "inlet": units[name].inlet,
                         "outlet": units[name].outlet,
                         "hj75_substitution": _substitution(db, units[name], t0, t1),
                         "bypass_events": [e.id for e in unit_events]}
                  for name, (_, _, unit_events) in inputs.items()},
        "bypass_events": [_event(e, tz) for e in sorted(events.values(),
                                                         key=lambda e: e.started_at)],
        "hours": [_hour(name, h, d, tz) for name, (hours, details, _) in inputs.items()
                  for h, d in zip(hours, details, strict=True)],
    }


def _substitution(db: Database, unit: AbatementUnit, t0: float, t1: float) -> dict[str, Any]:
    return {side: share_report(db, f"{point}.n2o_kg_h", t0, t1)
            for side, point in (("inlet", unit.inlet), ("outlet", unit.outlet))}


def _event(e: Any, tz: Any) -> dict[str, Any]:
    start = e.started_at.timestamp()
    end = e.ended_at.timestamp() if e.ended_at else None
    return {"id": e.id, "unit": e.unit, "start": local_label(start, tz),
            "end": local_label(end, tz) if end else None,
            "duration_min": (end - start) / 60 if end else None,
            "triggers": json.loads(e.triggers), "gas_volume_nm3": e.gas_volume_nm3,
            "n2o_kg": e.n2o_kg, "n2o_estimated_kg": e.n2o_estimated_kg, "method": e.method}


def _hour(unit: str, h: HourInput, d: HourDetail, tz: Any) -> dict[str, Any]:
    return {"unit": unit, "hour": local_label(h.ts, tz), **asdict(h), "inlet_flag": d.inlet_flag,
            "outlet_flag": d.outlet_flag, "bypass_events": list(d.events)}


# --- rendering ------------------------------------------------------------------------------


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=1, ensure_ascii=False)


def to_csv(report: dict[str, Any]) -> str:
    """The hourly table, one row an hour, every input the calculation used."""
    buffer = io.StringIO()
    columns = ["unit", "hour", *HOUR_FIELDS, "inlet_flag", "outlet_flag", "bypass_events"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in report["hours"]:
        writer.writerow({**row, "bypass_events": " ".join(map(str, row["bypass_events"]))})
    return buffer.getvalue()


def hours_from_rows(rows: list[dict[str, Any]]) -> dict[str, list[HourInput]]:
    """HourInputs by unit back from report or CSV rows (a verifier's input); rows without a
    unit (written before units existed) are the implicit unit's."""
    units: dict[str, list[HourInput]] = {}
    for row in rows:
        hour = HourInput(**{f: _typed(f, row[f]) for f in HOUR_FIELDS})
        units.setdefault(row.get("unit") or IMPLICIT_UNIT, []).append(hour)
    return units


def _typed(name: str, value: Any) -> Any:
    kinds = {f.name: f.type for f in fields(HourInput)}
    kind = str(kinds[name])
    if isinstance(value, str):
        if "bool" in kind:
            return value == "True"
        if "float" in kind:
            return None if value == "" else float(value)
    return value
