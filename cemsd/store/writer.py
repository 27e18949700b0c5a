"""The daemon's door to the database: one worker thread, batched reading writes.

- Every database call runs on a single worker thread, in order. SQLite sees one writer;
  the event loop never blocks on disk.
- Readings are queued in memory and written in one transaction about every
  `batch_seconds` (wall clock), so a kill -9 loses at most the last batch. A batch is
  stored packed, a few rows for all its readings (store/packing.py).
- A failed write (locked or full database) keeps the batch and tries again next time;
  the fault is logged when it starts and when it ends. The queue is bounded: past
  `max_pending` readings the oldest are dropped and counted, so memory stays bounded
  while polling continues. Queued readings are tuples (about 130 bytes each, half a
  dict's), and a backlog is written in transactions of `WRITE_CHUNK` readings, so a
  failing attempt costs one chunk, not the whole backlog, every second.
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
from cemsd.store.database import PRUNE_STEP_BLOCKS, Database

log = logging.getLogger(__name__)
T = TypeVar("T")
WRITE_CHUNK = 10_000  # readings per transaction while catching up
Row = tuple[str, float, float | None, str, str | None]


class Store:
    def __init__(
        self, db: Database, batch_seconds: float = 1.0, max_pending: int = 2_000_000
    ) -> None:
        self.db = db
        self.batch_seconds = batch_seconds
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cemsd-db")
        self._pending: deque[Row] = deque()
        self._in_flight = 0  # readings taken off the queue by a write not yet done
        self._flush_lock = asyncio.Lock()
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.dropped_readings = 0
        self._dropped_before_fault = 0
        self.written_readings = 0

    @property
    def pending(self) -> int:
        return len(self._pending) + self._in_flight

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a Database method on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def add_readings(self, readings: list[Reading]) -> None:
        # a Flag is its letter (StrEnum): `.value` per reading would cost an enum lookup
        self._pending.extend((r.channel, r.ts, r.value, r.flag, r.reason)
                             for r in readings)
        self._drop_oldest(self.pending - self.max_pending)

    def _drop_oldest(self, overflow: int) -> None:
        overflow = min(overflow, len(self._pending))
        if overflow <= 0:
            return
        for _ in range(overflow):
            self._pending.popleft()
        if self.dropped_readings == self._dropped_before_fault:
            log.error("reading queue full, dropping the oldest",
                      extra={"max_pending": self.max_pending})
        self.dropped_readings += overflow

    async def flush(self) -> None:
        """Write every reading queued when the flush begins (after one in progress);
        raises StorageError if the database refuses. Readings queued meanwhile wait for the
        next flush: a close overlapping polling (0242) does not chase them in small writes."""
        async with self._flush_lock:
            left = len(self._pending)
            while left > 0 and self._pending:
                chunk = [self._pending.popleft()
                         for _ in range(min(WRITE_CHUNK, left, len(self._pending)))]
                left -= len(chunk)
                self._in_flight = len(chunk)
                try:
                    await self.call(self.db.insert_reading_rows, chunk)
                except StorageError as exc:
                    self._requeue(chunk)
                    self._fault(str(exc))
                    raise
                finally:
                    self._in_flight = 0
                self.written_readings += len(chunk)
            self._recovered()

    def _requeue(self, chunk: list[Row]) -> None:
        """Put a chunk that was not written back in front; the bound still holds."""
        self._in_flight = 0
        self._pending.extendleft(reversed(chunk))
        self._drop_oldest(self.pending - self.max_pending)

    async def prune_readings(self, before: float) -> int:
        """Delete the readings before `before` in short transactions, each its own call on
        the worker thread: a batch of new readings queued meanwhile is written between two
        steps, never behind the whole prune."""
        removed = 0
        while step := await self.call(self.db.prune_readings, before, PRUNE_STEP_BLOCKS):
            removed += step
        return removed

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
            self._dropped_before_fault = self.dropped_readings
            log.error("database write failing", extra={"error": message,
                                                      "pending": self.pending})

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.info("database writes recovered", extra={
                "after_s": round(asyncio.get_running_loop().time() - self.failing_since, 1),
                "dropped": self.dropped_readings - self._dropped_before_fault})
            self.failing_since = None
            self.last_error = None
            self._dropped_before_fault = self.dropped_readings

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.db.close()
