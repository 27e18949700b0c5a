"""Prometheus metrics: the daemon's health for operators, never the record of truth.

Names carry the `cemsd_` prefix and base units (seconds), counters end in `_total`, labels
are devices, channels, results and states only (field notes §6).

- `Metrics` owns its own `CollectorRegistry` (not the process-global one) and is
  independent of any server: the HTTP API can expose the same registry later.
- Counters and the histogram are updated in the loop as requests finish (prometheus
  client metrics are thread-safe).
- Everything else is read when scraped. The scrape runs in the HTTP server's thread, so it
  asks the event loop for a snapshot (`refresh`, plain Python data; database reads go
  through the store's worker thread like every other) and waits at most
  SNAPSHOT_TIMEOUT_SECONDS; if the loop does not answer in time the previous snapshot
  is served.
- `MetricsServer` is the component that serves the registry over HTTP ([metrics]).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import distinct, func, or_, select

from cemsd import __version__
from cemsd.errors import StorageError
from cemsd.flags import Flag
from cemsd.logs import Episode
from cemsd.periods import HOUR, MINUTE, hour_floor, local_label
from cemsd.readings import Reading
from cemsd.settings.metrics import MetricsConfig
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.units import Role

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from cemsd.daemon import Daemon
    from cemsd.plan import Plan

# prometheus_client is imported where a registry is built or served, not here: cemsd.config
# and the status line import this module, and a daemon without [metrics] should not carry it.

log = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT_SECONDS = 5.0
BIND_RETRY_SECONDS = 30.0
# Modbus round trips: milliseconds on TCP, up to a timeout (≤ 30 s) on a silent device.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CALIBRATED_ROLES = frozenset({Role.N2O_INLET, Role.N2O_OUTLET, Role.O2})  # gas analyzers
# Calibration state per channel, worst first: an open control period of that kind, else
# in control (HJ 75-2017 §11-12: out of control after a failed check; overdue check).
CALIBRATION_STATES = ("out_of_control", "calibration_overdue", "in_control")
BYPASS_EVENT = "bypass"  # event kind whose payload {"active": bool} sets cemsd_bypass_active


@dataclass
class Snapshot:
    """Plain values copied from the daemon on its loop, rendered by the scrape thread."""

    devices_up: dict[str, bool] = field(default_factory=dict)
    reading_age: dict[str, float] = field(default_factory=dict)
    valid_minutes: dict[str, int] = field(default_factory=dict)
    calibration_age: dict[str, float] = field(default_factory=dict)
    calibration_state: dict[str, str] = field(default_factory=dict)
    bypass_active: bool = False
    outbox_messages: int | None = None  # None: the database did not answer
    database_write_failing: bool = False
    readings_queued: int = 0
    readings_dropped: int = 0
    mqtt_connected: bool | None = None  # None: no MQTT output configured
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # Supervisor.report()
    chain_refused: int = 0  # rows due for sealing that the daemon refuses (unaudited)
    chain_head_seq: int = 0
    open_minutes: int = 0  # minutes of the current hour not yet closed
    sealing_failing: bool = False
    uplinks: list[Any] = field(default_factory=list)  # hj212.uplink.UplinkState per platform
    now: float = 0.0
    mqtt_refused: bool | None = None  # the broker refuses the credentials (None: no MQTT)


@dataclass
class DatabaseState:
    outbox_messages: int
    valid_minutes: dict[str, int]
    last_calibration: dict[str, float]
    open_control_periods: dict[str, set[str]]


class Metrics:
    """The registry and what feeds it; attach() subscribes to a running daemon."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, Info

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cemsd_modbus_requests", "Modbus polls of a device by result (ok, partial, "
            "refused, timeout, no_link, error)", ["device", "result"], registry=self.registry)
        self.request_seconds = Histogram(
            "cemsd_modbus_request_duration_seconds", "Time to poll a device (all its blocks)",
            ["device"], buckets=REQUEST_BUCKETS, registry=self.registry)
        Info("cemsd_build", "cemsd build", registry=self.registry).info({"version": __version__})
        self.registry.register(_StateCollector(self))
        self.last_snapshot = Snapshot()
        self.bypass_active = False
        self.last_value_at: dict[str, float] = {}  # channel -> time of its last value
        self._daemon: Daemon | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._database_fault = Episode(log, "metrics: database state unavailable",
                                       logging.WARNING)

    def attach(self, daemon: Daemon) -> None:
        assert daemon.pipeline is not None
        self._daemon = daemon
        self._loop = asyncio.get_running_loop()
        daemon.request_observers.append(self.observe_request)
        daemon.pipeline.live_listeners.append(self.observe_readings)
        daemon.event_listeners.append(self.observe_event)
        for device in daemon.plan.devices:  # every device shows up from the first scrape
            self.request_seconds.labels(device.name)

    # --- fed by the daemon (on its loop) --------------------------------------------------------

    def observe_request(self, device: str, result: str, seconds: float) -> None:
        self.requests.labels(device, result).inc()
        self.request_seconds.labels(device).observe(seconds)

    def observe_readings(self, readings: list[Reading]) -> None:
        """A failed poll is not a reading: only readings that carry a value count."""
        for reading in readings:
            if reading.value is not None:
                self.last_value_at[reading.channel] = reading.ts

    async def observe_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == BYPASS_EVENT and "active" in payload:  # any unit's bypass
            self.bypass_active = bool(payload.get("plant_active", payload["active"]))

    # --- read at scrape time ------------------------------------------------------------------

    async def refresh(self) -> Snapshot:
        """Take a snapshot on the daemon's loop (an in-loop server awaits this directly)."""
        daemon = self._daemon
        if daemon is None or daemon.store is None or daemon.closer is None:
            return self.last_snapshot
        now = daemon.clock.now()
        tz = daemon.config.plant.tz
        snap = Snapshot(
            devices_up={name: health.up for owner in daemon.owners
                        for name, health in owner.health.items() if health.up is not None},
            reading_age={ch: max(0.0, now - t) for ch, t in self.last_value_at.items()},
            bypass_active=self.bypass_active,
            database_write_failing=daemon.store.failing_since is not None,
            readings_queued=daemon.store.pending,
            readings_dropped=daemon.store.dropped_readings,
            mqtt_connected=mqtt_connected(daemon),
            tasks=daemon.supervisor.report(),
            **chain_state(daemon),
        )
        if snap.mqtt_connected is not None:  # only with an MQTT output
            snap.mqtt_refused = mqtt_refused(daemon) is not None
        hour_start = hour_floor(now, tz)
        snap.now = now
        snap.sealing_failing = any(getattr(c, "failing", False) for c in daemon.components
                                   if c.name == "sealing")
        snap.open_minutes = open_minutes(daemon, hour_start)
        try:
            snap.uplinks = await uplink_states(daemon)
            db = await daemon.store.call(read_database_state, daemon.store.db, hour_start, now)
        except (StorageError, RuntimeError) as exc:  # RuntimeError: the store is closing
            self._database_fault.failed(error=str(exc))
            snap.outbox_messages = self.last_snapshot.outbox_messages
            snap.valid_minutes = self.last_snapshot.valid_minutes
            snap.calibration_age = self.last_snapshot.calibration_age
            snap.calibration_state = self.last_snapshot.calibration_state
            snap.uplinks = self.last_snapshot.uplinks
        else:
            self._database_fault.recovered("metrics: database state available again")
            snap.outbox_messages = db.outbox_messages
            snap.valid_minutes = {name: db.valid_minutes.get(name, 0)
                                  for name in daemon.closer.series}
            snap.calibration_age = {ch: max(0.0, now - t)
                                    for ch, t in db.last_calibration.items()}
            snap.calibration_state = calibration_states(daemon.plan, db)
        self.last_snapshot = snap
        return snap

    def snapshot(self) -> Snapshot:
        """From the scrape thread: a fresh snapshot from the loop, else the previous one."""
        loop = self._loop
        if loop is None or loop.is_closed() or _running_in(loop):
            return self.last_snapshot
        future = asyncio.run_coroutine_threadsafe(self.refresh(), loop)
        try:
            return future.result(SNAPSHOT_TIMEOUT_SECONDS)
        except (concurrent.futures.TimeoutError, RuntimeError):
            future.cancel()
            return self.last_snapshot


