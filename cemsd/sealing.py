"""Finalising hours: the daemon seals every hour (and substitution) into the hash chain
once it ended `[storage] finalise_after_hours` ago (cemsd/chain.py, docs/TAMPER-EVIDENCE.md).

Always on, whether or not the API is served: a record's tamper evidence does not depend on
who reads it. Not a clock participant: a closed hour only sets an event, and sealing runs
in its own task through the daemon's store, so it never holds up acquisition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from cemsd import chain
from cemsd.config import Config
from cemsd.errors import StorageError

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)


class Sealer:
    name = "sealing"

    def __init__(self, config: Config) -> None:
        self.finalise_after_hours = config.storage.finalise_after_hours
        self.daemon: Daemon | None = None
        self.sealed = 0
        self.failing = False  # the last attempt to seal failed (cemsd_sealing_failing)
        self._hour_closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, daemon: Daemon) -> None:
        self.daemon = daemon
        daemon.period_listeners.append(self._on_period)
        self._task = asyncio.create_task(self._seal_forever(), name="sealing")

    async def _on_period(self, kind: str, rows: list[dict[str, Any]]) -> None:
        if kind == "hour":
            self._hour_closed.set()

    async def _seal_forever(self) -> None:
        await self.seal_now()
        while True:
            await self._hour_closed.wait()
            self._hour_closed.clear()
            await self.seal_now()

    async def seal_now(self) -> int:
        """Seal every record that is final at the daemon's current time."""
        assert self.daemon is not None and self.daemon.store is not None
        now = self.daemon.clock.now()
        through = chain.due_before(now, self.finalise_after_hours)
        try:
            sealed = await self.daemon.store.call(chain.seal_due, self.daemon.store.db,
                                                  through, now)
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
        return sealed

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.seal_now()  # hours the closer finished while stopping
