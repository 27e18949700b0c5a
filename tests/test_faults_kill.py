"""kill -9 of the daemon process at 22 random (seeded) points of a simulated day, each time
restarted where the clock stood, compared with an uninterrupted run of the same day.

What a kill may cost: the readings polled since the last write (the closer writes the queue
before it closes each minute, the writer every `batch_seconds`). So the rule asserted:
- every stored reading is exactly the uninterrupted run's reading of that slot;
- no hour is lost or duplicated (one row per channel and hour, one revision), and no minute
  is duplicated;
- a minute that kept all its readings equals the uninterrupted run's minute; one that lost
  some lies at a kill and counts only what was stored (never more than the reference);
- an hour none of whose minutes lost a reading equals the uninterrupted run's hour exactly;
  an hour that lost readings in a kill is exactly the aggregate of its stored minutes: its
  valid-minute count, and the mean of those minutes, N when at least 45 are valid.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from fault_helpers import integrity

from cemsd.clock import SharedClockFile
from cemsd.config import Config
from cemsd.store import schema
from helpers import (
    database,
    free_port,
    listening,
    run_virtual,
    wait_for,
    write_config,
    write_scenario,
)

START = "2026-06-01T00:00:00+08:00"
DAY = 86400.0
POLL = 5.0
BATCH_SECONDS = 0.2
KILLS = 22
INPUTS = ("analyzer-a.n2o", "analyzer-b.n2o")


def _plant(tmp: Path) -> tuple[Config, object]:
    port = free_port()
    devices = [("analyzer-a", 1, 300.0), ("analyzer-b", 2, 8.0)]
    scenario = write_scenario(tmp, {
        "start": START,
        "seed": 11,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [{"name": n, "bus": "bus", "device_id": i, "profile": "n2o-analyzer-ppm",
                     "signals": {"n2o": {"base": base, "amplitude": base / 5, "noise": base / 50}}}
                    for n, i, base in devices],
    })
    config = write_config(tmp, {
        "plant": {"id": "killed"},
        "storage": {"batch_seconds": BATCH_SECONDS},
        "points": {"outlet": {}},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 1.0, "retries": 1}],  # generous: a loaded CI box
        "devices": [{"name": n, "bus": "bus", "device_id": i, "profile": "n2o-analyzer-ppm",
                     "poll_interval": POLL, **({} if i == 1 else {
                         "channels": {"n2o": {"role": "o2", "unit": "%vol", "point": "outlet",
                                              "range": [0, 25]}}})}
                    for n, i, _ in devices],
    })
    return config, scenario


def _kill_points(seed: int = 20260601) -> list[float]:
    """22 points in the day, at least 20 simulated minutes apart, none in the first or last
    10 minutes."""
    rng = random.Random(seed)
    while True:
        points = sorted(rng.uniform(600, DAY - 600) for _ in range(KILLS))
        if min(b - a for a, b in itertools.pairwise(points)) >= 1200:
            return points


def _cemsd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cemsd", "--log-level", "ERROR", *args]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat()


def _killed_day(tmp: Path, config: Config, scenario) -> list[float]:
    """Run the day in daemon processes, killing each at the next point; return kill times."""
    epoch = scenario.epoch
    clock_path = tmp / "clock"
    clock = SharedClockFile(clock_path, create=True)
    clock.write(epoch)
    sim = subprocess.Popen(_cemsd("sim", "--scenario", str(scenario.source),
                                  "--clock-file", str(clock_path)), stdin=subprocess.DEVNULL)
    run = ["run", "--config", str(config.source), "--accelerate", "max",
           "--clock-file", str(clock_path), "--until", _iso(epoch + DAY)]
    killed: list[float] = []
    try:
        wait_for(lambda: listening(config.buses[0].port), timeout=20)
        start = epoch
        for point in _kill_points():
            daemon = subprocess.Popen(_cemsd(*run, "--start", _iso(start)),
                                      stdin=subprocess.DEVNULL)
            wait_for(lambda p=epoch + point, d=daemon: clock.read() >= p or d.poll() is not None,
                     timeout=60, interval=0.002)
            assert daemon.poll() is None, "the daemon ended before it was killed"
            os.kill(daemon.pid, signal.SIGKILL)
            assert daemon.wait(timeout=10) == -signal.SIGKILL
            start = clock.read()
            killed.append(start)
        last = subprocess.run(_cemsd(*run, "--start", _iso(start)), stdin=subprocess.DEVNULL,
                              timeout=120)
        assert last.returncode == 0
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        clock.close()
    return killed


def _stored(config: Config) -> tuple[list, list, list]:
    db = database(config)
    try:
        return (db.readings_between(0, 2e9),
                db.aggregates_between(schema.minutes, 0, 2e9, current=False),
                db.aggregates_between(schema.hours, 0, 2e9, current=False))
    finally:
        db.close()


def test_22_kills_in_a_day_lose_no_hour_and_change_only_what_they_lost(tmp_path: Path) -> None:
    ref_config, ref_scenario = _plant(tmp_path / "reference")
    asyncio.run(run_virtual(ref_config, ref_scenario, ref_scenario.epoch + DAY))
    config, scenario = _plant(tmp_path / "killed")
    epoch = scenario.epoch
    killed_at = _killed_day(tmp_path, config, scenario)
    assert len(killed_at) == KILLS

    assert integrity(config.storage.state_dir / "cemsd.db") == "ok"
    ref_readings, ref_minutes, ref_hours = _stored(ref_config)
    readings, minutes, hours = _stored(config)
    db = database(config)
    runs = db.fetch(schema.daemon_runs.select().order_by(schema.daemon_runs.c.id))
    db.close()
    assert [r.stopped_at is None for r in runs] == [True] * KILLS + [False]

    # readings: each one stored is the uninterrupted run's reading of that slot
    reference = {(r.channel, r.ts): (r.value, r.flag) for r in ref_readings}
    # (the slot at the end of the day may or may not be polled as either run stops)
    day_end = datetime.fromtimestamp(epoch + DAY).astimezone()
    differ = [(r, reference.get((r.channel, r.ts))) for r in readings
              if r.ts < day_end and reference.get((r.channel, r.ts)) != (r.value, r.flag)]
    assert not differ, differ[:5]
    slots = {(r.channel, r.ts) for r in readings}
    lost = [k for k in reference if k not in slots and k[0] in INPUTS]

    # nothing duplicated: one row per channel and period, no second revision
    for rows in (minutes, hours, ref_minutes, ref_hours):
        assert max(Counter((r.channel, r.ts) for r in rows).values()) == 1

    # no hour lost: every channel has the 24 hours of the day, in both runs
    hour_starts = [epoch + 3600.0 * i for i in range(24)]
    channels = sorted({h.channel for h in ref_hours})
    for rows in (hours, ref_hours):
        per_channel = defaultdict(list)
        for h in rows:
            per_channel[h.channel].append(h.ts.timestamp())
        assert sorted(per_channel) == channels
        assert all(sorted(ts) == hour_starts for ts in per_channel.values())

    ref_minute = {(m.channel, m.ts): m for m in ref_minutes}
    ref_hour = {(h.channel, h.ts): h for h in ref_hours}
    kills = [t - epoch for t in killed_at]
    short_minutes: dict[tuple[str, float], bool] = {}
    for m in minutes:
        if m.channel not in INPUTS:
            continue
        ref = ref_minute[(m.channel, m.ts)]
        start = m.ts.timestamp() - epoch
        if m.n_valid == ref.n_valid:
            assert (m.value, m.flag) == (ref.value, ref.flag), m
        else:  # readings lost at a kill: fewer, never more, and the mean of those stored
            assert m.n_valid < ref.n_valid, m
            assert any(start - 60 <= k <= start + 120 for k in kills), m
            short_minutes[(m.channel, start - start % 3600)] = True
            kept = {r.ts: r.value for r in readings if r.channel == m.channel
                    and r.flag == "N" and m.ts <= r.ts < m.ts + timedelta(minutes=1)}
            assert m.n_valid == len(kept), m
            if m.flag == "N":
                assert math.isclose(m.value, sum(kept.values()) / len(kept), rel_tol=1e-12)
    missing_minutes = {(k[0], k[1].timestamp() - epoch) for k in ref_minute
                       if k[0] in INPUTS} - {(m.channel, m.ts.timestamp() - epoch)
                                             for m in minutes}
    for channel, start in missing_minutes:  # not a single reading of it was stored
        assert any(start - 60 <= k <= start + 120 for k in kills), (channel, start)
        short_minutes[(channel, start - start % 3600)] = True

    exact, worst = 0, 0.0
    for h in hours:
        if h.channel not in INPUTS:
            continue
        ref = ref_hour[(h.channel, h.ts)]
        if not short_minutes.get((h.channel, h.ts.timestamp() - epoch)):
            assert (h.value, h.n_valid, h.flag) == (ref.value, ref.n_valid, ref.flag), h
            exact += 1
            continue
        valid = [m.value for m in minutes if m.channel == h.channel and m.flag == "N"
                 and h.ts <= m.ts < h.ts + timedelta(hours=1)]
        assert h.n_valid == len(valid), h
        assert (h.flag == "N") == (len(valid) >= 45), h
        if len(valid) >= 45:
            assert math.isclose(h.value, sum(valid) / len(valid), rel_tol=1e-12), h
            worst = max(worst, abs(h.value - ref.value) / abs(ref.value))
    lost_per_kill = len(lost) / KILLS / len(INPUTS)
    at_kill = Counter((channel, min(killed_at, key=lambda k, t=ts: abs(k - t.timestamp())))
                      for channel, ts in lost)
    worst_kill = max(at_kill.values(), default=0)
    twice = sum(n - 1 for n in Counter((r.channel, r.ts) for r in readings).values())
    print(f"{KILLS} kills; {exact} of {24 * len(INPUTS)} input hours identical to the "
          f"uninterrupted run; {len(lost)} readings lost ({lost_per_kill:.1f} per kill and "
          f"channel, at most {worst_kill}, {POLL:g} s polls); {twice} slots polled again "
          "after a restart; "
          f"{len(missing_minutes)} minutes without any reading; "
          f"hours that lost readings differ from the reference by at most {worst:.2e} "
          "(relative)")
    assert worst_kill <= 24  # at most two minutes of polls per kill and channel
