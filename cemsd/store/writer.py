"""The daemon's door to the database: one worker thread, batched reading writes.

- Every database call runs on a single worker thread, in order. SQLite sees one writer;
  the event loop never blocks on disk.
- Readings are queued in memory and written in one transaction about every
  `batch_seconds` (wall clock), so a kill -9 loses at most the last batch.
- A failed write (locked or full database) keeps the batch and tries again next time;
  the fault is logged when it starts and when it ends. The queue is bounded: past
  `max_pending` readings the oldest are dropped and counted, so memory stays bounded
  while polling continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cemsd.errors import StorageError
from cemsd.readings import Reading
from cemsd.store.database import Database

log = logging.getLogger(__name__)
T = TypeVar("T")


class Store:
    def __init__(
        self, db: Database, batch_seconds: float = 1.0, max_pending: int = 2_000_000
    ) -> None:
        self.db = db
        self.batch_seconds = batch_seconds
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cemsd-db")
        self._pending: deque[dict[str, Any]] = deque()
        self._flush_lock = asyncio.Lock()
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.dropped_readings = 0
        self.written_readings = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a Database method on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def add_readings(self, readings: list[Reading]) -> None:
        self._pending.extend(
            {"channel": r.channel, "ts": r.ts, "value": r.value, "flag": r.flag.value,
             "reason": r.reason}
            for r in readings
        )
        overflow = len(self._pending) - self.max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._pending.popleft()
            if self.dropped_readings == 0:
                log.error("reading queue full, dropping the oldest",
                          extra={"max_pending": self.max_pending})
            self.dropped_readings += overflow

    async def flush(self) -> None:
        """Write every queued reading; raises StorageError if the database refuses."""
        async with self._flush_lock:
            if not self._pending:
                return
            batch = list(self._pending)
            try:
                await self.call(self.db.insert_readings, batch)
            except StorageError as exc:
                self._fault(str(exc))
                raise
            for _ in range(len(batch)):
                self._pending.popleft()
            self.written_readings += len(batch)
            self._recovered()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush about every batch_seconds until stop is set, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.batch_seconds)
            with contextlib.suppress(StorageError):  # logged by flush; the batch stays queued
                await self.flush()

    def _fault(self, message: str) -> None:
        self.last_error = message
        if self.failing_since is None:
            self.failing_since = asyncio.get_running_loop().time()
            log.error("database write failing", extra={"error": message,
                                                      "pending": len(self._pending)})

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.info("database writes recovered", extra={
                "after_s": round(asyncio.get_running_loop().time() - self.failing_since, 1)})
            self.failing_since = None
            self.last_error = None

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.db.close()
