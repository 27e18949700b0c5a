"""One supervisor for every long-lived task of the daemon (bus owners, the closer, the
writer, each output component): no exception, whatever its type, ends a task silently.

- A task that raises is logged at ERROR at once, naming the task (`bus:<name>`, `closer`,
  `mqtt`, ...) and the exception (type and message, with its traceback), then restarted
  after an exponential back-off on the daemon's clock (RestartPolicy). The back-off starts
  again from its first step once a task has run a full `maximum` without failing.
- `on_failure` lets the owner of a task show the failure where operators look (a bus
  marks its devices down with the cause); `stand_in` fills the back-off (a bus delivers
  readings flagged B naming the cause, so its minutes say why they are invalid and the
  closer never waits for a bus that is not polling).
- A task that fails `crash_loop_failures` times within `crash_loop_window` seconds is in a
  crash loop: logged once at ERROR and shown as its state (status, metrics) until it runs
  a whole window without failing.
- A task that returns has finished (its stop was asked for): it is not restarted.
  Cancellation (the daemon stopping it), KeyboardInterrupt and SystemExit are passed on;
  a CancelledError nobody asked for (raised from inside the task) is a failure like any
  other.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cemsd.clock import Clock
from cemsd.errors import describe

log = logging.getLogger(__name__)

Run = Callable[[], Awaitable[None]]
OnFailure = Callable[[str], None]  # the cause, "Type: message"
# Runs while a failed task waits for its restart, until the given clock time; returns
# False when the task was asked to stop meanwhile (then it is not restarted).
StandIn = Callable[[str, float], Awaitable[bool]]

RUNNING, RESTARTING, CRASH_LOOP, STOPPED = "running", "restarting", "crash_loop", "stopped"


@dataclass(frozen=True)
class RestartPolicy:
    initial: float = 1.0  # seconds before the first restart
    maximum: float = 60.0  # back-off cap
    crash_loop_failures: int = 3
    crash_loop_window: float = 600.0


@dataclass
class TaskHealth:
    """What status and metrics show of one supervised task."""

    name: str
    state: str = RUNNING
    restarts: int = 0
    last_error: str | None = None
    last_failure: float | None = None  # daemon clock time
    started: float = 0.0
    streak: int = 0  # failures since the task last ran a full back-off cap
    looping: bool = False  # in a crash loop at its last failure (logged once per loop)
    failures: deque[float] = field(default_factory=deque)

    def crash_looping(self, now: float, policy: RestartPolicy) -> bool:
        while self.failures and self.failures[0] <= now - policy.crash_loop_window:
            self.failures.popleft()
        return len(self.failures) >= policy.crash_loop_failures

    def report(self, now: float, policy: RestartPolicy) -> dict[str, Any]:
        # up: not waiting for a restart (a task that finished on request is not down)
        return {"state": self.state, "up": self.state in (RUNNING, STOPPED),
                "restarts": self.restarts,
                "crash_loop": self.crash_looping(now, policy), "last_error": self.last_error}


class Supervisor:
    def __init__(self, clock: Clock, policy: RestartPolicy | None = None) -> None:
        self.clock = clock
        self.policy = policy or RestartPolicy()
        self.tasks: dict[str, TaskHealth] = {}
        self._stopping = False
        self._pausing: set[asyncio.Task[Any]] = set()  # tasks waiting out a back-off

    def spawn(self, name: str, run: Run, *, on_failure: OnFailure | None = None,
              stand_in: StandIn | None = None) -> asyncio.Task[None]:
        """Run `run()` as a supervised task; the returned task ends when `run` returns."""
        health = self.tasks[name] = TaskHealth(name)
        return asyncio.create_task(self._supervise(health, run, on_failure, stand_in),
                                   name=name)

    def adopt(self, name: str) -> None:
        """A task that runs outside this event loop (the API on its own thread) and restarts
        itself: it reports its failures and recoveries here (on this loop), so it shows and
        alarms like any other task."""
        self.tasks[name] = TaskHealth(name, started=self.clock.now())

    def failed_elsewhere(self, name: str, failure: BaseException, retry_in: float) -> None:
        self._failed(self.tasks[name], failure, retry_in)

    def running_again(self, name: str) -> None:
        health = self.tasks[name]
        if health.state in (RESTARTING, CRASH_LOOP):
            health.restarts += 1
            log.info("task restarted", extra={"task": name, "restarts": health.restarts})
        health.state, health.started = RUNNING, self.clock.now()

    def stop(self) -> None:
        """The daemon is stopping: a task waiting for its restart is not restarted."""
        self._stopping = True
        for task in self._pausing:
            task.cancel()

    def report(self) -> dict[str, dict[str, Any]]:
        now = self.clock.now()
        return {name: t.report(now, self.policy) for name, t in sorted(self.tasks.items())}

    async def _supervise(self, health: TaskHealth, run: Run, on_failure: OnFailure | None,
                         stand_in: StandIn | None) -> None:
        while True:
            health.state, health.started = RUNNING, self.clock.now()
            try:
                await run()
            except (KeyboardInterrupt, SystemExit):
                health.state = STOPPED
                raise
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():  # asked for: the daemon stops it
                    health.state = STOPPED
                    raise
                failure: BaseException = exc
            except BaseException as exc:  # every type, by design
                failure = exc
            else:
                health.state = STOPPED
                return
            cause = describe(failure)
            delay = self._failed(health, failure)
            if on_failure is not None:
                try:
                    on_failure(cause)
                except Exception:  # showing the failure must not end the supervision
                    log.exception("failure handler failed", extra={"task": health.name})
            if not await self._pause(health, cause, delay, stand_in):
                health.state = STOPPED
                return
            health.restarts += 1
            log.info("task restarted", extra={"task": health.name, "restarts": health.restarts})

    def _failed(self, health: TaskHealth, failure: BaseException,
                delay: float | None = None) -> float:
        """Record a failure, log it; the back-off before the restart (the policy's unless
        the task keeps its own)."""
        now, policy, cause = self.clock.now(), self.policy, describe(failure)
        if now - health.started >= policy.maximum:
            health.streak = 0  # it ran well for a while: start the back-off again
        health.streak += 1
        if delay is None:
            delay = min(policy.maximum, policy.initial * 2 ** (health.streak - 1))
        health.last_error, health.last_failure = cause, now
        health.failures.append(now)
        looping = health.crash_looping(now, policy)
        entered_loop, health.looping = looping and not health.looping, looping
        health.state = CRASH_LOOP if looping else RESTARTING
        # the traceback once per streak: a crash loop repeats the line, not the stack
        log.error("task failed, restarting", exc_info=failure if health.streak == 1 else None,
                  extra={"task": health.name, "error": cause, "restart_in_s": delay,
                         "restarts": health.restarts})
        if entered_loop:
            log.error("task in a crash loop", extra={
                "task": health.name, "failures": len(health.failures),
                "window_s": policy.crash_loop_window, "error": cause})
        return delay

    async def _pause(self, health: TaskHealth, cause: str, delay: float,
                     stand_in: StandIn | None) -> bool:
        """Wait out the back-off; False when the task should not be restarted."""
        until = self.clock.now() + delay
        if self._stopping:
            return False
        if stand_in is not None:
            try:
                return await stand_in(cause, until)
            except Exception as exc:  # then the plain wait: the back-off holds all the same
                log.error("stand-in failed", exc_info=exc,
                          extra={"task": health.name, "error": describe(exc)})
        # A participant while it waits (not while it runs): on a simulated clock the restart
        # comes at its time, not whenever the buses let time pass.
        task = asyncio.current_task()
        assert task is not None
        self._pausing.add(task)
        try:
            with self.clock.participant():
                await self.clock.sleep_until(until)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            task.uncancel()  # stop() woke it: the task ends instead of restarting
        finally:
            self._pausing.discard(task)
        return not self._stopping


def failing_tasks(tasks: dict[str, dict[str, Any]]) -> list[str]:
    """Supervised tasks (Supervisor.report()) not running or in a crash loop, e.g.
    "bus:a (crash loop, 3 restarts: ValueError: ...)"."""
    out = []
    for name, task in tasks.items():
        if task["up"] and not task["crash_loop"]:
            continue
        state = "crash loop" if task["crash_loop"] else task["state"]
        out.append(f"{name} ({state}, {task['restarts']} restarts: {task['last_error']})")
    return out
