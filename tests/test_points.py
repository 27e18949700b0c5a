"""cemsd.points: dry standard concentration, dry standard flow and N2O mass per minute.

A small plant (inlet analyzer in %vol, outlet analyzer in ppm, a stack flow meter at the
inlet) is loaded from a real config file and compiled into a plan; synthetic minute
aggregates go into PointCalculator.compute and every derived value is compared with the
formulas of quantification.md §4 written out by hand here.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cemsd.aggregate import Aggregates, aggregate
from cemsd.config import Config, Point
from cemsd.errors import ConfigError
from cemsd.flags import CODE, Flag
from cemsd.plan import compile_plan, minute_threshold
from cemsd.points import PointCalculator, point_problems
from helpers import write_config

K_SI = 44.013 / 22.414  # mg/m3 per ppm at 273.15 K, 101.325 kPa
REL = 1e-9  # hand formula vs code: only float rounding apart


def base_config() -> dict[str, Any]:
    return {
        "plant": {"id": "test-plant"},
        "points": {
            "inlet": {"duct_area_m2": 0.25, "flow_basis": "actual_wet",
                      "concentration_basis": "dry", "pressure_kind": "gauge"},
            "outlet": {"duct_area_m2": 0.5},
        },
        "buses": [
            {"name": "analyzers", "transport": "tcp", "host": "127.0.0.1", "port": 15020,
             "timeout": 0.3, "retries": 1},
            {"name": "flow", "transport": "tcp", "host": "127.0.0.1", "port": 15021,
             "timeout": 0.3, "retries": 1},
        ],
        "devices": [
            {"name": "inlet-analyzer", "bus": "analyzers", "device_id": 1,
             "profile": "n2o-analyzer-percent", "poll_interval": 5.0},
            {"name": "outlet-analyzer", "bus": "analyzers", "device_id": 2,
             "profile": "n2o-analyzer-ppm", "poll_interval": 5.0},
            {"name": "inlet-flow", "bus": "flow", "device_id": 1, "profile": "stack-flow-meter",
             "poll_interval": 5.0, "point": "inlet",
             "channels": {"volume_flow": {"enabled": False}}},
        ],
    }


def flow_channels(data: dict[str, Any]) -> dict[str, Any]:
    return data["devices"][2]["channels"]


def load(tmp_path: Path, data: dict[str, Any]) -> tuple[Config, PointCalculator]:
    config = write_config(tmp_path, data)
    return config, PointCalculator(config, compile_plan(config))


def series(values: list[Any], flags: str | None = None, per_minute: int = 12) -> Aggregates:
    """Minute aggregates: one entry per minute, a number (repeated per_minute times) or a
    list of readings; flags gives each minute's reading flag (default all N)."""
    bucket, vals, codes = [], [], []
    for i, v in enumerate(values):
        readings = v if isinstance(v, list) else [v] * per_minute
        flag = Flag(flags[i]) if flags else Flag.N
        for r in readings:
            bucket.append(i)
            vals.append(r)
            codes.append(CODE[flag])
    return aggregate(np.array(bucket), np.array(vals), np.array(codes), len(values),
                     per_minute, minute_threshold(per_minute, 12, 0.75))


def inlet_minutes(n: int = 2, **over: Aggregates) -> dict[str, Aggregates]:
    """The inlet's channels over n minutes: 24 %vol, 14 m/s, 60 degC, 2 kPa, 5 %vol H2O."""
    minutes = {
        "inlet-analyzer.n2o": series([[23.9, 24.1] * 6] * n),
        "inlet-flow.velocity": series([[13.9, 14.1] * 6] * n),
        "inlet-flow.temperature": series([60.0] * n),
        "inlet-flow.pressure": series([2.0] * n),
        "inlet-flow.moisture": series([5.0] * n),
    }
    minutes.update({f"inlet-flow.{k}" if "." not in k else k: v for k, v in over.items()})
    return minutes


def flow_by_hand(v: float = 14.0, area: float = 0.25, kv: float = 1.0, t: float = 60.0,
                 p_abs: float = 103.325, moisture_pct: float = 5.0, t0: float = 273.15
                 ) -> float:
    """Q_N,dry = 3600 A Kv v x T0/(T0 + t) x P/101.325 x (1 - Bws)."""
    return 3600 * area * kv * v * t0 / (t0 + t) * p_abs / 101.325 * (1 - moisture_pct / 100)


C_INLET = 24.0 * 10_000 * K_SI  # 24 %vol in mg/m3


