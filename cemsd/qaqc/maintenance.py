"""Maintenance windows: data of a device or channel are flagged M while one is open."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from cemsd.errors import CemsdError
from cemsd.qaqc import records
from cemsd.qaqc.state import maintenance_window

if TYPE_CHECKING:
    from cemsd.daemon import Daemon


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


async def start(daemon: Daemon, device: str | None, channel: str | None, reason: str,
                technician: str) -> dict[str, Any]:
    target = _target(daemon, device, channel)
    if not reason.strip():
        raise MaintenanceError("give the reason for the maintenance (--reason)")
    if not technician.strip():
        raise MaintenanceError("say who maintains (--technician NAME)")
    state, store = daemon.plant_state, daemon.store
    assert state is not None and store is not None
    targets = state.device_channels(device, channel)
    for window in state.active("maintenance:"):
        if window.end is None and window.channels == targets:
            raise MaintenanceError(f"{target} is already in maintenance ({window.reason})")
    now = daemon.clock.now()
    row = {"device": device, "channel": channel, "started_at": now, "ended_at": None,
           "reason": reason.strip(), "technician": technician.strip(), "created_at": now}
    row["id"] = await store.call(records.insert_maintenance, store.db, row)
    await store.call(records.audit, store.db, now, row["technician"], "maintenance.start",
                     target, row["reason"], None, row)
    state.open_window(maintenance_window(state, SimpleNamespace(**row)))
    await daemon.publish_event("maintenance", row)
    return row


async def stop(daemon: Daemon, device: str | None, channel: str | None, technician: str,
               note: str | None = None) -> dict[str, Any]:
    target = _target(daemon, device, channel)
    state, store = daemon.plant_state, daemon.store
    assert state is not None and store is not None
    rows = await store.call(records.open_maintenance, store.db, daemon.clock.now())
    match = [r for r in rows if r.ended_at is None and (r.device or r.channel) == target]
    if not match:
        raise MaintenanceError(f"{target} has no open maintenance window")
    row = match[-1]
    now = daemon.clock.now()
    await store.call(records.end_maintenance, store.db, row.id, now)
    state.close_window(f"maintenance:{row.id}", now)
    before = {"id": row.id, "ended_at": None}
    after = {"id": row.id, "ended_at": now}
    await store.call(records.audit, store.db, now, technician.strip() or "unknown",
                     "maintenance.stop", target, note, before, after)
    result = {"id": row.id, "device": row.device, "channel": row.channel,
              "started_at": row.started_at.timestamp(), "ended_at": now, "reason": row.reason}
    await daemon.publish_event("maintenance", result)
    return result

