"""Maintenance windows: data of a device or channel are flagged M while one is open.

A window has a planned end (`--duration`, default `[qaqc] maintenance_hours`): a warning is
logged `maintenance_warn_minutes` before it, and the window closes by itself then, so a
forgotten `cemsd maintenance stop` cannot flag data M indefinitely. The planned end is
stored with the window, so a restart keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from cemsd import records
from cemsd.errors import CemsdError
from cemsd.periods import local_label
from cemsd.plantstate import maintenance_window

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)
AUTO_CLOSER = "cemsd (planned end)"


class MaintenanceError(CemsdError):
    """A maintenance request that cannot be carried out; nothing was changed."""


def _target(daemon: Daemon, device: str | None, channel: str | None) -> str:
    if (device is None) == (channel is None):
        raise MaintenanceError("name either a device or a channel")
    if device is not None and device not in {d.name for d in daemon.plan.devices}:
        raise MaintenanceError(f"unknown device {device!r}")
    if channel is not None and channel not in {c.name for c in daemon.plan.channels}:
        raise MaintenanceError(f"unknown channel {channel!r}")
    return device or channel  # type: ignore[return-value]


def planned_seconds(daemon: Daemon, duration_s: float | None) -> float:
    if duration_s is None:
        return daemon.config.qaqc.maintenance_hours * 3600
    if not duration_s > 0:
        raise MaintenanceError(f"a maintenance window lasts more than 0 s (--duration), "
                               f"not {duration_s:g} s")
    return float(duration_s)


async def start(daemon: Daemon, device: str | None, channel: str | None, reason: str,
                technician: str, duration_s: float | None = None) -> dict[str, Any]:
    target = _target(daemon, device, channel)
    if not reason.strip():
        raise MaintenanceError("give the reason for the maintenance (--reason)")
    if not technician.strip():
        raise MaintenanceError("say who maintains (--technician NAME)")
    planned = planned_seconds(daemon, duration_s)
    state, store = daemon.plant_state, daemon.store
    assert state is not None and store is not None
    targets = state.device_channels(device, channel)
    for window in state.active("maintenance:"):
        if window.end is None and window.channels == targets:
            raise MaintenanceError(f"{target} is already in maintenance ({window.reason})")
    now = daemon.clock.now()
    row = {"device": device, "channel": channel, "started_at": now, "ended_at": None,
           "planned_end_at": now + planned, "reason": reason.strip(),
           "technician": technician.strip(), "created_at": now}
    row["id"] = await store.call(records.insert_maintenance, store.db, row)
    await store.call(records.audit, store.db, now, row["technician"], "maintenance.start",
                     target, row["reason"], None, row)
    state.open_window(maintenance_window(state, SimpleNamespace(**row)))
    log.warning("maintenance started: data flagged M", extra={
        "id": row["id"], "target": target, "technician": row["technician"],
        "reason": row["reason"],
        "planned_end": local_label(row["planned_end_at"], daemon.config.plant.tz)})
    await daemon.publish_event("maintenance", row)
    return row


async def stop(daemon: Daemon, device: str | None, channel: str | None, technician: str,
               note: str | None = None) -> dict[str, Any]:
    target = _target(daemon, device, channel)
    store = daemon.store
    assert store is not None
    rows = await store.call(records.open_maintenance, store.db, daemon.clock.now())
    match = [r for r in rows if r.ended_at is None and (r.device or r.channel) == target]
    if not match:
        raise MaintenanceError(f"{target} has no open maintenance window")
    return await close(daemon, match[-1], daemon.clock.now(), technician, note)


async def close(daemon: Daemon, row: Any, at: float, technician: str,
                note: str | None) -> dict[str, Any]:
    """End an open window at `at`: the record, the live flags, the audit log, the log."""
    state, store = daemon.plant_state, daemon.store
    assert state is not None and store is not None
    target = row.device or row.channel
    await store.call(records.end_maintenance, store.db, row.id, at)
    state.close_window(f"maintenance:{row.id}", at)
    before = {"id": row.id, "ended_at": None}
    after = {"id": row.id, "ended_at": at}
    who = technician.strip() or "unknown"
    await store.call(records.audit, store.db, at, who, "maintenance.stop", target, note,
                     before, after)
    started = _epoch(row.started_at)
    planned = _epoch(getattr(row, "planned_end_at", None))
    result = {"id": row.id, "device": row.device, "channel": row.channel,
              "started_at": started, "ended_at": at, "planned_end_at": planned,
              "reason": row.reason}
    extra = {"id": row.id, "target": target, "technician": who, "note": note,
             "lasted_min": round((at - started) / 60, 1)}
    if who == AUTO_CLOSER:
        log.warning("maintenance closed at its planned end: data no longer flagged M", extra=extra)
    else:
        log.info("maintenance stopped", extra=extra)
    await daemon.publish_event("maintenance", result)
    return result


class Expiry:
    """Closes each open window at its planned end, warning before (on the daemon's clock)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._planned: dict[str, float] = {}  # window key -> planned end

    def planned_ends(self) -> dict[str, float]:
        return dict(self._planned)

    def follow(self, row: Any) -> None:
        planned = _epoch(getattr(row, "planned_end_at", None))
        if planned is not None and row.id not in self._tasks:
            self._planned[f"maintenance:{row.id}"] = planned
            self._tasks[row.id] = asyncio.create_task(self._expire(row, planned),
                                                      name=f"maintenance:{row.id}")

    def forget(self, window_id: int) -> None:
        self._planned.pop(f"maintenance:{window_id}", None)
        task = self._tasks.pop(window_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _expire(self, row: Any, planned: float) -> None:
        clock, config = self.daemon.clock, self.daemon.config
        target = row.device or row.channel
        warn_at = planned - config.qaqc.maintenance_warn_minutes * 60
        if clock.now() < warn_at:
            await clock.sleep_until(warn_at)
            log.warning("maintenance closes soon: stop it, or start a new window to go on",
                        extra={"id": row.id, "target": target, "technician": row.technician,
                               "planned_end": local_label(planned, config.plant.tz)})
        await clock.sleep_until(planned)
        with clock.participant():  # no reading slips in while the window closes
            try:
                still_open = any(r.id == row.id and r.ended_at is None for r in
                                 await self.daemon.store.call(  # type: ignore[union-attr]
                                     records.open_maintenance, self.daemon.store.db, planned))
                if still_open:
                    await close(self.daemon, row, planned, AUTO_CLOSER,
                                "planned duration over")
            except CemsdError as exc:
                log.error("maintenance window could not be closed at its planned end",
                          extra={"id": row.id, "target": target, "error": str(exc)})
            finally:
                self._tasks.pop(row.id, None)
                self._planned.pop(f"maintenance:{row.id}", None)


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    return float(value) if isinstance(value, float | int) else value.timestamp()
