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


# --- minutes: 75 % of the expected readings ------------------------------------------------


def test_60_readings_45_valid_is_a_valid_minute() -> None:
    # 1 s polling: 60 expected, 75 % = 45 needed
    agg = run(valid(list(range(1, 46))) + many(C, 15), expected=60, min_valid=45)
    assert flag(agg) is N
    assert agg.n_valid[0] == 45
    assert agg.n_present[0] == 60
    assert agg.value[0] == pytest.approx(23.0)  # (1 + 45) / 2; the C readings (999) ignored
    assert agg.minimum[0] == 1.0
    assert agg.maximum[0] == 45.0
    assert count(agg, C) == 15
    assert count(agg, B) == 0
    assert agg.reason(0) is None


def test_60_readings_44_valid_is_invalid() -> None:
    agg = run(valid(list(range(1, 45))) + many(C, 16), expected=60, min_valid=45)
    assert flag(agg) is C
    assert agg.n_valid[0] == 44
    # the value of an invalid minute is still the mean of its valid readings
    assert agg.value[0] == pytest.approx(22.5)
    assert (agg.minimum[0], agg.maximum[0]) == (1.0, 44.0)


def test_60_expected_44_received_all_valid_is_invalid_as_missing() -> None:
    agg = run(valid([5.0] * 44), expected=60, min_valid=45)
    assert flag(agg) is B
    assert agg.n_present[0] == 44
    assert count(agg, B) == 16
    assert agg.value[0] == 5.0


@pytest.mark.parametrize(("expected", "min_valid", "n_ok", "other"), [
    (20, 15, 15, D),   # 3 s polling: 75 % of 20 is exactly 15
    (16, 12, 12, M),   # 75 % of 16 is exactly 12 (and the floor is 12)
    (30, 23, 23, M),   # 2 s polling: 22.5 -> 23
    (60, 45, 45, T),
])
def test_exactly_75_percent(expected: int, min_valid: int, n_ok: int, other: Flag) -> None:
    at = run(valid([1.0] * n_ok) + many(other, expected - n_ok),
             expected=expected, min_valid=min_valid)
    below = run(valid([1.0] * (n_ok - 1)) + many(other, expected - n_ok + 1),
                expected=expected, min_valid=min_valid)
    assert flag(at) is N
    assert flag(below) is other
    assert below.n_valid[0] == n_ok - 1


def test_22_of_30_is_below_75_percent() -> None:
    # 22 / 30 = 73.3 %: a threshold of 22 (rounding 22.5 down) would wrongly accept it
    agg = run(valid([2.0] * 22) + many(M, 8), expected=30, min_valid=23)
    assert flag(agg) is M


def test_at_least_12_readings_even_when_75_percent_is_fewer() -> None:
    # 5 s polling: 12 expected; 75 % would be 9, but a minute needs n >= 12
    full = run(valid([float(i) for i in range(12)]), expected=12, min_valid=12)
    assert flag(full) is N
    assert full.value[0] == pytest.approx(5.5)

    one_missing = run(valid([1.0] * 11), expected=12, min_valid=12)
    assert flag(one_missing) is B
    assert count(one_missing, B) == 1

    one_over_range = run([*valid([1.0] * 11), (T, 150.0)], expected=12, min_valid=12)
    assert flag(one_over_range) is T

    nine = run(valid([1.0] * 9) + many(C, 3), expected=12, min_valid=12)
    assert flag(nine) is C


# --- hours: 45 of 60 minutes -----------------------------------------------------------------


def test_hour_with_45_valid_minutes_is_valid() -> None:
    minutes = valid([float(m) for m in range(45)])  # 15 minutes never stored
    agg = run(minutes, expected=60, min_valid=45)
    assert flag(agg) is N
    assert agg.value[0] == pytest.approx(22.0)  # mean of 0..44
    assert count(agg, B) == 15
    assert agg.reason(0, "minutes") is None


def test_hour_with_44_valid_minutes_is_invalid() -> None:
    minutes = valid([10.0] * 44) + many(D, 2, math.nan)  # 14 minutes never stored
    agg = run(minutes, expected=60, min_valid=45)
    assert flag(agg) is B  # 14 missing outnumber 2 D
    assert agg.n_valid[0] == 44
    assert count(agg, B) == 14
    assert count(agg, D) == 2
    text = agg.reason(0, "minutes")
    assert text is not None
    assert "44 of 60 minutes valid" in text
    assert "45 needed" in text


