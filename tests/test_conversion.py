"""cemsd.conversion on arrays and whole chains; the single figures of quantification.md §4-5
are cases in tests/cases/conversions/.

Expected numbers are the spec's (quoted to 7 significant figures, so compared with a
relative tolerance of 1e-6) or written out by hand from the formulas of §4, never taken
from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from cemsd import conversion as cv
from cemsd.units import Unit

REL = 1e-6
SI = cv.STANDARD_STATES["SI"]
HJ212 = cv.STANDARD_STATES["HJ212"]


def approx(x: float) -> object:
    return pytest.approx(x, rel=REL)


# --- concentration -----------------------------------------------------------------------------


def test_percent_and_ppm_give_the_same_concentration() -> None:
    assert cv.n2o_mg_m3(24.0, Unit.PERCENT_VOL, SI) == approx(
        cv.n2o_mg_m3(240_000.0, Unit.PPM, SI)
    )


@pytest.mark.parametrize("unit", [Unit.MG_M3, Unit.M_S, Unit.DEG_C, Unit.PERCENT])
def test_to_ppm_refuses_what_is_not_a_volume_fraction(unit: Unit) -> None:
    with pytest.raises(ValueError, match="not a volume fraction"):
        cv.to_ppm(1.0, unit)


def test_concentration_on_arrays() -> None:
    ppm = np.array([0.0, 1.0, 2_000.0, 240_000.0])
    got = cv.n2o_mg_m3(ppm, Unit.PPM, SI)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, [0.0, 1.963639, 3_927.278, 471_273.3], rtol=REL)


# --- hourly masses of the worked example (§5) ----------------------------------------------------


def test_worked_example_totals_from_arrays_of_hours() -> None:
    # 720 inlet hours; outlet: 600 h at 2,000 ppm and 110 h at 3,000 ppm (100 measured, 10
    # substituted with the maximum valid hourly outlet mass, which is the 3,000 ppm one).
    inlet = cv.mass_rate_kg_h(cv.n2o_mg_m3(np.full(720, 240_000.0), Unit.PPM, SI), 10_000.0)
    assert inlet.sum() / 1000 == approx(3_393.168)  # N2O_gen, t
    outlet_ppm = np.r_[np.full(600, 2_000.0), np.full(110, 3_000.0)]
    outlet = cv.mass_rate_kg_h(cv.n2o_mg_m3(outlet_ppm, Unit.PPM, SI), np.full(710, 12_000.0))
    assert outlet.sum() / 1000 == approx(36.05241)  # N2O_out, t
    assert inlet[:10].sum() / 1000 == approx(47.12733)  # N2O_byp, t


# --- wet / dry --------------------------------------------------------------------------------


def test_mass_is_the_same_on_wet_and_dry_basis() -> None:
    # C_wet x Q_wet = C_dry x Q_dry: converting both must not change the mass.
    c_wet, q_wet, x = 1_000.0, 20_000.0, 0.12
    dry = cv.mass_rate_kg_h(cv.wet_to_dry(c_wet, x), cv.wet_flow_to_dry(q_wet, x))
    assert dry == approx(cv.mass_rate_kg_h(c_wet, q_wet))


# --- flow ---------------------------------------------------------------------------------------


def test_actual_to_standard_on_arrays() -> None:
    q = np.array([12_600.0, 18_720.0])
    t = np.array([60.0, 120.0])
    p = np.array([103.325, 101.825])
    expected = q * 273.15 / (273.15 + t) * p / 101.325
    np.testing.assert_allclose(cv.actual_to_standard(q, t, p, SI), expected, rtol=REL)


# --- pressure -----------------------------------------------------------------------------------


def test_pressure_on_arrays() -> None:
    got = cv.absolute_pressure_kpa(np.array([0.0, 1_000.0]), Unit.PA, "gauge", 101.0)
    np.testing.assert_allclose(got, [101.0, 102.0])


def test_full_chain_from_velocity_to_mass() -> None:
    # Inlet of the demo plant: 24 %vol dry, 14 m/s in 0.25 m2, 60 degC, 2 kPa gauge, 5 % H2O.
    q_act = 3600 * 0.25 * 1.0 * 14.0
    q_n_dry = q_act * 273.15 / (273.15 + 60.0) * (101.325 + 2.0) / 101.325 * (1 - 0.05)
    c = 24.0 * 10_000 * 44.013 / 22.414
    expected_kg_h = c * q_n_dry * 1e-6

    q = cv.velocity_to_flow(14.0, 0.25, 1.0)
    p = cv.absolute_pressure_kpa(2.0, Unit.KPA, "gauge", 101.325)
    q = cv.wet_flow_to_dry(cv.actual_to_standard(q, 60.0, p, SI), cv.moisture_fraction(5.0))
    got = cv.mass_rate_kg_h(cv.n2o_mg_m3(24.0, Unit.PERCENT_VOL, SI), q)
    assert got == approx(expected_kg_h)
    assert got == approx(4_716.471)  # 471273.3 mg/m3 x 10007.93 Nm3/h x 1e-6
