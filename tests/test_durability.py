"""kill -9 of a real daemon process mid-minute and mid-hour, then a restart: what was
stored stays, the unfinished minute and hour are rebuilt from stored readings, nothing is
duplicated, and at most the last write batch is lost."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

from cemsd.clock import SharedClockFile
from cemsd.config import load_config
from cemsd.store import schema
from helpers import database, free_port, listening, wait_for, write_config, write_scenario

START = "2026-06-01T00:00:00+08:00"
SPEED = 300.0
BATCH_SECONDS = 0.2  # wall clock: at 300x a batch is 60 simulated seconds
KILL_AT = 3600 + 12 * 60 + 23  # 01:12:23 local, mid-minute and mid-hour
END = 2 * 3600


def _cemsd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cemsd", "--log-level", "WARNING", *args]


def _files(tmp: Path) -> tuple[Path, Path]:
    port = free_port()
    devices = [("analyzer-a", 1), ("analyzer-b", 2)]
    scenario = write_scenario(tmp, {
        "start": START,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [{"name": n, "bus": "bus", "device_id": i, "profile": "n2o-analyzer-ppm",
                     "signals": {"n2o": {"base": 100.0 * i, "noise": 1.0}}}
                    for n, i in devices],
    })
    config = write_config(tmp, {
        "plant": {"id": "durable"},
        "storage": {"state_dir": str(tmp / "state"), "batch_seconds": BATCH_SECONDS},
        "points": {"outlet": {}},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.3, "retries": 1}],
        "devices": [{"name": n, "bus": "bus", "device_id": i, "profile": "n2o-analyzer-ppm",
                     "poll_interval": 2.0, **({} if i == 1 else {
                         "channels": {"n2o": {"role": "o2", "unit": "%vol", "point": "outlet",
                                              "range": [0, 5000]}}})}
                    for n, i in devices],
    })
    return config.source, scenario.source


def test_kill_9_loses_at_most_the_last_batch_and_duplicates_nothing(tmp_path: Path) -> None:
    config_path, scenario_path = _files(tmp_path)
    config = load_config(config_path)
    epoch = datetime.fromisoformat(START).timestamp()
    clock_path = tmp_path / "clock"
    clock = SharedClockFile(clock_path, create=True)
    clock.write(epoch)
    sim = subprocess.Popen(_cemsd("sim", "--scenario", str(scenario_path),
                                  "--clock-file", str(clock_path)), stdin=subprocess.DEVNULL)
    try:
        port = config.buses[0].port
        wait_for(lambda: listening(port), timeout=20)
        run = ["run", "--config", str(config_path), "--accelerate", str(SPEED),
               "--clock-file", str(clock_path)]
        first = subprocess.Popen(_cemsd(*run, "--start", START, "--until", f"+{END}s"),
                                 stdin=subprocess.DEVNULL)
        wait_for(lambda: clock.read() >= epoch + KILL_AT, timeout=60)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = clock.read()
        restart_at = datetime.fromtimestamp(killed_at).astimezone().isoformat()
        second = subprocess.run(_cemsd(*run, "--start", restart_at,
                                       "--until", datetime.fromtimestamp(epoch + END)
                                       .astimezone().isoformat()),
                                stdin=subprocess.DEVNULL, timeout=120)
        assert second.returncode == 0
    finally:
        sim.terminate()
        sim.wait(timeout=10)

    assert first.returncode == -signal.SIGKILL
    db = database(config)
    readings = db.readings_between(0, 2e9)
    minutes = db.aggregates_between(schema.minutes, 0, 2e9)
    hours = db.aggregates_between(schema.hours, 0, 2e9)
    runs = db._fetch(schema.daemon_runs.select().order_by(schema.daemon_runs.c.id))
    db.close()

    # the crashed run never wrote its stop; the second did
    assert [r.stopped_at is None for r in runs] == [True, False]
    assert runs[1].exit_reason == "reached --until"

    # nothing duplicated: one minute and one hour per channel and period
    assert not [k for k, n in Counter((m.channel, m.ts) for m in minutes).items() if n > 1]
    assert not [k for k, n in Counter((h.channel, h.ts) for h in hours).items() if n > 1]

    # every minute is exactly what its stored readings say
    valid: Counter[tuple[str, float]] = Counter()
    for r in readings:
        if r.flag == "N":
            valid[(r.channel, r.ts.timestamp() // 60 * 60)] += 1
    for m in minutes:
        if not m.channel.startswith("outlet."):
            assert m.n_valid == valid[(m.channel, m.ts.timestamp())], (m.channel, m.ts)

    # readings lost to the kill: at most one write batch (plus the poll in flight)
    a = sorted(r.ts.timestamp() for r in readings if r.channel == "analyzer-a.n2o")
    gap = max(b - x for x, b in itertools.pairwise(a))
    assert gap <= BATCH_SECONDS * SPEED * 2 + 2.0, gap
    print(f"kill at {killed_at - epoch:.0f} s; longest reading gap {gap:.0f} s; "
          f"hour 1 valid minutes {[h.n_valid for h in hours if h.channel == 'analyzer-a.n2o']}")

    # every hour exists once and counts the valid minutes stored for it
    per_hour = Counter()
    for m in minutes:
        if m.flag == "N":
            per_hour[(m.channel, (m.ts.timestamp() - epoch) // 3600)] += 1
    a_hours = [h for h in hours if h.channel == "analyzer-a.n2o"]
    assert [h.ts.timestamp() - epoch for h in a_hours] == [0, 3600]
    for h in hours:
        if h.channel.startswith("analyzer"):
            assert h.n_valid == per_hour[(h.channel, (h.ts.timestamp() - epoch) // 3600)]
    assert a_hours[0].flag == "N" and a_hours[0].n_valid == 60  # before the kill: complete
    assert a_hours[1].n_valid >= 60 - 3  # the kill costs at most the minutes of one batch

