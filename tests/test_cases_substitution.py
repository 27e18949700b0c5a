"""HJ 75-2017 §12 substitution, both sides, from tests/cases/substitution/.

Tier cases build the look-back history of tests/substitution_series.py (distinct values at
every window's edge); series cases write the hours out one by one.
"""

from __future__ import annotations

from typing import Any

import pytest

from casefiles import cases
from cemsd.qaqc.substitution import BASELINE, PROJECT, Period, find_periods, substitute
from substitution_series import Build, history


def _substitutes(case: dict[str, Any], series: list, period: Period) -> list | None:
    side = BASELINE if case["side"] == "baseline" else PROJECT
    extra = {"baseline": case["baseline_rule"]} if "baseline_rule" in case else {}
    return substitute(period, series, case["capture_rate"], side, **extra)


def _check(subs: list | None, period: Period, want: dict[str, Any], sources: tuple) -> None:
    if want.get("none"):
        assert subs is None
        return
    assert subs is not None
    assert [s.ts for s in subs] == list(period.hours)
    assert {s.value for s in subs} == {want["value"]}
    if "method" in want:
        assert {s.method for s in subs} == {want["method"]}
    assert {s.source_hours for s in subs} == {sources}


@pytest.mark.parametrize("case", [c for c in cases("substitution") if "markers" in c.values[0]])
def test_tier(case: dict[str, Any]) -> None:
    markers = {int(k): v for k, v in case["markers"].items()}
    series, period, window = history(case["kind"], case["hours"], markers, case["outside"])
    subs = _substitutes(case, series, period)
    want = case["expect"]
    if want.get("around"):
        sources: tuple = (window[-1], period.end)
    else:
        look_back = want.get("look_back", 0)
        sources = tuple(window[-look_back:]) if look_back else ()
    _check(subs, period, want, sources)


@pytest.mark.parametrize("case", [c for c in cases("substitution") if "series" in c.values[0]])
def test_series(case: dict[str, Any]) -> None:
    b, starts, gap = Build(), [], case["gap"]
    gap_hours: list[float] = []
    for token in case["series"]:
        starts.append(b.t)
        if token == "GAP":
            gap_hours = b.invalid(gap["hours"], gap["flag"], ooc=gap["kind"] == "out_of_control")
        elif token == "F":
            b.stop(1)
        elif isinstance(token, str):
            b.invalid(1, token)
        else:
            b.valid(float(token))
    [period] = [p for p, _ in find_periods(b.hours) if p.hours == tuple(gap_hours)]
    want = case["expect"]
    _check(_substitutes(case, b.hours, period), period, want,
           tuple(starts[i] for i in want.get("sources", [])))
