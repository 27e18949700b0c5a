"""Closing periods: stored readings -> minute values -> hour values.

Minutes and hours are always computed from what is stored: the closer flushes the
writer and only then aggregates the minute. Live, it takes the minute's readings from
the copy the pipeline kept of what it handed to the writer (`HandedReadings`), which the
flush has just stored; where that copy may be incomplete (the minute this run started in,
minutes before it, readings the writer's or the copy's bound dropped) it reads them back,
as recovery after a crash does (0002, 0240). A period closed twice is the same period
(unique keys make the second insert a no-op).

Live: the closer wakes at each minute end, waits (boundedly) until every bus owner has
delivered the readings of that minute (its watermark), and closes it. When a minute
completes a plant-local hour, the hour is closed from the stored minutes. On a virtual
clock made with `overlap=True` the close overlaps the next minute's polling
(`Clock.overlapping`, decision 0242): time runs on, at most to the next minute's end, while
the closer's own clock still reads the minute's end, so a simulated run stays deterministic.

Start-up: everything between the last stored minute and now is closed from stored
readings. Minutes before this start with no readings at all (the daemon was down) are
not invented; every hour is stored, invalid if it has too few valid minutes, so gaps
stay visible in capture rates.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from cemsd.acquisition import BusOwner
from cemsd.aggregate import Aggregates, aggregate, aggregate_many, root_cause
from cemsd.clock import Clock, StoppableSleep
from cemsd.config import Config
from cemsd.errors import StorageError
from cemsd.flags import CODE, CODES
from cemsd.logs import Episode
from cemsd.periods import HOUR, MINUTE, hour_floor, minute_floor
from cemsd.pipeline import HandedReadings, between
from cemsd.plan import Plan, minute_threshold
from cemsd.points import PointCalculator
from cemsd.readings import Reading
from cemsd.store import schema
from cemsd.store.writer import Store

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]
PeriodListener = Callable[[str, Rows], Awaitable[None]]  # ("minute"|"hour", rows)
# A stored reading or period as the closer groups it: (epoch, channel, value, flag, reason)
Stamped = tuple[float, str, float | None, str, str | None]
_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class SeriesMeta:
    name: str
    unit: str
    per_minute: int  # expected readings per minute (1 for derived series)
    how: Literal["mean", "last"]
    derived: bool
    poll_interval: float | None = None  # polled series: one reading per slot of this width


class Closer:
    def __init__(
        self,
        config: Config,
        plan: Plan,
        store: Store,
        clock: Clock,
        buses: Sequence[BusOwner] = (),
        listeners: list[PeriodListener] | None = None,
        handed: HandedReadings | None = None,
    ) -> None:
        self.config = config
        self.rules = config.processing
        self.tz = config.plant.tz
        self.store = store
        self.clock = clock
        self.buses = list(buses)
        # the daemon's own list: components subscribe after the closer exists
        self.listeners = listeners if listeners is not None else []
        self.calculator = PointCalculator(config, plan)
        self.series = self._series(plan)
        # one reading per poll slot of these series (_group)
        self._poll_intervals = {m.name: m.poll_interval for m in self.series.values()
                                if m.poll_interval}
        self.next_minute: float | None = None
        self.next_hour: float | None = None
        self.run_started: float = 0.0
        self.last_pruned: float = -math.inf
        self.handed = handed  # None: every minute is read back
        self.memory_from = math.inf  # minutes from here on are complete in `handed`
        self._drops_seen = store.dropped_readings
        self._sleep = StoppableSleep(clock)
        self._close_fault = Episode(log, "cannot close period, retrying")

    def _series(self, plan: Plan) -> dict[str, SeriesMeta]:
        series = {}
        for device in plan.devices:
            for ch in device.channels:
                series[ch.name] = SeriesMeta(ch.name, ch.unit.value, device.expected_per_minute,
                                             ch.aggregate, derived=False,
                                             poll_interval=device.poll_interval)
        for d in self.calculator.derived:
            series[d.name] = SeriesMeta(d.name, d.unit.value, 1, "mean", derived=True)
        return series

    # --- lifecycle -------------------------------------------------------------------------

    async def recover(self) -> None:
        """Close whatever was left open when the daemon last stopped (or died)."""
        now = self.clock.now()
        self.run_started = minute_floor(now)
        # a killed run may have stored readings of the minute this one starts in
        self.memory_from = self.run_started + MINUTE
        last_minute = await self.store.call(self.store.db.last_ts, schema.minutes)
        last_hour = await self.store.call(self.store.db.last_ts, schema.hours)
        if last_minute is not None:
            self.next_minute = last_minute + MINUTE
        else:
            first = await self.store.call(self.store.db.first_reading_ts)
            self.next_minute = minute_floor(first if first is not None else now)
        self.next_hour = (
            last_hour + HOUR if last_hour is not None else hour_floor(self.next_minute, self.tz)
        )
        if self.next_minute < self.run_started:
            log.info("recovering periods", extra={"from_minute": self.next_minute,
                                                  "to_minute": self.run_started})
        await self.close_through(self.run_started)

    def request_stop(self) -> None:
        self._sleep.request_stop()

    async def run(self) -> None:
        """Close each minute as it ends, until request_stop()."""
        self._sleep.bind()
        assert self.next_minute is not None, "recover() first"
        with self.clock.participant():
            while await self._sleep.sleep_until(self.next_minute + MINUTE):
                target = self.next_minute + MINUTE
                await self._await_buses(target)
                # Everything the close reads is as of now, the minute's end: the readings
                # handed before it, and the time (created_at, listeners, pruning). So
                # simulated time may run on while it works, up to the next minute's end.
                with self.clock.overlapping(self.clock.now(), target + MINUTE):
                    await self._close_with_retry(target)

    async def _close_with_retry(self, t_end: float) -> None:
        """Closing waits for the database: a period is never closed from readings that are
        still queued. Logged once when it starts failing and once when it closes again."""
        while not self._sleep.stopping:
            try:
                await self.close_through(t_end)
            except StorageError as exc:
                self._close_fault.failed(error=str(exc))
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            self._close_fault.recovered("closing periods again", through=t_end)
            return

    async def _await_buses(self, t: float) -> None:
        """Wait until every bus has delivered its readings before t, at most the grace."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.rules.close_grace_seconds
        for bus in self.buses:
            while bus.watermark < t:
                changed = bus.watermark_changed
                remaining = deadline - loop.time()
                if remaining <= 0:
                    log.warning("closing minute without a late bus",
                                extra={"bus": bus.name, "minute_end": t})
                    break
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    continue

    # --- closing ---------------------------------------------------------------------------

    async def close_through(self, t_end: float) -> None:
        """Close every minute ending at or before t_end, and every hour they complete."""
        assert self.next_minute is not None and self.next_hour is not None
        handed: list[Reading] = []
        if self.next_minute + MINUTE <= t_end:
            # taken before the flush: only readings this flush stores
            handed = self.handed.before(t_end) if self.handed is not None else []
            await self.store.flush()
            self._note_losses()
        while self.next_minute + MINUTE <= t_end:
            window_end = min(t_end, hour_floor(self.next_minute, self.tz) + HOUR)
            window_end = max(window_end, self.next_minute + MINUTE)
            await self._close_minutes(self.next_minute, minute_floor(window_end), handed)
            self.next_minute = minute_floor(window_end)
            await self._close_hours(self.next_minute)
        await self._close_hours(self.next_minute)
        if self.handed is not None:
            self.handed.discard_before(self.next_minute)

    def _note_losses(self) -> None:
        """Readings dropped by the writer's bound (all polled by now) or by the copy's make
        the copy incomplete for every minute up to now's: those minutes are read back."""
        lost_through = -math.inf if self.handed is None else self.handed.lost_through
        if self.store.dropped_readings != self._drops_seen:
            self._drops_seen = self.store.dropped_readings
            lost_through = max(lost_through, self.clock.now())
        if lost_through > -math.inf:
            self.memory_from = max(self.memory_from, minute_floor(lost_through) + MINUTE)

    async def _stored_readings(self, t0: float, t1: float, handed: list[Reading]
                               ) -> list[Stamped]:
        """The readings of [t0, t1) as stored, in time order (then in the order stored)."""
        if self.handed is not None and t0 >= self.memory_from:
            # a Flag is its letter (StrEnum): `.value` per reading would cost an enum lookup
            return [(r.ts, r.channel, r.value, r.flag, r.reason)
                    for r in between(handed, t0, t1)]
        rows = await self.store.call(self.store.db.readings_between, t0, t1)
        return _stamped_readings(rows)

    async def _close_minutes(self, t0: float, t1: float, handed: list[Reading]) -> None:
        n = round((t1 - t0) / MINUTE)
        stamped = await self._stored_readings(t0, t1, handed)
        grouped = _group(stamped, t0, MINUTE, self._poll_intervals)
        starts = t0 + MINUTE * np.arange(n)
        aggregates = self._minute_aggregates(grouped, n)
        aggregates.update(self.calculator.compute(aggregates))
        keep = np.ones(n, dtype=bool)
        before_run = starts < self.run_started
        if before_run.any():  # downtime minutes with nothing stored are not invented
            received = np.zeros(n, dtype=bool)
            for s in grouped.values():
                received[s.bucket] = True
            keep = ~before_run | received
        out = self._rows(aggregates, starts, keep, "readings")
        # only what this call stored goes out: a minute closed again (a restarted closer,
        # a second start on the same minute) was published when it was first stored
        inserted = await self.store.call(self.store.db.insert_aggregates, schema.minutes, out)
        if inserted:
            await self.notify("minute", inserted)

    def _minute_aggregates(self, grouped: dict[str, _Series], n: int) -> dict[str, Aggregates]:
        """The polled series' minutes, one kernel call per set of rules (aggregate_many)."""
        by_rules: dict[tuple[int, str], list[str]] = {}
        for meta in self.series.values():
            if not meta.derived:
                by_rules.setdefault((meta.per_minute, meta.how), []).append(meta.name)
        aggregates: dict[str, Aggregates] = {}
        for (expected, how), names in by_rules.items():
            threshold = minute_threshold(expected, self.rules.minute_min_readings,
                                         self.rules.minute_min_valid_fraction)
            series = [grouped.get(name, _EMPTY) for name in names]
            results = aggregate_many(series, n, expected, threshold, how)
            aggregates.update(zip(names, results, strict=True))
        return aggregates

    async def _close_hours(self, through: float) -> None:
        """Close every plant-local hour that ends at or before `through`."""
        assert self.next_hour is not None
        while self.next_hour + HOUR <= through:
            t0 = self.next_hour
            out = await self.hour_rows(t0)
            inserted = await self.store.call(self.store.db.insert_aggregates, schema.hours, out)
            self.next_hour = t0 + HOUR
            if inserted:
                await self.notify("hour", inserted)
            await self._prune()

    async def hour_rows(self, t0: float, series: Sequence[str] | None = None) -> Rows:
        """The hour starting at t0, computed from the current revision of its minutes."""
        rows = await self.store.call(self.store.db.aggregates_between, schema.minutes,
                                     t0, t0 + HOUR, series)
        grouped = _group(_stamped_periods(rows), t0, HOUR)
        aggregates = {}
        for meta in self.series.values():
            if series is not None and meta.name not in series:
                continue
            s = grouped.get(meta.name, _EMPTY)
            aggregates[meta.name] = aggregate(
                s.bucket, s.values, s.codes, 1, 60, self.rules.hour_min_valid_minutes,
                how=meta.how, causes=s.causes)
        return self._rows(aggregates, np.array([t0]), np.ones(1, dtype=bool), "minutes")

    def _rows(self, aggregates: dict[str, Aggregates], starts: np.ndarray, keep: np.ndarray,
              what: str) -> Rows:
        now = self.clock.now()
        out: Rows = []
        for name, agg in aggregates.items():
            unit = self.series[name].unit
            for i in np.flatnonzero(keep):
                out.append({
                    "channel": name,
                    "ts": float(starts[i]),
                    "value": _num(agg.value[i]),
                    "minimum": _num(agg.minimum[i]),
                    "maximum": _num(agg.maximum[i]),
                    "n_valid": int(agg.n_valid[i]),
                    "n_expected": int(agg.expected[i]),
                    "flag": CODES[agg.flag[i]].value,
                    "reason": agg.reason(int(i), what),
                    "unit": unit,
                    "created_at": now,
                })
        return out

    async def notify(self, kind: str, rows: Rows) -> None:
        for listener in self.listeners:
            try:
                await listener(kind, rows)
            except Exception:  # an output failing must not stop closing periods
                log.exception("period listener failed", extra={"kind": kind})

    async def _prune(self) -> None:
        now = self.clock.now()
        if now - self.last_pruned < HOUR or self.next_minute is None:
            return
        before = min(now - self.config.storage.reading_retention_days * 86400, self.next_minute)
        removed = await self.store.prune_readings(before)
        self.last_pruned = now
        if removed:
            log.info("pruned readings", extra={"rows": removed, "before": before})