def test_hour_of_invalid_minutes_carries_their_dominant_flag() -> None:
    minutes = valid([1.0] * 40) + many(C, 12) + many(M, 8)
    agg = run(minutes, expected=60, min_valid=45)
    assert flag(agg) is C
    assert count(agg, B) == 0


# --- which values count -------------------------------------------------------------------------


def test_mean_min_max_use_valid_values_only() -> None:
    items = [(N, 1.0), (T, 1000.0), (N, 2.0), (D, -50.0), (C, 7.0), (N, 6.0), (M, 0.5)]
    agg = run(items, expected=7, min_valid=3)
    assert flag(agg) is N
    assert agg.n_valid[0] == 3
    assert agg.value[0] == pytest.approx(3.0)  # (1 + 2 + 6) / 3
    assert agg.minimum[0] == 1.0
    assert agg.maximum[0] == 6.0


def test_a_normal_flag_without_a_number_is_not_a_valid_value() -> None:
    items = [(N, 4.0), (N, math.nan), (N, 8.0), (N, math.inf)]
    agg = run(items, expected=4, min_valid=2)
    assert agg.n_valid[0] == 2
    assert agg.n_present[0] == 4
    assert agg.value[0] == pytest.approx(6.0)
    assert agg.maximum[0] == 8.0


def test_no_valid_value_gives_nan() -> None:
    agg = run(many(D, 12, 3.0), expected=12, min_valid=12)
    assert flag(agg) is D
    assert agg.n_valid[0] == 0
    assert math.isnan(agg.value[0])
    assert math.isnan(agg.minimum[0])
    assert math.isnan(agg.maximum[0])


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


# --- the flag of an invalid bucket ---------------------------------------------------------------


def test_missing_readings_count_as_b() -> None:
    # 30 N + 12 C received of 60: 18 never arrived, and 18 B outnumber 12 C
    agg = run(valid([1.0] * 30) + many(C, 12), expected=60, min_valid=45)
    assert agg.n_present[0] == 42
    assert count(agg, B) == 18
    assert count(agg, C) == 12
    assert flag(agg) is B


def test_received_abnormal_flag_beats_fewer_missing() -> None:
    agg = run(valid([1.0] * 30) + many(C, 20), expected=60, min_valid=45)
    assert count(agg, B) == 10
    assert flag(agg) is C


def test_missing_and_received_b_add_up() -> None:
    # 6 B readings plus 8 never received = 14 B, more than 12 M
    agg = run(valid([1.0] * 34) + many(B, 6, math.nan) + many(M, 12), expected=60,
              min_valid=45)
    assert count(agg, B) == 14
    assert flag(agg) is B


@pytest.mark.parametrize(("first", "second", "winner"), [
    (C, M, M),   # maintenance before calibration
    (M, C, M),   # whatever the order of the readings
    (T, B, B),   # communication fault before over range
    (D, C, C),   # a declared calibration explains the fault
    (F, M, F),   # a stopped source first
    (S, T, T),
    (T, F, F),
    (D, B, D),   # the instrument before the link
])
def test_ties_go_to_the_flag_with_precedence(first: Flag, second: Flag, winner: Flag) -> None:
    # PRECEDENCE: F, M, C, D, B, T, S -- 30 valid, 15 + 15 abnormal, none missing
    agg = run(valid([1.0] * 30) + many(first, 15) + many(second, 15), expected=60,
              min_valid=45)
    assert flag(agg) is winner


def test_three_way_tie() -> None:
    agg = run(valid([1.0] * 30) + many(F, 10) + many(C, 10) + many(D, 10), expected=60,
              min_valid=45)
    assert flag(agg) is F


def test_tie_between_missing_and_received() -> None:
    # 15 T received, 15 never received (B): B has precedence
    agg = run(valid([1.0] * 30) + many(T, 15), expected=60, min_valid=45)
    assert count(agg, B) == 15
    assert flag(agg) is B


def test_the_most_frequent_flag_wins_over_precedence() -> None:
    agg = run(valid([1.0] * 30) + many(S, 16) + many(B, 14, math.nan), expected=60,
              min_valid=45)
    assert flag(agg) is S


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
