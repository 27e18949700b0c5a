"""The `cemsd run` process: one Daemon at a time, reloads, and what systemd is told.

- Stop (SIGTERM/SIGINT, from the CLI): `STOPPING=1`, then the daemon's ordered shutdown
  (polls finish, complete minutes and hours are closed, buffers and output state are
  flushed, the run is marked stopped). The whole stop is bounded by
  SHUTDOWN_DEADLINE_SECONDS, below the unit's TimeoutStopSec; exit code 0.
- Reload (SIGHUP): the configuration file is read and validated first. A bad file is
  refused with one log line naming every problem, and the running daemon goes on as if
  nothing happened. A good one: `RELOADING=1`, the running daemon stops in order (nothing
  is lost: periods are closed from stored data), a new daemon starts with the new
  configuration on the same clock (its start-up closes what is open and audits the
  changed configuration), then `READY=1`. If the new daemon cannot start, the previous
  configuration is started again. A SIGHUP during a reload is served after it; a SIGTERM
  during a reload stops the process without starting another daemon.
- `READY=1` once the daemon's storage is up and its pollers run; a watchdog task pings
  while it progresses (cemsd/systemd.py).

Only the CLI installs signal handlers; they call request_stop and request_reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from cemsd.errors import CemsdError, ConfigError
from cemsd.status import StatusLine
from cemsd.systemd import Notifier, Watchdog

if TYPE_CHECKING:
    from cemsd.config import Config
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)

# The daemon's own steps are bounded (STOP_DEADLINE_SECONDS each); this bounds the sum,
# below TimeoutStopSec=120 in systemd/cemsd.service so the process ends on its own.
SHUTDOWN_DEADLINE_SECONDS = 100.0

RELOAD_PAUSE_SECONDS = 0.001

DaemonFactory = Callable[["Config"], "Daemon"]


class Service:
    def __init__(self, config: Config, make_daemon: DaemonFactory,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.path = Path(config.source)
        self.make_daemon = make_daemon
        self.notifier = notifier or Notifier()
        self.daemon: Daemon | None = None
        self.reloads = 0
        self.refused_reloads = 0
        self.stop_reason: str | None = None
        self._wake = asyncio.Event()
        self._reload_requested = False
        self._status_line = StatusLine()
        self._held: AbstractContextManager[None] | None = None
        self.watchdog = Watchdog(self.notifier, lambda: self.daemon, self._status_line)

    # --- from the CLI's signal handlers ---------------------------------------------------

    def request_stop(self, reason: str = "stop requested") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.notifier.stopping(reason)
            log.info("stop requested", extra={"reason": reason,
                                              "during_reload": self.daemon is None})
        if self.daemon is not None:
            self.daemon.request_stop(reason)
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    # --- the run loop -------------------------------------------------------------------------

    async def run(self) -> int:
        watching = asyncio.create_task(self.watchdog.run(), name="watchdog")
        try:
            return await self._run_daemons()
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            self.notifier.close()

    async def _run_daemons(self) -> int:
        config: Config | None = self.config
        previous: Config | None = None  # during a reload: what to go back to
        while config is not None and self.stop_reason is None:
            daemon = self.make_daemon(config)
            self.daemon = daemon
            daemon.start_progress.listen(self.watchdog.starting)
            running = asyncio.create_task(daemon.run(), name="daemon")
            await _until_ready(daemon, running)
            self._release_clock()
            if not daemon.ready.is_set():  # it ended during start-up
                if previous is None or self.stop_reason is not None:
                    await self._finish(running)  # raises its error, if it had one
                    break
                log.error("reload failed: the new configuration did not start; starting "
                          "the previous one again", extra={"error": _failure(running)})
                config, previous = previous, None
                self._hold_clock(daemon)
                continue
            self.config, previous = config, None
            if self.stop_reason is None:
                self.notifier.ready(self._status_line(daemon))
            config = await self._serve(daemon, running)
            if config is not None:
                previous = self.config
        self.daemon = None
        self._release_clock()
        return 0

    def _hold_clock(self, daemon: Daemon) -> None:
        """Between two daemons simulated time stands still (a no-op on the wall clock)."""
        if self._held is None:
            self._held = daemon.clock.participant()
            self._held.__enter__()

    def _release_clock(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            held.__exit__(None, None, None)

    async def _serve(self, daemon: Daemon, running: asyncio.Task[None]) -> Config | None:
        """Until the daemon ends: a stop, --until, or a valid reload (its new config)."""
        while True:
            waker = asyncio.create_task(self._wake.wait())
            await asyncio.wait({running, waker}, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            self._wake.clear()
            if running.done():
                await self._finish(running)
                return None
            if self.stop_reason is not None:
                await self._finish(running, SHUTDOWN_DEADLINE_SECONDS)
                return None
            if self._reload_requested:
                self._reload_requested = False
                new = await self._validated()
                if new is not None:
                    return await self._swap(daemon, running, new)

    async def _validated(self) -> Config | None:
        from cemsd.config import load_config

        try:
            new = await asyncio.to_thread(load_config, self.path)
        except ConfigError as exc:
            self.refused_reloads += 1
            log.error("reload refused: the configuration has problems; running on with the "
                      "previous one", extra={"file": str(self.path),
                                             "problems": " | ".join(map(str, exc.problems))})
            return None
        log.info("reloading the configuration", extra={"file": str(self.path)})
        return new

    async def _swap(self, daemon: Daemon, running: asyncio.Task[None], new: Config
                    ) -> Config | None:
        self.notifier.reloading()
        self.reloads += 1
        daemon.request_stop("reloading the configuration")
        await self._finish(running, SHUTDOWN_DEADLINE_SECONDS)
        self.daemon = None
        if self.stop_reason is not None:
            return None
        self._hold_clock(daemon)  # until the next daemon is ready
        # A reload takes a moment: the next daemon starts after the instant of the last
        # poll, so a simulated clock standing on a poll slot does not have it polled twice.
        await daemon.clock.sleep_until(daemon.clock.now() + RELOAD_PAUSE_SECONDS)
        return new

    async def _finish(self, running: asyncio.Task[None], deadline: float | None = None) -> None:
        """Wait for the daemon's run to end; its own error ends the process."""
        done, _ = await asyncio.wait({running}, timeout=deadline)
        if not done:
            log.error("shutdown exceeded its deadline; exiting with what is stored",
                      extra={"deadline_s": deadline})
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running
            raise CemsdError(f"shutdown did not finish within {deadline:.0f} s")
        running.result()  # re-raise a failure of the daemon


async def _until_ready(daemon: Daemon, running: asyncio.Task[None]) -> None:
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()


def _failure(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return repr(exc) if exc is not None else "stopped"
