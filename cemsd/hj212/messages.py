"""What each upload carries, from stored periods and live readings.

Per mapped series (`codes`: series -> pollutant code), a period upload (2051 minute,
2061 hour, 2031 day) carries one CP item:

    <code>-Cou=..,<code>-Min=..,<code>-Avg=..,<code>-Max=..,<code>-Flag=<N|F|M|S|D|C|T|B>

- Avg is the stored period value, Min/Max the stored minimum and maximum (for a day:
  over its valid hours). A value that does not exist (nothing valid) is left out; the
  Flag is always sent: it is the period's own flag (HJ 212-2017 Table 8 letters).
- Values go out in the unit HJ 212 fixes for a standard code (a00000 in m3/s from m3/h,
  a01013 in kPa from Pa), else in the stored unit (N2O: mg/m3 dry at standard state).
- Cou, the period total, only where it means something: for a flow in m3/h it is m3
  (mean rate x period length); for a concentration `<point>.n2o_mg_m3` it is kg of N2O
  from `<point>.n2o_kg_h` the same way; for a kg/h series it is kg.
- A day (plant-local midnight to midnight) is computed from its stored hours: valid
  (N) with at least 20 valid hours (cemsd.standards.DAY_MIN_VALID_HOURS), else its
  dominant abnormal flag, missing hours counted as B - the rule minutes and hours follow.

Real-time uploads (2011) carry `<code>-Rtd` and `<code>-Flag` of the latest reading of
each mapped *channel* (derived series exist per minute only). The state upload (2021)
carries `<abatement_code>-RS` (1 running, 0 off) and `<bypass_code>-RS` (1 open,
0 closed) from the abatement_running and bypass_valve channels.

DataTime is the period start in the plant's time zone (Beijing time in China), for
2011/2021 the newest reading's time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from cemsd import standards_hj212 as p
from cemsd.aggregate import aggregate
from cemsd.flags import CODE, CODES, Flag
from cemsd.hj212.packet import Cp, Group, format_time
from cemsd.periods import HOUR
from cemsd.readings import Reading
from cemsd.settings.hj212 import Hj212Platform, unit_factor
from cemsd.standards import DAY_MIN_VALID_HOURS

SIGNIFICANT_DIGITS = 6
MAX_DECIMALS = 6
RATE_UNITS = frozenset({"m3/h", "Nm3/h", "kg/h"})  # x hours = a total (m3, kg)
CONCENTRATION_SUFFIX, MASS_SUFFIX = ".n2o_mg_m3", ".n2o_kg_h"


@dataclass(frozen=True)
class PeriodValue:
    """One stored minute or hour of one series (its current revision)."""

    channel: str
    ts: float
    value: float | None
    minimum: float | None
    maximum: float | None
    flag: str


@dataclass(frozen=True)
class Upload:
    """One message: a CN and its CP (DataTime first); `end` is where the cursor goes."""

    cn: int
    start: float
    end: float
    cp: Cp

    @property
    def lead(self) -> Group:
        return self.cp[0]


@dataclass(frozen=True)
class Mapped:
    series: str
    code: str
    factor: float  # stored unit -> HJ 212 unit
    total_from: str | None  # rate series whose mean x hours is the Cou


def number(x: float) -> str:
    """About six significant digits, never an exponent (platforms parse plain decimals)."""
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x}")
    magnitude = math.floor(math.log10(abs(x))) if x else 0
    decimals = min(MAX_DECIMALS, max(0, SIGNIFICANT_DIGITS - 1 - magnitude))
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def day_bounds(t: float, tz: ZoneInfo) -> tuple[float, float]:
    """Plant-local midnight before t and the next one (23 or 25 hours apart across DST)."""
    day = datetime.fromtimestamp(t, tz).date()
    start = datetime.combine(day, time(0), tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tz)
    return start.timestamp(), end.timestamp()


class MessageBuilder:
    """CP contents for one platform's mapping."""

    def __init__(self, platform: Hj212Platform, units: Mapping[str, str], tz: ZoneInfo) -> None:
        self.tz = tz
        self.mapped = [self._mapped(series, code, units) for series, code in
                       platform.codes.items() if series in units]

    @staticmethod
    def _mapped(series: str, code: str, units: Mapping[str, str]) -> Mapped:
        unit = units[series]
        total_from = None
        if unit in RATE_UNITS:
            total_from = series
        elif series.endswith(CONCENTRATION_SUFFIX):
            mass = series.removesuffix(CONCENTRATION_SUFFIX) + MASS_SUFFIX
            total_from = mass if mass in units else None
        return Mapped(series, code, unit_factor(unit, code), total_from)

    @property
    def series(self) -> list[str]:
        """Every series the uploads read: the mapped ones and the rates behind Cou."""
        names = {m.series for m in self.mapped} | {m.total_from for m in self.mapped
                                                   if m.total_from}
        return sorted(names)

    def data_time(self, t: float) -> Group:
        return ((p.DATA_TIME, format_time(t, self.tz)),)

    # --- stored periods ----------------------------------------------------------------------

    def period(self, cn: int, start: float, end: float,
               values: Mapping[str, PeriodValue]) -> Upload:
        hours = (end - start) / HOUR
        groups = [self.data_time(start)]
        for m in self.mapped:
            row = values.get(m.series)
            if row is not None:
                groups.append(self._period_group(m, row, values.get(m.total_from or ""), hours))
        return Upload(cn, start, end, tuple(groups))

    def day(self, start: float, end: float, hours: Sequence[PeriodValue]) -> Upload:
        """A plant-local day from its stored hours."""
        n_hours = round((end - start) / HOUR)
        by_series: dict[str, list[PeriodValue]] = {}
        for row in hours:
            by_series.setdefault(row.channel, []).append(row)
        days = {name: day_value(rows, start, n_hours) for name, rows in by_series.items()}
        return self.period(p.Cn.DAY_DATA, start, end, days)

    def _period_group(self, m: Mapped, row: PeriodValue, total: PeriodValue | None,
                      hours: float) -> Group:
        fields: list[tuple[str, str]] = []
        if total is not None and total.value is not None:
            fields.append((f"{m.code}-{p.COU}", number(total.value * hours)))
        for suffix, value in ((p.MIN, row.minimum), (p.AVG, row.value), (p.MAX, row.maximum)):
            if value is not None:
                fields.append((f"{m.code}-{suffix}", number(value * m.factor)))
        fields.append((f"{m.code}-{p.FLAG}", row.flag))
        return tuple(fields)

    # --- live readings -------------------------------------------------------------------------

    def realtime(self, latest: Mapping[str, Reading]) -> Upload | None:
        groups: list[Group] = []
        newest = -math.inf
        for m in self.mapped:
            reading = latest.get(m.series)
            if reading is None:
                continue
            newest = max(newest, reading.ts)
            fields = []
            if reading.value is not None and math.isfinite(reading.value):
                fields.append((f"{m.code}-{p.RTD}", number(reading.value * m.factor)))
            fields.append((f"{m.code}-{p.FLAG}", reading.flag.value))
            groups.append(tuple(fields))
        if not groups:
            return None
        t = math.floor(newest)
        return Upload(p.Cn.REALTIME_DATA, t, t, (self.data_time(t), *groups))

    def state(self, states: Sequence[tuple[str, Reading | None, float]]) -> Upload | None:
        """2021 from (device code, its reading, value above which it counts as 1)."""
        groups: list[Group] = []
        newest = -math.inf
        for code, reading, above in states:
            if reading is None or reading.flag is not Flag.N or reading.value is None:
                continue  # an unknown state is not reported as off
            newest = max(newest, reading.ts)
            state = p.RunState.RUNNING if reading.value > above else p.RunState.OFF
            groups.append(((f"{code}-{p.RUN_STATE}", str(int(state))),))
        if not groups:
            return None
        t = math.floor(newest)
        return Upload(p.Cn.ABATEMENT_STATE, t, t, (self.data_time(t), *groups))


def day_value(hours: Sequence[PeriodValue], start: float, n_hours: int) -> PeriodValue:
    """One series' day from its hours: the same kernel and rule as minutes and hours."""
    values = np.array([math.nan if h.value is None else h.value for h in hours])
    codes = np.array([CODE[Flag(h.flag)] for h in hours], dtype=np.int64)
    agg = aggregate(np.zeros(len(hours), dtype=np.int64), values, codes, 1, n_hours,
                    int(DAY_MIN_VALID_HOURS.value))
    return PeriodValue(hours[0].channel, start, _num(agg.value[0]), _num(agg.minimum[0]),
                       _num(agg.maximum[0]), CODES[agg.flag[0]].value)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