def test_series_helper_makes_valid_and_flagged_minutes() -> None:
    agg = series([1.0, [2.0, 4.0] * 6, 3.0], flags="NND")
    assert list(agg.flag) == [CODE[Flag.N], CODE[Flag.N], CODE[Flag.D]]
    assert agg.value[1] == pytest.approx(3.0)
    assert math.isnan(agg.value[2])


# --- derived channels --------------------------------------------------------------------------


def test_derived_channels_and_their_inputs(tmp_path: Path) -> None:
    _, calc = load(tmp_path, base_config())
    derived = {d.name: d for d in calc.derived}
    assert set(derived) == {"inlet.n2o_mg_m3", "inlet.flow_nm3_h", "inlet.n2o_kg_h",
                            "outlet.n2o_mg_m3"}
    assert derived["inlet.n2o_mg_m3"].inputs == ("inlet-analyzer.n2o",)
    assert set(derived["inlet.flow_nm3_h"].inputs) == {
        "inlet-flow.velocity", "inlet-flow.temperature", "inlet-flow.pressure",
        "inlet-flow.moisture"}
    assert set(derived["inlet.n2o_kg_h"].inputs) == {
        "inlet-analyzer.n2o", "inlet-flow.velocity", "inlet-flow.temperature",
        "inlet-flow.pressure", "inlet-flow.moisture"}
    assert derived["inlet.n2o_kg_h"].unit.value == "kg/h"
    assert derived["inlet.flow_nm3_h"].unit.value == "Nm3/h"
    assert derived["inlet.n2o_mg_m3"].unit.value == "mg/m3"


def test_valid_minutes_match_the_hand_calculation(tmp_path: Path) -> None:
    _, calc = load(tmp_path, base_config())
    out = calc.compute(inlet_minutes(2))
    q = flow_by_hand()
    for i in range(2):
        assert out["inlet.n2o_mg_m3"].value[i] == pytest.approx(C_INLET, rel=REL)
        assert out["inlet.flow_nm3_h"].value[i] == pytest.approx(q, rel=REL)
        assert out["inlet.n2o_kg_h"].value[i] == pytest.approx(C_INLET * q * 1e-6, rel=REL)
    # the same figures, rounded, computed on a calculator
    assert out["inlet.n2o_mg_m3"].value[0] == pytest.approx(471_273.3, rel=1e-6)
    assert out["inlet.flow_nm3_h"].value[0] == pytest.approx(10_007.93, rel=1e-6)
    assert out["inlet.n2o_kg_h"].value[0] == pytest.approx(4_716.471, rel=1e-6)
    for name in ("inlet.n2o_mg_m3", "inlet.flow_nm3_h", "inlet.n2o_kg_h"):
        assert list(out[name].flag) == [CODE[Flag.N]] * 2
        assert out[name].reason(0) is None


def test_outlet_without_flow_has_a_concentration_only(tmp_path: Path) -> None:
    _, calc = load(tmp_path, base_config())
    minutes = inlet_minutes(1)
    minutes["outlet-analyzer.n2o"] = series([2_000.0])
    out = calc.compute(minutes)
    assert out["outlet.n2o_mg_m3"].value[0] == pytest.approx(2_000 * K_SI, rel=REL)
    assert "outlet.flow_nm3_h" not in out
    assert "outlet.n2o_kg_h" not in out


def test_nothing_is_derived_from_absent_minutes(tmp_path: Path) -> None:
    _, calc = load(tmp_path, base_config())
    assert calc.compute({}) == {}
    only_conc = calc.compute({"inlet-analyzer.n2o": series([24.0])})
    assert set(only_conc) == {"inlet.n2o_mg_m3"}


def test_velocity_coefficient_scales_the_flow(tmp_path: Path) -> None:
    data = base_config()
    data["points"]["inlet"]["velocity_coefficient"] = 0.9
    _, calc = load(tmp_path, data)
    out = calc.compute(inlet_minutes(1))
    assert out["inlet.flow_nm3_h"].value[0] == pytest.approx(flow_by_hand(kv=0.9), rel=REL)


def test_hj212_standard_state(tmp_path: Path) -> None:
    data = base_config()
    data["processing"] = {"standard_state": "HJ212"}
    _, calc = load(tmp_path, data)
    out = calc.compute(inlet_minutes(1))
    c = 24.0 * 10_000 * 44.013 / 22.4
    q = 3600 * 0.25 * 14.0 * 273.0 / (273.0 + 60.0) * 103.325 / 101.325 * 0.95
    assert out["inlet.n2o_mg_m3"].value[0] == pytest.approx(c, rel=REL)
    assert out["inlet.flow_nm3_h"].value[0] == pytest.approx(q, rel=REL)
    assert out["inlet.n2o_kg_h"].value[0] == pytest.approx(c * q * 1e-6, rel=REL)


