"""Bypass events: gas that skips an N2O abatement unit, or is vented.

Each abatement unit (config [[units]], or the plant's one implicit unit) has its own
events, from its own signals. Triggers, each optional:

- valve: one of the unit's bypass valves or dampers (role bypass_valve) is open: a position above
  `valve_open_above` %, or an on/off signal at 1;
- abatement_stopped: the unit (its running signal, role abatement_running) is not running
  while production (the plant's role production_running, if present) runs: vented;
- bypass_flow: the flow in the unit's bypass duct (role flow at its `bypass_point`) is above
  `bypass_flow_above`;
- consistency: the QA/QC warning that the unit's outlet N2O is at or above its inlet's
  while the unit is said to run.

The monitor follows the live readings: a bypass starts at the first reading where any
trigger holds, once it has held for `debounce_s`, and ends at the first reading where none
holds, once that has lasted `debounce_s`. The event is stored when it opens (visible live;
outputs get a "bypass" event) and closed once, with its bypassed gas volume and N2O mass
computed from the stored minutes (masses.py) after the closer has stored them.

Each closed hour that a unit's bypass event overlaps goes out as a `bypass.minutes` event:
every minute (every revision) of the hour of the series the mass is computed from, so a
central report recomputes the mass as the edge does (cemsd/fleet/reports.py,
docs/decisions/0210). An hour closed before its event was stored (the debounce) goes out
when the event opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update

from cemsd.chain import utc_text
from cemsd.config import IMPLICIT_UNIT, AbatementUnit, Config
from cemsd.periods import HOUR, MINUTE, hour_floor, local_label, minute_floor
from cemsd.readings import Reading
from cemsd.records import row_document
from cemsd.reduction.masses import bypass_mass, series_names
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.units import Role, Unit

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)
STOP_SECONDS = 5.0
BYPASS_EVENT = "bypass"
BYPASS_MINUTES_EVENT = "bypass.minutes"  # the minutes under an hour with bypass


@dataclass
class OpenEvent:
    id: int | None
    start: float
    triggers: set[str] = field(default_factory=set)
    unit: str = IMPLICIT_UNIT


@dataclass
class UnitSignals:
    """One abatement unit's triggers, its open event and a change waiting out the debounce."""

    unit: AbatementUnit
    triggers: dict[str, bool] = field(default_factory=dict)
    event: OpenEvent | None = None
    since: float | None = None  # when the pending change was first seen


def open_events(db: Database) -> list[Any]:
    b = schema.bypass_events.c
    return db.fetch(select(schema.bypass_events).where(b.ended_at.is_(None)).order_by(b.id))


def insert_event(db: Database, start: float, triggers: list[str], now: float,
                 unit: str | None = None) -> int:
    with db.transaction() as conn:
        result = conn.execute(insert(schema.bypass_events).values(
            started_at=start, triggers=json.dumps(triggers), created_at=now, unit=unit))
        return int(result.inserted_primary_key[0])


def close_event(db: Database, event_id: int, end: float, triggers: list[str],
                figures: dict[str, Any]) -> None:
    b = schema.bypass_events.c
    with db.transaction() as conn:
        conn.execute(update(schema.bypass_events).where(b.id == event_id, b.ended_at.is_(None))
                     .values(ended_at=end, **figures))


def units_in_bypass(db: Database, hour: float) -> list[str | None]:
    """The units (None: the plant's first) with a bypass event overlapping the hour."""
    b = schema.bypass_events.c
    rows = db.fetch(select(b.unit).where(
        b.started_at < hour + HOUR, (b.ended_at.is_(None)) | (b.ended_at > hour)).distinct())
    return [r.unit for r in rows]


def hour_minutes(db: Database, unit: AbatementUnit, hour: float) -> list[dict[str, Any]]:
    """Every minute (every revision) of the hour of the series a unit's bypass mass reads
    (masses.series_names), as documents: each column, times in UTC text."""
    m = schema.minutes.c
    wanted = [n for n in series_names(unit).values() if n]
    rows = db.fetch(select(schema.minutes).where(
        m.channel.in_(wanted), m.ts >= hour, m.ts < hour + HOUR)
        .order_by(m.channel, m.ts, m.revision, m.id))
    return [row_document(row) for row in rows]


