"""Minute and hour validity and the dominant flag, from tests/cases/aggregation/.

Thresholds come from cemsd's rule (`plan.minute_threshold` with the numbers of
`cemsd.standards`), so a case checks the standard's numbers, the rule and the kernel together.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from casefiles import cases
from cemsd import standards
from cemsd.aggregate import aggregate
from cemsd.flags import CODE, CODES, Flag
from cemsd.plan import minute_threshold

UNSET = 999.0  # the value of a reading whose case gives none: never part of a valid mean


def readings(groups: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    values: list[float] = []
    codes: list[int] = []
    for group in groups:
        n = group["count"]
        if "start" in group:
            values += [group["start"] + i * group.get("step", 0.0) for i in range(n)]
        else:
            values += [group.get("value", UNSET)] * n
        codes += [CODE[Flag(group["flag"])]] * n
    return np.array(values, dtype=np.float64), np.array(codes, dtype=np.int64)


def thresholds(case: dict[str, Any]) -> tuple[int, int]:
    """(expected, min_valid) the case's period and poll interval give."""
    if "expected" in case:
        return case["expected"], case["min_valid"]
    if case.get("period") == "hour":
        return 60, int(standards.HOUR_MIN_VALID_MINUTES.value)
    expected = round(60 / case["poll_seconds"])
    return expected, minute_threshold(expected, int(standards.MINUTE_MIN_READINGS.value),
                                      standards.MINUTE_MIN_VALID_FRACTION.value)


def same(got: float, want: float) -> bool:
    return (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("case", cases("aggregation"))
def test_case(case: dict[str, Any]) -> None:
    values, codes = readings(case["readings"])
    expected, min_valid = thresholds(case)
    agg = aggregate(np.zeros(len(values), dtype=np.int64), values, codes, 1, expected, min_valid)
    want = case["expect"]
    if "flag" in want:
        assert CODES[int(agg.flag[0])] is Flag(want["flag"])
    for key in ("n_valid", "n_present"):
        if key in want:
            assert int(getattr(agg, key)[0]) == want[key], key
    for key in ("value", "minimum", "maximum"):
        if key in want:
            assert same(float(getattr(agg, key)[0]), want[key]), key
    for letter, n in want.get("counts", {}).items():
        assert int(agg.counts[0, CODE[Flag(letter)]]) == n, f"count of {letter}"
