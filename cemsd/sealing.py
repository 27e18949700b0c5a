"""Finalising hours: the daemon seals every hour (and substitution) into the hash chain
once it ended `[storage] finalise_after_hours` ago (cemsd/chain.py, docs/TAMPER-EVIDENCE.md).

Always on, whether or not the API is served: a record's tamper evidence does not depend on
who reads it. Not a clock participant: a closed hour only sets an event, and sealing runs
in its own task through the daemon's store, so it never holds up acquisition.

After each pass the chain head goes where a database writer cannot reach back: the head
file in the state directory (cemsd/chainhead.py), a log line (the journal), and the
`chain.head` event (MQTT publishes it retained), preceded by the `chain.links` events with
the links the pass added (a central witness recomputes them, cemsd/fleet/). A revision
above 0 without an audited correction is never sealed: an alarm (ERROR log,
`cemsd_chain_refused_records`, the `chain.refused` event) names it at the first pass that
meets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from cemsd import chain
from cemsd.chainhead import head_pin, write_head
from cemsd.config import Config
from cemsd.errors import StorageError
from cemsd.periods import local_label

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)

LINKS_PER_MESSAGE = 500  # links per `chain.links` event: a backlog stays in small messages


class Sealer:
    name = "sealing"

    def __init__(self, config: Config) -> None:
        self.finalise_after_hours = config.storage.finalise_after_hours
        self.state_dir = config.storage.state_dir
        self.daemon: Daemon | None = None
        self.sealed = 0
        self.head_seq = 0
        # the newest link published over `chain.links` (None until the first pass of the run
        # reads the head it starts from: earlier links went out in earlier runs)
        self.links_published: int | None = None
        self.refused: list[chain.Refused] = []  # rows due but not sealable, as of the last pass
        self._alarmed: set[tuple[str, int]] = set()
        self.failing = False  # the last attempt to seal failed (cemsd_sealing_failing)
        self._hour_closed = asyncio.Event()
        self._hour_closed_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, daemon: Daemon) -> None:
        self.daemon = daemon
        daemon.period_listeners.append(self._on_period)
        self._task = daemon.supervisor.spawn("sealing", self._seal_forever)

    async def _on_period(self, kind: str, rows: list[dict[str, Any]]) -> None:
        if kind == "hour":
            assert self.daemon is not None
            # the closer's time, the hour's end: simulated time may have run on meanwhile
            self._hour_closed_at = self.daemon.clock.now()
            self._hour_closed.set()

    async def _seal_forever(self) -> None:
        await self.seal_now()
        while True:
            await self._hour_closed.wait()
            self._hour_closed.clear()
            await self.seal_now(self._hour_closed_at)

    async def seal_now(self, now: float | None = None) -> int:
        """Seal every record that is final at `now` (the daemon's current time by default);
        then record the head outside the database and raise the alarm for refused rows."""
        daemon = self.daemon
        assert daemon is not None and daemon.store is not None
        store = daemon.store
        now = daemon.clock.now() if now is None else now
        through = chain.due_before(now, self.finalise_after_hours)
        try:
            if self.links_published is None:
                start = await store.call(chain.head, store.db)
                self.links_published = 0 if start is None else int(start.seq)
            sealed = await store.call(chain.seal_due, store.db, through, now)
            refused = await store.call(chain.refused, store.db, through)
            link = await store.call(chain.head, store.db)
        except StorageError as exc:  # tried again at the next hour
            self.failing = True
            log.error("sealing failed", extra={"error": str(exc)})
            return 0
        except Exception:  # a fault here must not end sealing for the rest of the run
            self.failing = True
            log.exception("sealing failed")
            return 0
        self.failing = False
        if sealed:
            self.sealed += sealed
            log.info("sealed", extra={"records": sealed, "through": through})
        await self._record_head(link, store.db.location)
        await self._alarm(refused)
        return sealed

    async def _record_head(self, link: object | None, database: str) -> None:
        """Head file, journal and event: only when the head moved (and at start)."""
        pin = head_pin(link)
        if link is None or (pin.seq == self.head_seq and self.head_seq):
            return
        try:
            await asyncio.to_thread(write_head, self.state_dir, pin, database)
        except OSError as exc:
            log.error("chain head not recorded", extra={"error": str(exc),
                                                         "state_dir": str(self.state_dir)})
        log.info("chain head", extra={"seq": pin.seq, "hash": pin.hash, "time": pin.time})
        assert self.daemon is not None
        await self._publish_links()
        await self.daemon.publish_event("chain.head", pin.as_json())
        # only once the outputs have it: a pass cancelled on the way (the daemon stopping
        # mid-pass) leaves the head to the next pass instead of taking it as published
        self.head_seq = pin.seq

    async def _publish_links(self) -> None:
        """The links added since the last ones published, before their head, in chunks."""
        assert self.daemon is not None and self.daemon.store is not None
        store = self.daemon.store
        while self.links_published is not None:
            links = await store.call(chain.links_after, store.db, self.links_published,
                                     LINKS_PER_MESSAGE)
            if not links:
                return
            await self.daemon.publish_event("chain.links", {
                "links": [chain.link_document(link) for link in links]})
            self.links_published = int(links[-1].seq)

    async def _alarm(self, refused: list[chain.Refused]) -> None:
        self.refused = refused
        new = [r for r in refused if (r.table, r.record_id) not in self._alarmed]
        if not new:
            return
        assert self.daemon is not None
        tz = self.daemon.config.plant.tz
        for row in new:
            self._alarmed.add((row.table, row.record_id))
            log.error("refusing to seal: revision without an audited correction", extra={
                "table": row.table, "id": row.record_id, "channel": row.channel,
                "hour": None if row.ts is None else local_label(row.ts.timestamp(), tz),
                "revision": row.revision, "why": row.why})
        await self.daemon.publish_event("chain.refused", {
            "records": len(refused),
            "new": [{"table": r.table, "id": r.record_id, "channel": r.channel,
                     "ts": None if r.ts is None else chain.utc_text(r.ts)} for r in new]})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.seal_now()  # hours the closer finished while stopping
