"""The daemon: builds the pipeline from a validated configuration and runs it.

Start-up order: the database's writer lock -> storage (migrated) -> read plan ->
components (outputs, QA/QC) -> closer recovery (close what a previous run left open) ->
writer, bus owners, closer, each under the supervisor (cemsd/supervisor.py).
Shutdown (request_stop, e.g. from SIGTERM) runs in the reverse direction with a deadline
at each step: bus owners finish their current poll and stop; the writer flushes; the
closer closes every complete minute and hour; components stop (outputs flush); the run is
marked stopped. Only the CLI touches signals; they just call request_stop (uvicorn's
pattern).

Components plug in without touching this file's flow: they get the daemon in start()
and subscribe to what they need (period_listeners, pipeline.live_listeners,
request_observers, event_listeners), and start their own tasks through
`daemon.supervisor.spawn` (never bare create_task: a task that fails is logged and restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from cemsd import __version__
from cemsd.acquisition import BusOwner, RequestObserver
from cemsd.chain import utc_text
from cemsd.chainhead import accept_new_database, check_known_database
from cemsd.checks import ChannelChecks
from cemsd.clock import Clock
from cemsd.closer import Closer, PeriodListener
from cemsd.config import Config, SerialBus, TcpBus
from cemsd.pipeline import Pipeline
from cemsd.plan import BusPlan, Plan, compile_plan, log_plan
from cemsd.plantstate import PlantState
from cemsd.records import audit_config, load_plant_state
from cemsd.store.database import Database
from cemsd.store.location import prepare_storage
from cemsd.store.lock import acquire_writer_lock
from cemsd.store.progress import Progress
from cemsd.store.writer import Store
from cemsd.supervisor import RestartPolicy, Supervisor
from cemsd.validity import DeviceValidator, default_checks
from drivers.base import Transport
from drivers.modbus import ModbusTransport

log = logging.getLogger(__name__)

TransportFactory = Callable[[BusPlan], Transport]
EventListener = Callable[[str, dict[str, Any]], Awaitable[None]]
STOP_DEADLINE_SECONDS = 10.0
CHANNELS_EVENT = "channels"  # the channel rows as stored, published at every start


class Component(Protocol):
    """A part started after the pipeline exists and stopped before storage closes."""

    name: str

    async def start(self, daemon: Daemon) -> None:
        """Subscribe to the daemon's hooks and start any tasks (daemon.supervisor.spawn);
        must not block."""

    async def stop(self) -> None:
        """Flush and close; bounded by the daemon's stop deadline.

        A component may also have `async def drain()`: called first in shutdown, while
        the buses still run (e.g. to close a calibration valve).
        """


def modbus_transport(bus_plan: BusPlan) -> Transport:
    return bus_transport(bus_plan.bus)


def bus_transport(bus: TcpBus | SerialBus) -> Transport:
    """The pymodbus transport of a configured bus (also used by `cemsd probe`)."""
    if isinstance(bus, SerialBus):
        return ModbusTransport.serial(bus.name, bus.port, bus.baudrate, bus.parity,
                                      bus.stopbits, bus.bytesize)
    return ModbusTransport.tcp(bus.name, bus.host, bus.port, bus.framer)


class Daemon:
    def __init__(
        self,
        config: Config,
        clock: Clock,
        *,
        clock_name: str = "wall",
        until: float | None = None,
        transport_factory: TransportFactory = modbus_transport,
        components: list[Component] | None = None,
        restart_policy: RestartPolicy | None = None,
        accept_new_database: bool = False,
    ) -> None:
        from cemsd.components import configured_components

        self.config = config
        self.clock = clock
        self.clock_name = clock_name
        self.until = until
        self.transport_factory = transport_factory
        self.accept_new_database = accept_new_database
        self.plan: Plan = compile_plan(config)
        self.components = configured_components(config) if components is None else components
        self.period_listeners: list[PeriodListener] = []
        self.event_listeners: list[EventListener] = []
        self.request_observers: list[RequestObserver] = []
        self.store: Store | None = None
        self.pipeline: Pipeline | None = None
        self.owners: list[BusOwner] = []
        self.closer: Closer | None = None
        self.plant_state: PlantState | None = None
        # every long-lived task runs under it, the components' own tasks too
        self.supervisor = Supervisor(clock, restart_policy)
        self.ready = asyncio.Event()
        self.start_progress = Progress()  # a long migration's steps, for systemd
        self._stop = asyncio.Event()
        self.exit_reason = "stopped"

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            log.info("stopping", extra={"reason": reason})
            self.exit_reason = reason
            self._stop.set()

    async def run(self) -> None:
        log_plan(self.plan)
        await asyncio.to_thread(prepare_storage, self.config.storage)  # or a clear refusal
        # One writer per database: taken before anything is migrated or recorded, so a
        # refused start leaves the database as it was (cemsd/store/lock.py).
        lock = await asyncio.to_thread(acquire_writer_lock, self.config.storage.database_url,
                                       self.config.plant.id, str(self.config.source))
        try:
            await self._run()
        finally:
            lock.release()

    async def _run(self) -> None:
        storage = self.config.storage
        given_up = await asyncio.to_thread(check_known_database, storage.database_url,
                                           storage.state_dir, self.accept_new_database)
        db = Database(storage.database_url)
        await asyncio.to_thread(db.upgrade, self.start_progress.step)
        self.store = store = Store(db, storage.batch_seconds, storage.max_pending_readings)
        run_id = await store.call(db.start_run, self.clock.now(), self.clock_name, __version__,
                                  str(self.config.source), _sha256(self.config.source))
        if given_up is not None:
            await store.call(accept_new_database, db, storage.state_dir, given_up,
                             self.clock.now())
        await store.call(audit_config, db, self.clock.now(), Path(self.config.source))
        self.pipeline = Pipeline(store)
        self.plant_state = await load_plant_state(self.config, self.plan, store, self.clock.now())
        self.pipeline.live_listeners.append(self.plant_state.observe)
        checks = (*default_checks(self.config), ChannelChecks(self.plan))
        validators = {
            d.name: DeviceValidator(d, checks, context=self.plant_state.conditions)
            for d in self.plan.devices
        }
        self.owners = [
            BusOwner(bus, self.transport_factory(bus), self.clock, self.pipeline.ingest,
                     observer=self._observe_request, validators=validators)
            for bus in self.plan.buses
        ]
        self.closer = Closer(self.config, self.plan, store, self.clock, self.owners,
                             self.period_listeners, handed=self.pipeline.handed)
        channels = await store.call(db.upsert_channels, _channel_rows(self.plan, self.closer))
        started: list[Component] = []
        try:
            for component in self.components:
                await component.start(self)
                started.append(component)
            await self.closer.recover()
            # the collector rebuilds the plant's channel list from it (docs/MQTT.md)
            await self.publish_event(CHANNELS_EVENT, {"channels": [
                {**row, "updated_at": utc_text(row["updated_at"])} for row in channels]})
        except BaseException:
            await self._stop_components(started)
            await store.close()
            raise

        writer_stop = asyncio.Event()
        supervise = self.supervisor.spawn
        writer = supervise("writer", lambda: store.run(writer_stop))
        owner_tasks = [supervise(f"bus:{o.name}", o.run, on_failure=o.failed,
                                 stand_in=o.stand_in) for o in self.owners]
        closer_task = supervise("closer", self.closer.run)
        until_task = asyncio.create_task(self._stop_at_until(), name="until")
        log.info("running", extra={"plant": self.config.plant.id, "clock": self.clock_name,
                                   "buses": len(self.owners), "devices": len(self.plan.devices),
                                   "database": db.location})
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            until_task.cancel()
            await self._drain_components()  # the buses still run
            # Simulated time stands still while the parts stop: with no participant left,
            # an output waiting on the clock would otherwise move it on and the closing
            # below would close minutes nobody polled (a no-op on the wall clock).
            with self.clock.participant():
                await self._shutdown(owner_tasks, closer_task, writer, writer_stop)
                await self._stop_components(started)
                await store.call(db.stop_run, run_id, self.clock.now(), self.exit_reason)
            await store.close()
            log.info("stopped", extra={"reason": self.exit_reason})

    def _observe_request(self, device: str, result: str, seconds: float) -> None:
        for observer in self.request_observers:
            observer(device, result, seconds)

    async def publish_event(self, kind: str, payload: dict[str, Any]) -> None:
        """Tell every event listener (outputs) about a calibration, bypass event, status..."""
        for listener in self.event_listeners:
            try:
                await listener(kind, payload)
            except Exception:  # an output failing must not stop the source of the event
                log.exception("event listener failed", extra={"kind": kind})

    async def _stop_components(self, started: list[Component]) -> None:
        for component in reversed(started):
            try:
                await asyncio.wait_for(component.stop(), STOP_DEADLINE_SECONDS)
            except Exception as exc:  # the others still get their stop
                log.error("component did not stop cleanly",
                          extra={"component": component.name, "error": repr(exc)})

    async def _stop_at_until(self) -> None:
        if self.until is None:
            return
        with self.clock.participant():
            await self.clock.sleep_until(self.until)
        self.request_stop("reached --until")

    async def _drain_components(self) -> None:
        for component in self.components:  # e.g. a running calibration closes its valves
            drain = getattr(component, "drain", None)
            if drain is not None:
                try:
                    await asyncio.wait_for(drain(), STOP_DEADLINE_SECONDS)
                except Exception as exc:  # the buses still stop
                    log.error("component did not drain", extra={"component": component.name,
                                                                "error": repr(exc)})

    async def _shutdown(
        self,
        owner_tasks: list[asyncio.Task[None]],
        closer_task: asyncio.Task[None],
        writer: asyncio.Task[None],
        writer_stop: asyncio.Event,
    ) -> None:
        assert self.closer is not None and self.store is not None
        self.supervisor.stop()  # a task failing from here on is not restarted
        # The closer stops with the owners: the complete minutes are closed below, from
        # what the owners delivered.
        self.closer.request_stop()
        for owner in self.owners:
            owner.request_stop()
        await _finish(owner_tasks, STOP_DEADLINE_SECONDS, "bus owners")
        await _finish([closer_task], STOP_DEADLINE_SECONDS, "closer")
        writer_stop.set()
        await _finish([writer], STOP_DEADLINE_SECONDS, "writer")
        try:
            await asyncio.wait_for(self.store.flush(), STOP_DEADLINE_SECONDS)
            await asyncio.wait_for(self.closer.close_through(self.clock.now()),
                                   STOP_DEADLINE_SECONDS)
        except Exception as exc:
            log.error("final flush incomplete", extra={"error": str(exc),
                                                       "pending": self.store.pending})


async def _finish(tasks: list[asyncio.Task[None]], deadline: float, what: str) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        log.warning("cancelling after deadline", extra={"task": task.get_name(), "what": what})
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            exc = task.exception() if task.done() and not task.cancelled() else None
            if exc is not None:
                log.error("task failed", extra={"task": task.get_name(), "error": repr(exc)})
    if pending:
        await asyncio.wait(pending, timeout=1.0)


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _channel_rows(plan: Plan, closer: Closer) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for ch in plan.channels:
        span = ch.spec.range
        rows.append({
            "name": ch.name, "device": ch.device, "key": ch.key,
            "role": ch.role.value if ch.role else None, "point": ch.point,
            "unit": ch.unit.value, "kind": ch.spec.kind,
            "range_low": span[0] if span else None, "range_high": span[1] if span else None,
            "description": ch.spec.description,
        })
    for d in closer.calculator.derived:
        rows.append({
            "name": d.name, "device": None, "key": d.quantity, "role": None, "point": d.point,
            "unit": d.unit.value, "kind": "derived", "range_low": None, "range_high": None,
            "description": f"{d.description}; from {', '.join(d.inputs)}",
        })
    return rows
