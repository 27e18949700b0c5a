"""Clocks: the daemon takes its time from one of these, never from `time` directly.

- `WallClock`: production. UTC epoch seconds from the system clock.
- `VirtualClock`: simulations. Simulated time stands still while any *participant*
  (a bus owner, the minute closer) is working and jumps to the earliest wake-up once
  all of them wait on the clock. A simulated day therefore runs as fast as the real
  sockets and the database allow, and every run is deterministic. An optional speed
  paces it to at most `speed` times the wall clock, for a watchable demo. With
  `overlap=True` (the benches) the closer closes a minute `overlapping` the next one
  (decision 0242): time runs on, at most to a bound, while the clock shows it the minute's
  end; by default closing holds time still like any participant's work.
- `SharedClockFile` publishes a VirtualClock's time to another process (the simulator)
  through an 8-byte memory-mapped file; `FileClock` reads it there.

All times are float UTC epoch seconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import mmap
import os
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

_CLOCK_FORMAT = struct.Struct("<d")
_WALL_SLEEP_SLICE = 1.0  # re-read the wall clock at least this often, so steps are noticed
# A set clock, not a slewed one: NTP slews at most 0.5 ms/s, event-loop stalls do not count
# (both clocks run on), so 2 s between looks about a second apart is a step.
_STEP_TOLERANCE = 2.0
log = logging.getLogger(__name__)


class Clock(Protocol):
    """What the daemon needs from time."""

    def now(self) -> float:
        """Current time, UTC epoch seconds."""

    async def sleep_until(self, t: float) -> None:
        """Return once now() >= t."""

    async def charge(self, seconds: float) -> None:
        """Account for bus time spent on a failed request (a no-op on real clocks)."""

    def participant(self) -> AbstractContextManager[None]:
        """Register the calling task as one whose work holds simulated time still."""

    def overlapping(self, as_of: float, bound: float) -> AbstractContextManager[None]:
        """Let a participant's work overlap time moving on, no further than `bound`; the
        calling task's now() reads `as_of` meanwhile (a no-op on real clocks)."""


@contextmanager
def _no_overlap(as_of: float, bound: float) -> Iterator[None]:
    yield


class WallClock:
    """The system clock. Sleeps in slices so a stepped clock is noticed within a second.

    A step (the clock set, not slewed: it moved more than `_STEP_TOLERANCE` unlike the
    monotonic clock between two looks) is logged and told to `step_listeners` with its size
    in seconds (negative: back). Sleeps still end when now() reaches their time: the closer
    must wait for the clock's own minute ends. Bus owners, which poll on an interval, listen
    and plan their polls from the new time."""

    def __init__(self) -> None:
        self.step_listeners: list[Callable[[float], None]] = []
        self._seen: tuple[float, float] | None = None  # (now(), monotonic) at the last look

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, t: float) -> None:
        # Polling on purpose: a stepped system clock must be noticed.
        while (remaining := t - self._look()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(remaining, _WALL_SLEEP_SLICE))

    def _look(self) -> float:
        wall, mono = self.now(), time.monotonic()
        seen, self._seen = self._seen, (wall, mono)
        if seen is not None:
            step = (wall - seen[0]) - (mono - seen[1])
            if abs(step) > _STEP_TOLERANCE:
                log.warning("wall clock stepped", extra={"seconds": round(step, 1)})
                for listener in list(self.step_listeners):
                    listener(step)
        return wall

    async def charge(self, seconds: float) -> None:
        return None  # the time has really passed

    @contextmanager
    def participant(self) -> Iterator[None]:
        yield

    overlapping = staticmethod(_no_overlap)  # the time really passes while closing


