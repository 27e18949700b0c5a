"""Hourly inputs of the reduction calculator from the hour groups of a case file
(tests/cases/reduction/): the worked example of quantification.md §5 is written once, as data."""

from __future__ import annotations

from typing import Any

from casefiles import load
from cemsd.conversion import STANDARD_STATES, mass_rate_kg_h, n2o_mg_m3
from cemsd.reduction.calculator import HourInput
from cemsd.units import Unit

SI = STANDARD_STATES["SI"]


def stream_kg(stream: dict[str, Any]) -> float:
    """One hour's N2O in kg: given, or dry ppm x dry standard flow at the SI state."""
    if "kg" in stream:
        return stream["kg"]
    return float(mass_rate_kg_h(n2o_mg_m3(stream["ppm"], Unit.PPM, SI), stream["flow"]))


def _skipping(group: dict[str, Any], key: str) -> dict[str, Any]:
    if key not in group:
        return {}
    stream = group[key]
    return {f"{key}_kg": stream_kg(stream), f"{key}_method": stream.get("method", "measured")}


def hour_inputs(groups: list[dict[str, Any]]) -> list[HourInput]:
    hours: list[HourInput] = []
    for group in groups:
        inlet, outlet = group["inlet"], group["outlet"]
        for _ in range(group["count"]):
            hours.append(HourInput(
                len(hours) * 3600.0,
                stream_kg(inlet), inlet.get("method", "measured"),
                None if outlet == "missing" else stream_kg(outlet),
                "missing" if outlet == "missing" else outlet.get("method", "measured"),
                unit_running=group.get("unit_running", True),
                **_skipping(group, "bypass"), **_skipping(group, "vent"),
            ))
    return hours


def worked_example() -> list[HourInput]:
    """The 720 hours of quantification.md §5 (the defaults of worked_example.toml)."""
    [(_, case), *_] = load("reduction")
    return hour_inputs(case["hours"])