# --- validity of derived minutes -------------------------------------------------------------


def test_faulty_temperature_minute_invalidates_flow_and_mass(tmp_path: Path) -> None:
    _, calc = load(tmp_path, base_config())
    out = calc.compute(inlet_minutes(2, temperature=series([60.0, 60.0], flags="ND")))
    flow, mass, conc = out["inlet.flow_nm3_h"], out["inlet.n2o_kg_h"], out["inlet.n2o_mg_m3"]
    # minute 0 untouched
    assert flow.flag[0] == CODE[Flag.N]
    assert flow.value[0] == pytest.approx(flow_by_hand(), rel=REL)
    # minute 1: flow and mass carry D; the concentration does not depend on temperature
    assert flow.flag[1] == CODE[Flag.D]
    assert math.isnan(flow.value[1])
    reason = flow.reason(1)
    assert reason is not None
    assert "inlet-flow.temperature" in reason
    assert "D" in reason
    assert mass.flag[1] == CODE[Flag.D]
    assert math.isnan(mass.value[1])
    assert mass.reason(1) is not None
    assert conc.flag[1] == CODE[Flag.N]
    assert conc.value[1] == pytest.approx(C_INLET, rel=REL)


def test_the_input_flag_with_precedence_wins(tmp_path: Path) -> None:
    # D (instrument) takes precedence over B (communication): flags.PRECEDENCE
    _, calc = load(tmp_path, base_config())
    out = calc.compute(inlet_minutes(1, temperature=series([60.0], flags="D"),
                                     pressure=series([2.0], flags="B")))
    flow = out["inlet.flow_nm3_h"]
    assert flow.flag[0] == CODE[Flag.D]
    reason = flow.reason(0)
    assert reason is not None and "inlet-flow.temperature" in reason


def test_calibrating_analyzer_invalidates_concentration_and_mass_not_flow(tmp_path: Path
                                                                           ) -> None:
    _, calc = load(tmp_path, base_config())
    minutes = inlet_minutes(1)
    minutes["inlet-analyzer.n2o"] = series([24.0], flags="C")
    out = calc.compute(minutes)
    assert out["inlet.n2o_mg_m3"].flag[0] == CODE[Flag.C]
    reason = out["inlet.n2o_mg_m3"].reason(0)
    assert reason is not None and "inlet-analyzer.n2o" in reason
    assert out["inlet.n2o_kg_h"].flag[0] == CODE[Flag.C]
    assert math.isnan(out["inlet.n2o_kg_h"].value[0])
    assert out["inlet.flow_nm3_h"].flag[0] == CODE[Flag.N]


def test_a_minute_with_too_few_readings_is_b_and_invalidates_the_flow(tmp_path: Path) -> None:
    _, calc = load(tmp_path, base_config())
    # 5 of 12 moisture readings received: the minute is B (never received)
    out = calc.compute(inlet_minutes(1, moisture=series([[5.0] * 5])))
    assert out["inlet.flow_nm3_h"].flag[0] == CODE[Flag.B]
    reason = out["inlet.flow_nm3_h"].reason(0)
    assert reason is not None and "inlet-flow.moisture" in reason


# --- defaults instead of channels -------------------------------------------------------------


def test_temperature_and_moisture_defaults_when_there_is_no_channel(tmp_path: Path) -> None:
    data = base_config()
    flow_channels(data).update(temperature={"enabled": False}, moisture={"enabled": False})
    data["points"]["inlet"].update(temperature_default_c=150.0, moisture_default_pct=8.0)
    _, calc = load(tmp_path, data)
    flow_inputs = next(d for d in calc.derived if d.name == "inlet.flow_nm3_h").inputs
    assert set(flow_inputs) == {"inlet-flow.velocity", "inlet-flow.pressure"}
    minutes = inlet_minutes(1)
    del minutes["inlet-flow.temperature"], minutes["inlet-flow.moisture"]
    out = calc.compute(minutes)
    q = flow_by_hand(t=150.0, moisture_pct=8.0)
    assert out["inlet.flow_nm3_h"].flag[0] == CODE[Flag.N]
    assert out["inlet.flow_nm3_h"].value[0] == pytest.approx(q, rel=REL)
    assert out["inlet.n2o_kg_h"].value[0] == pytest.approx(C_INLET * q * 1e-6, rel=REL)


