"""The worked example of quantification.md §5, reproduced to a relative 1e-6.

720 h: 600 h normal (outlet 2,000 ppm), 100 h normal (3,000 ppm), 10 h outlet out of
control (substituted with the largest valid hourly outlet mass), 10 h bypass (vented,
inlet monitored). Inlet 240,000 ppm at 10,000 Nm3/h, outlet flow 12,000 Nm3/h, all dry at
273.15 K / 101.325 kPa. P_actual 13,000 t, P_cap 12,500 t.
"""

from __future__ import annotations

import dataclasses

import pytest

from cemsd.reduction.calculator import HourInput, Parameters, compute

K = 44.013 / 22.414  # mg/m3 per ppm
REL = 1e-6


def kg(ppm: float, flow: float) -> float:
    return ppm * K * flow * 1e-6  # mg/m3 x m3/h x 1e-6 = kg/h, one hour


M_IN = kg(240_000, 10_000)
M_OUT_2000 = kg(2_000, 12_000)
M_OUT_3000 = kg(3_000, 12_000)


def example_hours(estimated: bool = False) -> list[HourInput]:
    hours = []
    for i in range(720):
        if i < 600:
            outlet, method = M_OUT_2000, "measured"
        elif i < 700:
            outlet, method = M_OUT_3000, "measured"
        elif i < 710:
            outlet, method = M_OUT_3000, "hj75.out_of_control.max_720h_before"
        else:
            bypass = {"vent_kg": M_IN, "vent_method": "estimated_max_hourly_inlet_720h"} \
                if estimated else {"bypass_kg": M_IN, "bypass_method": "measured_inlet"}
            hours.append(HourInput(i * 3600.0, M_IN, "measured", None, "missing",
                                   unit_running=False, **bypass))
            continue
        hours.append(HourInput(i * 3600.0, M_IN, "measured", outlet, method))
    return hours


@pytest.fixture
def result():
    return compute(example_hours(), Parameters(), production_t=13_000, cap_t=12_500)


def test_hourly_masses(result) -> None:
    assert pytest.approx(4.712733, rel=REL) == M_IN / 1000
    assert pytest.approx(0.04712733, rel=REL) == M_OUT_2000 / 1000
    assert pytest.approx(0.07069100, rel=REL) == M_OUT_3000 / 1000


def test_totals(result) -> None:
    t = result.totals
    assert t.hours == 720
    assert t.n2o_generated_t == pytest.approx(3_393.168, rel=REL)
    assert result.emission_factor_t_per_t == pytest.approx(0.261013, rel=REL)
    assert t.n2o_outlet_t == pytest.approx(36.05241, rel=REL)
    assert t.n2o_bypass_t == pytest.approx(47.12733, rel=REL)
    assert result.project_emissions_t == pytest.approx(83.17974, rel=REL)


def test_destruction_efficiencies_exactly(result) -> None:
    assert result.de_unit == pytest.approx(1 - 1.836e10 / 1.704e12, rel=1e-12)
    assert result.de_unit == pytest.approx(0.9892254, rel=REL)
    assert result.de_overall == pytest.approx(1 - 4.236e10 / 1.728e12, rel=1e-12)
    assert result.de_overall == pytest.approx(0.9754861, rel=REL)


def test_baseline_and_reductions(result) -> None:
    assert result.baseline_t == pytest.approx(339.3168, rel=REL)
    assert result.er_raw_t == pytest.approx(256.1370, rel=REL)
    assert result.cap_factor == pytest.approx(0.9615385, rel=REL)
    assert result.er_t == pytest.approx(246.2856, rel=REL)
    assert result.er_co2e_t == pytest.approx(65_265.69, rel=REL)
    assert result.creditable and result.credited_co2e_t == result.er_co2e_t
    assert result.parameters.gwp == 265


@pytest.mark.parametrize(("gwp", "expected"), [(273, 67_235.97), (298, 73_393.11)])
def test_other_gwp(gwp: float, expected: float) -> None:
    r = compute(example_hours(), Parameters(gwp=gwp), production_t=13_000, cap_t=12_500)
    assert r.er_co2e_t == pytest.approx(expected, rel=REL)


def test_cap_on_the_baseline_only() -> None:
    r = compute(example_hours(), Parameters(cap_mode="baseline_only"), 13_000, 12_500)
    assert r.er_t == pytest.approx(243.0864, rel=REL)
    assert r.er_co2e_t == pytest.approx(64_417.90, rel=REL)


def test_gate_reading_of_the_90_percent_rule() -> None:
    r = compute(example_hours(), Parameters(baseline="gate"), 13_000, 12_500)
    assert r.er_t == pytest.approx(3_182.681, rel=REL)
    assert r.er_co2e_t == pytest.approx(843_410.4, rel=REL)
    assert r.creditable