class _Series(NamedTuple):
    bucket: np.ndarray
    values: np.ndarray
    codes: np.ndarray
    causes: list[str | None]


_EMPTY = _Series(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64), [])


_CODE_OF_LETTER = {flag.value: code for flag, code in CODE.items()}


def _stamped_readings(rows: Sequence[Any]) -> list[Stamped]:
    """Rows of `Database.readings_between`, unpacked by position (a named attribute of a
    result row costs more than the rest of closing a minute)."""
    return [(ts.timestamp(), channel, value, flag, reason)
            for channel, ts, value, flag, reason in rows]


def _stamped_periods(rows: Sequence[Any]) -> list[Stamped]:
    return [(r.ts.timestamp(), r.channel, r.value, r.flag, r.reason) for r in rows]


def _group(stamped: Sequence[Stamped], t0: float, width: float,
           poll_intervals: dict[str, float] | None = None) -> dict[str, _Series]:
    """Stored rows (readings or minutes) in time order -> per channel series by bucket.

    With `poll_intervals`, one reading per channel and poll slot is kept: the first stored
    in time order. A slot is polled twice only when the wall clock was set back while its
    minute was open, or when a restart begins on the slot a killed run had polled already.
    In time order a channel's slots never decrease, so a repeat follows its first."""
    intervals = poll_intervals or {}
    columns: dict[str, tuple[list[float], list[float], list[int], list[str | None]]] = {}
    last_slot: dict[str, int] = {}
    for ts, channel, value, flag, reason in stamped:
        interval = intervals.get(channel)
        if interval is not None:
            slot = math.floor(ts / interval + 1e-9)
            if last_slot.get(channel) == slot:
                continue
            last_slot[channel] = slot
        series = columns.get(channel)
        if series is None:
            series = columns[channel] = ([], [], [], [])
        series[0].append(ts)
        series[1].append(math.nan if value is None else value)
        series[2].append(_CODE_OF_LETTER[flag])
        series[3].append(root_cause(reason) if reason else None)
    out = {}
    for name, (times, values, codes, causes) in columns.items():
        bucket = np.floor((np.array(times) - t0) / width + 1e-9).astype(np.int64)
        out[name] = _Series(bucket, np.array(values, dtype=float),
                            np.array(codes, dtype=np.int64), causes)
    return out


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
