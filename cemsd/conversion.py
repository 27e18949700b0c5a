"""Conversions to dry gas at standard conditions and N2O mass (quantification.md §4).

All functions take numbers or numpy arrays. The standard state is a parameter: "SI"
(273.15 K, 101.325 kPa, 22.414 L/mol, the default) or "HJ212" (273 K and 22.4 L/mol as
the HJ 212-2017 Annex D formulas are written).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cemsd import standards
from cemsd.units import Unit

ArrayLike = float | np.ndarray


@dataclass(frozen=True)
class StandardState:
    name: str
    temperature_k: float
    pressure_kpa: float
    molar_volume_l: float
    celsius_offset_k: float  # what "273.15 + t" uses for t in degC

    @property
    def n2o_mg_per_m3_per_ppm(self) -> float:
        """1 ppmv of N2O in mg/m3 at this state: M / Vm (1.963639 for SI)."""
        return standards.N2O_MOLAR_MASS.value / self.molar_volume_l


STANDARD_STATES = {
    "SI": StandardState(
        "SI",
        standards.STANDARD_TEMPERATURE.value,
        standards.STANDARD_PRESSURE.value,
        standards.MOLAR_VOLUME.value,
        standards.ZERO_CELSIUS.value,
    ),
    "HJ212": StandardState(
        "HJ212",
        standards.STANDARD_TEMPERATURE_HJ212.value,
        standards.STANDARD_PRESSURE.value,
        standards.MOLAR_VOLUME_HJ212.value,
        standards.STANDARD_TEMPERATURE_HJ212.value,
    ),
}


def to_ppm(value: ArrayLike, unit: Unit) -> ArrayLike:
    if unit is Unit.PERCENT_VOL:
        return value * standards.PPM_PER_PERCENT_VOL.value
    if unit is Unit.PPM:
        return value
    raise ValueError(f"{unit} is not a volume fraction")


def n2o_mg_m3(value: ArrayLike, unit: Unit, state: StandardState) -> ArrayLike:
    """N2O concentration in mg per standard m3, from %vol, ppm or mg/m3 (already standard)."""
    if unit is Unit.MG_M3:
        return value
    return to_ppm(value, unit) * state.n2o_mg_per_m3_per_ppm


def wet_to_dry(concentration: ArrayLike, moisture_fraction: ArrayLike) -> ArrayLike:
    """C_dry = C_wet / (1 - X_sw) (HJ 212 Annex D)."""
    return concentration / (1.0 - moisture_fraction)


def velocity_to_flow(velocity_m_s: ArrayLike, area_m2: float, coefficient: float) -> ArrayLike:
    """Q = 3600 * F * Kv * v, actual m3/h (HJ 212 Annex D: Vs = Kv*Vp; Qs = 3600*F*Vs)."""
    return 3600.0 * area_m2 * coefficient * velocity_m_s


def absolute_pressure_kpa(pressure: ArrayLike, unit: Unit, kind: str, barometric_kpa: float
                          ) -> ArrayLike:
    kpa = pressure / 1000.0 if unit is Unit.PA else pressure
    return kpa + barometric_kpa if kind == "gauge" else kpa


def actual_to_standard(
    flow_m3_h: ArrayLike, temperature_c: ArrayLike, pressure_abs_kpa: ArrayLike,
    state: StandardState,
) -> ArrayLike:
    """Q_N = Q * T0/(T0' + t) * P/P0 (wet basis kept)."""
    return (
        flow_m3_h
        * state.temperature_k / (state.celsius_offset_k + temperature_c)
        * pressure_abs_kpa / state.pressure_kpa
    )


def wet_flow_to_dry(flow: ArrayLike, moisture_fraction: ArrayLike) -> ArrayLike:
    return flow * (1.0 - moisture_fraction)


def mass_rate_kg_h(concentration_mg_m3: ArrayLike, flow_nm3_h: ArrayLike) -> ArrayLike:
    """G [kg/h] = C [mg/Nm3] * Q [Nm3/h] * 1e-6, both on the dry standard basis."""
    return concentration_mg_m3 * flow_nm3_h * 1e-6


def moisture_fraction(value: ArrayLike) -> ArrayLike:
    """Moisture from %vol (or %) to a volume fraction."""
    return value / 100.0