def test_substitution_share_passes(result) -> None:
    assert result.alternative_share == pytest.approx(0.00850, abs=5e-6)
    assert result.totals.outlet_substituted_t == pytest.approx(10 * 0.07069100, rel=REL)


def test_estimated_bypass_breaches_the_25_percent_share() -> None:
    r = compute(example_hours(estimated=True), Parameters(), 13_000, 12_500)
    assert r.alternative_share == pytest.approx(0.5751, abs=5e-5)
    assert pytest.approx(r.alternative_share, rel=1e-5) == (47.12733 + 0.70691) / 83.17974
    assert not r.creditable and r.credited_co2e_t == 0
    assert any("at or above the 25% limit" in reason for reason in r.reasons)
    assert r.er_t == pytest.approx(246.2856, rel=REL)  # computed and shown, not credited


def test_negative_hour_is_credited_as_zero() -> None:
    hour = HourInput(0.0, M_IN, "measured", 600.0, "measured")
    r = compute([hour], Parameters())
    assert r.de_overall == pytest.approx(0.872685, rel=REL)
    assert r.baseline_t == pytest.approx(0.4712733, rel=REL)
    assert r.er_raw_t == pytest.approx(-0.1287267, rel=REL)
    assert r.er_t == 0 and r.credited_co2e_t == 0
    assert any("credited as 0" in w for w in r.warnings)


def test_gate_below_90_percent_earns_nothing() -> None:
    hour = HourInput(0.0, M_IN, "measured", 600.0, "measured")
    r = compute([hour], Parameters(baseline="gate"))
    assert not r.creditable and "below the 90% gate" in r.reasons[0]


def test_startup_hours_are_shown_not_credited() -> None:
    hours = [dataclasses.replace(h, startup=i < 360) for i, h in enumerate(example_hours())]
    r = compute(hours, Parameters(), 13_000, 12_500)
    assert r.startup.hours == 360 and r.totals.hours == 360
    assert r.startup.n2o_generated_t == pytest.approx(360 * M_IN / 1000, rel=REL)
    assert r.totals.n2o_generated_t == pytest.approx(360 * M_IN / 1000, rel=REL)


def test_stop_hours_are_excluded() -> None:
    hours = [*example_hours(), HourInput(720 * 3600.0, None, "missing", None, "missing",
                                         stopped=True)]
    r = compute(hours, Parameters(), 13_000, 12_500)
    assert r.stop_hours == 1 and r.totals.hours == 720
    assert r.er_t == pytest.approx(246.2856, rel=REL)


def test_missing_outlet_without_substitute_blocks_crediting() -> None:
    hours = example_hours()
    hours[5] = HourInput(hours[5].ts, M_IN, "measured", None, "missing")
    r = compute(hours, Parameters(), 13_000, 12_500)
    assert not r.creditable
    assert "1 hours of outlet N2O are missing" in r.reasons[0]


def test_shares_of_both_sides(result) -> None:
    """The worked example: no inlet substituted; the project side is the outlet's 0.850 %."""
    assert result.inlet_substituted_share == 0
    assert result.outlet_substituted_share == pytest.approx(0.70691 / 83.17974, rel=1e-5)
    assert result.bypass_estimated_share == 0
    estimated = compute(example_hours(estimated=True), Parameters(), 13_000, 12_500)
    assert estimated.bypass_estimated_share == pytest.approx(47.12733 / 83.17974, rel=1e-5)
    assert estimated.outlet_substituted_share + estimated.bypass_estimated_share == \
        pytest.approx(estimated.alternative_share)


@pytest.mark.parametrize(("substituted", "creditable"), [(150, True), (181, False), (200, False)])
def test_substituted_inlet_counts_in_the_25_percent_rule(substituted: int,
                                                         creditable: bool) -> None:
    """Substituted inlet mass over N2O generated: 150 / 720 passes, 181 / 720 (over 25 %) and
    200 / 720 do not."""
    hours = [dataclasses.replace(h, inlet_method="hj75.missing.min_720h_before")
             if i < substituted else h for i, h in enumerate(example_hours())]
    r = compute(hours, Parameters(), 13_000, 12_500)
    assert r.totals.inlet_substituted_t == pytest.approx(substituted * M_IN / 1000, rel=REL)
    assert r.inlet_substituted_share == pytest.approx(substituted / 720, rel=REL)
    assert r.alternative_share == pytest.approx(0.00850, abs=5e-6)  # the project side alone
    assert r.creditable is creditable
    assert any("substituted inlet N2O" in reason for reason in r.reasons) is not creditable
    assert r.er_t == pytest.approx(246.2856, rel=REL)
