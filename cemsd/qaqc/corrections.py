"""Corrections: stored periods are never changed in place.

To invalidate data after the fact (an out-of-control finding that reaches back to the last
good check), each affected minute gets a new row with the next revision, flag D and the
reason, naming the row it supersedes; every affected hour that was already closed is
recomputed from the current minutes and stored the same way. The old rows stay, so the
record shows what was stored, when, and why it was superseded.

The audit record (who, why, when) is written first and every new revision names it
(`audit_id`): cemsd seals no revision above 0 without one (docs/TAMPER-EVIDENCE.md). An
hour whose minutes were corrected always gets a new revision, even if its figures stay
the same, so that a seal covers every minute under it (the hour's minute digest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cemsd import records
from cemsd.flags import Flag
from cemsd.periods import HOUR, hour_floor, local_label
from cemsd.plan import ChannelPlan
from cemsd.store import schema

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

_COMPARED = ("value", "n_valid", "flag")


def superseding(row: Any, at: float, audit_id: int, **changes: Any) -> dict[str, Any]:
    """A new revision of a stored minute or hour, pointing at the row it replaces and at
    the audited correction that made it."""
    fields = {k: getattr(row, k) for k in ("channel", "ts", "value", "minimum", "maximum",
                                           "n_valid", "n_expected", "flag", "reason", "unit")}
    fields["ts"] = row.ts.timestamp()
    return {**fields, **changes, "created_at": at, "revision": row.revision + 1,
            "supersedes": row.id, "audit_id": audit_id}


def dependent_series(daemon: Daemon, channel: ChannelPlan) -> list[str]:
    """The channel and every derived series computed from it."""
    assert daemon.closer is not None
    derived = [d.name for d in daemon.closer.calculator.derived if channel.name in d.inputs]
    return [channel.name, *derived]


async def invalidate_window(daemon: Daemon, channel: ChannelPlan, t0: float, t1: float,
                            reason: str) -> dict[str, int]:
    """Flag D every valid minute of the channel (and what derives from it) in [t0, t1)."""
    store, closer = daemon.store, daemon.closer
    assert store is not None and closer is not None
    db, now = store.db, daemon.clock.now()
    await store.flush()
    series = dependent_series(daemon, channel)
    minutes = await store.call(db.aggregates_between, schema.minutes, t0, t1, series)
    affected = [m for m in minutes if m.flag == Flag.N.value]
    tz = daemon.config.plant.tz
    audit_id = await store.call(records.audit, db, now, "cemsd", "correction.invalidate",
                                channel.name, reason, None, {
                                    "from": local_label(t0, tz), "to": local_label(t1, tz),
                                    "series": series, "minutes": len(affected)})
    corrections = [superseding(m, now, audit_id, flag=Flag.D.value, value=m.value, n_valid=0,
                               reason=f"{Flag.D.meaning}; cause: {reason}") for m in affected]
    await store.call(db.insert_aggregates, schema.minutes, corrections)
    touched = {(c["channel"], hour_floor(c["ts"], tz)) for c in corrections}
    hours = sorted({hour for _, hour in touched})
    closed = [h for h in hours if closer.next_hour is not None and h + HOUR <= closer.next_hour]
    corrected_hours = 0
    for hour in closed:
        corrected_hours += await _correct_hour(daemon, hour, series, now, audit_id, touched)
    return {"minutes": len(corrections), "hours": corrected_hours}


async def _correct_hour(daemon: Daemon, hour: float, series: list[str], now: float,
                        audit_id: int, touched: set[tuple[str, float]]) -> int:
    """New revisions of the hour's rows whose figures changed or whose minutes did."""
    store, closer = daemon.store, daemon.closer
    assert store is not None and closer is not None
    fresh = {r["channel"]: r for r in await closer.hour_rows(hour, series)}
    current = await store.call(store.db.aggregates_between, schema.hours, hour, hour + HOUR,
                               series)
    out = []
    for row in current:
        new = fresh.get(row.channel)
        if new is None or ((row.channel, hour) not in touched
                           and all(_same(getattr(row, k), new[k]) for k in _COMPARED)):
            continue
        out.append(superseding(row, now, audit_id, value=new["value"],
                               minimum=new["minimum"], maximum=new["maximum"],
                               n_valid=new["n_valid"], flag=new["flag"], reason=new["reason"]))
    await store.call(store.db.insert_aggregates, schema.hours, out)
    if out:
        await closer.notify("hour", out)
    return len(out)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-12 * max(1.0, abs(a))
    return a == b
