"""CPU-heavy answers (reports, hour columns) computed in worker processes (decision 0113).

The API's thread shares the interpreter lock with the thread that polls the buses: a
report computed in that process takes the lock from polling for as long as it runs. A
small pool of worker processes (spawned, not forked: the daemon has threads) computes them
instead, each on its own database connections; the API's thread only waits for the bytes
(without the lock) and sends them. At most `max_heavy_requests` run at once (limits.py),
so the pool has that many processes, started on the first heavy request.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from cemsd.store.database import Database

T = TypeVar("T")
_databases: dict[str, Database] = {}  # in a worker process: one per database URL


def worker_database(url: str) -> Database:
    """The worker process's own connections to `url`."""
    db = _databases.get(url)
    if db is None:
        db = _databases[url] = Database(url)
    return db


class HeavyWork:
    """Runs `fn(database, *args)` in a worker process and returns its result."""

    def __init__(self, database_url: str, workers: int) -> None:
        self.url = database_url
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
            pool = self._pool
        return pool.submit(_call, fn, self.url, *args).result()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)  # a running one ends on its own


def _call(fn: Callable[..., T], url: str, *args: Any) -> T:
    return fn(worker_database(url), *args)
