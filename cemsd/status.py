"""What the operator's status page (`/status`, `/v1/status`) and systemd's STATUS line show.

Live parts (each channel's last value and flag, device health, open QA/QC windows) are
copied on the event loop in one go, so they are consistent with each other. Stored parts
(valid minutes of the current hour, calibration state and age, outbox depth: the same
reading Prometheus gets, `metrics.read_database_state`; the last 24 hours; bypass events,
which the bypass monitor stores before it announces them) are read from a database in a
worker thread: the API's own connections for the page, the store's worker for the STATUS
line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select

from cemsd import standards
from cemsd.errors import StorageError
from cemsd.flags import Flag
from cemsd.metrics import (
    DatabaseState,
    calibration_states,
    chain_refusals,
    mqtt_connected,
    mqtt_refused,
    open_minutes,
    read_database_state,
    uplink_states,
)
from cemsd.periods import HOUR, MINUTE, hour_floor, local_label
from cemsd.store import schema
from cemsd.store.database import Database, as_epoch
from cemsd.supervisor import failing_tasks
from cemsd.units import Role

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)

HISTORY_HOURS = 24
RECENT_BYPASS_EVENTS = 20
CHART_ROLES = frozenset({Role.N2O_INLET, Role.N2O_OUTLET})
MAX_CHART_SERIES = 6
SNAPSHOT_SECONDS = 5.0  # the longest the page waits for the daemon's loop
_BYPASS_SHOWN = ("id", "unit", "started_at", "ended_at", "triggers", "gas_volume_nm3", "n2o_kg",
                 "n2o_estimated_kg", "method")


def chart_series(daemon: Daemon) -> list[str]:
    """The N2O series an operator watches: derived N2O mass per point, then the N2O
    analyzers; any analog channels if the plant has neither."""
    assert daemon.closer is not None
    mass = [d.name for d in daemon.closer.calculator.derived if d.quantity == "n2o_kg_h"]
    n2o = [c.name for c in daemon.plan.channels if c.role in CHART_ROLES]
    chosen = mass + n2o or [c.name for c in daemon.plan.channels if c.spec.kind == "analog"]
    return chosen[:MAX_CHART_SERIES]


# --- the one-line summary (systemd STATUS=, the page's header) -------------------------------


@dataclass(frozen=True)
class Overview:
    last_valid_hour: float | None  # start of the newest valid hour of the chart series
    outbox_messages: int


def read_overview(db: Database, series: list[str]) -> Overview:
    """Worker thread: the newest valid hour of the watched series and the outbox depth."""
    h, out = schema.hours.c, schema.mqtt_outbox.c
    newest = select(func.max(h.ts)).where(h.flag == Flag.N.value, h.channel.in_(series))
    unsent = select(func.count()).where(out.sent_at.is_(None))
    try:
        with db.engine.connect() as conn:
            last = conn.execute(newest).scalar_one()
            depth = conn.execute(unsent).scalar_one()
    except Exception as exc:  # SQLAlchemyError and driver errors alike
        raise StorageError(f"status read from {db.location} failed: {exc}") from exc
    return Overview(as_epoch(last), int(depth))


def summary_line(daemon: Daemon, overview: Overview | None) -> str:
    devices = [h for o in daemon.owners for h in o.health.values()]
    failing = daemon.store is not None and daemon.store.failing_since is not None
    return summary_text(sum(1 for h in devices if h.up), len(devices), failing, overview,
                        daemon.config.plant.tz, daemon.supervisor.report(),
                        chain_refusals(daemon, daemon.config.plant.tz)["refused"])


def summary_text(up: int, devices: int, write_failing: bool, overview: Overview | None,
                 tz: ZoneInfo, tasks: dict[str, dict[str, Any]], chain_refused: int = 0) -> str:
    parts = [f"{up}/{devices} devices up"]
    if overview is not None:
        last = overview.last_valid_hour
        hour = "none" if last is None else local_label(last, tz)
        parts += [f"last valid hour {hour}", f"outbox {overview.outbox_messages}"]
    if write_failing:
        parts.append("DATABASE WRITES FAILING")
    failing = failing_tasks(tasks)
    if failing:
        parts.append("TASKS FAILING: " + ", ".join(failing))
    if chain_refused:
        parts.append(f"CHAIN: {chain_refused} record(s) refused for sealing")
    return ", ".join(parts)



class StatusLine:
    """systemd's STATUS= for the watchdog: the summary, its database part refreshed in the
    background through the store (never waited for on the loop)."""

    def __init__(self) -> None:
        self._overview: Overview | None = None
        self._daemon: Daemon | None = None
        self._task: asyncio.Task[None] | None = None

    def __call__(self, daemon: Daemon) -> str:
        if daemon is not self._daemon:
            self._daemon, self._overview = daemon, None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._refresh(daemon), name="status-line")
        return summary_line(daemon, self._overview)

    async def _refresh(self, daemon: Daemon) -> None:
        store = daemon.store
        if store is None:
            return
        try:
            overview = await store.call(read_overview, store.db, chart_series(daemon))
        except (StorageError, RuntimeError):  # RuntimeError: the store is closing
            return  # the store logs its own faults; the line keeps the last known values
        if daemon is self._daemon:
            self._overview = overview


# --- the status page --------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The live parts of the page, copied on the daemon's loop in one go: plain data the
    API's thread may read while the daemon runs on."""

    now: float
    status: dict[str, Any]
    series: list[str]  # every stored series
    units: dict[str, str]  # of each series
    derived: list[str]
    chart: list[str]
    plan: Any  # the compiled read plan (immutable)


