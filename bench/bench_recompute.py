"""Recomputing minute and hour values: cemsd's numpy kernel against the same rules in pandas.

One year (default) of 1-second readings of 10 channels, generated day by day with a seeded
numpy generator: noise around a level, bursts of abnormal flags (D, M, C, T, B), readings
without a value (B) and gaps (seconds never received, and outages of several minutes).
Each day is aggregated twice, in the same run:

- cemsd: `cemsd.aggregate.aggregate` with the closer's rules (cemsd/closer.py): minute
  buckets from the reading times, expected 60 readings, valid when >= max(12, 75 % of 60)
  readings are N (HJ 212-2017 Annex C/D); hours from the 60 minutes, valid with >= 45 valid
  minutes; an invalid bucket carries its dominant abnormal flag, missing sub-values
  counted as B, ties to the higher precedence (cemsd/flags.py);
- pandas: the same rules with `resample` on a DatetimeIndex.

Both results are compared (flags and valid counts exactly; values, minima and maxima to
1e-12 relative: hours are built from minute means) before
the day is counted, so the two sides compute the same thing. Only aggregation is timed,
never the data generation. The reason texts of invalid periods are not part of either
side (string formatting, the same code whichever computes the numbers). Usage:
    .venv/bin/python bench/bench_recompute.py [--days 365] [--channels 10] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cemsd import standards
from cemsd.aggregate import MISSING_CODE, N_FLAGS, aggregate
from cemsd.flags import CODE, NORMAL_CODE, Flag
from cemsd.periods import HOUR, MINUTE
from cemsd.plan import minute_threshold

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import machine_info

DAY = 86400
READINGS_PER_MINUTE = 60  # one reading a second
MINUTE_MIN_VALID = minute_threshold(READINGS_PER_MINUTE,
                                    int(standards.MINUTE_MIN_READINGS.value),
                                    float(standards.MINUTE_MIN_VALID_FRACTION.value))
HOUR_MIN_VALID = int(standards.HOUR_MIN_VALID_MINUTES.value)
START = 1767225600.0  # 2026-01-01T00:00:00Z
GOAL = 3.0
ABNORMAL = [CODE[f] for f in (Flag.D, Flag.M, Flag.C, Flag.T, Flag.B)]


@dataclass
class Period:
    """Results of one level (minutes or hours) for one channel and day."""

    value: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    n_valid: np.ndarray
    flag: np.ndarray


# --- synthetic readings -------------------------------------------------------------------


def day_of_readings(rng: np.random.Generator, t0: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One channel's day: reading times, values (NaN: no value) and flag codes."""
    seconds = np.arange(DAY)
    received = rng.random(DAY) > 0.02  # isolated lost polls
    for _ in range(rng.poisson(1.5)):  # outages of a few minutes
        start = rng.integers(0, DAY)
        received[start:start + rng.integers(60, 1800)] = False
    codes = np.full(DAY, NORMAL_CODE, dtype=np.int64)
    for _ in range(rng.poisson(6)):  # abnormal states: calibrations, faults, maintenance
        start = rng.integers(0, DAY)
        codes[start:start + rng.integers(10, 2400)] = rng.choice(ABNORMAL)
    scattered = rng.random(DAY) < 0.01
    codes[scattered] = rng.choice(ABNORMAL, size=int(scattered.sum()))
    values = 100.0 + 5.0 * np.sin(seconds * (2 * np.pi / DAY)) + rng.normal(0.0, 1.0, DAY)
    values[(codes == CODE[Flag.B]) & (rng.random(DAY) < 0.5)] = np.nan  # no reply: no value
    keep = received
    return t0 + seconds[keep].astype(np.float64), values[keep], codes[keep]


# --- cemsd ----------------------------------------------------------------------------------


