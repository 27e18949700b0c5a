"""The reduction calculator (cemsd/reduction/calculator.py) on tests/cases/reduction/: the
worked example of quantification.md §5 and its variants."""

from __future__ import annotations

from typing import Any

import pytest

from casefiles import cases
from cemsd.reduction.calculator import Parameters, compute
from reduction_example import hour_inputs


def _result(result: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        result = getattr(result, part)
    return result


@pytest.mark.parametrize("case", cases("reduction"))
def test_case(case: dict[str, Any]) -> None:
    result = compute(hour_inputs(case["hours"]), Parameters(**case.get("parameters", {})),
                     case["production_t"] or None, case["cap_t"] or None)
    for name, want in case["expect"].items():
        got = _result(result, name)
        if isinstance(want, bool):
            assert got is want, name
        elif want == 0:
            assert got == 0, name
        else:
            assert got == pytest.approx(want, rel=case["rel"]), name
