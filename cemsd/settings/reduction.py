"""The `[reduction]` section: how bypass is detected and how reductions are computed.

Defaults are the named values in cemsd/standards.py (GWP AR5, the 90 % baseline, the
25 % alternative-method share, 9 months of start-up test); every one is printed on each
report with its source.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import Field

from cemsd import standards
from cemsd.settings.base import SettingsModel


class _Strict(SettingsModel):
    pass


class BypassSettings(_Strict):
    """Which signals mean gas is skipping the abatement unit, and how to weigh it."""

    debounce_s: Annotated[float, Field(ge=0, le=3600)] = 60.0  # a change must hold this long
    valve_open_above: float = 5.0  # a bypass valve/damper position (%) above this is open
    bypass_flow_above: float | None = None  # a bypass-duct flow above this (its unit) flows
    abatement_stopped: bool = True  # the unit not running while production runs: vented
    consistency: bool = False  # outlet N2O at or above the inlet's while "running"
    vent_lookback_hours: Annotated[int, Field(ge=1, le=8760)] = 720  # unmonitored: max hour


class ReductionSettings(_Strict):
    inlet_point: str = "inlet"
    outlet_point: str = "outlet"
    bypass_point: str | None = None  # a point with a flow meter in the bypass duct
    gwp: Annotated[float, Field(gt=0)] = standards.GWP_N2O_AR5.value
    baseline: Literal["floor", "gate"] = "floor"
    baseline_destruction: Annotated[float, Field(gt=0, lt=1)] = \
        standards.BASELINE_DESTRUCTION.value
    production_cap_t_per_year: Annotated[float, Field(gt=0)] | None = None
    cap_mode: Literal["proportional", "baseline_only"] = "proportional"
    installation_date: date | None = None  # start of the start-up test period
    startup_months: Annotated[int, Field(ge=0, le=int(standards.STARTUP_MAX_MONTHS.value))] = \
        int(standards.STARTUP_MAX_MONTHS.value)
    share_limit: Annotated[float, Field(gt=0, le=1)] = standards.ALTERNATIVE_SHARE_LIMIT.value
    production: Literal["counter", "imported"] = "imported"  # daily tonnes of adipic acid
    bypass: BypassSettings = BypassSettings()


def reduction_warnings(installation_date: object, cap: object) -> list[tuple[str, str]]:
    """(key, message) for each setting a report needs but the configuration lacks."""
    out = []
    if installation_date is None:
        out.append(("installation_date", "not set: the start-up test period cannot be told "
                    "apart, every hour is treated as after it"))
    if cap is None:
        out.append(("production_cap_t_per_year", "not set: credited production is not "
                    "capped (cap factor 1)"))
    return out
