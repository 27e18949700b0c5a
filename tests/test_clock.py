"""Clocks (cemsd/clock.py): VirtualClock barrier semantics, pacing, the shared clock file,
and the wall clock."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from cemsd.clock import FileClock, SharedClockFile, VirtualClock, WallClock

T0 = 1_780_000_000.0
LIMIT = 5.0  # no test here should take a second of wall time unless it paces on purpose


async def settle(rounds: int = 20) -> None:
    """Let every ready task and callback run a few times over."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# --- the barrier ---------------------------------------------------------------------------


async def test_single_participant_jumps_to_its_target() -> None:
    clock = VirtualClock(T0)

    async def worker() -> float:
        with clock.participant():
            await clock.sleep_until(T0 + 86_400.0)
            return clock.now()

    assert await asyncio.wait_for(worker(), LIMIT) == T0 + 86_400.0
    assert clock.now() == T0 + 86_400.0
    assert clock.participants_active == 0


async def test_time_stands_still_while_a_participant_is_active() -> None:
    clock = VirtualClock(T0)
    seen: list[float] = []
    log: list[str] = []

    async def busy() -> None:
        with clock.participant():
            for _ in range(10):
                await asyncio.sleep(0.005)  # real work, not on the clock
                seen.append(clock.now())
            log.append("busy done")

    async def sleeper() -> None:
        with clock.participant():
            await clock.sleep_until(T0 + 10.0)
            log.append(f"sleeper woke at {clock.now() - T0:g}")

    await asyncio.wait_for(asyncio.gather(busy(), sleeper()), LIMIT)
    assert seen == [T0] * 10
    assert log == ["busy done", "sleeper woke at 10"]
    assert clock.now() == T0 + 10.0


async def test_participants_wake_in_order_at_their_exact_targets() -> None:
    clock = VirtualClock(T0)
    woke: list[tuple[str, float, float]] = []
    targets = {"a": T0 + 30.25, "b": T0 + 0.1, "c": T0 + 7.3, "d": T0 + 7.3}

    async def sleeper(name: str) -> None:
        with clock.participant():
            await clock.sleep_until(targets[name])
            woke.append((name, targets[name], clock.now()))

    await asyncio.wait_for(asyncio.gather(*(sleeper(n) for n in targets)), LIMIT)
    assert [w[0] for w in woke] in (["b", "c", "d", "a"], ["b", "d", "c", "a"])
    for _, target, now in woke:
        assert now == target  # exactly, not approximately
    assert clock.now() == T0 + 30.25


async def test_repeated_sleeps_interleave() -> None:
    clock = VirtualClock(T0)
    log: list[tuple[str, float]] = []

    async def poller(name: str, period: float, n: int) -> None:
        with clock.participant():
            for i in range(1, n + 1):
                await clock.sleep_until(T0 + i * period)
                log.append((name, clock.now() - T0))

    await asyncio.wait_for(asyncio.gather(poller("fast", 2.0, 6), poller("slow", 5.0, 2)),
                           LIMIT)
    times = [t for _, t in log]
    assert times == sorted(times)
    assert [t for n, t in log if n == "fast"] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert [t for n, t in log if n == "slow"] == [5.0, 10.0]


async def test_sleep_into_the_past_returns_without_moving_time() -> None:
    clock = VirtualClock(T0)

    async def worker() -> float:
        with clock.participant():
            await clock.sleep_until(T0 - 5.0)
            await clock.sleep_until(T0)
            return clock.now()

    assert await asyncio.wait_for(worker(), LIMIT) == T0


