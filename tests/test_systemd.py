"""systemd's notification protocol and the watchdog, against a stand-in notification
socket: READY once the pollers and storage are up, WATCHDOG every WATCHDOG_USEC/2 while
the daemon progresses and not while its event loop, its database writer or a bus owner
is stuck, STATUS with the summary, STOPPING at shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from pathlib import Path

import pytest

from cemsd.clock import VirtualClock
from cemsd.config import Config
from cemsd.daemon import Daemon
from cemsd.logs import Episode
from cemsd.service import Service
from cemsd.systemd import Notifier, bus_allowance
from helpers import free_port, write_config, write_scenario
from ops_helpers import NotifyListener, plant, scenario
from simulators.server import SimulatorServer

WATCHDOG_SECONDS = 1.0  # WATCHDOG_USEC=1000000: a ping every 0.5 s


@pytest.fixture
def listener() -> NotifyListener:
    notify = NotifyListener()
    yield notify
    notify.close()


def _gaps(times: list[float], start: float, end: float) -> list[float]:
    inside = [t for t in times if start <= t <= end]
    return [b - a for a, b in itertools.pairwise([start, *inside, end])]


async def _wait(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _ready_service(config: Config, clock: VirtualClock, listener: NotifyListener
                         ) -> tuple[Service, asyncio.Task[int]]:
    """`cemsd run` as systemd starts it (a watchdog of WATCHDOG_SECONDS), once READY=1."""
    notifier = Notifier({"NOTIFY_SOCKET": listener.address,
                         "WATCHDOG_USEC": str(int(WATCHDOG_SECONDS * 1e6))})
    service = Service(config, lambda c: Daemon(c, clock, clock_name="virtual"), notifier)
    running = asyncio.create_task(service.run())
    await _wait(lambda: listener.times("READY", "1"))
    return service, running


async def test_ready_watchdog_status_and_stopping_and_what_stops_the_watchdog(
        tmp_path: Path, listener: NotifyListener, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cemsd.systemd")
    live_port, dead_port = free_port(), free_port()
    config = write_config(tmp_path, plant(tmp_path, live_port, dead_port))
    scene = write_scenario(tmp_path, scenario(live_port, dead_port))
    clock = VirtualClock(scene.epoch, speed=1.0)  # simulated time at the pace of wall time
    sim = SimulatorServer(scene, clock)
    await sim.start()
    service, running = await _ready_service(config, clock, listener)
    try:
        daemon = service.daemon
        assert daemon is not None and daemon.ready.is_set() and daemon.store is not None
        ready_at = listener.times("READY", "1")[0]

        # Healthy: a ping about every half second, and the summary once devices answered.
        await _wait(lambda: any("2/3 devices up" in s for s in listener.values("STATUS")))
        await asyncio.sleep(2.0)
        healthy = [t for t in listener.times("WATCHDOG", "1") if t > ready_at]
        assert len(healthy) >= 4
        status = next(s for s in listener.values("STATUS") if "2/3 devices up" in s)
        assert "outbox 0" in status

        # 1. The event loop blocked: nothing can be sent (a timer thread would go on).
        blocked_from = time.monotonic()
        time.sleep(2.5)  # noqa: ASYNC251 - blocking the loop on purpose
        blocked_to = time.monotonic()
        await asyncio.sleep(1.5)
        pings = listener.times("WATCHDOG", "1")
        assert not [t for t in pings if blocked_from + 0.2 < t < blocked_to]
        assert [t for t in pings if t > blocked_to]  # back once the loop runs

        # 2. The database writer stuck: the loop runs (it says why in STATUS) but no ping.
        stuck_from = time.monotonic()
        await daemon.store.call(time.sleep, 3.0)
        stuck_to = time.monotonic()
        await asyncio.sleep(1.5)
        pings = listener.times("WATCHDOG", "1")
        assert max(_gaps(pings, stuck_from, stuck_to)) >= 3.0 - WATCHDOG_SECONDS - 0.6
        assert any("database worker busy" in s for s in listener.values("STATUS"))
        assert [t for t in pings if t > stuck_to]

        # 3. A bus owner hanging in an operation on its link.
        owner = next(o for o in daemon.owners if o.name == "a")
        release = asyncio.Event()

        async def hang(transport: object, device: object) -> None:
            await release.wait()

        hung = asyncio.create_task(owner.execute("analyzer", hang))
        hung_from, hung_from_wall = time.monotonic(), time.time()
        # only what came after the hang began: the blocked loop of step 1 left the bus
        # without a poll cycle too, and said so
        await _wait(lambda: any("bus a without a poll cycle" in s
                                for s in listener.values("STATUS", since=hung_from)))
        allowance = bus_allowance(owner) + WATCHDOG_SECONDS
        await asyncio.sleep(1.0)
        release.set()
        await hung
        hung_to = time.monotonic()
        await _wait(lambda: [t for t in listener.times("WATCHDOG", "1") if t > hung_to])
        pings = listener.times("WATCHDOG", "1")
        assert max(_gaps(pings, hung_from, hung_to)) >= hung_to - hung_from - allowance - 0.6
        assert hung_to - hung_from > allowance  # the pings stopped only after the allowance

        # Each stall was logged once when it began and once when it ended. (On a loaded
        # machine the 1 s allowance of this test can see a real, short stall of its own.)
        withheld = [r for r in caplog.records if r.getMessage().startswith("watchdog withheld")]
        resumed = [r for r in caplog.records if r.getMessage().startswith("watchdog resumed")]
        assert len(withheld) == len(resumed) >= 2, [r.getMessage() for r in caplog.records]
        stalls = [r.stalls for r in withheld]
        # the provoked writer stall; sealing on a loaded machine may add a real one of its own
        assert sum("database worker busy" in s for s in stalls) >= 1, stalls
        # the provoked hang exactly once; the blocked loop of step 1 may have left one too
        hang_stalls = [r.stalls for r in withheld if r.created >= hung_from_wall]
        assert sum("bus a without a poll cycle" in s for s in hang_stalls) == 1, stalls

        service.request_stop("test over")
        assert await asyncio.wait_for(running, 60) == 0
    finally:
        if not running.done():
            running.cancel()
        await sim.stop()
    assert listener.keys_in_order()[0] == "READY" or listener.keys_in_order()[:2] == [
        "WATCHDOG", "READY"]
    assert listener.keys_in_order()[-1] == "STOPPING" or listener.keys_in_order()[-2:] == [
        "STOPPING", "WATCHDOG"]
    assert listener.values("STOPPING") == ["1"]
    assert "stopping: test over" in listener.values("STATUS")


def test_notifier_addresses_and_watchdog_variables(listener: NotifyListener,
                                                   tmp_path: Path) -> None:
    abstract = Notifier({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "30000000"})
    assert abstract.watchdog_seconds == 30.0
    assert abstract.send("STATUS=abstract")
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        on_path = Notifier({"NOTIFY_SOCKET": str(path)})
        assert on_path.send("READY=1", "STATUS=on a path")
        assert receiver.recv(100) == b"READY=1\nSTATUS=on a path"
    listener.wait_for(lambda: "abstract" in listener.values("STATUS"))
    # Not started by systemd: nothing to send, and no watchdog.
    assert not Notifier({}).enabled and not Notifier({}).send("READY=1")
    # A watchdog meant for another process (WATCHDOG_PID) is not ours.
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "5000000",
                     "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_seconds is None
    assert Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "5000000",
                     "WATCHDOG_PID": str(os.getpid())}).watchdog_seconds == 5.0
    # Nobody listening: the message is dropped, never an exception in the daemon.
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not gone.send("WATCHDOG=1") and gone.dropped == 1


def test_a_fault_episode_is_logged_when_it_starts_and_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("cemsd.test.episode")
    caplog.set_level(logging.DEBUG, logger="cemsd.test.episode")
    episode = Episode(logger, "peer unreachable")
    for attempt in range(5):
        episode.failed(attempt=attempt)
    episode.recovered("peer reachable again")
    episode.recovered("peer reachable again")  # not failing: nothing to say
    episode.failed(attempt=9)
    loud = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG]
    assert loud == [("ERROR", "peer unreachable"), ("INFO", "peer reachable again"),
                    ("ERROR", "peer unreachable")]
    back = next(r for r in caplog.records if r.getMessage() == "peer reachable again")
    assert back.repeats == 4 and back.after_s >= 0


async def test_a_long_migration_extends_the_start_timeout_while_it_progresses(
        tmp_path: Path, listener: NotifyListener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start-up busy converting readings says so and extends TimeoutStartSec; a start-up
    whose steps stopped is reported once the grace since its last step is over."""
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import text

    from cemsd import systemd
    from cemsd.store import packing
    from cemsd.store.database import MIGRATIONS, Database

    live_port, dead_port = free_port(), free_port()
    config = write_config(tmp_path, plant(tmp_path, live_port, dead_port))
    db = Database(config.storage.database_url)
    db.upgrade()
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:  # back to the one-row-a-reading layout, with readings
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0012")
        conn.execute(text("INSERT INTO readings (channel, ts, value, flag) VALUES "
                          "('analyzer.n2o', '2026-06-01 00:00:00.000000', :v, 'N')"),
                     [{"v": float(i)} for i in range(2000)])
    db.close()
    monkeypatch.setattr(packing, "MIGRATION_CHUNK", 100)
    monkeypatch.setattr(systemd, "EXTEND_EVERY_SECONDS", 0.0)  # every step, to count them
    scene = write_scenario(tmp_path, scenario(live_port, dead_port))
    clock = VirtualClock(scene.epoch)
    service, running = await _ready_service(config, clock, listener)
    try:
        ready_at = listener.times("READY", "1")[0]
        extended = listener.times("EXTEND_TIMEOUT_USEC",
                                  str(int(systemd.START_GRACE_SECONDS * 1e6)))
        assert len(extended) == 1 + 2000 // 100 and max(extended) <= ready_at
        said = listener.values("STATUS")
        assert said[0] == "starting: migrating the database schema"
        assert "starting: 2,000 of 2,000 readings converted to blocks" in said
    finally:
        service.request_stop("test over")
        await running

    # The grace counts from the latest step: a start-up stuck after its steps is reported.
    monkeypatch.setattr(systemd, "START_GRACE_SECONDS", 0.2)
    stuck = Daemon(config, clock, clock_name="virtual")
    watchdog = systemd.Watchdog(service.notifier, lambda: stuck, service._status_line)
    watchdog.tick()
    assert watchdog.withheld == []
    await asyncio.sleep(0.3)
    watchdog.tick()
    assert watchdog.withheld and watchdog.withheld[0].startswith("no running daemon for")
    watchdog.starting("1,000 of 9,000 readings converted to blocks")
    watchdog.tick()
    assert watchdog.withheld == []