Signal = tuple[UnitSignals, str, Callable[[float], bool]]


class BypassMonitor:
    """Follows every abatement unit's signals; each unit has its own events."""

    name = "bypass"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.reduction
        self.units = [UnitSignals(u) for u in config.abatement_units()]
        # ("open" | "close", the event, its triggers | end) or ("hour", None, its start)
        self._work: asyncio.Queue[tuple[str, OpenEvent | None, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._channels: dict[str, list[Signal]] = {}
        self._stopping = False

    async def start(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._channels = self._signal_channels(daemon)
        store = daemon.store
        assert store is not None and daemon.pipeline is not None
        for row in await store.call(open_events, store.db):  # left open by the last run
            state = self._unit_state(row.unit)
            state.event = OpenEvent(row.id, row.started_at.timestamp(),
                                    set(json.loads(row.triggers)), state.unit.name)
        daemon.pipeline.live_listeners.append(self._observe)
        daemon.event_listeners.append(self._on_event)
        daemon.period_listeners.append(self._on_period)
        self._task = daemon.supervisor.spawn("bypass", self._worker)

    def _unit_state(self, name: str | None) -> UnitSignals:
        """A unit by name; events stored before units existed belong to the first."""
        return next((u for u in self.units if u.unit.name == name), self.units[0])

    async def stop(self) -> None:
        """Store what is queued; an event still open stays open for the next run."""
        self._stopping = True  # the closer has stored all it will: close with that
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.join(), STOP_SECONDS)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def monitors_bypass(self) -> bool:
        """Whether a configured signal can open an event (production alone cannot)."""
        return any(trigger != "production_running"
                   for signals in self._channels.values() for _, trigger, _ in signals)

    @property
    def any_open(self) -> bool:
        return any(u.event is not None for u in self.units)

    def _signal_channels(self, daemon: Daemon) -> dict[str, list[Signal]]:
        """Channel name -> the units it speaks for, its trigger and how to read it."""
        s = self.settings.bypass
        out: dict[str, list[Signal]] = {}
        for ch in daemon.plan.channels:
            for state in self.units:
                unit = state.unit
                signal: tuple[str, Callable[[float], bool]] | None = None
                if ch.name in unit.bypass_channels:
                    limit = 0.5 if ch.unit is Unit.BOOL else s.valve_open_above
                    signal = ("valve", lambda v, limit=limit: v > limit)
                elif ch.name == unit.running and s.abatement_stopped:
                    signal = ("abatement_stopped", lambda v: v < 0.5)
                elif ch.role is Role.PRODUCTION_RUNNING:  # the plant's: every unit's
                    signal = ("production_running", lambda v: v >= 0.5)
                elif (ch.role is Role.FLOW and unit.bypass_point is not None
                      and ch.point == unit.bypass_point and s.bypass_flow_above is not None):
                    signal = ("bypass_flow", lambda v, a=s.bypass_flow_above: v > a)
                if signal is not None:
                    out.setdefault(ch.name, []).append((state, *signal))
        return out

    # --- following the signals ----------------------------------------------------------------

    def _observe(self, readings: list[Reading]) -> None:
        changed: dict[int, tuple[UnitSignals, float]] = {}
        for reading in readings:
            signals = self._channels.get(reading.channel)  # most channels carry none
            if signals is None or reading.value is None:
                continue  # no value: keep what the signal last said
            for state, name, test in signals:
                state.triggers[name] = bool(test(reading.value))
                changed[id(state)] = (state, reading.ts)
        for state, ts in changed.values():
            self._evaluate(state, ts)

    async def _on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "consistency" and self.settings.bypass.consistency:
            state = self._unit_state(payload.get("unit"))
            state.triggers["consistency"] = bool(payload.get("active"))
            self._evaluate(state, self.daemon.clock.now())

    async def _on_period(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """A closed hour: its bypass minutes go out from the worker, in turn with events."""
        if kind == "hour":
            for hour in sorted({float(row["ts"]) for row in rows}):
                self._work.put_nowait(("hour", None, hour))

    @staticmethod
    def active_triggers(state: UnitSignals) -> set[str]:
        on = {k for k, v in state.triggers.items() if v and k != "production_running"}
        if "abatement_stopped" in on and state.triggers.get("production_running") is False:
            on.discard("abatement_stopped")  # nothing is produced: nothing is vented
        return on

    def _evaluate(self, state: UnitSignals, ts: float) -> None:
        on = self.active_triggers(state)
        changing = bool(on) != (state.event is not None)
        if not changing:
            state.since = None
            if state.event is not None:
                state.event.triggers |= on
            return
        if state.since is None:
            state.since = ts
        if ts - state.since < self.settings.bypass.debounce_s:
            return
        if state.event is None:
            state.event = OpenEvent(None, state.since, set(on), state.unit.name)
            self._work.put_nowait(("open", state.event, sorted(on)))
        else:
            self._work.put_nowait(("close", state.event, state.since))
            state.event = None
        state.since = None

    # --- storing ------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            action, event, detail = await self._work.get()
            try:
                if event is None:
                    await self._publish_hour(detail)
                elif action == "open":
                    await self._open(event, detail)
                else:
                    await self._close(event, detail)
            except Exception:  # the next event must still be recorded
                log.exception("bypass event could not be stored", extra={"action": action})
            finally:
                self._work.task_done()

    async def _open(self, event: OpenEvent, triggers: list[str]) -> None:
        store = self.daemon.store
        assert store is not None
        created = self.daemon.clock.now()
        event.id = await store.call(insert_event, store.db, event.start, triggers, created,
                                    event.unit)
        log.warning("bypass started", extra={
            "event": event.id, "unit": event.unit,
            "since": local_label(event.start, self.config.plant.tz),
            "triggers": ",".join(triggers)})
        await self.daemon.publish_event(BYPASS_EVENT, {
            "active": True, "plant_active": True, "unit": event.unit, "id": event.id,
            "started_at": event.start, "triggers": triggers, "created_at": created})
        closer = self.daemon.closer
        hour = hour_floor(event.start, self.config.plant.tz)
        while closer is not None and closer.next_hour is not None and hour < closer.next_hour:
            await self._publish_hour(hour)  # closed before the event was stored
            hour += HOUR

    async def _publish_hour(self, hour: float) -> None:
        """The `bypass.minutes` of every unit with a bypass event in the closed hour."""
        store = self.daemon.store
        assert store is not None
        for name in await store.call(units_in_bypass, store.db, hour):
            unit = self._unit_state(name).unit
            minutes = await store.call(hour_minutes, store.db, unit, hour)
            await self.daemon.publish_event(BYPASS_MINUTES_EVENT, {
                "unit": unit.name, "hour": utc_text(_utc(hour)), "minutes": minutes})

    async def _close(self, event: OpenEvent, end: float) -> None:
        store, closer, clock = self.daemon.store, self.daemon.closer, self.daemon.clock
        assert store is not None and closer is not None
        assert event.id is not None  # one worker, in order: the open was stored first
        while (not self._stopping and closer.next_minute is not None
               and closer.next_minute < minute_floor(end) + MINUTE):
            await clock.sleep_until(closer.next_minute + MINUTE + 1)  # its minutes stored
        unit = self._unit_state(event.unit).unit
        mass = await store.call(bypass_mass, store.db, self.settings, unit, event.start, end)
        figures = {"gas_volume_nm3": mass.gas_volume_nm3, "n2o_kg": mass.n2o_kg,
                   "n2o_estimated_kg": mass.n2o_estimated_kg, "method": mass.method,
                   "triggers": json.dumps(sorted(event.triggers))}
        await store.call(close_event, store.db, event.id, end, sorted(event.triggers), figures)
        log.warning("bypass ended", extra={
            "event": event.id, "unit": event.unit,
            "duration_min": round((end - event.start) / 60, 1),
            "n2o_kg": round(mass.n2o_kg, 3), "method": mass.method})
        await self.daemon.publish_event(BYPASS_EVENT, {
            "active": False, "plant_active": self.any_open, "unit": event.unit,
            "id": event.id, "started_at": event.start, "ended_at": end,
            **figures, "triggers": sorted(event.triggers)})


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
