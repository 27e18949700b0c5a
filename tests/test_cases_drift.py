"""Calibration verdicts and intervals (cemsd/qaqc/calibration.py, settings.py) from
tests/cases/drift/, with the default limits of `cemsd.standards`."""

from __future__ import annotations

from typing import Any

import pytest

from casefiles import cases
from cemsd.qaqc.calibration import judge
from cemsd.settings.qaqc import CalibrationSettings

ALL = cases("drift")


@pytest.mark.parametrize("case", [c for c in ALL if "drift_pct" in c.values[0]])
def test_verdict(case: dict[str, Any]) -> None:
    settings = CalibrationSettings(method=case["method"])
    verdict = judge(settings, case["kind"], case["drift_pct"], case["difference"])
    assert verdict.result == case["expect"]


@pytest.mark.parametrize("case", [c for c in ALL if "expect_interval_hours" in c.values[0]])
def test_interval(case: dict[str, Any]) -> None:
    settings = CalibrationSettings(method=case["method"], mode=case["mode"],
                                   installation=case["installation"])
    assert settings.interval == case["expect_interval_hours"] * 3600


def test_every_case_is_read() -> None:
    kinds = [c for c in ALL if "drift_pct" in c.values[0] or "expect_interval_hours" in c.values[0]]
    assert len(kinds) == len(ALL)
