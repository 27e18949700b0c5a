"""Minute and hour values: one vectorised kernel for both.

A bucket (a minute of readings, an hour of minutes) is valid when at least `min_valid`
of its sub-values are valid (flag N): for minutes max(12, 75 % of the expected
readings), for hours 45 of 60 minutes (HJ 212-2017 Annex C/D). The value is the mean
(or, for counters, the last) of the valid sub-values. An invalid bucket carries its
dominant abnormal flag, counting sub-values that never arrived as B (nothing was
received), and a reason that gives the counts and the most frequent root cause of the
invalid sub-values (a status bit's text, "no reply", ...), so an invalid hour still names
the check or fault behind it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cemsd.flags import CODE, CODES, NORMAL_CODE, Flag

N_FLAGS = len(CODES)
MISSING_CODE = CODE[Flag.B]
CAUSE_MARK = "; cause: "


def root_cause(reason: str | None) -> str | None:
    """The original cause inside a reason: what a reading said, not the counts around it."""
    if not reason:
        return None
    return reason.split(CAUSE_MARK, 1)[1] if CAUSE_MARK in reason else reason


@dataclass
class Aggregates:
    """Per-bucket results, arrays of length n_buckets."""

    value: np.ndarray  # float64, NaN when no valid sub-value
    minimum: np.ndarray
    maximum: np.ndarray
    n_valid: np.ndarray  # int64
    n_present: np.ndarray  # sub-values received, valid or not
    flag: np.ndarray  # int8 flag codes
    counts: np.ndarray  # (n_buckets, N_FLAGS): sub-values per flag, missing counted as B
    expected: np.ndarray
    min_valid: int
    reasons: list[str | None] | None = None  # set by derived series, which explain differently
    causes: list[str | None] | None = None  # most frequent cause of the invalid sub-values

    def __len__(self) -> int:
        return len(self.value)

    def part(self, start: int, stop: int) -> Aggregates:
        """Buckets [start, stop) alone."""
        return Aggregates(
            self.value[start:stop], self.minimum[start:stop], self.maximum[start:stop],
            self.n_valid[start:stop], self.n_present[start:stop], self.flag[start:stop],
            self.counts[start:stop], self.expected[start:stop], self.min_valid,
            None if self.reasons is None else self.reasons[start:stop],
            None if self.causes is None else self.causes[start:stop])

    def reason(self, i: int, what: str = "readings") -> str | None:
        """Why bucket i is not N: counts of valid and of each abnormal flag."""
        if self.reasons is not None:
            return self.reasons[i]
        if self.flag[i] == NORMAL_CODE:
            return None
        parts = [
            f"{CODES[c].value} {CODES[c].meaning}: {int(n)}"
            for c, n in enumerate(self.counts[i])
            if n and c != NORMAL_CODE
        ]
        missing = int(self.expected[i] - self.n_present[i])
        tail = f" ({missing} never received)" if missing > 0 else ""
        cause = self.causes[i] if self.causes is not None else None
        return (
            f"{int(self.n_valid[i])} of {int(self.expected[i])} {what} valid, "
            f"{self.min_valid} needed; " + ", ".join(parts) + tail
            + (f"{CAUSE_MARK}{cause}" if cause else "")
        )


def aggregate(
    bucket: np.ndarray,
    values: np.ndarray,
    codes: np.ndarray,
    n_buckets: int,
    expected: int | np.ndarray,
    min_valid: int,
    how: Literal["mean", "last"] = "mean",
    causes: Sequence[str | None] | None = None,
) -> Aggregates:
    """Aggregate sub-values into buckets.

    bucket: int bucket index of each sub-value, non-decreasing (sub-values in time order);
    values: float64, NaN where the sub-value has no value; codes: flag codes (flags.CODE);
    causes: optional reason of each sub-value, summarised per bucket for invalid ones.
    """
    bucket = np.asarray(bucket, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.int64)
    expected_arr = np.broadcast_to(np.asarray(expected, dtype=np.int64), (n_buckets,)).copy()

    counts = np.bincount(bucket * N_FLAGS + codes, minlength=n_buckets * N_FLAGS)
    counts = counts.reshape(n_buckets, N_FLAGS)
    n_present = counts.sum(axis=1)
    counts[:, MISSING_CODE] += np.maximum(expected_arr - n_present, 0)

    valid = (codes == NORMAL_CODE) & np.isfinite(values)
    vb, vv = bucket[valid], values[valid]
    n_valid = np.bincount(vb, minlength=n_buckets)
    value = np.full(n_buckets, np.nan)
    minimum = np.full(n_buckets, np.nan)
    maximum = np.full(n_buckets, np.nan)
    if len(vv):
        starts = np.flatnonzero(np.r_[True, vb[1:] != vb[:-1]])
        present = vb[starts]
        minimum[present] = np.minimum.reduceat(vv, starts)
        maximum[present] = np.maximum.reduceat(vv, starts)
        if how == "last":
            ends = np.r_[starts[1:], len(vv)] - 1
            value[present] = vv[ends]
        else:
            value[present] = np.add.reduceat(vv, starts) / n_valid[present]

    abnormal = counts.copy()
    abnormal[:, NORMAL_CODE] = 0
    dominant = np.where(abnormal.any(axis=1), np.argmax(abnormal, axis=1), MISSING_CODE)
    flag = np.where(n_valid >= min_valid, NORMAL_CODE, dominant).astype(np.int8)
    return Aggregates(value, minimum, maximum, n_valid, n_present, flag, counts,
                      expected_arr, min_valid,
                      causes=_causes(bucket, codes, causes, flag, n_buckets))


def _causes(bucket: np.ndarray, codes: np.ndarray, causes: Sequence[str | None] | None,
            flag: np.ndarray, n_buckets: int) -> list[str | None] | None:
    """Most frequent cause among the invalid sub-values of each invalid bucket."""
    if causes is None:
        return None
    tallies: list[Counter[str]] = [Counter() for _ in range(n_buckets)]
    for i in np.flatnonzero(codes != NORMAL_CODE):
        cause = causes[i]
        if cause and flag[bucket[i]] != NORMAL_CODE:
            tallies[bucket[i]][cause] += 1
    return [t.most_common(1)[0][0] if t else None for t in tallies]


def aggregate_many(
    series: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, Sequence[str | None]]],
    n_buckets: int,
    expected: int,
    min_valid: int,
    how: Literal["mean", "last"] = "mean",
) -> list[Aggregates]:
    """aggregate() of several series with the same rules in one call of the kernel: each
    series' (bucket, values, codes, causes) gets its own range of buckets. The results are
    those of one call per series (every bucket is computed on its own); a minute of a
    plant's channels costs one call instead of one per channel."""
    if not series:
        return []
    bucket = np.concatenate([s[0] + k * n_buckets for k, s in enumerate(series)])
    values = np.concatenate([s[1] for s in series])
    codes = np.concatenate([s[2] for s in series])
    causes = [cause for s in series for cause in s[3]]
    together = aggregate(bucket, values, codes, n_buckets * len(series), expected, min_valid,
                         how=how, causes=causes)
    return [together.part(k * n_buckets, (k + 1) * n_buckets) for k in range(len(series))]