class LiveStatus:
    """Collects the status page's data from a running daemon, from the API's own thread:
    the live parts are copied by a callback on the daemon's loop (never read from another
    thread), the stored parts are read in a worker thread on the API's connections."""

    def __init__(self, daemon: Daemon, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.daemon = daemon
        self.loop = loop or asyncio.get_running_loop()  # the daemon's (made on it by default)
        self.tz: ZoneInfo = daemon.config.plant.tz

    async def collect(self, db: Database) -> dict[str, Any]:
        """Everything the page shows: live parts from the daemon's loop (bounded wait),
        stored parts from `db` in a worker thread."""
        snapshot = await self._snapshot()
        stored = await asyncio.to_thread(read_stored, db, snapshot.now, self.tz,
                                         snapshot.chart, snapshot.derived)
        status = _merge(snapshot, stored, self.tz)
        status["uplinks"] = await self._uplinks()
        return status

    async def _uplinks(self) -> list[dict[str, Any]]:
        """Each HJ 212 platform's state, read on the daemon's loop (through its store)."""
        try:
            if self._on_daemon_loop():
                states = await uplink_states(self.daemon)
            else:
                future = asyncio.run_coroutine_threadsafe(uplink_states(self.daemon), self.loop)
                states = await asyncio.wait_for(asyncio.wrap_future(future), SNAPSHOT_SECONDS)
        except (StorageError, RuntimeError, TimeoutError):  # closing: the page polls again
            return []
        return [u.labels(self.tz) for u in states]

    async def _snapshot(self) -> Snapshot:
        if self._on_daemon_loop():
            return self.snapshot()
        result: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def copy() -> None:  # on the daemon's loop
            try:
                result.set_result(self.snapshot())
            except BaseException as exc:
                result.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(copy)
            return await asyncio.wait_for(asyncio.wrap_future(result), SNAPSHOT_SECONDS)
        except (TimeoutError, RuntimeError) as exc:  # RuntimeError: the loop is closed
            raise StorageError("the daemon did not answer for its live state") from exc

    def _on_daemon_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def snapshot(self) -> Snapshot:
        """On the daemon's loop."""
        daemon = self.daemon
        if daemon.closer is None or daemon.plant_state is None:
            raise StorageError("the daemon is starting")
        now = daemon.clock.now()
        series = daemon.closer.series
        return Snapshot(now=now, status=self._live(now), series=list(series),
                        units={name: meta.unit for name, meta in series.items()},
                        derived=[name for name, meta in series.items() if meta.derived],
                        chart=chart_series(daemon), plan=daemon.plan)

    def _live(self, now: float) -> dict[str, Any]:
        daemon, tz = self.daemon, self.tz
        assert daemon.pipeline is not None and daemon.store is not None
        assert daemon.closer is not None and daemon.plant_state is not None
        latest = daemon.pipeline.latest
        hour_start = hour_floor(now, tz)
        closed_through = daemon.closer.next_minute or hour_start
        qaqc = next((c for c in daemon.components if c.name == "qaqc"), None)
        return {
            "plant": {"id": daemon.config.plant.id, "name": daemon.config.plant.name,
                      "timezone": daemon.config.plant.timezone},
            "now": now, "now_label": local_label(now, tz),
            "summary": "",
            "hour": {"start": hour_start, "label": local_label(hour_start, tz),
                     "minutes_closed": max(0, round((closed_through - hour_start) / MINUTE)),
                     "minutes_open": open_minutes(daemon, hour_start),
                     "valid_needed": standards.HOUR_MIN_VALID_MINUTES.value},
            "checks": [] if qaqc is None else qaqc.calibrator.checks(),  # type: ignore[attr-defined]
            "devices": [_device(owner.name, owner.plan.bus, d.name, owner.health[d.name], now, tz)
                        for owner in daemon.owners for d in owner.plan.devices],
            "channels": [_channel(c, latest.get(c.name), now) for c in daemon.plan.channels],
            "windows": [{"key": w.key, "flag": w.flag.value, "meaning": w.flag.meaning,
                         "reason": w.reason, "since": local_label(w.start, tz),
                         "channels": sorted(w.channels)}
                        for w in daemon.plant_state.windows.values() if w.end is None],
            "calibration_due": dict(daemon.plant_state.calibration_due),
            "bypass": {"monitored": bypass_monitored(daemon)},
            "outputs": {"mqtt_connected": mqtt_connected(daemon),
                        "mqtt_refused": mqtt_refused(daemon)},
            "chain": chain_refusals(daemon, tz),
            "tasks": daemon.supervisor.report(),
            "database": {"write_failing": daemon.store.failing_since is not None,
                         "error": daemon.store.last_error, "queued_readings": daemon.store.pending},
        }


def _device(bus: str, bus_config: Any, name: str, health: Any, now: float,
            tz: ZoneInfo) -> dict[str, Any]:
    state = "unknown" if health.up is None else "up" if health.up else "down"
    return {
        "name": name, "bus": bus, "endpoint": bus_config.endpoint, "state": state,
        "last_error": health.last_error,
        "last_ok": None if health.last_ok is None else local_label(health.last_ok, tz),
        "down_since": None if health.down_since is None else local_label(health.down_since, tz),
        "down_for_s": None if health.down_since is None else round(now - health.down_since),
        "failed_polls": health.consecutive_failures, "polls": health.polls,
    }


def _channel(channel: Any, reading: Any, now: float) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": channel.name, "device": channel.device, "unit": channel.unit.value,
        "role": channel.role.value if channel.role else None,
        "description": channel.spec.description, "derived": False,
        "value": None, "flag": None, "meaning": None, "reason": None, "age_s": None,
    }
    if reading is not None:
        item.update(value=reading.value, flag=reading.flag.value, meaning=reading.flag.meaning,
                    reason=reading.reason, age_s=round(now - reading.ts, 1))
    return item