def test_pressure_default_is_gauge_kpa(tmp_path: Path) -> None:
    data = base_config()
    flow_channels(data).update(pressure={"enabled": False})
    data["points"]["inlet"].update(pressure_default_kpa=1.0)
    _, calc = load(tmp_path, data)
    minutes = inlet_minutes(1)
    del minutes["inlet-flow.pressure"]
    out = calc.compute(minutes)
    assert out["inlet.flow_nm3_h"].value[0] == pytest.approx(flow_by_hand(p_abs=102.325),
                                                               rel=REL)


def test_pressure_in_pa_absolute(tmp_path: Path) -> None:
    data = base_config()
    flow_channels(data).update(pressure={"unit": "Pa", "scale": 1.0,
                                         "range": [80_000.0, 120_000.0]})
    data["points"]["inlet"]["pressure_kind"] = "absolute"
    _, calc = load(tmp_path, data)
    out = calc.compute(inlet_minutes(1, pressure=series([99_000.0])))
    assert out["inlet.flow_nm3_h"].value[0] == pytest.approx(flow_by_hand(p_abs=99.0), rel=REL)


def test_gauge_pressure_with_a_site_barometric_pressure(tmp_path: Path) -> None:
    data = base_config()
    data["points"]["inlet"]["barometric_kpa"] = 95.0
    _, calc = load(tmp_path, data)
    out = calc.compute(inlet_minutes(1))
    assert out["inlet.flow_nm3_h"].value[0] == pytest.approx(flow_by_hand(p_abs=97.0), rel=REL)


# --- wet basis and standard flows -------------------------------------------------------------


def test_wet_basis_analyzer_is_divided_by_one_minus_moisture(tmp_path: Path) -> None:
    data = base_config()
    data["points"]["inlet"]["concentration_basis"] = "wet"
    _, calc = load(tmp_path, data)
    conc_inputs = next(d for d in calc.derived if d.name == "inlet.n2o_mg_m3").inputs
    assert set(conc_inputs) == {"inlet-analyzer.n2o", "inlet-flow.moisture"}
    out = calc.compute(inlet_minutes(2, moisture=series([10.0, 10.0], flags="ND")))
    conc = out["inlet.n2o_mg_m3"]
    assert conc.value[0] == pytest.approx(C_INLET / (1 - 0.10), rel=REL)
    assert conc.flag[1] == CODE[Flag.D]
    reason = conc.reason(1)
    assert reason is not None and "inlet-flow.moisture" in reason


def test_wet_basis_analyzer_with_a_moisture_default(tmp_path: Path) -> None:
    data = base_config()
    data["points"]["outlet"].update(concentration_basis="wet", moisture_default_pct=8.0)
    _, calc = load(tmp_path, data)
    out = calc.compute({"outlet-analyzer.n2o": series([2_000.0])})
    assert out["outlet.n2o_mg_m3"].value[0] == pytest.approx(2_000 * K_SI / 0.92, rel=REL)
    assert out["outlet.n2o_mg_m3"].flag[0] == CODE[Flag.N]


def standard_flow_plant(basis: str) -> dict[str, Any]:
    """Both points with a flow meter giving Nm3/h (volume_flow instead of velocity)."""
    data = base_config()
    nm3 = {"unit": "Nm3/h", "role": "flow", "range": [0.0, 50_000.0]}
    flow_channels(data).update(velocity={"enabled": False}, volume_flow=nm3)
    outlet_flow = copy.deepcopy(data["devices"][2])
    outlet_flow.update(name="outlet-flow", device_id=2, point="outlet")
    data["devices"].append(outlet_flow)
    for point in data["points"].values():
        point["flow_basis"] = basis
    return data


def test_standard_dry_flow_in_nm3_h_is_not_converted(tmp_path: Path) -> None:
    _, calc = load(tmp_path, standard_flow_plant("standard_dry"))
    derived = {d.name: d for d in calc.derived}
    assert derived["inlet.flow_nm3_h"].inputs == ("inlet-flow.volume_flow",)
    minutes = {
        # the worked example of quantification.md §5, normal hours
        "inlet-analyzer.n2o": series([24.0]),
        "inlet-flow.volume_flow": series([10_000.0]),
        "outlet-analyzer.n2o": series([2_000.0]),
        "outlet-flow.volume_flow": series([12_000.0]),
        # inputs a standard dry flow does not need: faulty, yet irrelevant
        "inlet-flow.temperature": series([60.0], flags="D"),
        "inlet-flow.pressure": series([2.0], flags="D"),
        "inlet-flow.moisture": series([5.0], flags="D"),
    }
    out = calc.compute(minutes)
    assert out["inlet.flow_nm3_h"].value[0] == 10_000.0
    assert out["inlet.flow_nm3_h"].flag[0] == CODE[Flag.N]
    assert out["inlet.n2o_kg_h"].value[0] == pytest.approx(4_712.733, rel=1e-6)
    assert out["outlet.n2o_kg_h"].value[0] == pytest.approx(47.12733, rel=1e-6)