def calibration_states(plan: Plan, db: DatabaseState) -> dict[str, str]:
    """Per gas analyzer channel (and any channel with QA/QC records): its worst open
    control period's kind, else in_control."""
    channels = {c.name for c in plan.channels if c.role in CALIBRATED_ROLES}
    channels |= db.last_calibration.keys() | db.open_control_periods.keys()
    return {ch: next((s for s in CALIBRATION_STATES if s in db.open_control_periods.get(ch, ())),
                     "in_control")
            for ch in channels}


def open_minutes(daemon: Daemon, hour_start: float) -> int:
    """Minutes of the current plant hour not closed yet: valid ones can still come."""
    assert daemon.closer is not None
    closed_through = daemon.closer.next_minute or hour_start
    return max(0, round((hour_start + HOUR - max(closed_through, hour_start)) / MINUTE))


async def uplink_states(daemon: Daemon) -> list[Any]:
    """Each HJ 212 platform's link and backlog (reads the database through the store): every
    component with an `uplink_state()` reports one, so metrics need not import the uplink."""
    return [await c.uplink_state() for c in daemon.components if hasattr(c, "uplink_state")]


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def mqtt_connected(daemon: Daemon) -> bool | None:
    publisher = next((c for c in daemon.components if c.name == "mqtt"), None)
    return None if publisher is None else bool(getattr(publisher, "connected", False))


