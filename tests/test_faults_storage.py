"""Storage faults on the wall clock, across a minute end: another process holding the
database's write lock longer than the busy timeout, and a full disk (a small tmpfs the test
mounts and fills). Each time: one clear error when it starts and one line when it ends,
polling goes on, the reading queue stays within its bound (the oldest dropped and counted),
nothing is corrupted, the minute is closed only once its readings are stored, and the
backlog is written when the database accepts writes again."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import (
    SettableWallClock,
    daemon_on,
    integrity,
    messages,
    small_plant,
    wall_until,
)

from cemsd.daemon import Daemon
from cemsd.flags import Flag
from cemsd.periods import MINUTE
from cemsd.readings import Reading
from cemsd.store import packing, schema
from cemsd.store.database import Database
from cemsd.store.writer import Store
from helpers import MetricSamples, database, free_port, metric_value, scrape_metrics

BUSY_TIMEOUT = 5.0  # cemsd.store.database: PRAGMA busy_timeout=5000


class Observed:
    """What the test sees of the running daemon: every reading polled, the queue depth."""

    def __init__(self, daemon: Daemon) -> None:
        assert daemon.pipeline is not None and daemon.store is not None
        self.store = daemon.store
        self.polled: list[Reading] = []
        self.max_pending = 0
        daemon.pipeline.live_listeners.append(self.polled.extend)

    async def sample(self, until: float) -> None:
        while time.monotonic() < until:
            self.max_pending = max(self.max_pending, self.store.pending)
            await asyncio.sleep(0.02)


def _key(channel: str, ts: float) -> tuple[str, int]:
    # the storage's own microseconds: rounding both to ms split a time stored as x.5 ms
    return channel, packing.epoch_us(ts)


def _check_stored(config, polled: list[Reading], dropped: int) -> tuple[list, list]:
    db = database(config)
    try:
        readings = db.readings_between(0, 2e9)
        minutes = db.aggregates_between(schema.minutes, 0, 2e9)
    finally:
        db.close()
    assert integrity(config.storage.state_dir / "cemsd.db") == "ok"
    # every polled reading is stored exactly once, except the counted drops
    stored = Counter(_key(r.channel, r.ts.timestamp()) for r in readings)
    assert max(stored.values()) == 1
    assert len(readings) == len(polled) - dropped
    assert set(stored) <= {_key(r.channel, r.ts) for r in polled}
    # every minute closed counts exactly the valid readings stored for it
    valid = Counter((r.channel, r.ts.timestamp() // 60 * 60) for r in readings if r.flag == "N")
    assert not [k for k, n in Counter((m.channel, m.ts) for m in minutes).items() if n > 1]
    for m in minutes:
        if not m.channel.startswith("outlet."):
            assert m.n_valid == valid[(m.channel, m.ts.timestamp())], m
    return readings, minutes


def _polling_went_on(polled: list[Reading], poll: float, t0: float, t1: float) -> None:
    channel = "n2o-analyzer.n2o"
    times = sorted(r.ts for r in polled if r.channel == channel and t0 <= r.ts < t1)
    # polling went on through the fault: no gap near its length (a loaded machine may skip a
    # few grid slots; a stalled bus would show one gap as long as the fault)
    slack = max(0.5, (t1 - t0) / 3)
    assert times and times[0] < t0 + poll + slack and times[-1] > t1 - poll - slack
    assert max(b - a for a, b in itertools.pairwise(times)) < poll + slack


# --- a locked database ----------------------------------------------------------------------

_LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")  # the write lock, as a backup tool or sqlite3 shell would
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def test_database_locked_by_another_process(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    poll, hold = 1.0, 2 * BUSY_TIMEOUT
    config, scenario = small_plant(tmp_path, poll)
    caplog.set_level(logging.INFO)

    async def run() -> tuple[Observed, float, float]:
        minute_end = scenario.epoch + 3600
        clock = SettableWallClock(minute_end - 6)
        async with daemon_on(config, scenario, clock) as daemon:
            seen = Observed(daemon)
            await wall_until(clock, minute_end - 4)
            locker = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _LOCKER, str(config.storage.state_dir / "cemsd.db"),
                str(hold), stdout=subprocess.PIPE)
            assert locker.stdout is not None
            assert (await locker.stdout.readline()).strip() == b"locked"
            locked_at = clock.now()
            await seen.sample(time.monotonic() + hold)
            assert await locker.wait() == 0
            released_at = clock.now()
            await seen.sample(time.monotonic() + 4.0)  # catching up
            assert daemon.store is not None and daemon.store.pending < 20
        return seen, locked_at, released_at

    seen, locked_at, released_at = asyncio.run(run())
    _, minutes = _check_stored(config, seen.polled, dropped=0)
    _polling_went_on(seen.polled, poll, locked_at, released_at)

    failing = messages(caplog.records, "database write failing")
    assert len(failing) == 1 and "database is locked" in failing[0].error
    assert len(messages(caplog.records, "database writes recovered")) == 1
    assert len(messages(caplog.records, "cannot close period, retrying")) <= 1
    # the minute that ended during the lock was closed after it, from all its readings
    during = [m for m in minutes if locked_at < m.ts.timestamp() + MINUTE <= released_at]
    assert during and all(m.created_at.timestamp() >= released_at - 0.5 for m in during)
    print(f"lock held {released_at - locked_at:.1f} s; queue peaked at {seen.max_pending} "
          "readings")


# --- a full disk ----------------------------------------------------------------------------

TMPFS_BYTES = 8 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 8 MiB for the state directory (mounting needs root; CI runs as root)."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755",
                           "tmpfs", str(mountpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test (needs root): {done.stderr}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _fill(directory: Path) -> Path:
    """Take every free byte of the file system."""
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(bytes(64 * 1024))
                f.flush()
        except OSError:
            pass
    return filler


def test_full_disk(tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    poll, full_for, bound = 0.5, 10.0, 50
    metrics_port = free_port()
    config, scenario = small_plant(tmp_path, poll, {"state_dir": str(small_disk),
                                                    "max_pending_readings": bound},
                                   metrics={"port": metrics_port})
    caplog.set_level(logging.INFO)

    async def run() -> tuple[Observed, float, float, float, int, MetricSamples]:
        minute_end = scenario.epoch + 3600
        clock = SettableWallClock(minute_end - 6)
        async with daemon_on(config, scenario, clock) as daemon:
            assert daemon.store is not None
            seen = Observed(daemon)
            await wall_until(clock, minute_end - 4)
            filler = await asyncio.to_thread(_fill, small_disk)
            full_at = clock.now()
            await seen.sample(time.monotonic() + full_for)
            during = await scrape_metrics(metrics_port)  # what an operator's alert sees
            filler.unlink()
            freed_at, freed_mono = clock.now(), time.monotonic()
            while daemon.store.failing_since is not None or daemon.store.pending > 10:
                assert time.monotonic() - freed_mono < 15, "writes did not catch up"
                await asyncio.sleep(0.05)
            catch_up = time.monotonic() - freed_mono
            await seen.sample(time.monotonic() + 3.0)
            dropped = daemon.store.dropped_readings
        return seen, full_at, freed_at, catch_up, dropped, during

    seen, full_at, freed_at, catch_up, dropped, during = asyncio.run(run())
    assert metric_value(during, "cemsd_database_write_failing") == 1
    assert metric_value(during, "cemsd_readings_queued") == bound
    assert 0 < metric_value(during, "cemsd_readings_dropped_total") <= dropped
    assert os.statvfs(small_disk).f_bavail > 0
    assert seen.max_pending <= bound
    assert dropped > 0  # 10 s at 8 readings a second is more than the bound of 50
    readings, minutes = _check_stored(config, seen.polled, dropped)
    _polling_went_on(seen.polled, poll, full_at, freed_at)
    # what was dropped is the oldest of the outage; the newest are stored
    stored = {_key(r.channel, r.ts.timestamp()) for r in readings}
    lost = sorted(r.ts for r in seen.polled if _key(r.channel, r.ts) not in stored)
    assert len(lost) == dropped and full_at - 1.0 <= lost[0] and lost[-1] < freed_at

    failing = messages(caplog.records, "database write failing")
    assert len(failing) == 1 and "full" in failing[0].error
    assert len(messages(caplog.records, "reading queue full, dropping the oldest")) == 1
    recovered = messages(caplog.records, "database writes recovered")
    assert len(recovered) == 1 and recovered[0].dropped == dropped
    # minutes of the outage are closed after it, from the readings that were kept
    during = [m for m in minutes if full_at < m.ts.timestamp() + MINUTE <= freed_at]
    assert during and all(m.created_at.timestamp() >= freed_at - 0.5 for m in during)
    print(f"disk full {freed_at - full_at:.1f} s; queue bound {bound}, peak "
          f"{seen.max_pending}; dropped {dropped}; caught up {catch_up:.2f} s after space "
          "returned")


# --- what the queue bound means in memory ---------------------------------------------------


def test_queued_readings_cost_about_130_bytes_each() -> None:
    """The bound is a number of readings; this is what one costs while queued (values and
    reasons as polling makes them: names shared, a reason per failed poll)."""
    store = Store(Database("sqlite://"), max_pending=50_000)
    names = [f"device-{i}.n2o" for i in range(4)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(25_000):
            ts = 1.78e9 + 5.0 * i
            reason = f"no reply: no reply within 0.25 s x {i % 3}"
            store.add_readings([Reading(names[0], ts, 100.0 + i, Flag.N),
                                Reading(names[1], ts, 12.0 + i, Flag.N),
                                Reading(names[2], ts, None, Flag.B, reason),
                                Reading(names[3], ts, None, Flag.B, reason)])
        per_reading = (tracemalloc.get_traced_memory()[0] - before) / store.pending
    finally:
        tracemalloc.stop()
    assert store.pending == 50_000 and store.dropped_readings == 50_000
    assert per_reading < 160
    print(f"{per_reading:.0f} bytes per queued reading")
