"""The reduction calculator around the worked example of quantification.md §5: start-up and
stop hours, a missing outlet, shares of both sides. The example's figures themselves are cases
in tests/cases/reduction/ (tests/test_cases_reduction.py), and so are its hours.
"""

from __future__ import annotations

import dataclasses

import pytest

from cemsd.reduction.calculator import HourInput, Parameters, compute
from reduction_example import worked_example

REL = 1e-6
M_IN = worked_example()[0].inlet_kg  # 240,000 ppm x 10,000 Nm3/h: 4712.733 kg


def example_hours(estimated: bool = False) -> list[HourInput]:
    """The 720 hours; `estimated`: the bypass of the last 10 was not monitored but estimated."""
    hours = worked_example()
    if not estimated:
        return hours
    return [dataclasses.replace(h, bypass_kg=0.0, bypass_method="", vent_kg=h.bypass_kg,
                                vent_method="estimated_max_hourly_inlet_720h")
            if h.bypass_kg else h for h in hours]


@pytest.fixture
def result():
    return compute(example_hours(), Parameters(), production_t=13_000, cap_t=12_500)


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