def chain_state(daemon: Daemon) -> dict[str, int]:
    sealer = next((c for c in daemon.components if c.name == "sealing"), None)
    if sealer is None:
        return {}
    return {"chain_refused": len(getattr(sealer, "refused", ())),
            "chain_head_seq": int(getattr(sealer, "head_seq", 0))}


def chain_refusals(daemon: Daemon, tz: ZoneInfo, shown: int = 5) -> dict[str, Any]:
    """The chain alarm for people: how many rows due for sealing are refused, the first few
    named (table, channel, hour in plant time, why)."""
    sealer = next((c for c in daemon.components if c.name == "sealing"), None)
    refused = list(getattr(sealer, "refused", ()))
    return {"refused": len(refused),
            "first": [{"table": r.table, "channel": r.channel, "revision": r.revision,
                       "ts": None if r.ts is None else local_label(r.ts.timestamp(), tz),
                       "why": r.why} for r in refused[:shown]]}


def mqtt_refused(daemon: Daemon) -> str | None:
    """The broker's refusal of the credentials, while it lasts."""
    publisher = next((c for c in daemon.components if c.name == "mqtt"), None)
    return getattr(publisher, "refused", None)


def read_database_state(db: Database, hour_start: float, now: float) -> DatabaseState:
    """Outbox depth, valid minutes of the current plant hour, calibrations (worker thread)."""
    m, cal, cp, out = (schema.minutes.c, schema.calibrations.c, schema.control_periods.c,
                       schema.mqtt_outbox.c)
    valid_minutes = (
        select(m.channel, func.count(distinct(m.ts)))
        .where(m.ts >= hour_start, m.ts < hour_start + HOUR, m.flag == Flag.N.value)
        .group_by(m.channel))
    last_calibration = (
        select(cal.channel, func.max(cal.ended_at, type_=schema.UTCDateTime))
        .where(cal.ended_at.is_not(None), cal.result != "aborted").group_by(cal.channel))
    open_periods = select(cp.channel, cp.kind).where(
        cp.started_at <= now, or_(cp.ended_at.is_(None), cp.ended_at > now))
    try:
        with db.engine.connect() as conn:
            unsent = conn.execute(select(func.count()).where(out.sent_at.is_(None))).scalar_one()
            valid = {r[0]: int(r[1]) for r in conn.execute(valid_minutes)}
            calibrated = {r[0]: _epoch(r[1]) for r in conn.execute(last_calibration)}
            control: dict[str, set[str]] = {}
            for channel, kind in conn.execute(open_periods):
                control.setdefault(channel, set()).add(kind)
    except Exception as exc:  # SQLAlchemyError and driver errors alike
        raise StorageError(f"metrics read from {db.location} failed: {exc}") from exc
    return DatabaseState(int(unsent), valid, calibrated, control)