# --- stored parts (worker thread) -------------------------------------------------------------


@dataclass
class Stored:
    state: DatabaseState
    history_start: float
    history: dict[str, list[dict[str, Any]]]
    last_minutes: dict[str, Any]
    bypass_rows: list[dict[str, Any]]
    last_valid_hour: float | None


def read_stored(db: Database, now: float, tz: ZoneInfo, chart: list[str],
                derived: list[str]) -> Stored:
    hour_start = hour_floor(now, tz)
    state = read_database_state(db, hour_start, now)
    since = hour_start - HISTORY_HOURS * HOUR  # the last 24 closed hours
    try:
        history = _hours(db, chart, since, tz)
        last_minutes = _last_minutes(db, derived, now - HOUR)
        bypass = _bypass_rows(db, tz)
        overview = read_overview(db, chart)
    except StorageError:
        raise
    except Exception as exc:  # SQLAlchemyError and driver errors alike
        raise StorageError(f"status read from {db.location} failed: {exc}") from exc
    return Stored(state, since, history, last_minutes, bypass, overview.last_valid_hour)


def _hours(db: Database, series: list[str], since: float,
           tz: ZoneInfo) -> dict[str, list[dict[str, Any]]]:
    """The current revision of each hour of the chart series since `since`."""
    h = schema.hours.c
    newest = (select(h.channel, h.ts, func.max(h.revision).label("revision"))
              .where(h.channel.in_(series), h.ts >= since).group_by(h.channel, h.ts).subquery())
    query = (select(h.channel, h.ts, h.value, h.flag, h.n_valid, h.reason, h.unit)
             .join(newest, and_(h.channel == newest.c.channel, h.ts == newest.c.ts,
                                h.revision == newest.c.revision))
             .order_by(h.ts))
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in series}
    for row in db.fetch(query):
        ts = row.ts.timestamp()
        out[row.channel].append({"ts": ts, "label": local_label(ts, tz), "value": row.value,
                                 "flag": row.flag, "valid_minutes": row.n_valid,
                                 "reason": row.reason, "unit": row.unit})
    return out