class VirtualClock:
    """Simulated time that advances only when every participant waits on it.

    `overlap=True` lets `overlapping` work run while time moves on (the benches; checked
    against the default, serialised mode in tests/test_overlap.py): off by default, since a
    poll in flight during a close's synchronous work may meet its wall-clock timeout."""

    def __init__(
        self,
        start: float,
        speed: float | None = None,
        shared_file: SharedClockFile | None = None,
        overlap: bool = False,
    ) -> None:
        self._now = float(start)
        self._speed = speed
        self._shared = shared_file
        self.overlap = overlap
        self._active = 0
        self._bounds: list[float] = []  # time may not pass the lowest (overlapping)
        self._as_of: dict[asyncio.Task[object] | None, float] = {}
        self._members: dict[asyncio.Task[object] | None, int] = {}
        self._waiters: list[tuple[float, int, asyncio.Future[None], bool]] = []
        self._seq = itertools.count()
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self._pace_origin: tuple[float, float] | None = None  # (sim time, monotonic)
        self._publish()

    def now(self) -> float:
        if self._as_of:  # only while a close overlaps: tasks other than the closer see _now
            return self._as_of.get(_current_task(), self._now)
        return self._now

    @property
    def participants_active(self) -> int:
        return self._active

    @contextmanager
    def participant(self) -> Iterator[None]:
        task = asyncio.current_task()
        self._members[task] = self._members.get(task, 0) + 1
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            self._members[task] -= 1
            if not self._members[task]:
                del self._members[task]
            self._maybe_advance()

    @contextmanager
    def overlapping(self, as_of: float, bound: float) -> Iterator[None]:
        """The calling participant stops holding time still, but time does not pass
        `bound` until the block ends; its now() reads `as_of` meanwhile, so what the block
        computes and stores does not depend on how far time ran on."""
        task = asyncio.current_task()
        if not self.overlap or task not in self._members:
            yield
            return
        heapq.heappush(self._bounds, bound)
        self._as_of[task] = as_of
        self._active -= 1
        self._maybe_advance()
        try:
            yield
        finally:
            self._active += 1
            del self._as_of[task]
            self._bounds.remove(bound)
            heapq.heapify(self._bounds)
            self._maybe_advance()

    async def sleep_until(self, t: float) -> None:
        """Wait for simulated time t. A participant's wait lets time move on; anyone else
        (a test, an observer) just waits without holding time back or pushing it."""
        if t <= self._now:
            await asyncio.sleep(0)
            return
        task = asyncio.current_task()
        # an overlapping participant (not holding time now) waits like an observer
        member = task in self._members and task not in self._as_of
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (t, next(self._seq), future, member))
        if member:
            self._active -= 1
        if member or task in self._as_of:
            self._maybe_advance()
        try:
            await future
        except asyncio.CancelledError:
            if member and (not future.done() or future.cancelled()):
                # Woken by cancellation, not by the clock: this task is running again.
                self._active += 1
            raise

    async def charge(self, seconds: float) -> None:
        await self.sleep_until(self._now + seconds)

    def _maybe_advance(self) -> None:
        if self._active > 0 or not self._waiters or self._scheduled is not None:
            return
        self._scheduled = asyncio.get_running_loop().call_soon(self._advance)

    def _advance(self) -> None:
        self._scheduled = None
        self._drop_cancelled()
        if self._active > 0 or not self._waiters:
            return
        target = self._waiters[0][0]
        if self._bounds and target > self._bounds[0]:
            return  # an overlapping close has not finished: moved on when it has
        delay = self._pacing_delay(target)
        if delay > 0:
            self._scheduled = asyncio.get_running_loop().call_later(delay, self._advance)
            return
        self._now = target
        self._publish()
        while self._waiters and self._waiters[0][0] <= target:
            _, _, future, member = heapq.heappop(self._waiters)
            if not future.done():
                self._active += member
                future.set_result(None)
        # Only observers woke (they do not hold time): nothing else will move it on.
        self._maybe_advance()

    def _drop_cancelled(self) -> None:
        while self._waiters and self._waiters[0][2].done():
            heapq.heappop(self._waiters)

    def _pacing_delay(self, target: float) -> float:
        if not self._speed:
            return 0.0
        mono = time.monotonic()
        if self._pace_origin is None:
            self._pace_origin = (self._now, mono)
        sim0, mono0 = self._pace_origin
        return mono0 + (target - sim0) / self._speed - mono

    def _publish(self) -> None:
        if self._shared is not None:
            self._shared.write(self._now)


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: a thread asking for the time
        return None


