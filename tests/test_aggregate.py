"""Minute and hour aggregation (cemsd/aggregate.py) at the HJ 212-2017 Annex C/D edges.

Every threshold passed as `min_valid` is worked out by hand from the standard:
75 % of the expected sub-values, rounded up, and at least 12 readings for a minute;
45 of 60 minutes for an hour. Expected means are computed by hand too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cemsd.aggregate import Aggregates, aggregate
from cemsd.flags import CODE, CODES, Flag

N, B, D, C, M, F, T, S = (Flag.N, Flag.B, Flag.D, Flag.C, Flag.M, Flag.F, Flag.T, Flag.S)


def series(*buckets: list[tuple[Flag, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bucket, value, code) arrays from one list of (flag, value) per bucket."""
    b: list[int] = []
    v: list[float] = []
    c: list[int] = []
    for i, items in enumerate(buckets):
        for flag, value in items:
            b.append(i)
            v.append(value)
            c.append(CODE[flag])
    return np.array(b, dtype=np.int64), np.array(v, dtype=np.float64), np.array(c, dtype=np.int64)


def run(*buckets: list[tuple[Flag, float]], expected: int | np.ndarray, min_valid: int,
        how: str = "mean", n_buckets: int | None = None) -> Aggregates:
    bucket, values, codes = series(*buckets)
    n = len(buckets) if n_buckets is None else n_buckets
    return aggregate(bucket, values, codes, n, expected, min_valid, how=how)


def flag(agg: Aggregates, i: int = 0) -> Flag:
    return CODES[int(agg.flag[i])]


def count(agg: Aggregates, f: Flag, i: int = 0) -> int:
    return int(agg.counts[i, CODE[f]])


def valid(values: list[float]) -> list[tuple[Flag, float]]:
    return [(N, x) for x in values]


def many(f: Flag, n: int, value: float = 999.0) -> list[tuple[Flag, float]]:
    return [(f, value)] * n


# --- the regulatory vectors (validity thresholds, which values count, the dominant flag) live in
# tests/cases/aggregation/ and are run by tests/test_cases_aggregation.py.


def test_an_invalid_hour_says_how_many_minutes_it_had_and_needed() -> None:
    minutes = valid([10.0] * 44) + many(D, 2, math.nan)  # 14 minutes never stored
    agg = run(minutes, expected=60, min_valid=45)
    text = agg.reason(0, "minutes")
    assert text is not None
    assert "44 of 60 minutes valid" in text
    assert "45 needed" in text


def test_last_takes_the_last_valid_value() -> None:
    items = [(N, 5.0), (N, 9.0), (N, 7.0), (C, 100.0), (B, math.nan)]
    agg = run(items, [*items[:2], (N, 3.0)], expected=5, min_valid=2, how="last")
    assert agg.value[0] == 7.0
    assert (agg.minimum[0], agg.maximum[0]) == (5.0, 9.0)
    assert agg.value[1] == 3.0
    assert flag(agg, 0) is N


def test_last_in_a_bucket_without_valid_values_is_nan() -> None:
    agg = run([(N, 1.0), (N, 2.0)], many(D, 2, 9.0), [(N, 4.0)],
              expected=2, min_valid=1, how="last")
    assert agg.value[0] == 2.0
    assert math.isnan(agg.value[1])
    assert agg.value[2] == 4.0


# --- several buckets ----------------------------------------------------------------------------


def test_several_buckets_with_empty_ones() -> None:
    agg = run(
        valid([float(i) for i in range(1, 13)]),       # 0: complete
        [],                                            # 1: nothing received
        valid([2.0] * 6) + many(C, 6),                 # 2: half calibrating
        [],                                            # 3: nothing received
        valid([4.0] * 13),                             # 4: one reading more than expected
        expected=12, min_valid=12,
    )
    assert len(agg) == 5
    assert [flag(agg, i) for i in range(5)] == [N, B, C, B, N]
    assert agg.value[0] == pytest.approx(6.5)
    assert math.isnan(agg.value[1]) and math.isnan(agg.value[3])
    assert agg.value[2] == 2.0
    assert agg.value[4] == 4.0
    assert list(agg.n_valid) == [12, 0, 6, 0, 13]
    assert list(agg.n_present) == [12, 0, 12, 0, 13]
    assert [count(agg, B, i) for i in range(5)] == [0, 12, 0, 12, 0]
    assert count(agg, C, 2) == 6
    assert list(agg.expected) == [12] * 5
    assert agg.min_valid == 12
    # each row of counts adds up to what was expected or received, whichever is more
    assert list(agg.counts.sum(axis=1)) == [12, 12, 12, 12, 13]


def test_trailing_empty_buckets() -> None:
    bucket, values, codes = series(valid([3.0] * 12))
    agg = aggregate(bucket, values, codes, 3, 12, 12)
    assert [flag(agg, i) for i in range(3)] == [N, B, B]
    assert agg.value[0] == 3.0


def test_no_sub_values_at_all() -> None:
    empty_i = np.array([], dtype=np.int64)
    agg = aggregate(empty_i, np.array([], dtype=np.float64), empty_i, 3, 60, 45)
    assert [flag(agg, i) for i in range(3)] == [B, B, B]
    assert all(math.isnan(x) for x in agg.value)
    assert list(agg.n_valid) == [0, 0, 0]
    assert [count(agg, B, i) for i in range(3)] == [60, 60, 60]
    assert agg.reason(1) is not None and "0 of 60" in agg.reason(1)


def test_expected_per_bucket() -> None:
    agg = run(valid([1.0] * 12), valid([1.0] * 12), expected=np.array([12, 30]), min_valid=12)
    assert list(agg.expected) == [12, 30]
    assert count(agg, B, 0) == 0
    assert count(agg, B, 1) == 18
    assert [flag(agg, i) for i in range(2)] == [N, N]


def test_bucket_values_do_not_leak_between_buckets() -> None:
    agg = run(valid([1.0, 3.0]), valid([100.0, 300.0]), valid([-1.0]),
              expected=2, min_valid=1)
    assert list(agg.value) == pytest.approx([2.0, 200.0, -1.0])
    assert list(agg.minimum) == [1.0, 100.0, -1.0]
    assert list(agg.maximum) == [3.0, 300.0, -1.0]


# --- reason -----------------------------------------------------------------------------------


def test_reason_gives_the_counts() -> None:
    agg = run(valid([1.0] * 44) + many(C, 10), expected=60, min_valid=45)
    text = agg.reason(0)
    assert text is not None
    assert "44 of 60 readings valid" in text
    assert "45 needed" in text
    assert "C calibration: 10" in text
    assert "B communication fault: 6" in text
    assert "6 never received" in text
    assert "instrument fault" not in text  # flags that did not occur are not listed


def test_reason_without_missing_readings() -> None:
    agg = run(valid([1.0] * 20) + many(D, 10), expected=30, min_valid=23)
    text = agg.reason(0)
    assert text is not None
    assert "20 of 30 readings valid" in text
    assert "23 needed" in text
    assert "D instrument fault: 10" in text
    assert "never received" not in text
    assert "communication fault" not in text


def test_reason_is_none_for_a_valid_bucket_and_names_the_sub_values() -> None:
    agg = run(valid([1.0] * 12), valid([1.0] * 3), expected=12, min_valid=12)
    assert agg.reason(0) is None
    text = agg.reason(1, "minutes")
    assert text is not None and text.startswith("3 of 12 minutes valid")
