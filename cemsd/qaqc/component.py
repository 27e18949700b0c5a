"""The QA/QC part of the running daemon.

- serves the control socket (`cemsd calibrate`, `cemsd maintenance`, `cemsd status`);
- runs the automatic daily zero/span checks of analyzers with remote valves. APScheduler's
  CronTrigger computes the next check in plant time (DST and all); the wait itself is on
  the daemon's clock, so a simulated day calibrates like a real one;
- opens a `calibration_overdue` control period when a channel's check is overdue;
- warns when the outlet carries at least as much N2O as the inlet while the abatement unit
  runs (an impossible combination, or gas bypassing the unit): an event for bypass logic;
- substitutes invalid hours as periods close (see substitution.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from apscheduler.triggers.cron import CronTrigger

from cemsd import records
from cemsd.commissioning import serve_probe
from cemsd.config import AbatementUnit, Config
from cemsd.control import ControlServer, Reply
from cemsd.errors import CemsdError
from cemsd.metrics import chain_refusals, mqtt_connected, mqtt_refused, uplink_states
from cemsd.periods import local_label
from cemsd.qaqc import maintenance
from cemsd.qaqc.calibration import CalibrationRequest, Calibrator, publish_control_periods
from cemsd.qaqc.substitution import Substituter

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)


class Qaqc:
    name = "qaqc"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.socket_path = config.qaqc.control_socket or config.storage.state_dir / "cemsd.sock"
        self._tasks: list[asyncio.Task[None]] = []
        self._device_locks: dict[str, asyncio.Lock] = {}
        self._overdue_open: set[str] = set()
        self._inconsistent: set[str] = set()  # abatement units whose outlet >= inlet
        self._units = config.abatement_units()  # checked every minute: built once

    async def start(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.calibrator = Calibrator(daemon)
        self.substituter = Substituter(daemon)
        self.expiry = maintenance.Expiry(daemon)
        store = daemon.store
        assert store is not None
        for row in await store.call(records.open_maintenance, store.db, daemon.clock.now()):
            if row.ended_at is None:
                self.expiry.follow(row)
        self._overdue_open = {p.channel for p in await store.call(
            records.open_control_periods, store.db) if p.kind == "calibration_overdue"}
        self.server = ControlServer(self.socket_path, {
            "calibrate": self._calibrate,
            "maintenance.start": self._maintenance_start,
            "maintenance.stop": self._maintenance_stop,
            "status": self._status,
            "probe": lambda request, reply: serve_probe(daemon, request),
        })
        await self.server.start()
        daemon.period_listeners.append(self._on_period)
        for channel in daemon.plan.channels:
            settings = channel.spec.calibration
            if settings is None or settings.mode != "automatic":
                continue
            for kind, at in (("zero", settings.zero_at), ("span", settings.span_at)):
                if at is not None:
                    self._tasks.append(daemon.supervisor.spawn(
                        f"calibration:{channel.name}:{kind}",
                        functools.partial(self._scheduled, channel.name, kind, at)))

    async def drain(self) -> None:
        """Before the buses stop: end running checks so their valves close."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def stop(self) -> None:
        await self.drain()
        await self.expiry.stop()
        await self.server.stop()

    # --- control socket ops ----------------------------------------------------------------

    async def _calibrate(self, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        manual = request.get("manual_reading")
        calibration = CalibrationRequest(
            channel=str(request["channel"]), kind=_kind(request.get("kind")),
            reference=float(request["reference"]), technician=str(request.get("technician", "")),
            note=request.get("note"), manual_reading=None if manual is None else float(manual))
        self.calibrator.prepare(calibration)  # refuse before anything happens
        return await self.calibrator.run(calibration, reply)

    async def _maintenance_start(self, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        duration = request.get("duration_s")
        row = await maintenance.start(self.daemon, request.get("device"), request.get("channel"),
                                      str(request.get("reason", "")),
                                      str(request.get("technician", "")),
                                      None if duration is None else float(duration))
        self.expiry.follow(SimpleNamespace(**row))
        return row

    async def _maintenance_stop(self, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        result = await maintenance.stop(self.daemon, request.get("device"),
                                        request.get("channel"),
                                        str(request.get("technician", "")), request.get("note"))
        self.expiry.forget(result["id"])
        return result

    async def _status(self, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        state, tz = self.daemon.plant_state, self.config.plant.tz
        assert state is not None
        planned = self.expiry.planned_ends()
        return {
            "now": local_label(self.daemon.clock.now(), tz),
            "devices": {name: {"up": h.up, "last_error": h.last_error}
                        for o in self.daemon.owners for name, h in o.health.items()},
            "windows": [{"key": w.key, "flag": w.flag.value, "reason": w.reason,
                         "since": local_label(w.start, tz),
                         "until": None if w.key not in planned
                         else local_label(planned[w.key], tz)}
                        for w in state.windows.values() if w.end is None],
            "calibration_due": {c: local_label(d, tz)
                                for c, (d, _) in state.calibration_due.items()},
            "calibrating": dict(self.calibrator.busy),
            "tasks": self.daemon.supervisor.report(),
            "checks": self.calibrator.checks(),
            "uplinks": [u.labels(tz) for u in await uplink_states(self.daemon)],
            "outputs": {"mqtt_connected": mqtt_connected(self.daemon),
                        "mqtt_refused": mqtt_refused(self.daemon)},
            "chain": chain_refusals(self.daemon, tz),
        }

    # --- schedule --------------------------------------------------------------------------

    async def _scheduled(self, channel: str, kind: str, at: str) -> None:
        hour, minute = (int(x) for x in at.split(":"))
        trigger = CronTrigger(hour=hour, minute=minute, timezone=self.config.plant.tz)
        settings = self.calibrator.channels[channel].spec.calibration
        assert settings is not None
        reference = settings.zero_reference if kind == "zero" else settings.span_reference
        assert reference is not None
        device = self.calibrator.channels[channel].device
        lock = self._device_locks.setdefault(device, asyncio.Lock())
        clock = self.daemon.clock
        while True:
            now = datetime.fromtimestamp(clock.now(), self.config.plant.tz)
            fire = trigger.get_next_fire_time(None, now)
            await clock.sleep_until(fire.timestamp())
            async with lock:
                request = CalibrationRequest(channel, _kind(kind), reference,
                                             "cemsd (scheduled)", note="daily automatic check",
                                             scheduled=True)
                try:
                    await self.calibrator.run(request)
                except CemsdError as exc:
                    log.warning("scheduled calibration skipped",
                                extra={"channel": channel, "kind": kind, "reason": str(exc)})

    # --- on each closed period -------------------------------------------------------------

    async def _on_period(self, kind: str, rows: list[dict[str, Any]]) -> None:
        if kind == "minute":
            await self._check_overdue()
            await self._check_consistency(rows)
        else:
            assert self.daemon.plant_state is not None
            self.daemon.plant_state.drop_closed(self.daemon.clock.now())
            await self.substituter.on_hours(rows)

    async def _check_overdue(self) -> None:
        state, store = self.daemon.plant_state, self.daemon.store
        assert state is not None and store is not None
        now = self.daemon.clock.now()
        for channel, (due, since) in state.calibration_due.items():
            if now < due:
                self._overdue_open.discard(channel)
                continue
            if channel in self._overdue_open:
                continue
            self._overdue_open.add(channel)
            reason = (f"calibration overdue since {local_label(due, self.config.plant.tz)} "
                      f"({since})")
            opened = await store.call(records.insert_control_period, store.db, {
                "channel": channel, "kind": "calibration_overdue", "started_at": due,
                "ended_at": None, "opened_by": None, "closed_by": None, "reason": reason,
                "created_at": now})
            await publish_control_periods(self.daemon, [opened])
            log.warning("calibration overdue", extra={"channel": channel})

    async def _check_consistency(self, rows: list[dict[str, Any]]) -> None:
        """Outlet N2O mass at or above the inlet's while an abatement unit runs."""
        by_channel = {r["channel"]: r for r in rows}
        for unit in self._units:
            await self._check_unit_consistency(unit, by_channel)

    async def _check_unit_consistency(self, unit: AbatementUnit,
                                      by_channel: dict[str, dict[str, Any]]) -> None:
        inlet = by_channel.get(f"{unit.inlet}.n2o_kg_h")
        outlet = by_channel.get(f"{unit.outlet}.n2o_kg_h")
        running = by_channel.get(unit.running) if unit.running else None
        if not (inlet and outlet and running) or inlet["flag"] != "N" or outlet["flag"] != "N":
            return
        share = self.config.qaqc.consistency_outlet_share
        bad = (running["value"] or 0) >= 0.5 and outlet["value"] >= share * inlet["value"]
        if bad != (unit.name in self._inconsistent):
            self._inconsistent ^= {unit.name}
            payload = {"minute": inlet["ts"], "unit": unit.name, "inlet_kg_h": inlet["value"],
                       "outlet_kg_h": outlet["value"], "abatement_running": running["value"],
                       "active": bad}
            if bad:
                log.warning("outlet N2O at or above inlet while the unit runs", extra=payload)
            else:
                log.info("outlet N2O below inlet again", extra=payload)
            await self.daemon.publish_event("consistency", payload)


def _kind(value: Any) -> Any:
    if value not in ("zero", "span"):
        raise CemsdError("a calibration is a zero or a span check")
    return value
