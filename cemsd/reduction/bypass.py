"""Bypass events: gas that skips the N2O abatement unit, or is vented.

Triggers, each from configured signals (roles) and each optional:

- valve: the bypass valve or damper (role bypass_valve) is open: a position above
  `valve_open_above` %, or an on/off signal at 1;
- abatement_stopped: the abatement unit (role abatement_running) is not running while
  production (role production_running, if present) runs: the gas is vented;
- bypass_flow: the flow in the bypass duct (role flow at `bypass_point`) is above
  `bypass_flow_above`;
- consistency: the QA/QC warning that outlet N2O is at or above the inlet's while the unit
  is said to run.

The monitor follows the live readings: a bypass starts at the first reading where any
trigger holds, once it has held for `debounce_s`, and ends at the first reading where none
holds, once that has lasted `debounce_s`. The event is stored when it opens (visible live;
outputs get a "bypass" event) and closed once, with its bypassed gas volume and N2O mass
computed from the stored minutes (masses.py) after the closer has stored them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update

from cemsd.config import Config
from cemsd.periods import MINUTE, local_label, minute_floor
from cemsd.readings import Reading
from cemsd.reduction.masses import bypass_mass
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.units import Role, Unit

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)
STOP_SECONDS = 5.0


@dataclass
class OpenEvent:
    id: int | None
    start: float
    triggers: set[str] = field(default_factory=set)


def open_events(db: Database) -> list[Any]:
    b = schema.bypass_events.c
    return db.fetch(select(schema.bypass_events).where(b.ended_at.is_(None)).order_by(b.id))


def insert_event(db: Database, start: float, triggers: list[str], now: float) -> int:
    with db.transaction() as conn:
        result = conn.execute(insert(schema.bypass_events).values(
            started_at=start, triggers=json.dumps(triggers), created_at=now))
        return int(result.inserted_primary_key[0])


def close_event(db: Database, event_id: int, end: float, triggers: list[str],
                figures: dict[str, Any]) -> None:
    b = schema.bypass_events.c
    with db.transaction() as conn:
        conn.execute(update(schema.bypass_events).where(b.id == event_id, b.ended_at.is_(None))
                     .values(ended_at=end, **figures))


class BypassMonitor:
    name = "bypass"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.reduction
        self.triggers: dict[str, bool] = {}
        self.event: OpenEvent | None = None
        self._since: float | None = None  # when the pending change was first seen
        self._work: asyncio.Queue[tuple[str, OpenEvent, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._channels: dict[str, tuple[str, Any]] = {}
        self._stopping = False

    async def start(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._channels = self._signal_channels(daemon)
        store = daemon.store
        assert store is not None and daemon.pipeline is not None
        for row in await store.call(open_events, store.db):  # left open by the last run
            self.event = OpenEvent(row.id, row.started_at.timestamp(),
                                   set(json.loads(row.triggers)))
        daemon.pipeline.live_listeners.append(self._observe)
        daemon.event_listeners.append(self._on_event)
        self._task = daemon.supervisor.spawn("bypass", self._worker)

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
        return any(trigger != "production_running" for trigger, _ in self._channels.values())

    def _signal_channels(self, daemon: Daemon) -> dict[str, tuple[str, Any]]:
        """Channel name -> (trigger, how to read its value)."""
        s = self.settings.bypass
        out: dict[str, tuple[str, Any]] = {}
        for ch in daemon.plan.channels:
            if ch.role is Role.BYPASS_VALVE:
                limit = 0.5 if ch.unit is Unit.BOOL else s.valve_open_above
                out[ch.name] = ("valve", lambda v, limit=limit: v > limit)
            elif ch.role is Role.ABATEMENT_RUNNING and s.abatement_stopped:
                out[ch.name] = ("abatement_stopped", lambda v: v < 0.5)
            elif ch.role is Role.PRODUCTION_RUNNING:
                out[ch.name] = ("production_running", lambda v: v >= 0.5)
            elif (ch.role is Role.FLOW and ch.point == self.settings.bypass_point
                  and s.bypass_flow_above is not None):
                out[ch.name] = ("bypass_flow", lambda v, a=s.bypass_flow_above: v > a)
        return out

    # --- following the signals ----------------------------------------------------------------

    def _observe(self, readings: list[Reading]) -> None:
        changed_at = None
        for reading in readings:
            signal = self._channels.get(reading.channel)
            if signal is None or reading.value is None:
                continue  # no value: keep what the signal last said
            name, test = signal
            self.triggers[name] = bool(test(reading.value))
            changed_at = reading.ts
        if changed_at is not None:
            self._evaluate(changed_at)

    async def _on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "consistency" and self.settings.bypass.consistency:
            self.triggers["consistency"] = bool(payload.get("active"))
            self._evaluate(self.daemon.clock.now())

    def active_triggers(self) -> set[str]:
        on = {k for k, v in self.triggers.items() if v and k != "production_running"}
        if "abatement_stopped" in on and self.triggers.get("production_running") is False:
            on.discard("abatement_stopped")  # nothing is produced: nothing is vented
        return on

    def _evaluate(self, ts: float) -> None:
        on = self.active_triggers()
        changing = bool(on) != (self.event is not None)
        if not changing:
            self._since = None
            if self.event is not None:
                self.event.triggers |= on
            return
        if self._since is None:
            self._since = ts
        if ts - self._since < self.settings.bypass.debounce_s:
            return
        if self.event is None:
            self.event = OpenEvent(None, self._since, set(on))
            self._work.put_nowait(("open", self.event, sorted(on)))
        else:
            self._work.put_nowait(("close", self.event, self._since))
            self.event = None
        self._since = None

    # --- storing ------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            action, event, detail = await self._work.get()
            try:
                if action == "open":
                    await self._open(event, detail)
                else:
                    await self._close(event, detail)
            except Exception:  # the next event must still be recorded
                log.exception("bypass event could not be stored")
            finally:
                self._work.task_done()

    async def _open(self, event: OpenEvent, triggers: list[str]) -> None:
        store = self.daemon.store
        assert store is not None
        event.id = await store.call(insert_event, store.db, event.start, triggers,
                                    self.daemon.clock.now())
        log.warning("bypass started", extra={
            "event": event.id, "since": local_label(event.start, self.config.plant.tz),
            "triggers": ",".join(triggers)})
        await self.daemon.publish_event("bypass", {
            "active": True, "id": event.id, "started_at": event.start, "triggers": triggers})

    async def _close(self, event: OpenEvent, end: float) -> None:
        store, closer, clock = self.daemon.store, self.daemon.closer, self.daemon.clock
        assert store is not None and closer is not None
        assert event.id is not None  # one worker, in order: the open was stored first
        while (not self._stopping and closer.next_minute is not None
               and closer.next_minute < minute_floor(end) + MINUTE):
            await clock.sleep_until(closer.next_minute + MINUTE + 1)  # its minutes stored
        mass = await store.call(bypass_mass, store.db, self.settings, event.start, end)
        figures = {"gas_volume_nm3": mass.gas_volume_nm3, "n2o_kg": mass.n2o_kg,
                   "n2o_estimated_kg": mass.n2o_estimated_kg, "method": mass.method,
                   "triggers": json.dumps(sorted(event.triggers))}
        await store.call(close_event, store.db, event.id, end, sorted(event.triggers), figures)
        log.warning("bypass ended", extra={
            "event": event.id, "duration_min": round((end - event.start) / 60, 1),
            "n2o_kg": round(mass.n2o_kg, 3), "method": mass.method})
        await self.daemon.publish_event("bypass", {
            "active": False, "id": event.id, "started_at": event.start, "ended_at": end,
            **figures, "triggers": sorted(event.triggers)})