def cemsd_day(ts: np.ndarray, values: np.ndarray, codes: np.ndarray, t0: float
              ) -> tuple[Period, Period]:
    """As the closer does: minute buckets from reading times, then hours from minutes."""
    n_minutes = DAY // int(MINUTE)
    bucket = np.floor((ts - t0) / MINUTE + 1e-9).astype(np.int64)
    minutes = aggregate(bucket, values, codes, n_minutes, READINGS_PER_MINUTE, MINUTE_MIN_VALID)
    minute_bucket = np.arange(n_minutes) // int(HOUR // MINUTE)
    hours = aggregate(minute_bucket, minutes.value, minutes.flag, DAY // int(HOUR),
                      int(HOUR // MINUTE), HOUR_MIN_VALID)
    return (Period(minutes.value, minutes.minimum, minutes.maximum, minutes.n_valid,
                   minutes.flag),
            Period(hours.value, hours.minimum, hours.maximum, hours.n_valid, hours.flag))


# --- pandas ---------------------------------------------------------------------------------


def pandas_level(frame: pd.DataFrame, freq: str, index: pd.DatetimeIndex, expected: int,
                 min_valid: int) -> pd.DataFrame:
    """value/minimum/maximum/n_valid/flag per bucket of `index`, from value and code."""
    valid = (frame["code"] == NORMAL_CODE) & frame["value"].notna()
    good = frame["value"].where(valid)
    stats = good.resample(freq).agg(["mean", "min", "max", "count"]).reindex(index)
    onehot = pd.get_dummies(frame["code"]).reindex(columns=range(N_FLAGS),
                                                   fill_value=False)
    counts = onehot.resample(freq).sum().reindex(index, fill_value=0)
    missing = (expected - counts.sum(axis=1)).clip(lower=0)
    counts[MISSING_CODE] += missing
    abnormal = counts.drop(columns=NORMAL_CODE)
    dominant = abnormal.idxmax(axis=1).where(abnormal.gt(0).any(axis=1), MISSING_CODE)
    n_valid = stats["count"].fillna(0).astype(np.int64)
    flag = dominant.where(n_valid < min_valid, NORMAL_CODE).astype(np.int8)
    return pd.DataFrame({"value": stats["mean"], "minimum": stats["min"],
                         "maximum": stats["max"], "n_valid": n_valid, "code": flag})


def pandas_day(ts: np.ndarray, values: np.ndarray, codes: np.ndarray, t0: float
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    readings = pd.DataFrame({"value": values, "code": codes},
                            index=pd.to_datetime(ts, unit="s", utc=True))
    day = pd.Timestamp(t0, unit="s", tz="UTC")
    minute_index = pd.date_range(day, periods=DAY // int(MINUTE), freq="1min")
    hour_index = pd.date_range(day, periods=DAY // int(HOUR), freq="1h")
    minutes = pandas_level(readings, "1min", minute_index, READINGS_PER_MINUTE,
                           MINUTE_MIN_VALID)
    hours = pandas_level(minutes, "1h", hour_index, int(HOUR // MINUTE), HOUR_MIN_VALID)
    return minutes, hours


# --- comparison -----------------------------------------------------------------------------


def assert_same(ours: Period, theirs: pd.DataFrame, what: str) -> None:
    np.testing.assert_array_equal(ours.flag, theirs["code"].to_numpy(), err_msg=what)
    np.testing.assert_array_equal(ours.n_valid, theirs["n_valid"].to_numpy(), err_msg=what)
    for name in ("value", "minimum", "maximum"):  # means: summation order may differ
        np.testing.assert_allclose(getattr(ours, name), theirs[name].to_numpy(), rtol=1e-12,
                                   equal_nan=True, err_msg=f"{what} {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(machine_info())
    print(f"numpy {np.__version__}, pandas {pd.__version__}")
    rng = np.random.default_rng(args.seed)
    timed = {"cemsd": 0.0, "pandas": 0.0}
    readings = minutes_valid = hours_valid = 0
    started = time.perf_counter()
    for day in range(args.days):
        t0 = START + day * DAY
        for channel in range(args.channels):
            ts, values, codes = day_of_readings(rng, t0)
            readings += len(ts)
            a = time.perf_counter()
            ours = cemsd_day(ts, values, codes, t0)
            b = time.perf_counter()
            theirs = pandas_day(ts, values, codes, t0)
            c = time.perf_counter()
            timed["cemsd"] += b - a
            timed["pandas"] += c - b
            where = f"day {day} channel {channel}"
            assert_same(ours[0], theirs[0], f"{where} minutes")
            assert_same(ours[1], theirs[1], f"{where} hours")
            minutes_valid += int((ours[0].flag == NORMAL_CODE).sum())
            hours_valid += int((ours[1].flag == NORMAL_CODE).sum())
        if (day + 1) % 30 == 0:
            print(f"  {day + 1} days: cemsd {timed['cemsd']:.1f} s, "
                  f"pandas {timed['pandas']:.1f} s", flush=True)
    minutes = args.days * args.channels * DAY // int(MINUTE)
    hours = args.days * args.channels * DAY // int(HOUR)
    print(f"{args.days} days x {args.channels} channels: {readings:,} readings stored "
          f"({readings / (args.days * args.channels * DAY):.1%} of the seconds), "
          f"{minutes:,} minutes ({minutes_valid / minutes:.1%} valid), "
          f"{hours:,} hours ({hours_valid / hours:.1%} valid); same values and flags on both")
    print(f"cemsd (numpy kernel): {timed['cemsd']:7.2f} s "
          f"({readings / timed['cemsd'] / 1e6:.1f} M readings/s)")
    print(f"pandas resample:      {timed['pandas']:7.2f} s "
          f"({readings / timed['pandas'] / 1e6:.1f} M readings/s)")
    ratio = timed["pandas"] / timed["cemsd"]
    print(f"speed-up cemsd/pandas: {ratio:.1f}x; goal >= {GOAL:g}x: "
          f"{'met' if ratio >= GOAL else 'MISSED'}")
    print(f"whole run (with data generation and checks): {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