def _epoch(value: datetime | str) -> float:
    if isinstance(value, str):  # SQLite returns max() over a timestamp column as text
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class _StateCollector:
    """Gauges read at scrape time from Metrics.snapshot() (a prometheus_client Collector)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # names are only known once a daemon runs; nothing to check at register

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.metrics.snapshot()
        for name, documentation, label, attribute in _LABELLED_GAUGES:
            yield _labelled(name, documentation, label, getattr(snap, attribute))
        states = GaugeMetricFamily("cemsd_calibration_state",
                                   "1 for the channel's current calibration state",
                                   labels=["channel", "state"])
        for channel, current in sorted(snap.calibration_state.items()):
            for state in CALIBRATION_STATES:
                states.add_metric([channel, state], float(state == current))
        yield states
        for name, documentation, attribute in _GAUGES:
            value = getattr(snap, attribute)
            if value is not None:  # not configured, or the database did not answer
                yield GaugeMetricFamily(name, documentation, value=float(value))
        yield CounterMetricFamily("cemsd_readings_dropped",
                                  "Readings dropped because the queue was full while the "
                                  "database refused writes", value=float(snap.readings_dropped))
        yield from _task_metrics(snap.tasks)
        yield from _uplink_metrics(snap)


# Per-label gauges of a Snapshot: (metric, help, label, Snapshot attribute holding a dict).
_LABELLED_GAUGES = (
    ("cemsd_device_up", "1 if the device's last poll gave usable values", "device",
     "devices_up"),
    ("cemsd_last_reading_age_seconds", "Daemon time since the channel's last reading with a "
     "value", "channel", "reading_age"),
    ("cemsd_current_hour_valid_minute_periods", "Valid minutes stored so far in the current "
     "plant-local hour", "channel", "valid_minutes"),
    ("cemsd_calibration_age_seconds", "Daemon time since the channel's last completed "
     "calibration", "channel", "calibration_age"),
)

# Plain gauges of a Snapshot: (metric, help, Snapshot attribute); None leaves it out.
_GAUGES = (
    ("cemsd_current_hour_open_minute_periods", "Minutes of the current plant-local hour not "
     "closed yet", "open_minutes"),
    ("cemsd_bypass_active", "1 while the bypass is open", "bypass_active"),
    ("cemsd_outbox_messages", "MQTT messages stored and not yet acknowledged by the broker",
     "outbox_messages"),
    ("cemsd_database_write_failing", "1 while writes to the database fail",
     "database_write_failing"),
    ("cemsd_readings_queued", "Readings polled and not yet written to the database",
     "readings_queued"),
    ("cemsd_chain_refused_records", "Records due for sealing that cemsd refuses to seal (a "
     "revision without an audited correction): an alarm", "chain_refused"),
    ("cemsd_chain_head_seq", "Sequence number of the chain head", "chain_head_seq"),
    ("cemsd_mqtt_connected", "1 while connected to the broker", "mqtt_connected"),
    ("cemsd_mqtt_credentials_refused", "1 while the broker refuses the username or password",
     "mqtt_refused"),
    ("cemsd_sealing_failing", "1 while sealing hours into the hash chain fails",
     "sealing_failing"),
)


def _uplink_metrics(snap: Snapshot) -> Iterator[Metric]:
    """Per HJ 212 platform: what the regulator receives."""
    states = snap.uplinks
    yield _labelled("cemsd_hj212_connected", "1 while connected to the HJ 212 platform",
                    "platform", {u.platform: float(u.connected) for u in states})
    yield _labelled("cemsd_hj212_backlog_periods",
                    "Stored periods (minutes, hours, days) the platform has not acknowledged",
                    "platform", {u.platform: float(u.backlog) for u in states})
    yield _labelled("cemsd_hj212_oldest_unacknowledged_age_seconds",
                    "Daemon time since the start of the oldest unacknowledged period "
                    "(absent with no backlog)", "platform",
                    {u.platform: max(0.0, snap.now - u.oldest_unacknowledged) for u in states
                     if u.oldest_unacknowledged is not None})
    yield _labelled("cemsd_hj212_last_acknowledgement_age_seconds",
                    "Daemon time since the platform last acknowledged a period (absent "
                    "before the first)", "platform",
                    {u.platform: max(0.0, snap.now - u.last_acknowledged) for u in states
                     if u.last_acknowledged is not None})


def _task_metrics(tasks: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """The supervised tasks (cemsd/supervisor.py): up, restarts, crash loop."""
    from prometheus_client.core import CounterMetricFamily

    yield _labelled("cemsd_task_up", "1 while the supervised task runs, 0 while it waits "
                    "to be restarted after a failure", "task",
                    {name: float(t["up"]) for name, t in tasks.items()})
    restarts = CounterMetricFamily("cemsd_task_restarts", "Restarts of the supervised task "
                                   "after a failure", labels=["task"])
    for name, t in tasks.items():
        restarts.add_metric([name], float(t["restarts"]))
    yield restarts
    yield _labelled("cemsd_task_crash_loop", "1 while the task failed repeatedly within "
                    "the supervisor's crash-loop window", "task",
                    {name: float(t["crash_loop"]) for name, t in tasks.items()})


def _labelled(name: str, documentation: str, label: str,
              values: dict[str, float] | dict[str, bool] | dict[str, int]) -> Metric:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        if not math.isnan(value):
            family.add_metric([key], float(value))
    return family


class MetricsServer:
    """Component: serves a Metrics registry over HTTP at [metrics] address:port."""

    name = "metrics"

    def __init__(self, settings: MetricsConfig, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.port: int | None = None  # the bound port (settings.port may be 0)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._retry: asyncio.Task[None] | None = None

    async def start(self, daemon: Daemon) -> None:
        self.metrics.attach(daemon)
        if not self._bind(log_failure=True):
            # A taken port must not stop acquisition: keep trying in the background.
            self._retry = daemon.supervisor.spawn("metrics-bind", self._bind_later)

    def _bind(self, log_failure: bool) -> bool:
        from prometheus_client import start_http_server

        s = self.settings
        try:
            self._server, self._thread = start_http_server(s.port, s.address,
                                                           registry=self.metrics.registry)
        except OSError as exc:
            if log_failure:
                log.error("metrics endpoint cannot listen, retrying",
                          extra={"address": f"{s.address}:{s.port}", "error": str(exc),
                                 "retry_s": BIND_RETRY_SECONDS})
            return False
        self.port = int(self._server.server_port)
        log.info("metrics endpoint", extra={"url": f"http://{s.address}:{self.port}/metrics"})
        return True

    async def _bind_later(self) -> None:
        while True:
            await asyncio.sleep(BIND_RETRY_SECONDS)
            if self._bind(log_failure=False):
                return

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self._server is not None:
            await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