async def test_waiting_on_something_else_freezes_time() -> None:
    clock = VirtualClock(T0)
    event = asyncio.Event()
    log: list[tuple[str, float]] = []

    async def waits_for_event() -> None:
        with clock.participant():
            await event.wait()  # not a clock wait: the participant still counts as busy
            log.append(("event", clock.now()))
            await clock.sleep_until(T0 + 20.0)
            log.append(("waiter woke", clock.now()))

    async def sleeper() -> None:
        with clock.participant():
            await clock.sleep_until(T0 + 10.0)
            log.append(("sleeper woke", clock.now()))

    async def outsider() -> None:  # not a participant
        await asyncio.sleep(0.05)
        log.append(("set", clock.now()))
        event.set()

    tasks = [asyncio.create_task(c) for c in (waits_for_event(), sleeper(), outsider())]
    await asyncio.sleep(0.02)
    assert clock.now() == T0
    assert log == []
    await asyncio.wait_for(asyncio.gather(*tasks), LIMIT)
    assert log == [("set", T0), ("event", T0), ("sleeper woke", T0 + 10.0),
                   ("waiter woke", T0 + 20.0)]


async def test_charge_advances_the_participant_by_the_given_seconds() -> None:
    clock = VirtualClock(T0)
    log: list[tuple[str, float]] = []

    async def failing_poll() -> None:
        with clock.participant():
            await clock.charge(0.6)
            log.append(("charged", clock.now()))
            await clock.charge(0.6)
            log.append(("charged", clock.now()))

    async def other() -> None:
        with clock.participant():
            await clock.sleep_until(T0 + 1.0)
            log.append(("other", clock.now()))

    await asyncio.wait_for(asyncio.gather(failing_poll(), other()), LIMIT)
    assert log == [("charged", T0 + 0.6), ("other", T0 + 1.0), ("charged", T0 + 0.6 + 0.6)]


async def test_charge_waits_for_other_participants() -> None:
    clock = VirtualClock(T0)
    release = asyncio.Event()
    done: list[float] = []

    async def charged() -> None:
        with clock.participant():
            await clock.charge(5.0)
            done.append(clock.now())

    async def holder() -> None:
        with clock.participant():
            await release.wait()

    tasks = [asyncio.create_task(charged()), asyncio.create_task(holder())]
    await asyncio.sleep(0.02)
    assert done == []
    assert clock.now() == T0
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), LIMIT)
    assert done == [T0 + 5.0]


# --- cancellation --------------------------------------------------------------------------------


@pytest.mark.parametrize("cancelled_target", [5.0, 100.0])
async def test_cancelling_a_sleeping_participant_keeps_time_going(
    cancelled_target: float,
) -> None:
    # 5.0: the cancelled waiter is the earliest; 100.0: it sits behind the others
    clock = VirtualClock(T0)
    gate = asyncio.Event()
    log: list[float] = []

    async def holder() -> None:
        with clock.participant():
            await gate.wait()

    async def victim() -> None:
        with clock.participant():
            await clock.sleep_until(T0 + cancelled_target)
            log.append(-1.0)  # must never run

    async def survivor() -> None:
        with clock.participant():
            await clock.sleep_until(T0 + 10.0)
            log.append(clock.now() - T0)
            await clock.sleep_until(T0 + 200.0)
            log.append(clock.now() - T0)

    h = asyncio.create_task(holder())
    v = asyncio.create_task(victim())
    s = asyncio.create_task(survivor())
    await settle()
    assert clock.participants_active == 1  # only the holder is busy
    v.cancel()
    with pytest.raises(asyncio.CancelledError):
        await v
    await settle()
    assert clock.participants_active == 1  # the victim left without a trace
    assert clock.now() == T0
    gate.set()
    await asyncio.wait_for(asyncio.gather(h, s), LIMIT)
    assert log == [10.0, 200.0]
    assert clock.now() == T0 + 200.0
    assert clock.participants_active == 0


async def test_cancelling_the_only_sleeper_then_starting_another() -> None:
    clock = VirtualClock(T0)
    gate = asyncio.Event()

    async def holder() -> None:
        with clock.participant():
            await gate.wait()

    async def sleeper(t: float) -> float:
        with clock.participant():
            await clock.sleep_until(t)
            return clock.now()

    h = asyncio.create_task(holder())
    v = asyncio.create_task(sleeper(T0 + 3.0))
    await settle()
    v.cancel()
    with pytest.raises(asyncio.CancelledError):
        await v
    gate.set()
    await asyncio.wait_for(h, LIMIT)
    assert clock.participants_active == 0
    assert clock.now() == T0  # nobody waits: the cancelled target is not reached
    assert await asyncio.wait_for(sleeper(T0 + 7.0), LIMIT) == T0 + 7.0


