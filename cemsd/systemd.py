"""systemd's notification protocol and the watchdog (field notes §6).

- `Notifier`: `sd_notify` in a few lines of stdlib: one datagram per message to
  `$NOTIFY_SOCKET` ('@' = Linux abstract namespace). Without the variable (not started by
  systemd, or `Type=simple`) every call is a no-op. Sending never blocks the event loop: a
  full socket drops the message (systemd reads them at once; a lost WATCHDOG=1 only
  brings the next ping closer to the limit).
- `Watchdog`: a task ON the event loop (never a thread, which would keep pinging while
  the loop hangs) that sends `WATCHDOG=1` every `WATCHDOG_USEC / 2` only while
  `progress_stalls(...)` finds nothing, and a one-line `STATUS=` when it changes.

What withholds the ping (each logged once when it starts and once when it ends):

- the event loop does not run the watchdog task (blocked by a long computation or a
  blocking call): no ping is possible at all;
- the store's worker thread, the daemon's only door to the database, has not run a probe
  within `WatchdogSec` (a hung driver call, a lock never released). A database that
  *refuses* writes is not a stall: the writer keeps the readings and retries, and a
  restart would not cure a full disk but would lose what is queued;
- a bus owner has not finished a poll cycle for longer than its longest sleep (poll
  interval or back-off) plus the bus time its devices may cost (every request timing out)
  plus `WatchdogSec`: the owner hangs or its task died;
- the closer is more than a minute (plus its grace and `WatchdogSec`) behind the clock
  while the database accepts writes: minutes are no longer being closed;
- no daemon has been ready for START_GRACE_SECONDS since its start-up last made
  progress (a start-up after a reload, or the swap itself, hangs).

A start-up that makes progress (a long migration, cemsd/store/progress.py) extends the
unit's start timeout (`EXTEND_TIMEOUT_USEC`, START_GRACE_SECONDS from its latest step) and
says what it does in `STATUS=`; when its steps stop, the extension runs out (decision 0038).

systemd then kills the process (SIGABRT) after `WatchdogSec` without a ping and
`Restart=on-failure` starts it again; the new daemon closes what was left open from the
stored readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cemsd.logs import Episode
from cemsd.periods import MINUTE

if TYPE_CHECKING:
    from cemsd.acquisition import BusOwner
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)

STATUS_INTERVAL_SECONDS = 15.0  # STATUS= refresh when systemd asks for no watchdog
# A daemon starting (recovery after a long outage) or two daemons swapping (reload) may
# take this long before pings stop; TimeoutStartSec in systemd/cemsd.service matches it.
START_GRACE_SECONDS = 600.0
EXTEND_EVERY_SECONDS = 5.0  # a long start-up's extension sent at most this often


class Notifier:
    """Messages to the service manager; silent when there is none."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_seconds = _watchdog_seconds(env)
        self._socket: socket.socket | None = None
        self.sent: int = 0
        self.dropped: int = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of newline-separated `KEY=value` fields; False if not delivered."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX,
                                             socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # no manager listening (any more), or its queue is full
            self.dropped += 1
            if self.dropped == 1:
                log.warning("systemd notification not delivered", extra={"error": str(exc)})
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self, reason: str) -> None:
        self.send("STOPPING=1", f"STATUS=stopping: {reason}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace: a leading NUL byte
        return b"\0" + value[1:].encode()
    return value


def _watchdog_seconds(env: os._Environ[str] | dict[str, str]) -> float | None:
    """The watchdog timeout systemd set for this process, or None."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6


# --- progress ---------------------------------------------------------------------------------


@dataclass
class WriterProbe:
    """A no-op queued on the store's worker thread; answered means the writer moves."""

    started: float | None = None  # monotonic time of the outstanding probe
    task: asyncio.Task[None] | None = None

    def poke(self, daemon: Daemon) -> None:
        if self.task is not None and not self.task.done():
            return
        store = daemon.store
        if store is None:
            return
        self.started = time.monotonic()

        async def probe() -> None:
            with contextlib.suppress(RuntimeError):  # the store closed: the daemon stops
                await store.call(_nothing)
            self.started = None

        self.task = asyncio.create_task(probe(), name="watchdog:writer-probe")

    def waiting(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started


def _nothing() -> None:
    return None


def bus_allowance(owner: BusOwner) -> float:
    """Longest a healthy owner may go without finishing a cycle: its longest sleep plus the
    bus time of a cycle in which every request of every device times out."""
    longest_sleep = max((max(d.poll_interval, d.backoff_max) for d in owner.plan.devices),
                        default=0.0)
    delay = owner.plan.bus.request_delay
    cycle = sum((len(d.blocks) + 1) * d.failed_request_cost + 2 * len(d.blocks) * delay
                for d in owner.plan.devices)
    return longest_sleep + cycle


def progress_stalls(daemon: Daemon, probe: WriterProbe, limit: float,
                    since: float) -> list[str]:
    """What does not progress, as short reasons; empty when all is well.

    `limit` is the watchdog timeout; `since` the monotonic time the daemon became ready
    (heartbeats from before that, e.g. during a long recovery, do not count against it).
    """
    stalls = []
    waited = probe.waiting()
    if waited > limit:
        stalls.append(f"database worker busy for {waited:.0f} s")
    now_mono = time.monotonic()
    for owner in daemon.owners:
        quiet = now_mono - max(owner.last_cycle_wall, since)
        if quiet > bus_allowance(owner) + limit:
            stalls.append(f"bus {owner.name} without a poll cycle for {quiet:.0f} s")
    closer, store = daemon.closer, daemon.store
    if closer is not None and closer.next_minute is not None and store is not None \
            and store.failing_since is None:
        behind = daemon.clock.now() - (closer.next_minute + MINUTE)
        if behind > MINUTE + closer.rules.close_grace_seconds + limit:
            stalls.append(f"minutes not closed for {behind:.0f} s")
    return stalls


# --- the watchdog task -----------------------------------------------------------------------


class Watchdog:
    """Pings systemd from the event loop while the current daemon makes progress.

    `current` returns the daemon to watch (None between two daemons during a reload: the
    loop is alive and the swap is bounded by the daemons' stop deadlines, so it pings);
    `status` returns the STATUS line of that daemon.
    """

    def __init__(self, notifier: Notifier, current: Callable[[], Daemon | None],
                 status: Callable[[Daemon], str]) -> None:
        self.notifier = notifier
        self.current = current
        self.status = status
        self.limit = notifier.watchdog_seconds or math.inf
        self.interval = (notifier.watchdog_seconds / 2 if notifier.watchdog_seconds
                         else STATUS_INTERVAL_SECONDS)
        self.pings = 0
        self.withheld: list[str] = []
        self._probe = WriterProbe()
        self._watched: Daemon | None = None
        self._since = time.monotonic()  # when the watched daemon (or the gap) began
        self._ready_at: float | None = None
        self._last_status = ""
        self._extended_at = -math.inf
        self.extensions = 0
        self._stalled = Episode(log, "watchdog withheld: the daemon is not progressing")

    async def run(self) -> None:
        if not self.notifier.enabled:
            return
        while True:
            self.tick()
            await asyncio.sleep(self.interval)

    def tick(self) -> None:
        daemon = self.current()
        now = time.monotonic()
        if daemon is not self._watched:  # a new daemon (reload), or none between two
            self._watched, self._probe, self._since = daemon, WriterProbe(), now
            self._ready_at = None
        ready = daemon is not None and daemon.ready.is_set()
        if ready and self._ready_at is None:
            self._ready_at = now
        stalls: list[str] = []
        if daemon is not None and ready:
            self._probe.poke(daemon)
            stalls = progress_stalls(daemon, self._probe, self.limit, self._ready_at or now)
        elif now - self._since > START_GRACE_SECONDS:  # a start-up or a swap that hangs
            stalls = [f"no running daemon for {now - self._since:.0f} s"]
        self._report(stalls)
        if not stalls and self.notifier.watchdog_seconds:
            self.notifier.send("WATCHDOG=1")
            self.pings += 1
        if daemon is not None and daemon.ready.is_set():
            line = self.status(daemon)
            if stalls:
                line = f"{line}; not progressing: {'; '.join(stalls)}"
            if line != self._last_status:
                self._last_status = line
                self.notifier.send(f"STATUS={line}")

    def starting(self, step: str) -> None:
        """A starting daemon made progress (a migration step): its start-up may take longer
        than the unit's TimeoutStartSec, and the grace counts from this step."""
        now = time.monotonic()
        self._since = now
        if not self.notifier.enabled or now - self._extended_at < EXTEND_EVERY_SECONDS:
            return
        self._extended_at = now
        if self.notifier.send(f"EXTEND_TIMEOUT_USEC={int(START_GRACE_SECONDS * 1e6)}",
                              f"STATUS=starting: {step}"):
            self.extensions += 1

    def _report(self, stalls: list[str]) -> None:
        if stalls:
            self._stalled.failed(stalls="; ".join(stalls))
        else:
            self._stalled.recovered("watchdog resumed: progressing again")
        self.withheld = stalls
