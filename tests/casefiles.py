"""Regulatory test vectors kept as data in tests/cases/ (see tests/cases/README.md).

A topic is a folder; every `*.toml` file in it holds `[[case]]` tables. Each case has a
`name`, the `clause` it comes from, its inputs and what is expected. A file's `[defaults]`
table is merged under each of its cases (what they share, such as a worked example's
hours). The test module of a topic turns the cases into pytest parameters with `cases(topic)`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

CASES = Path(__file__).resolve().parent / "cases"
REQUIRED = ("name", "clause")


def load(topic: str) -> list[tuple[str, dict[str, Any]]]:
    """(file:name, case) for every case of a topic, files in name order."""
    found = []
    for path in sorted((CASES / topic).glob("*.toml")):
        with path.open("rb") as f:
            data = tomllib.load(f)
            for case in (data.get("defaults", {}) | c for c in data.get("case", [])):
                missing = [key for key in REQUIRED if key not in case]
                if missing:
                    raise ValueError(f"{path.name}: a case lacks {', '.join(missing)}: {case}")
                found.append((f"{path.stem}:{case['name']}", case))
    if not found:
        raise ValueError(f"no cases under {CASES / topic}")
    return found


def cases(topic: str) -> list[Any]:
    """pytest parameters, one per case, with the case's name as its id."""
    return [pytest.param(case, id=label) for label, case in load(topic)]


def count_by_topic() -> dict[str, int]:
    """How many cases each topic holds (printed at the end of a test run)."""
    return {d.name: len(load(d.name)) for d in sorted(CASES.iterdir())
            if d.is_dir() and any(d.glob("*.toml"))}