async def test_timeout_around_a_clock_sleep() -> None:
    # asyncio.wait_for cancels the inner sleep: the participant is busy again afterwards
    clock = VirtualClock(T0)
    gate = asyncio.Event()
    log: list[float] = []

    async def holder() -> None:
        with clock.participant():
            await gate.wait()

    async def impatient() -> None:
        with clock.participant():
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(clock.sleep_until(T0 + 50.0), 0.02)
            log.append(clock.now())
            assert clock.participants_active == 2  # holder and this one
            gate.set()
            await clock.sleep_until(T0 + 60.0)
            log.append(clock.now())

    await asyncio.wait_for(asyncio.gather(holder(), impatient()), LIMIT)
    assert log == [T0, T0 + 60.0]


async def test_participant_leaving_with_an_error_releases_time() -> None:
    clock = VirtualClock(T0)

    async def crasher() -> None:
        with clock.participant():
            await asyncio.sleep(0.01)
            raise RuntimeError("boom")

    async def sleeper() -> float:
        with clock.participant():
            await clock.sleep_until(T0 + 1.0)
            return clock.now()

    results = await asyncio.wait_for(asyncio.gather(crasher(), sleeper(),
                                                    return_exceptions=True), LIMIT)
    assert isinstance(results[0], RuntimeError)
    assert results[1] == T0 + 1.0


# --- pacing -----------------------------------------------------------------------------------


async def test_speed_paces_simulated_time() -> None:
    clock = VirtualClock(T0, speed=3600.0)  # one simulated hour per wall second
    started = time.monotonic()

    async def worker() -> None:
        with clock.participant():
            await clock.sleep_until(T0 + 900.0)
            assert clock.now() == T0 + 900.0
            await clock.sleep_until(T0 + 1800.0)

    await asyncio.wait_for(worker(), LIMIT)
    elapsed = time.monotonic() - started
    assert clock.now() == T0 + 1800.0
    assert elapsed >= 0.5 * 0.98  # half an hour at 3600x: at least ~0.5 s; no upper bound


async def test_without_speed_a_simulated_day_takes_no_wall_time_to_speak_of() -> None:
    # the counterpart of the pacing test: the same step with speed=None is not paced
    clock = VirtualClock(T0)

    async def worker() -> None:
        with clock.participant():
            for minute in range(1, 1441):
                await clock.sleep_until(T0 + 60.0 * minute)

    await asyncio.wait_for(worker(), LIMIT)  # a day of minutes, far faster than 1 day
    assert clock.now() == T0 + 86_400.0


# --- the shared clock file -------------------------------------------------------------------


async def test_shared_file_publishes_virtual_time(tmp_path: Path) -> None:
    path = tmp_path / "run" / "clock"
    shared = SharedClockFile(path, create=True)
    try:
        clock = VirtualClock(T0, shared_file=shared)
        reader = FileClock(path, wait_seconds=1.0)
        assert path.stat().st_size == 8
        assert reader.now() == T0
        assert shared.read() == T0

        async def worker() -> None:
            with clock.participant():
                await clock.sleep_until(T0 + 60.5)
                assert reader.now() == T0 + 60.5
                await clock.sleep_until(T0 + 3600.0)

        follower_done: list[float] = []

        async def follower() -> None:  # polls the file, as the simulator process does
            await reader.sleep_until(T0 + 60.0)
            follower_done.append(reader.now())

        f = asyncio.create_task(follower())
        await asyncio.sleep(0.03)
        assert follower_done == []  # the virtual clock has not moved yet
        await asyncio.wait_for(asyncio.gather(worker(), f), LIMIT)
        assert reader.now() == T0 + 3600.0
        assert follower_done and follower_done[0] >= T0 + 60.0
        await asyncio.wait_for(reader.charge(100.0), LIMIT)  # a no-op for the reader
        assert reader.now() == T0 + 3600.0
        with reader.participant():
            assert reader.now() == T0 + 3600.0
    finally:
        shared.close()


