"""The emission-reduction calculation of one reporting period (quantification.md §1.2).

A pure function of hourly inputs and parameters, so a verifier can recompute a report from
its bundle alone. Per hour: the N2O entering the abatement unit (generated), leaving it,
and skipping it (bypassed or vented), each with its method (measured, substituted,
estimated). Over the period:

    N2O_gen  = sum of inlet masses over operating hours        (t)
    N2O_out  = sum of outlet masses over hours the unit ran     (t)
    N2O_byp  = sum of bypassed or vented masses                 (t)
    PE       = N2O_out + N2O_byp
    DE_unit  = 1 - N2O_out / inlet mass of the hours the unit ran (mass basis)
    DE_all   = 1 - PE / N2O_gen
    BE       = N2O_gen x (1 - DE_BL)      "floor" reading of the 90 % rule (default)
             = N2O_gen, credited only if DE_all >= DE_BL   "gate" reading
    ER_raw   = BE - PE
    f_cap    = min(1, P_cap / P_actual)
    ER       = max(0, ER_raw x f_cap)            proportional cap (default)
             = max(0, BE x f_cap - PE)           cap on the baseline only
    credited = ER x GWP (t CO2e), 0 where the period cannot be credited (start-up test,
               gate not reached, alternative-method share of either side at or above the
               limit, outlet hours missing without substitute)

The 25 % rule counts both sides: substituted outlet plus estimated bypass N2O over PE (the
project side), and substituted inlet N2O over N2O generated (the baseline side).

Hours of the start-up test period are computed and shown but not credited; stop hours (the
source stopped) are excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from cemsd import standards

MEASURED = "measured"
MISSING = "missing"


@dataclass(frozen=True)
class HourInput:
    ts: float  # hour start, UTC epoch
    inlet_kg: float | None  # N2O entering the unit (measured or substituted); None: missing
    inlet_method: str
    outlet_kg: float | None
    outlet_method: str
    bypass_kg: float = 0.0  # N2O measured skipping the unit (bypassed or vented)
    bypass_method: str = ""  # "" none, or how it was measured
    vent_kg: float = 0.0  # N2O estimated skipping the unit (unmonitored venting)
    vent_method: str = ""  # "" none, or the alternative method used
    unit_running: bool = True  # False: the whole hour bypassed the unit (outlet not counted)
    stopped: bool = False  # the source was stopped: nothing generated, hour excluded
    startup: bool = False  # in the start-up test period: shown, not credited

    @property
    def outlet_substituted(self) -> bool:
        return self.unit_running and self.outlet_method not in (MEASURED, MISSING)



@dataclass(frozen=True)
class Parameters:
    gwp: float = standards.GWP_N2O_AR5.value
    baseline: Literal["floor", "gate"] = "floor"
    baseline_destruction: float = standards.BASELINE_DESTRUCTION.value
    cap_mode: Literal["proportional", "baseline_only"] = "proportional"
    share_limit: float = standards.ALTERNATIVE_SHARE_LIMIT.value


@dataclass
class Totals:
    hours: int = 0
    n2o_generated_t: float = 0.0
    n2o_outlet_t: float = 0.0
    n2o_bypass_t: float = 0.0
    inlet_while_running_t: float = 0.0
    outlet_substituted_t: float = 0.0
    bypass_estimated_t: float = 0.0
    inlet_substituted_t: float = 0.0
    missing_inlet_hours: int = 0
    missing_outlet_hours: int = 0

    def add(self, hour: HourInput) -> None:
        self.hours += 1
        inlet = (hour.inlet_kg or 0.0) / 1000
        self.n2o_generated_t += inlet
        self.missing_inlet_hours += hour.inlet_kg is None
        if hour.inlet_kg is not None and hour.inlet_method != MEASURED:
            self.inlet_substituted_t += inlet
        self.n2o_bypass_t += (hour.bypass_kg + hour.vent_kg) / 1000
        self.bypass_estimated_t += hour.vent_kg / 1000
        if hour.unit_running:
            self.inlet_while_running_t += inlet
            self.missing_outlet_hours += hour.outlet_kg is None
            outlet = (hour.outlet_kg or 0.0) / 1000
            self.n2o_outlet_t += outlet
            if hour.outlet_substituted:
                self.outlet_substituted_t += outlet


@dataclass
class Result:
    parameters: Parameters
    totals: Totals
    startup: Totals
    stop_hours: int
    production_t: float | None
    cap_t: float | None
    project_emissions_t: float = 0.0
    de_unit: float | None = None
    de_overall: float | None = None
    baseline_t: float = 0.0
    er_raw_t: float = 0.0
    cap_factor: float = 1.0
    er_t: float = 0.0
    alternative_share: float | None = None  # project side: substituted + estimated / PE
    outlet_substituted_share: float | None = None  # of PE
    bypass_estimated_share: float | None = None  # of PE
    inlet_substituted_share: float | None = None  # baseline side: of N2O generated
    emission_factor_t_per_t: float | None = None
    creditable: bool = True
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def er_co2e_t(self) -> float:
        return self.er_t * self.parameters.gwp

    @property
    def credited_co2e_t(self) -> float:
        return self.er_co2e_t if self.creditable else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "parameters": asdict(self.parameters), "totals": asdict(self.totals),
            "startup_totals": asdict(self.startup), "stop_hours": self.stop_hours,
            "production_t": self.production_t, "cap_t": self.cap_t,
            "project_emissions_t": self.project_emissions_t, "de_unit": self.de_unit,
            "de_overall": self.de_overall, "baseline_t": self.baseline_t,
            "er_raw_t": self.er_raw_t, "cap_factor": self.cap_factor, "er_t": self.er_t,
            "er_co2e_t": self.er_co2e_t, "credited_co2e_t": self.credited_co2e_t,
            "creditable": self.creditable, "reasons": self.reasons,
            "alternative_share": self.alternative_share,
            "outlet_substituted_share": self.outlet_substituted_share,
            "bypass_estimated_share": self.bypass_estimated_share,
            "inlet_substituted_share": self.inlet_substituted_share,
            "emission_factor_t_per_t": self.emission_factor_t_per_t,
            "warnings": self.warnings,
        }


def compute(hours: Sequence[HourInput], params: Parameters, production_t: float | None = None,
            cap_t: float | None = None) -> Result:
    credited, startup = Totals(), Totals()
    stop_hours = 0
    for hour in hours:
        if hour.stopped:
            stop_hours += 1
        elif hour.startup:
            startup.add(hour)
        else:
            credited.add(hour)
    result = Result(params, credited, startup, stop_hours, production_t, cap_t)
    _reduce(result)
    _judge(result)
    return result


def _reduce(r: Result) -> None:
    t, p = r.totals, r.parameters
    r.project_emissions_t = t.n2o_outlet_t + t.n2o_bypass_t
    if t.inlet_while_running_t > 0:
        r.de_unit = 1 - t.n2o_outlet_t / t.inlet_while_running_t
    if t.n2o_generated_t > 0:
        r.de_overall = 1 - r.project_emissions_t / t.n2o_generated_t
    if p.baseline == "floor":
        r.baseline_t = t.n2o_generated_t * (1 - p.baseline_destruction)
    else:
        r.baseline_t = t.n2o_generated_t
    r.er_raw_t = r.baseline_t - r.project_emissions_t
    if r.cap_t is not None and r.production_t:
        r.cap_factor = min(1.0, r.cap_t / r.production_t)
    if p.cap_mode == "proportional":
        r.er_t = max(0.0, r.er_raw_t * r.cap_factor)
    else:
        r.er_t = max(0.0, r.baseline_t * r.cap_factor - r.project_emissions_t)
    if r.project_emissions_t > 0:
        r.outlet_substituted_share = t.outlet_substituted_t / r.project_emissions_t
        r.bypass_estimated_share = t.bypass_estimated_t / r.project_emissions_t
        r.alternative_share = r.outlet_substituted_share + r.bypass_estimated_share
    if t.n2o_generated_t > 0:
        r.inlet_substituted_share = t.inlet_substituted_t / t.n2o_generated_t
    if r.production_t:
        r.emission_factor_t_per_t = t.n2o_generated_t / r.production_t


def _judge(r: Result) -> None:
    """Why the period cannot be credited, and what deserves a look."""
    t, p = r.totals, r.parameters
    if t.hours == 0 and r.startup.hours:
        r.reasons.append("the whole period is in the start-up test period (not credited)")
    elif r.startup.hours:
        r.warnings.append(f"{r.startup.hours} hours of the start-up test period are shown "
                          "but not credited")
    if p.baseline == "gate" and (r.de_overall is None or r.de_overall < p.baseline_destruction):
        r.reasons.append(f"destruction efficiency {_pct(r.de_overall)} is below the "
                         f"{p.baseline_destruction:.0%} gate")
    if r.alternative_share is not None and r.alternative_share >= p.share_limit:
        r.reasons.append(f"estimated or substituted N2O is {_pct(r.alternative_share)} of "
                         f"project emissions, at or above the {p.share_limit:.0%} limit")
    if r.inlet_substituted_share is not None and r.inlet_substituted_share >= p.share_limit:
        r.reasons.append(f"substituted inlet N2O is {_pct(r.inlet_substituted_share)} of N2O "
                         f"generated (the baseline side), at or above the "
                         f"{p.share_limit:.0%} limit")
    if t.missing_outlet_hours:
        r.reasons.append(f"{t.missing_outlet_hours} hours of outlet N2O are missing and were "
                         "not substituted")
    if t.missing_inlet_hours:
        r.warnings.append(f"{t.missing_inlet_hours} hours of inlet N2O are missing and counted "
                          "as 0 (conservative for the baseline)")
    if r.er_raw_t < 0:
        r.warnings.append("project emissions exceed the baseline: credited as 0")
    if r.emission_factor_t_per_t and r.emission_factor_t_per_t > \
            standards.N2O_PER_AA_STOICHIOMETRIC.value:
        r.warnings.append(f"N2O per tonne of adipic acid {r.emission_factor_t_per_t:.4f} is above "
                          f"the stoichiometric {standards.N2O_PER_AA_STOICHIOMETRIC.value}")
    r.creditable = not r.reasons


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"