def test_standard_wet_flow_in_nm3_h_is_only_dried(tmp_path: Path) -> None:
    _, calc = load(tmp_path, standard_flow_plant("standard_wet"))
    minutes = {
        "inlet-flow.volume_flow": series([10_000.0]),
        "inlet-flow.temperature": series([60.0], flags="D"),  # not needed
        "inlet-flow.pressure": series([2.0], flags="D"),  # not needed
        "inlet-flow.moisture": series([5.0]),
    }
    out = calc.compute(minutes)
    assert out["inlet.flow_nm3_h"].flag[0] == CODE[Flag.N]
    assert out["inlet.flow_nm3_h"].value[0] == pytest.approx(9_500.0, rel=REL)


def test_actual_wet_flow_in_m3_h(tmp_path: Path) -> None:
    data = base_config()
    flow_channels(data).update(velocity={"enabled": False},
                               volume_flow={"role": "flow", "unit": "m3/h"})
    _, calc = load(tmp_path, data)
    out = calc.compute(inlet_minutes(1, volume_flow=series([12_600.0])))
    assert out["inlet.flow_nm3_h"].value[0] == pytest.approx(flow_by_hand(), rel=REL)


# --- point_problems ---------------------------------------------------------------------------


def problems_of(tmp_path: Path, data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, data)
    return [(p.path, p.message) for p in info.value.problems]


@pytest.mark.parametrize("role", ["temperature", "pressure", "moisture"])
def test_missing_input_of_actual_wet_flow_is_reported(tmp_path: Path, role: str) -> None:
    data = base_config()
    flow_channels(data)[role] = {"enabled": False}
    problems = problems_of(tmp_path, data)
    assert len(problems) == 1
    path, message = problems[0]
    assert path == "points.inlet"
    assert role in message


def test_all_missing_inputs_are_reported_together(tmp_path: Path) -> None:
    data = base_config()
    for role in ("temperature", "pressure", "moisture"):
        flow_channels(data)[role] = {"enabled": False}
    problems = problems_of(tmp_path, data)
    assert [p for p, _ in problems] == ["points.inlet"] * 3
    text = " ".join(m for _, m in problems)
    for role in ("temperature", "pressure", "moisture"):
        assert role in text


def test_wet_analyzer_without_moisture_is_reported(tmp_path: Path) -> None:
    data = base_config()
    data["points"]["outlet"]["concentration_basis"] = "wet"
    problems = problems_of(tmp_path, data)
    assert len(problems) == 1
    assert problems[0][0] == "points.outlet"
    assert "moisture" in problems[0][1]


def test_nm3_h_flow_declared_actual_is_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, standard_flow_plant("actual_wet"))
    paths = [p for p, _ in problems]
    assert "points.inlet.flow_basis" in paths
    assert "points.outlet.flow_basis" in paths
    message = dict(problems)["points.inlet.flow_basis"]
    assert "standard" in message


def test_standard_dry_flow_needs_no_state_inputs(tmp_path: Path) -> None:
    data = standard_flow_plant("standard_dry")
    for device in data["devices"][2:]:
        for role in ("temperature", "pressure", "moisture"):
            device["channels"][role] = {"enabled": False}
    config = write_config(tmp_path, data)
    assert point_problems(config, compile_plan(config)) == []


def test_point_problems_called_directly(tmp_path: Path) -> None:
    data = base_config()
    for role in ("temperature", "moisture"):
        flow_channels(data)[role] = {"enabled": False}
    data["points"]["inlet"].update(temperature_default_c=150.0, moisture_default_pct=8.0)
    config = write_config(tmp_path, data)
    plan = compile_plan(config)
    assert point_problems(config, plan) == []
    bare = config.model_copy(update={"points": {**config.points,
                                                 "inlet": Point(duct_area_m2=0.25)}})
    problems = point_problems(bare, plan)
    assert [p for p, _ in problems] == ["points.inlet", "points.inlet"]
    assert "temperature" in problems[0][1]
    assert "moisture" in problems[1][1]
