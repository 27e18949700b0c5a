"""The supervisor on its own: every exception type restarts the task with a growing,
capped back-off on the daemon's clock; a crash loop is logged once and shown; a task asked
to stop (cancelled, or returning) is not restarted; SystemExit passes through."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cemsd.clock import VirtualClock
from cemsd.supervisor import RestartPolicy, Supervisor

T0 = 1_780_000_000.0
POLICY = RestartPolicy(initial=1.0, maximum=4.0, crash_loop_failures=3, crash_loop_window=30.0)


class Odd(BaseException):
    """Not an Exception at all."""


def _failing(clock: VirtualClock, starts: list[float], errors: list[BaseException]):
    """A task that raises the next error at each start, then runs until cancelled."""
    async def run() -> None:
        starts.append(clock.now() - T0)
        if errors:
            raise errors.pop(0)
        await asyncio.Event().wait()
    return run


async def _advance(clock: VirtualClock, seconds: float) -> None:
    with clock.participant():  # the test moves simulated time, as the buses would
        await clock.sleep_until(clock.now() + seconds)


def test_every_exception_type_restarts_with_a_capped_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[BaseException] = [ValueError("boom"), Odd("odd"), RuntimeError(""),
                                   KeyError("k"), OSError("os"), asyncio.CancelledError("stray")]
    starts: list[float] = []
    caplog.set_level(logging.INFO, logger="cemsd.supervisor")

    async def main() -> dict:
        clock = VirtualClock(T0)
        supervisor = Supervisor(clock, POLICY)
        task = supervisor.spawn("mqtt", _failing(clock, starts, errors))
        await _advance(clock, 25)
        report = supervisor.report()["mqtt"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return {"running": report, "after": supervisor.report()["mqtt"]}

    seen = asyncio.run(main())
    # back-off 1, 2, 4, 4, 4, 4 s (the cap), each counted from the failure
    assert starts == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0, 19.0]
    failed = [r for r in caplog.records if r.getMessage() == "task failed, restarting"]
    assert [r.error for r in failed] == [
        "ValueError: boom", "test_supervisor.Odd: odd", "RuntimeError", "KeyError: 'k'",
        "OSError: os", "asyncio.exceptions.CancelledError: stray"]
    assert all(r.levelno == logging.ERROR and r.task == "mqtt" for r in failed)
    assert failed[0].exc_info is not None and failed[1].exc_info is None  # once per streak
    assert seen["running"] == {"state": "running", "up": True, "restarts": 6,
                               "crash_loop": True,
                               "last_error": "asyncio.exceptions.CancelledError: stray"}
    assert seen["after"]["state"] == "stopped"  # a cancel is a stop, not a failure
    loops = [r for r in caplog.records if r.getMessage() == "task in a crash loop"]
    assert len(loops) == 1 and loops[0].task == "mqtt"


def test_a_crash_loop_ends_after_a_quiet_window_and_the_backoff_starts_again() -> None:
    starts: list[float] = []

    async def main() -> list[dict]:
        clock = VirtualClock(T0)
        supervisor = Supervisor(clock, POLICY)

        async def run() -> None:
            starts.append(clock.now() - T0)
            if len(starts) <= 3:
                raise ValueError(f"fails at once ({len(starts)})")
            if len(starts) == 4:  # runs a while (longer than the cap), then fails
                await clock.sleep_until(clock.now() + 20)
                raise ValueError("fails after 20 s")
            await asyncio.Event().wait()

        task = supervisor.spawn("closer", run)
        await _advance(clock, 10)
        looping = supervisor.report()["closer"]
        await _advance(clock, 30)
        quiet = supervisor.report()["closer"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return [looping, quiet]

    looping, quiet = asyncio.run(main())
    assert looping["crash_loop"] and looping["restarts"] == 3 and looping["up"]
    assert not quiet["crash_loop"] and quiet["up"] and quiet["restarts"] == 4
    # 1, 2, 4 s; then, after 20 s of work, from 1 s again
    assert starts == [0.0, 1.0, 3.0, 7.0, 28.0]


def test_a_returning_task_finishes_and_a_stop_cancels_a_pending_restart() -> None:
    async def main() -> tuple[dict, dict, bool]:
        clock = VirtualClock(T0)
        supervisor = Supervisor(clock, POLICY)

        async def done() -> None:
            return None

        async def broken() -> None:
            raise ValueError("always")

        finished = supervisor.spawn("metrics-bind", done)
        failing = supervisor.spawn("api", broken)
        await _advance(clock, 0.5)
        supervisor.stop()  # the daemon stops: no restart after this
        await asyncio.wait_for(failing, 1)
        await finished
        report = supervisor.report()
        return report["metrics-bind"], report["api"], failing.cancelled()

    bind, api, cancelled = asyncio.run(main())
    assert bind == {"state": "stopped", "up": True, "restarts": 0, "crash_loop": False,
                    "last_error": None}
    assert api["state"] == "stopped" and api["restarts"] == 0 and not cancelled
    assert api["last_error"] == "ValueError: always"


def test_system_exit_is_not_caught() -> None:
    async def main() -> None:
        supervisor = Supervisor(VirtualClock(T0), POLICY)

        async def leave() -> None:
            raise SystemExit(3)

        await supervisor.spawn("writer", leave)

    with pytest.raises(SystemExit):
        asyncio.run(main())


def test_a_failing_stand_in_does_not_shorten_the_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    starts: list[float] = []
    failures: list[str] = []

    async def main() -> None:
        clock = VirtualClock(T0)
        supervisor = Supervisor(clock, POLICY)

        async def run() -> None:
            starts.append(clock.now() - T0)
            if len(starts) < 3:
                raise ValueError("poll failed")
            await asyncio.Event().wait()

        async def stand_in(cause: str, until: float) -> bool:
            raise RuntimeError("the sink fails too")

        task = supervisor.spawn("bus:a", run, on_failure=failures.append, stand_in=stand_in)
        await _advance(clock, 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert starts == [0.0, 1.0, 3.0]
    assert failures == ["ValueError: poll failed"] * 2
    assert [r.error for r in caplog.records if r.getMessage() == "stand-in failed"] == [
        "RuntimeError: the sink fails too"] * 2


def test_a_task_on_a_thread_of_its_own_reports_its_failures_and_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The API's thread restarts its own server; adopted, it shows like any other task:
    each failure at ERROR with the cause and its own retry time, a crash loop, the restart."""
    caplog.set_level(logging.INFO, logger="cemsd.supervisor")
    clock = VirtualClock(T0)
    supervisor = Supervisor(clock, POLICY)
    supervisor.adopt("api")
    assert supervisor.report()["api"]["up"]
    seen = []
    for _ in range(3):
        supervisor.failed_elsewhere("api", OSError(98, "Address already in use"), 30.0)
        seen.append(supervisor.report()["api"])
    supervisor.running_again("api")
    after = supervisor.report()["api"]
    assert [s["state"] for s in seen] == ["restarting", "restarting", "crash_loop"]
    cause = "OSError: [Errno 98] Address already in use"
    assert not seen[0]["up"] and seen[0]["last_error"] == cause
    assert after == {"state": "running", "up": True, "restarts": 1, "crash_loop": True,
                     "last_error": cause}
    failed = [r for r in caplog.records if r.getMessage() == "task failed, restarting"]
    assert [(r.task, r.restart_in_s, r.levelno) for r in failed] == \
        [("api", 30.0, logging.ERROR)] * 3
    assert [r.getMessage() for r in caplog.records].count("task restarted") == 1
