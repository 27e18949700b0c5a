"""Flag precedence for one reading (cemsd/flags.py `worst`) from tests/cases/flags/."""

from __future__ import annotations

from typing import Any

import pytest

from casefiles import cases
from cemsd.flags import Flag, worst


@pytest.mark.parametrize("case", cases("flags"))
def test_case(case: dict[str, Any]) -> None:
    conditions = [Flag(letter) for letter in case["conditions"].split()]
    assert worst(conditions) is Flag(case["expect"])
    assert worst(reversed(conditions)) is Flag(case["expect"])
