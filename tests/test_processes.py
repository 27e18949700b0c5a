"""The daemon and the demo as separate processes, the way an operator starts them."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cemsd.store import schema
from helpers import REPO, database, free_port, wait_for, write_config, write_scenario


def _cemsd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cemsd", *args]


def test_demo_runs_the_simulated_plant_and_prints_hours(tmp_path: Path, socat: str) -> None:
    """`cemsd demo` (what `make demo` runs), shortened to three simulated hours."""
    config = tmp_path / "config"
    shutil.copytree(REPO / "config", config)
    result = subprocess.run(
        _cemsd("--log-level", "WARNING", "demo", "--config", str(config / "demo.toml"),
               "--scenario", str(config / "demo-scenario.toml"), "--hours", "3"),
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith("2026-06-01T0")]
    assert [r[:22] for r in rows] == ["2026-06-01T00:00+08:00", "2026-06-01T01:00+08:00",
                                      "2026-06-01T02:00+08:00"]
    assert all(r.count(" N") == 7 for r in rows), rows  # seven columns, all valid
    assert "3 valid hours of inlet N2O mass" in result.stdout
    db_line = next(line for line in lines if line.startswith("database: "))
    assert Path(db_line.removeprefix("database: ")) == tmp_path / ".demo" / "cemsd.db"


def test_wall_clock_daemon_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    scenario = write_scenario(tmp_path, {
        "start": "2026-01-01T00:00:00+08:00",
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [{"name": "analyzer", "bus": "bus", "device_id": 1,
                     "profile": "n2o-analyzer-ppm", "signals": {"n2o": {"base": 50.0}}}],
    })
    config = write_config(tmp_path, {
        "plant": {"id": "wall"},
        "storage": {"state_dir": str(tmp_path / "state"), "batch_seconds": 0.5},
        "points": {"outlet": {}},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.2, "retries": 0}],
        "devices": [{"name": "analyzer", "bus": "bus", "device_id": 1,
                     "profile": "n2o-analyzer-ppm", "poll_interval": 0.5}],
    })
    sim = subprocess.Popen(_cemsd("sim", "--scenario", str(scenario.source), "--start-now"),
                           stdin=subprocess.DEVNULL)
    daemon = None
    try:
        daemon = subprocess.Popen(_cemsd("run", "--config", str(config.source)),
                                  stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def stored_readings() -> int:
            db = database(config)
            try:
                return len(db.readings_between(0, 2e9))
            except Exception:  # the database may not exist yet
                return 0
            finally:
                db.close()

        wait_for(lambda: stored_readings() >= 4, timeout=30)
        sent = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
        stopped_in = time.monotonic() - sent
    finally:
        for proc in (daemon, sim):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert daemon.returncode == 0, stderr[-2000:]
    assert stopped_in < 15
    assert 'stopping reason="signal SIGTERM"' in stderr
    db = database(config)
    runs = db._fetch(schema.daemon_runs.select())
    readings = db.readings_between(0, 2e9)
    db.close()
    assert runs[0].exit_reason == "signal SIGTERM" and runs[0].stopped_at is not None
    n2o = [r for r in readings if r.channel == "analyzer.n2o"]
    assert n2o and all(r.flag == "N" and r.value == 50.0 for r in n2o)