class StoppableSleep:
    """Stop handling for a loop that sleeps on a clock (bus owners, the closer).

    A stop request ends the loop after the work in progress: it cancels the task only while
    it sleeps, never in the middle of a poll or a database write. A poke ends a sleep early
    (queued work arrived) without stopping the loop.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.stopping = False
        self._sleeping = False
        self._poked = False
        self._task: asyncio.Task[object] | None = None

    def bind(self) -> None:
        """Record the task that sleeps; call at the start of its loop."""
        self._task = asyncio.current_task()

    def request_stop(self) -> None:
        self.stopping = True
        self._interrupt()

    def poke(self) -> None:
        """End the current sleep early; the loop goes on."""
        self._poked = True
        self._interrupt()

    def _interrupt(self) -> None:
        if self._sleeping and self._task is not None:
            self._task.cancel()

    async def sleep_until(self, t: float) -> bool:
        """Sleep until t (or a poke); False when a stop was requested."""
        if self.stopping:
            return False
        if self._poked:
            self._poked = False
            return True
        self._sleeping = True
        try:
            await self.clock.sleep_until(t)
        except asyncio.CancelledError:
            if self.stopping:
                return False
            if not self._poked:
                raise
        finally:
            self._sleeping = False
        self._poked = False
        return not self.stopping


class SharedClockFile:
    """An 8-byte file holding a float UTC epoch, memory-mapped by writer and readers."""

    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = Path(path)
        if create:
            # Keep the file a reader may already have mapped (no rename, no truncation),
            # and never let it be shorter than 8 bytes: ftruncate extends with zeros.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(fd, _CLOCK_FORMAT.size)
        else:
            fd = os.open(self.path, os.O_RDONLY)
        try:
            access = mmap.ACCESS_WRITE if create else mmap.ACCESS_READ
            self._map = mmap.mmap(fd, _CLOCK_FORMAT.size, access=access)
        finally:
            os.close(fd)

    def write(self, t: float) -> None:
        _CLOCK_FORMAT.pack_into(self._map, 0, t)

    def read(self) -> float:
        return _CLOCK_FORMAT.unpack_from(self._map, 0)[0]

    def close(self) -> None:
        self._map.close()


def _holds_a_time(path: Path) -> bool:
    """The file exists with a time written: the writer extends a new file with zeros
    before it writes its first time, and no simulation starts at the epoch itself."""
    try:
        data = path.read_bytes()[:_CLOCK_FORMAT.size]
    except FileNotFoundError:
        return False
    return len(data) == _CLOCK_FORMAT.size and data != bytes(_CLOCK_FORMAT.size)


class FileClock:
    """Reads the simulated time a VirtualClock in another process publishes."""

    def __init__(self, path: Path, wait_seconds: float = 10.0) -> None:
        deadline = time.monotonic() + wait_seconds
        while not _holds_a_time(Path(path)):
            if time.monotonic() > deadline:
                raise FileNotFoundError(f"clock file {path} did not appear")
            time.sleep(0.05)
        self._file = SharedClockFile(path)

    def now(self) -> float:
        return self._file.read()

    async def sleep_until(self, t: float) -> None:
        while self.now() < t:  # noqa: ASYNC110 - the writer is another process
            await asyncio.sleep(0.01)

    async def charge(self, seconds: float) -> None:
        return None

    @contextmanager
    def participant(self) -> Iterator[None]:
        yield

    overlapping = staticmethod(_no_overlap)