def _last_minutes(db: Database, series: list[str], since: float) -> dict[str, Any]:
    """Derived series have no live value: their newest closed minute within the hour."""
    m = schema.minutes.c
    newest = (select(m.channel, func.max(m.ts).label("ts"))
              .where(m.channel.in_(series), m.ts >= since).group_by(m.channel).subquery())
    query = (select(m.channel, m.ts, m.value, m.flag, m.reason, m.revision)
             .join(newest, and_(m.channel == newest.c.channel, m.ts == newest.c.ts))
             .order_by(m.revision))
    return {row.channel: row for row in db.fetch(query)}  # the highest revision wins


def bypass_monitored(daemon: Daemon) -> bool:
    """Whether any configured signal can open a bypass event (valve, unit, bypass flow)."""
    return any(getattr(c, "monitors_bypass", False) for c in daemon.components)


def _bypass_rows(db: Database, tz: ZoneInfo) -> list[dict[str, Any]]:
    """The newest bypass events as stored (an open one has no end yet)."""
    table = schema.bypass_events
    rows = db.fetch(select(*(table.c[n] for n in _BYPASS_SHOWN))
                    .order_by(table.c.started_at.desc()).limit(RECENT_BYPASS_EVENTS))
    return [{"open": row.ended_at is None, "fields": _fields(dict(row._mapping), tz)}
            for row in rows]


def _fields(values: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    """An event's fields for display: times in plant time, lists joined, the rest as is."""
    shown: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = local_label(value.timestamp(), tz)
        elif key == "triggers":
            value = ", ".join(json.loads(value))
        elif isinstance(value, float):
            value = round(value, 3)
        shown[key] = value
    return shown


def _merge(snapshot: Snapshot, stored: Stored, tz: ZoneInfo) -> dict[str, Any]:
    status, series, now = snapshot.status, snapshot.series, snapshot.now  # a fresh copy
    state = stored.state
    for name, row in stored.last_minutes.items():
        flag = Flag(row.flag)
        status["channels"].append({
            "name": name, "device": None, "unit": snapshot.units.get(name, ""), "role": None,
            "description": "derived, per minute", "derived": True, "value": row.value,
            "flag": flag.value, "meaning": flag.meaning, "reason": row.reason,
            "age_s": round(now - row.ts.timestamp(), 1)})
    hour = status["hour"]
    for item in status["channels"]:
        item["valid_minutes"] = state.valid_minutes.get(item["name"], 0)
        # fewer valid minutes than a valid hour needs are still possible: the hour is lost
        item["hour_lost"] = item["valid_minutes"] + hour["minutes_open"] < hour["valid_needed"]
    status["hour"]["valid_minutes"] = {s: state.valid_minutes.get(s, 0) for s in series}
    calibrating = {c for w in status["windows"] if w["key"].startswith("calibration:")
                   for c in w["channels"]}
    due = status.pop("calibration_due")
    status["calibration"] = [
        {"channel": ch,
         "state": "calibrating" if ch in calibrating else kind,
         "age_s": None if ch not in state.last_calibration
         else round(now - state.last_calibration[ch]),
         "last": None if ch not in state.last_calibration
         else local_label(state.last_calibration[ch], tz),
         "due": None if ch not in due else local_label(due[ch][0], tz)}
        for ch, kind in sorted(calibration_states(snapshot.plan, state).items())]
    start = stored.history_start
    status["history"] = {"hours": HISTORY_HOURS, "start": start,
                         "labels": [local_label(start + i * HOUR, tz)
                                    for i in range(HISTORY_HOURS)],
                         "series": stored.history}
    status["outputs"]["outbox_messages"] = state.outbox_messages
    bypass = status["bypass"]
    bypass["open"] = [r for r in stored.bypass_rows if r["open"]]
    bypass["recent"] = [r for r in stored.bypass_rows if not r["open"]]
    bypass["active"] = bool(bypass["open"]) if bypass["monitored"] or bypass["open"] else None
    devices = status["devices"]
    status["summary"] = summary_text(
        sum(1 for d in devices if d["state"] == "up"), len(devices),
        status["database"]["write_failing"],
        Overview(stored.last_valid_hour, state.outbox_messages), tz, status["tasks"],
        status["chain"]["refused"])
    return status