def test_file_clock_gives_up_when_the_file_never_appears(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileClock(tmp_path / "missing", wait_seconds=0.1)


def test_file_clock_waits_until_the_file_is_written(tmp_path: Path) -> None:
    # SharedClockFile(create=True) writes the file with Path.write_bytes: open (create,
    # truncate) and then write, so for a moment the file exists with 0 bytes. FileClock
    # waits only for the file to exist and then maps 8 bytes of it, which fails on a short
    # file ("mmap length is greater than file size") instead of waiting for the writer.
    path = tmp_path / "clock"
    path.touch()  # the writer has created the file and not written it yet

    def writer_finishes() -> None:
        writer = SharedClockFile(path, create=True)
        writer.write(T0)
        writer.close()

    timer = threading.Timer(0.1, writer_finishes)
    timer.start()
    try:
        reader = FileClock(path, wait_seconds=2.0)
        assert reader.now() == T0
    finally:
        timer.join()


def test_reader_attached_before_the_writer_recreates_the_file_follows_it(
    tmp_path: Path,
) -> None:
    # `cemsd sim --clock-file` may start first: FileClock waits for the file, or maps one a
    # previous run left behind. A daemon that then creates the clock file anew must be
    # heard by that reader, so (re)creating must keep the file the reader has mapped.
    path = tmp_path / "clock"
    previous = SharedClockFile(path, create=True)
    previous.write(T0 - 86_400.0)
    previous.close()
    reader = FileClock(path, wait_seconds=1.0)
    assert reader.now() == T0 - 86_400.0
    shared = SharedClockFile(path, create=True)
    try:
        VirtualClock(T0, shared_file=shared)  # publishes its start at once
        assert shared.read() == T0
        assert reader.now() == T0
    finally:
        shared.close()


def test_shared_file_round_trips_floats_exactly(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    writer = SharedClockFile(path, create=True)
    reader = SharedClockFile(path)
    try:
        assert reader.read() == 0.0
        for t in (T0, T0 + 0.1, 1e-300, -5.5, 4102444800.123456):
            writer.write(t)
            assert reader.read() == t
    finally:
        reader.close()
        writer.close()


# --- the wall clock ------------------------------------------------------------------------------


async def test_wall_clock_sleep_until_returns_after_the_target() -> None:
    clock = WallClock()
    assert abs(clock.now() - time.time()) < 1.0
    target = time.time() + 0.05
    await asyncio.wait_for(clock.sleep_until(target), LIMIT)
    assert time.time() >= target
    assert clock.now() >= target


async def test_wall_clock_past_target_and_no_op_methods() -> None:
    clock = WallClock()
    await asyncio.wait_for(clock.sleep_until(time.time() - 10.0), LIMIT)
    # charging 30 s must not sleep: the time has really passed on a wall clock
    assert await asyncio.wait_for(clock.charge(30.0), LIMIT) is None
    with clock.participant():
        pass


async def test_time_moves_on_when_only_an_observer_wakes() -> None:
    """A non-participant's wake-up must not leave time stuck with every participant asleep."""
    clock = VirtualClock(T0)
    seen: list[float] = []

    async def observer() -> None:
        await clock.sleep_until(T0 + 5)  # not a participant: wakes first, holds nothing
        seen.append(clock.now())

    async def participant() -> None:
        with clock.participant():
            await clock.sleep_until(T0 + 60)
            seen.append(clock.now())

    await asyncio.wait_for(asyncio.gather(observer(), participant()), timeout=5)
    assert seen == [T0 + 5, T0 + 60]
