"""Hourly series for substitution tests (tests/test_substitution.py and the cases of
tests/cases/substitution/): a builder hour by hour, and the look-back history whose window
edges carry distinct values."""

from __future__ import annotations

from datetime import UTC, datetime

from cemsd.qaqc.substitution import Hour, Period, find_periods

H = 3600.0
T0 = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
GAPS = (100, 500, 1500)  # 6 non-valid hours inside each window
AFTER = 30.0  # the valid hour just after the period


class Build:
    """An hourly series built hour by hour from `start`."""

    def __init__(self, start: float = T0) -> None:
        self.hours: list[Hour] = []
        self.t = start

    def add(self, value: float | None, flag: str = "N", ooc: bool = False) -> float:
        ts = self.t
        self.hours.append(Hour(ts, value, flag, ooc))
        self.t += H
        return ts

    def valid(self, *values: float) -> list[float]:
        return [self.add(v) for v in values]

    def invalid(self, n: int, flag: str = "D", ooc: bool = False) -> list[float]:
        return [self.add(1.0, flag, ooc) for _ in range(n)]

    def stop(self, n: int) -> list[float]:
        return [self.add(None, "F") for _ in range(n)]

    def block(self, n: int, markers: dict[int, float], gaps_at: tuple[int, ...] = (),
              base: float = 10.0) -> list[float]:
        """n valid hours of `base`; markers[k] is the value of the k-th valid hour counted
        back from the block's end (1 = the last). Before the valid hour k in `gaps_at`, 3
        fault and 3 stop hours. Returns the valid hours' starts, oldest first."""
        out = []
        for k in range(n, 0, -1):
            if k in gaps_at:
                self.invalid(3, "D")
                self.stop(3)
            out.append(self.add(markers.get(k, base)))
        return out


def history(kind: str, n: int, markers: dict[int, float], outside: float
            ) -> tuple[list[Hour], Period, list[float]]:
    """`outside`, then 2160 valid hours with `markers` (fault and stop hours at GAPS), then
    the period (n invalid hours of `kind`), then AFTER and a larger 900. Returns the series,
    the period and the window's valid hour starts, oldest first."""
    b = Build()
    b.valid(outside)
    window = b.block(2160, markers, GAPS)
    period_hours = b.invalid(n, "D", ooc=kind == "out_of_control")
    b.valid(AFTER, 900.0)  # a larger value after the period never counts
    found = {period_hours[0]: period_hours[0]} if kind == "out_of_control" else None
    [(period, ended), *rest] = [p for p in find_periods(b.hours, found)
                                if p[0].start > window[-1]]
    assert ended and not rest
    assert period.hours == tuple(period_hours) and period.kind == kind
    return b.hours, period, window
