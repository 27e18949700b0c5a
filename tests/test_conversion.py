"""cemsd.conversion against the figures of quantification.md §4-5.

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


# --- standard states -------------------------------------------------------------------------


def test_si_state_is_273_15_k_101_325_kpa_22_414_l() -> None:
    assert SI.temperature_k == 273.15
    assert SI.celsius_offset_k == 273.15
    assert SI.pressure_kpa == 101.325
    assert SI.molar_volume_l == 22.414


def test_hj212_state_is_273_k_and_22_4_l() -> None:
    assert HJ212.temperature_k == 273.0
    assert HJ212.celsius_offset_k == 273.0
    assert HJ212.pressure_kpa == 101.325
    assert HJ212.molar_volume_l == 22.4


# --- concentration -----------------------------------------------------------------------------


def test_one_ppm_is_1_963639_mg_m3_at_si_state() -> None:
    # quantification.md §4: mg/Nm3 = ppmv x 44.013/22.414 = ppmv x 1.963639
    assert SI.n2o_mg_per_m3_per_ppm == approx(1.963639)
    assert cv.n2o_mg_m3(1.0, Unit.PPM, SI) == approx(1.963639)


def test_one_ppm_with_hj212_state_uses_22_4() -> None:
    # 44.013 / 22.4 = 1.9648661 (README.md rounds it to 1.965)
    assert HJ212.n2o_mg_per_m3_per_ppm == approx(44.013 / 22.4)
    assert cv.n2o_mg_m3(1.0, Unit.PPM, HJ212) == approx(1.9648661)
    assert cv.n2o_mg_m3(1.0, Unit.PPM, HJ212) == pytest.approx(1.965, abs=5e-4)


def test_one_percent_vol_is_19636_39_mg_m3() -> None:
    assert cv.n2o_mg_m3(1.0, Unit.PERCENT_VOL, SI) == approx(19_636.39)
    # ... = 0.0196364 kg/Nm3
    assert cv.n2o_mg_m3(1.0, Unit.PERCENT_VOL, SI) * 1e-6 == pytest.approx(0.0196364, rel=1e-5)


def test_kg_per_nm3_is_ppm_times_1_963639e_minus_6() -> None:
    assert cv.n2o_mg_m3(500.0, Unit.PPM, SI) * 1e-6 == approx(500.0 * 1.963639e-6)


def test_percent_and_ppm_give_the_same_concentration() -> None:
    assert cv.n2o_mg_m3(24.0, Unit.PERCENT_VOL, SI) == approx(
        cv.n2o_mg_m3(240_000.0, Unit.PPM, SI)
    )


def test_to_ppm() -> None:
    assert cv.to_ppm(24.0, Unit.PERCENT_VOL) == 240_000.0
    assert cv.to_ppm(0.2, Unit.PERCENT_VOL) == pytest.approx(2_000.0)
    assert cv.to_ppm(1234.5, Unit.PPM) == 1234.5


@pytest.mark.parametrize("unit", [Unit.MG_M3, Unit.M_S, Unit.DEG_C, Unit.PERCENT])
def test_to_ppm_refuses_what_is_not_a_volume_fraction(unit: Unit) -> None:
    with pytest.raises(ValueError, match="not a volume fraction"):
        cv.to_ppm(1.0, unit)


def test_mg_m3_passes_through_unchanged() -> None:
    assert cv.n2o_mg_m3(1234.5, Unit.MG_M3, SI) == 1234.5
    assert cv.n2o_mg_m3(1234.5, Unit.MG_M3, HJ212) == 1234.5


def test_concentration_on_arrays() -> None:
    ppm = np.array([0.0, 1.0, 2_000.0, 240_000.0])
    got = cv.n2o_mg_m3(ppm, Unit.PPM, SI)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, [0.0, 1.963639, 3_927.278, 471_273.3], rtol=REL)


# --- hourly masses of the worked example (§5) ----------------------------------------------------


def test_inlet_hourly_mass_of_the_worked_example() -> None:
    # m_in = 240,000 ppm x 1.963639 x 10,000 Nm3/h x 1e-9 = 4.712733 t/h = 4712.733 kg/h
    c = cv.n2o_mg_m3(240_000.0, Unit.PPM, SI)
    assert cv.mass_rate_kg_h(c, 10_000.0) == approx(4_712.733)


def test_inlet_hourly_mass_from_percent() -> None:
    c = cv.n2o_mg_m3(24.0, Unit.PERCENT_VOL, SI)
    assert cv.mass_rate_kg_h(c, 10_000.0) == approx(4_712.733)


def test_outlet_hourly_masses_of_the_worked_example() -> None:
    c2000 = cv.n2o_mg_m3(2_000.0, Unit.PPM, SI)
    c3000 = cv.n2o_mg_m3(3_000.0, Unit.PPM, SI)
    assert cv.mass_rate_kg_h(c2000, 12_000.0) == approx(47.12733)  # 0.04712733 t/h
    assert cv.mass_rate_kg_h(c3000, 12_000.0) == approx(70.69100)  # 0.07069100 t/h


def test_worked_example_totals_from_arrays_of_hours() -> None:
    # 720 inlet hours; outlet: 600 h at 2,000 ppm and 110 h at 3,000 ppm (100 measured, 10
    # substituted with the maximum valid hourly outlet mass, which is the 3,000 ppm one).
    inlet = cv.mass_rate_kg_h(cv.n2o_mg_m3(np.full(720, 240_000.0), Unit.PPM, SI), 10_000.0)
    assert inlet.sum() / 1000 == approx(3_393.168)  # N2O_gen, t
    outlet_ppm = np.r_[np.full(600, 2_000.0), np.full(110, 3_000.0)]
    outlet = cv.mass_rate_kg_h(cv.n2o_mg_m3(outlet_ppm, Unit.PPM, SI), np.full(710, 12_000.0))
    assert outlet.sum() / 1000 == approx(36.05241)  # N2O_out, t
    assert inlet[:10].sum() / 1000 == approx(47.12733)  # N2O_byp, t


def test_mass_rate_is_c_times_q_times_1e_minus_6() -> None:
    assert cv.mass_rate_kg_h(1_000_000.0, 1.0) == pytest.approx(1.0)
    assert cv.mass_rate_kg_h(0.0, 12_000.0) == 0.0
    np.testing.assert_allclose(
        cv.mass_rate_kg_h(np.array([100.0, 200.0]), np.array([5_000.0, 2_500.0])), [0.5, 0.5]
    )


# --- wet / dry --------------------------------------------------------------------------------


def test_wet_to_dry_divides_by_one_minus_moisture() -> None:
    assert cv.wet_to_dry(100.0, 0.2) == pytest.approx(125.0)
    assert cv.wet_to_dry(100.0, 0.0) == 100.0
    np.testing.assert_allclose(cv.wet_to_dry(np.array([90.0, 95.0]), np.array([0.1, 0.05])),
                               [100.0, 100.0])


def test_wet_flow_to_dry_multiplies_by_one_minus_moisture() -> None:
    assert cv.wet_flow_to_dry(10_000.0, 0.08) == pytest.approx(9_200.0)
    assert cv.wet_flow_to_dry(10_000.0, 0.0) == 10_000.0


def test_mass_is_the_same_on_wet_and_dry_basis() -> None:
    # C_wet x Q_wet = C_dry x Q_dry: converting both must not change the mass.
    c_wet, q_wet, x = 1_000.0, 20_000.0, 0.12
    dry = cv.mass_rate_kg_h(cv.wet_to_dry(c_wet, x), cv.wet_flow_to_dry(q_wet, x))
    assert dry == approx(cv.mass_rate_kg_h(c_wet, q_wet))


def test_moisture_fraction_from_percent() -> None:
    assert cv.moisture_fraction(5.0) == pytest.approx(0.05)
    assert cv.moisture_fraction(0.0) == 0.0
    np.testing.assert_allclose(cv.moisture_fraction(np.array([8.0, 40.0])), [0.08, 0.4])


# --- flow ---------------------------------------------------------------------------------------


def test_velocity_to_flow_is_3600_area_kv_v() -> None:
    assert cv.velocity_to_flow(14.0, 0.25, 1.0) == pytest.approx(12_600.0)
    assert cv.velocity_to_flow(14.0, 0.25, 0.95) == pytest.approx(11_970.0)
    assert cv.velocity_to_flow(0.0, 0.25, 1.0) == 0.0
    np.testing.assert_allclose(cv.velocity_to_flow(np.array([10.4, 1.0]), 0.5, 1.0),
                               [18_720.0, 1_800.0])


def test_actual_to_standard_is_identity_at_the_standard_state() -> None:
    assert cv.actual_to_standard(12_345.0, 0.0, 101.325, SI) == pytest.approx(12_345.0)
    assert cv.actual_to_standard(12_345.0, 0.0, 101.325, HJ212) == pytest.approx(12_345.0)


def test_actual_to_standard_halves_at_twice_the_absolute_temperature() -> None:
    assert cv.actual_to_standard(1_000.0, 273.15, 101.325, SI) == pytest.approx(500.0)
    assert cv.actual_to_standard(1_000.0, 0.0, 2 * 101.325, SI) == pytest.approx(2_000.0)


def test_actual_to_standard_dry_flow_of_quantification_md() -> None:
    # Q_N,dry = Q_act x 273.15/(273.15+T) x P/101.325 x (1 - Bws), by hand:
    q_act, t_c, p_kpa, bws = 12_600.0, 60.0, 103.325, 0.05
    by_hand = q_act * 273.15 / (273.15 + t_c) * p_kpa / 101.325 * (1 - bws)
    got = cv.wet_flow_to_dry(cv.actual_to_standard(q_act, t_c, p_kpa, SI), bws)
    assert got == approx(by_hand)
    assert got == approx(10_007.93)  # 12600 x 0.8199009 x 1.0197385 x 0.95


def test_actual_to_standard_with_hj212_state_uses_273() -> None:
    by_hand = 10_000.0 * 273.0 / (273.0 + 20.0) * 100.0 / 101.325
    assert cv.actual_to_standard(10_000.0, 20.0, 100.0, HJ212) == approx(by_hand)
    si = 10_000.0 * 273.15 / (273.15 + 20.0) * 100.0 / 101.325
    assert cv.actual_to_standard(10_000.0, 20.0, 100.0, SI) == approx(si)
    assert si != pytest.approx(by_hand, rel=1e-5)  # the two states differ


def test_actual_to_standard_on_arrays() -> None:
    q = np.array([12_600.0, 18_720.0])
    t = np.array([60.0, 120.0])
    p = np.array([103.325, 101.825])
    expected = q * 273.15 / (273.15 + t) * p / 101.325
    np.testing.assert_allclose(cv.actual_to_standard(q, t, p, SI), expected, rtol=REL)


# --- pressure -----------------------------------------------------------------------------------


def test_gauge_pressure_in_kpa_adds_the_barometric_pressure() -> None:
    assert cv.absolute_pressure_kpa(2.0, Unit.KPA, "gauge", 101.325) == pytest.approx(103.325)
    assert cv.absolute_pressure_kpa(-1.5, Unit.KPA, "gauge", 95.0) == pytest.approx(93.5)


def test_gauge_pressure_in_pa_is_converted_to_kpa() -> None:
    assert cv.absolute_pressure_kpa(2_000.0, Unit.PA, "gauge", 101.325) == pytest.approx(103.325)
    assert cv.absolute_pressure_kpa(-500.0, Unit.PA, "gauge", 100.0) == pytest.approx(99.5)


def test_absolute_pressure_ignores_the_barometric_pressure() -> None:
    assert cv.absolute_pressure_kpa(98.5, Unit.KPA, "absolute", 101.325) == pytest.approx(98.5)
    assert cv.absolute_pressure_kpa(98_500.0, Unit.PA, "absolute", 80.0) == pytest.approx(98.5)


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
