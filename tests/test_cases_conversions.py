"""Conversions (cemsd/conversion.py) from tests/cases/conversions/.

A case names a function and its arguments; units and standard states are given by name.
`dry_standard_flow` and `n2o_kg_h` are the chains the points module applies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from casefiles import cases
from cemsd import conversion as cv
from cemsd.units import Unit


def _dry_standard_flow(flow: float, temperature_c: float, pressure_kpa: float,
                       moisture_fraction: float, state: cv.StandardState) -> float:
    return cv.wet_flow_to_dry(cv.actual_to_standard(flow, temperature_c, pressure_kpa, state),
                              moisture_fraction)


def _n2o_kg_h(value: float, unit: Unit, state: cv.StandardState, flow_nm3_h: float) -> float:
    return cv.mass_rate_kg_h(cv.n2o_mg_m3(value, unit, state), flow_nm3_h)


def _standard_state(state: cv.StandardState, field: str) -> float:
    return getattr(state, field)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "n2o_mg_m3": cv.n2o_mg_m3,
    "to_ppm": cv.to_ppm,
    "wet_to_dry": cv.wet_to_dry,
    "wet_flow_to_dry": cv.wet_flow_to_dry,
    "moisture_fraction": cv.moisture_fraction,
    "velocity_to_flow": cv.velocity_to_flow,
    "actual_to_standard": cv.actual_to_standard,
    "absolute_pressure_kpa": cv.absolute_pressure_kpa,
    "mass_rate_kg_h": cv.mass_rate_kg_h,
    "dry_standard_flow": _dry_standard_flow,
    "n2o_kg_h": _n2o_kg_h,
    "standard_state": _standard_state,
}


def _argument(name: str, value: Any) -> Any:
    if name == "unit":
        return Unit(value)
    if name == "state":
        return cv.STANDARD_STATES[value]
    return value


@pytest.mark.parametrize("case", cases("conversions"))
def test_case(case: dict[str, Any]) -> None:
    args = {name: _argument(name, value) for name, value in case["args"].items()}
    got = FUNCTIONS[case["function"]](**args)
    if "rel" in case:
        assert got == pytest.approx(case["expect"], rel=case["rel"])
    else:
        assert got == case["expect"]
