"""Configuration of QA/QC: per channel (calibration, value checks) and plant-wide ([qaqc]).

Limits default to the named values in cemsd/standards.py (HJ 75-2017 §11); a channel may
override them, e.g. for an analyzer whose type approval states tighter limits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from cemsd import standards
from cemsd.settings.base import MAX_HOURS, MAX_SECONDS, SettingsModel

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class _Strict(SettingsModel):
    pass


class RemoteCalibration(_Strict):
    """An analyzer's calibration gas solenoids, switched through Modbus coils (from its profile)."""

    zero_valve_coil: Annotated[int, Field(ge=0, le=65535)]
    span_valve_coil: Annotated[int, Field(ge=0, le=65535)] | None = None
    adjust_coil: Annotated[int, Field(ge=0, le=65535)] | None = None  # pulse: apply correction


class CalibrationSettings(_Strict):
    """How one channel is calibrated and what its limits are."""

    method: Literal["gas", "flow_zero"] = "gas"
    mode: Literal["automatic", "manual"] = "manual"
    installation: Literal["extractive", "in_situ"] = "extractive"
    zero_reference: float = 0.0
    span_reference: float | None = None
    zero_at: str | None = None  # automatic: daily zero check at HH:MM plant time
    span_at: str | None = None  # automatic: daily span check at HH:MM plant time
    stabilisation_s: Annotated[float, Field(ge=0, le=3600)] = 120.0
    purge_s: Annotated[float, Field(ge=0, le=3600)] = 60.0  # back on sample, still C
    readings: Annotated[int, Field(ge=1, le=1000)] = 10
    # default: by mode (HJ 75)
    interval_hours: Annotated[float, Field(gt=0, le=MAX_HOURS)] | None = None
    pass_limit_pct: Annotated[float, Field(gt=0)] = standards.CAL_PASS_LIMIT.value
    zero_control_limit_pct: Annotated[float, Field(gt=0)] = standards.CAL_ZERO_CONTROL_LIMIT.value
    span_control_limit_pct: Annotated[float, Field(gt=0)] = standards.CAL_SPAN_CONTROL_LIMIT.value
    adjust_automatically: bool = False  # pulse the adjust coil after an "adjust" result

    @field_validator("zero_at", "span_at")
    @classmethod
    def _clock_time(cls, value: str | None) -> str | None:
        if value is not None and not _HHMM.match(value):
            raise ValueError("use HH:MM (24-hour plant time), e.g. '00:30'")
        return value

    @property
    def interval(self) -> float:
        """Seconds after a passing check before the next one is overdue (HJ 75-2017 §11)."""
        if self.interval_hours is not None:
            return self.interval_hours * 3600
        if self.mode == "automatic":
            return standards.CAL_INTERVAL_AUTOMATIC.value * 3600
        if self.method == "flow_zero":
            return standards.FLOW_ZERO_INTERVAL_MANUAL.value * 3600
        if self.installation == "in_situ":
            return standards.CAL_INTERVAL_MANUAL_INSITU.value * 3600
        return standards.CAL_INTERVAL_MANUAL_EXTRACTIVE.value * 3600


class ValueChecks(_Strict):
    """Plausibility checks of one channel's readings; a failing reading is flagged D."""

    # unchanged this long
    stuck_minutes: Annotated[float, Field(gt=0, le=MAX_HOURS * 60)] | None = None
    stuck_tolerance: Annotated[float, Field(ge=0)] = 0.0
    max_rate_per_s: Annotated[float, Field(gt=0)] | None = None  # spike: |change| / s
    negative_tolerance: Annotated[float, Field(ge=0)] | None = None  # below -tolerance


class QaqcSettings(_Strict):
    """Plant-wide QA/QC options ([qaqc])."""

    control_socket: Path | None = None  # default: <state_dir>/cemsd.sock
    out_of_control_back_to_last_pass: bool = False  # stricter option of HJ 75 §11 [U]
    production_signal_max_age_s: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = 60.0
    consistency_outlet_share: Annotated[float, Field(gt=0)] = 1.0  # outlet >= share x inlet
    substitute: list[str] | None = None  # series to substitute; default each point's kg/h
    # gaps of series feeding the baseline (the reduction's inlet point): the lowest valid
    # hour of the HJ 75 tier's look-back (zero where none), or always zero (decision 0170)
    baseline_substitution: Literal["lowest", "zero"] = "lowest"
    # the capture rate picking the HJ 75 tier: the trailing 2160 operating hours ending
    # with the gap, or the calendar quarter to date (decision 0171)
    capture_rate_window: Literal["trailing", "quarter"] = "trailing"
    # A maintenance window closes by itself after its planned duration (a forgotten `stop`
    # must not flag data M for days); a warning is logged this long before it closes.
    maintenance_hours: Annotated[float, Field(gt=0, le=24 * 31)] = 4.0
    maintenance_warn_minutes: Annotated[float, Field(ge=0)] = 15.0
