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
import itertools
import json
from dataclasses import asdict, fields
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cemsd import __version__, standards
from cemsd.config import IMPLICIT_UNIT, AbatementUnit, Config
from cemsd.periods import local_label, utc_label
from cemsd.qaqc.substitution import share_report
from cemsd.reduction.calculator import HourInput, Parameters, compute
from cemsd.reduction.inputs import HourDetail, startup_end, units_inputs
from cemsd.reduction.production import (
    ProductionError,
    days_of,
    from_counter,
    imported,
    midnight,
    period_production,
    prorated_cap,
)
from cemsd.settings.reduction import reduction_warnings
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
        "baseline_substitution": config.qaqc.baseline_substitution,
        "baseline_substitution_source": "interpretation [U] of quantification.md §1.3, "
                                        "decision 0170",
        "capture_rate_window": config.qaqc.capture_rate_window,
        "capture_rate_window_hours": int(standards.CAPTURE_RATE_WINDOW.value)
        if config.qaqc.capture_rate_window == "trailing" else None,
        "capture_rate_window_source": standards.CAPTURE_RATE_WINDOW.source,
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

    def result(hours: list[HourInput]) -> dict[str, Any]:
        r = compute(hours, parameters, total, cap_t)
        if params.get("draft"):
            r.reasons.insert(0, f"DRAFT: {params['draft']}")
            r.creditable = False
        r.warnings += [f"[reduction] {key} {message}" for key, message in
                       reduction_warnings(params["installation_date"], cap)]
        return r.to_dict()

    every_hour = [h for hours in units.values() for h in hours]
    return {"result": result(every_hour),
            "units": {name: {"result": result(hours)} for name, hours in units.items()},
            "production_t": total, "cap_t": cap_t,
            "inputs_sha256": digest(units, production, params)}


def period_name(t0: float, t1: float, tz: ZoneInfo) -> str:
    """The period as people name it: 2026-06-01 (a day), 2026-06 (a month), 2026-Q2, 2026,
    else first day to last day."""
    a, b = datetime.fromtimestamp(t0, tz), datetime.fromtimestamp(t1, tz)
    last = (b - timedelta(days=1)).date()
    midnight = a.time() == b.time() == time(0)
    if midnight and a.day == 1 and b.day == 1:
        months = (b.year - a.year) * 12 + b.month - a.month
        if months == 1:
            return f"{a:%Y-%m}"
        if months == 3 and a.month % 3 == 1:
            return f"{a.year}-Q{(a.month + 2) // 3}"
        if months == 12 and a.month == 1:
            return f"{a.year}"
    if midnight and last == a.date():
        return f"{a:%Y-%m-%d}"
    return f"{a:%Y-%m-%d} to {last:%Y-%m-%d}" if midnight else \
        f"{local_label(t0, tz)} to {local_label(t1, tz)}"


def month_to_date(db: Database, config: Config, t0: float, t1: float
                  ) -> tuple[float, dict[date, float], str | None]:
    """The period's end and production: all of it, or when days lack production, the days
    up to the first of them (a month-to-date DRAFT, not creditable) with why; a period whose
    first day lacks production is refused (ProductionError)."""
    try:
        return t1, period_production(db, config, t0, t1), None
    except ProductionError:
        days = days_of(t0, t1, config.plant.tz)
        known = imported(db, days) if config.reduction.production == "imported" else \
            from_counter(db, config, days)
        run = list(itertools.takewhile(lambda d: d in known, days))
        if not run:
            raise
        end = midnight(run[-1] + timedelta(days=1), config.plant.tz)
        missing = [d for d in days if d not in known]
        why = (f"production is known only to {run[-1]} ({len(missing)} day(s) of the period "
               f"missing, first {missing[0]}): a report to date, not creditable")
        return end, {d: known[d] for d in run}, why


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
    asked = t1
    t1, production, draft = month_to_date(db, config, t0, t1)
    inputs = units_inputs(db, config, t0, t1, now)
    params = {**parameters_of(config), "draft": draft}
    calc = calculation({name: hours for name, (hours, _, _) in inputs.items()}, production,
                       params)
    units = {u.name: u for u in config.abatement_units()}
    events = {e.id: e for _, _, unit_events in inputs.values() for e in unit_events}
    return {
        "report": "cemsd N2O emission reductions", "format_version": FORMAT_VERSION,
        "plant": {"id": config.plant.id, "name": config.plant.name,
                  "timezone": config.plant.timezone},
        "period": {"name": period_name(t0, asked, tz), "draft": draft is not None,
                   "from": local_label(t0, tz), "to": local_label(t1, tz),
                   "from_utc": utc_label(t0), "to_utc": utc_label(t1),
                   "hours": len(next(iter(inputs.values()))[0]),
                   "asked_to": local_label(asked, tz)},
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
