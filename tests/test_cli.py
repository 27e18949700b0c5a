"""The command line as an operator uses it: refusing bad input before anything starts,
and reading stored hours back in the plant's time zone; plus the same run stored in
SQLite and in PostgreSQL gives identical periods."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cemsd.cli import main
from cemsd.config import load_config
from cemsd.store import schema
from helpers import (
    analyzer_and_flow_plant,
    database,
    free_port,
    run_virtual,
    write_config,
    write_scenario,
    write_toml,
)

START = "2026-06-01T00:00:00+08:00"


def _plant(port: int, storage: dict) -> dict:
    return analyzer_and_flow_plant("cli", port, storage=storage)


def _scenario(port: int) -> dict:
    return {
        "start": START,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [
            {"name": "analyzer", "bus": "bus", "device_id": 1, "profile": "n2o-analyzer-percent",
             "signals": {"n2o": {"base": 24.0, "ramp_per_hour": 1.0, "noise": 0.1}}},
            {"name": "flow", "bus": "bus", "device_id": 2, "profile": "stack-flow-meter",
             "signals": {"velocity": {"base": 3.0, "noise": 0.02}}},
        ],
        "events": [{"device": "analyzer", "kind": "status", "bits": [0], "start": "1h",
                    "end": "1h30m"}],
    }


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("cli")
    port = free_port()
    config = write_config(tmp, _plant(port, {"state_dir": str(tmp / "state")}))
    scenario = write_scenario(tmp, _scenario(port))
    asyncio.run(run_virtual(config, scenario, scenario.epoch + 3 * 3600))
    return {"config": config, "scenario": scenario, "tmp": tmp}


def test_run_with_a_bad_config_starts_nothing(tmp_path: Path) -> None:
    bad = write_toml(tmp_path / "bad.toml", {
        "plant": {"id": "x", "timezone": "Mars/Olympus"},
        "storage": {"state_dir": str(tmp_path / "state")},
        "buses": [{"name": "b", "transport": "tcp", "host": "127.0.0.1", "port": 70000}],
        "devices": [],
    })
    result = subprocess.run([sys.executable, "-m", "cemsd", "run", "--config", str(bad)],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert f"{bad}: plant.timezone: unknown time zone 'Mars/Olympus'" in result.stderr
    assert f"{bad}: buses[b].port:" in result.stderr
    assert "nothing was started" in result.stderr
    assert not (tmp_path / "state").exists()  # no database, no state


def test_hours_as_csv_in_plant_time(stored: dict) -> None:
    result = CliRunner().invoke(main, ["hours", "--config", str(stored["config"].source),
                                       "--from", "2026-06-01T01:00", "--to", "2026-06-01T03:00",
                                       "--channel", "analyzer.n2o", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["hour_local"] for r in rows] == ["2026-06-01T01:00+08:00", "2026-06-01T02:00+08:00"]
    assert [r["hour_utc"] for r in rows] == ["2026-05-31T17:00:00Z", "2026-05-31T18:00:00Z"]
    # hour 01: the analyzer fault bit for 30 minutes; hour 02: valid, mean of the ramp
    assert (rows[0]["flag"], rows[0]["n_valid"]) == ("D", "30")
    assert "D instrument fault" in rows[0]["reason"]
    assert rows[1]["flag"] == "N"
    assert float(rows[1]["value"]) == pytest.approx(24.0 + 2.5, rel=1e-3)
    assert rows[1]["unit"] == "%vol"


def test_hours_as_json_and_table(stored: dict) -> None:
    source = str(stored["config"].source)
    result = CliRunner().invoke(main, ["hours", "--config", source, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    channels = {r["channel"] for r in rows}
    assert {"analyzer.n2o", "flow.velocity", "inlet.n2o_kg_h", "inlet.flow_nm3_h"} <= channels
    mass = [r for r in rows if r["channel"] == "inlet.n2o_kg_h"]
    assert [r["flag"] for r in mass] == ["N", "D", "N"]
    assert "analyzer fault" in mass[1]["reason"]  # the derived hour names the root cause
    table = CliRunner().invoke(main, ["hours", "--config", source, "--channel", "analyzer.n2o"])
    assert table.exit_code == 0
    assert "2026-06-01T01:00+08:00" in table.output and " D" in table.output


def test_hours_refuses_a_bad_time(stored: dict) -> None:
    result = CliRunner().invoke(main, ["hours", "--config", str(stored["config"].source),
                                       "--from", "yesterday"])
    assert result.exit_code == 2
    assert "cannot read time 'yesterday'" in result.output


def test_sim_refuses_a_bad_scenario(tmp_path: Path) -> None:
    bad = write_toml(tmp_path / "s.toml", {"start": "2026-01-01T00:00:00", "buses": [],
                                           "devices": []})
    result = CliRunner().invoke(main, ["sim", "--scenario", str(bad)])
    assert result.exit_code == 2
    assert "start" in result.output and "UTC offset" in result.output


def test_profiles_are_listed() -> None:
    result = CliRunner().invoke(main, ["profiles"])
    assert result.exit_code == 0
    names = [line.split(":")[0] for line in result.output.splitlines()]
    assert names == ["n2o-analyzer", "n2o-analyzer-percent", "n2o-analyzer-ppm", "plant-io",
                     "stack-flow-meter", "suto-s430", "teledyne-t300"]


def test_postgresql_stores_what_sqlite_stores(stored: dict, pg_url: str,
                                              tmp_path: Path) -> None:
    """The same deterministic run into PostgreSQL: identical minutes and hours."""
    port = free_port()
    config = write_config(tmp_path, _plant(port, {"url": pg_url,
                                                  "state_dir": str(tmp_path / "state")}))
    scenario = write_scenario(tmp_path, _scenario(port))
    asyncio.run(run_virtual(config, scenario, scenario.epoch + 3 * 3600))
    sqlite_config = load_config(stored["config"].source)
    for table in (schema.minutes, schema.hours):
        got = _periods(database(config), table)
        want = _periods(database(sqlite_config), table)
        assert len(got) == len(want) > 0
        for a, b in zip(got, want, strict=True):
            assert a[:2] == b[:2] and a[3:] == b[3:]
            assert a[2] == b[2] or a[2] == pytest.approx(b[2], rel=1e-12)


def _periods(db, table) -> list[tuple]:
    try:
        return [(r.channel, r.ts, r.value, r.n_valid, r.flag, r.reason)
                for r in db.aggregates_between(table, 0, 2e9)]
    finally:
        db.close()


def test_run_start_without_an_offset_is_plant_time(tmp_path: Path) -> None:
    """As `hours --from`: `run --start 2026-06-01T00:00` is midnight at the plant
    (Asia/Shanghai), not on the machine's clock (UTC here)."""
    config = write_config(tmp_path, _plant(free_port(), {"state_dir": str(tmp_path / "s")}))
    done = subprocess.run(
        [sys.executable, "-m", "cemsd", "--log-level", "ERROR", "run", "--config",
         str(config.source), "--accelerate", "max", "--start", "2026-06-01T00:00",
         "--until", "2026-06-01T00:02"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TZ": "UTC"})
    assert done.returncode == 0, done.stderr
    db = database(config)
    try:
        minutes = db.aggregates_between(schema.minutes, 0, 4e9, ["analyzer.n2o"])
    finally:
        db.close()
    plant_midnight = 1780243200.0  # 2026-06-01T00:00+08:00
    assert [m.ts.timestamp() for m in minutes] == [plant_midnight, plant_midnight + 60]
    bad = subprocess.run([sys.executable, "-m", "cemsd", "run", "--config", str(config.source),
                          "--accelerate", "max", "--start", "midnight"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--start" in bad.stderr and "is not a time" in bad.stderr
