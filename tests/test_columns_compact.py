"""The runs of the compact layout (cemsd/api/columns_compact.py) decode to exactly the
items they were encoded from, JSON types included."""

from __future__ import annotations

import json

import pytest

from cemsd.api.columns_compact import (
    decode_deltas,
    decode_runs,
    decode_steps,
    encode_deltas,
    encode_runs,
    encode_steps,
)

RUN_CASES = [
    [],
    ["N"] * 5 + ["B"] + ["N"] * 3,
    [60, 60.0, True, 1, 1.0],  # equal in Python, not the same JSON item
    [None, None, 300.0, None, 2.5, 2.5],
    ["hj75.missing.before_after_mean", None, "hj75.missing.before_after_mean"],
]
STEP_CASES = [
    [],
    [7],
    list(range(100, 400, 10)),
    [None, None, 5, 6, 7, None, 9, 9, 9, 3, -1, -5],
    [1767225600 + 3600 * h for h in (*range(3), *range(5, 24))],
    [10, 12, 14, 15, 16, 20, None],
]


@pytest.mark.parametrize("items", RUN_CASES)
def test_runs_round_trip_through_json(items: list) -> None:
    runs = json.loads(json.dumps(encode_runs(items)))
    decoded = decode_runs(runs)
    assert json.dumps(decoded) == json.dumps(items)
    assert all(count > 0 for count in runs[1::2])


@pytest.mark.parametrize("items", STEP_CASES)
def test_steps_and_deltas_round_trip_through_json(items: list) -> None:
    runs = json.loads(json.dumps(encode_steps(items)))
    assert decode_steps(runs) == items
    assert all(count > 0 for count in runs[2::3])
    deltas = json.loads(json.dumps(encode_deltas(items)))
    assert decode_deltas(deltas) == items
    assert all(run[1] > 0 for run in deltas if run[0] is None)


def test_regular_sequences_are_one_run() -> None:
    assert encode_steps(list(range(100, 400, 10))) == [100, 10, 30]
    assert encode_steps([None] * 4) == [None, 0, 4]
    assert encode_runs(["N"] * 24) == ["N", 24]
    assert encode_deltas([1, 11, 21, 32, None, None, 50]) == [[1, 10, 10, 11], [None, 2], [50]]


def test_a_truncated_run_is_an_error_not_a_shorter_array() -> None:
    with pytest.raises(ValueError):
        decode_runs(["N", 24, "B"])
    with pytest.raises(ValueError):
        decode_steps([100, 10])
