"""The technician's workflow against a simulated analyzer on real sockets, daemon on a
virtual clock: `cemsd calibrate` tells where the check is (phase, seconds left, the current
reading) while it stabilises, averages and purges; a maintenance window closes by itself
at its planned end, with a warning logged before; out of control is logged at WARNING."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cemsd.cli import main
from cemsd.control import request_async
from cemsd.records import audit_entries, maintenance_windows
from helpers import RunningDaemon, calibration_plant, database

START = "2026-06-01T08:00:00+08:00"


def _plant(tmp: Path, offset_ppm: float = 0.0) -> tuple[Any, Any]:
    """Stabilisation 60 s, 6 readings 5 s apart, purge 30 s; maintenance windows warn 15
    minutes before."""
    events = [{"device": "analyzer", "kind": "offset", "channel": "n2o", "value": offset_ppm,
               "start": 0}] if offset_ppm else []
    return calibration_plant(
        tmp, START, {"stabilisation_s": 60, "purge_s": 30, "readings": 6,
                     "span_reference": 4000.0}, events,
        plant={"id": "tech", "timezone": "Asia/Shanghai"},
        qaqc={"maintenance_hours": 2.0, "maintenance_warn_minutes": 15.0})


class SimTimeLog(logging.Handler):
    """Log records with the simulated time they were logged at."""

    def __init__(self, clock: Any) -> None:
        super().__init__(logging.DEBUG)
        self.clock = clock
        self.records: list[tuple[float, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((self.clock.now(), record.levelno, record.getMessage()))


def _logging(clock: Any, *names: str) -> SimTimeLog:
    handler = SimTimeLog(clock)
    for name in names:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    return handler


def _unhook(handler: SimTimeLog, *names: str) -> None:
    for name in names:
        logging.getLogger(name).removeHandler(handler)


# --- calibrate: a live countdown ------------------------------------------------------------


def _calibrate_via_cli(tmp: Path, offset_ppm: float = 0.0) -> tuple[Any, float, list, Any]:
    config, scenario = _plant(tmp, offset_ppm)
    epoch = scenario.epoch
    outcome: dict[str, Any] = {}
    names = ("cemsd.qaqc.calibration",)

    def run_cli() -> Any:
        return CliRunner().invoke(main, [
            "calibrate", "--config", str(config.source), "--channel", "analyzer.n2o",
            "--zero", "--reference", "0", "--technician", "Wang Fang"])

    async def scenario_run() -> None:
        async with RunningDaemon(config, scenario, epoch + 900) as running:
            clock = running.clock
            handler = _logging(clock, *names)
            try:
                with clock.participant():
                    await clock.sleep_until(epoch + 300)
                    cli = asyncio.ensure_future(asyncio.to_thread(run_cli))
                    await asyncio.sleep(0.5)  # the request reaches the daemon first
                    await clock.sleep_until(epoch + 335)  # half way through stabilising
                    # a process of its own: CliRunner swaps sys.stdout for the whole process,
                    # so a second runner would catch lines of the running calibrate
                    outcome["status"] = await asyncio.to_thread(subprocess.run, [
                        sys.executable, "-m", "cemsd", "status", "--config",
                        str(config.source)], capture_output=True, text=True, timeout=60)
                outcome["result"] = await cli
                await running.finished()
            finally:
                _unhook(handler, *names)
            outcome["log"] = handler.records

    asyncio.run(scenario_run())
    return outcome["result"], epoch, outcome["log"], outcome["status"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, float, list, Any]:
    return _calibrate_via_cli(tmp_path_factory.mktemp("calibrate"))


def test_calibrate_counts_down_with_the_current_reading(calibrated: tuple) -> None:
    result, _, _, _ = calibrated
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    stabilising = [line for line in lines if line.startswith("stabilising:")]
    # every 10 s of the 60 s: 60, 50, ... 10 s left, each with the analyzer's reading
    assert [int(re.search(r"(\d+) s left", line)[1]) for line in stabilising] == \
        [60, 50, 40, 30, 20, 10]
    readings = [float(re.search(r"analyzer\.n2o = (\S+) ppm", line)[1])
                for line in stabilising]
    assert readings[0] > 1900  # still the sample when the gas goes on
    assert all(abs(r) < 20 for r in readings[1:])  # then the zero gas, flagged C
    assert all(line.endswith("(C)") for line in stabilising[1:])
    averaging = [line for line in lines if line.startswith("averaging:")]
    assert averaging and averaging[0].startswith("averaging: 0 of 6 readings")
    purging = [int(re.search(r"(\d+) s left", line)[1]) for line in lines
               if line.startswith("purging:")]
    assert purging == [30, 20, 10]
    # the order a technician sees: gas on, countdown, average, result, purge, summary
    order = [lines.index(stabilising[0]), lines.index(averaging[0]),
             next(i for i, line in enumerate(lines) if line.startswith("averaged 6")),
             next(i for i, line in enumerate(lines) if line.startswith("purging:"))]
    assert order == sorted(order)
    assert "pass within ±2.5, out of control beyond ±5" in result.stdout
    assert lines[-1].startswith("calibration #1: pass (drift ")


def test_cemsd_status_shows_the_running_check(calibrated: tuple) -> None:
    status = calibrated[3]
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == "plant time 2026-06-01T08:05+08:00"
    assert "devices: 1/1 up" in lines
    check = next(line for line in lines if line.startswith("calibrating "))
    assert re.fullmatch(r"calibrating analyzer\.n2o: stabilising, 25 s left; "
                        r"analyzer\.n2o = -?\d+(\.\d+)? ppm \(C\)", check), check
    assert any(line.strip().startswith("C  zero check of analyzer.n2o in progress")
               for line in lines)


def test_a_passing_check_is_logged_at_info(calibrated: tuple) -> None:
    _, _, log, _ = calibrated
    assert [(level, message) for _, level, message in log
            if message.startswith("calibration ")] == [(logging.INFO, "calibration pass")]


def test_out_of_control_is_logged_at_warning(tmp_path: Path) -> None:
    result, _, log, _ = _calibrate_via_cli(tmp_path, offset_ppm=400.0)  # 8 % F.S. > 5 %
    assert result.exit_code == 3, result.output
    assert "out_of_control" in result.stdout
    assert [(level, message) for _, level, message in log
            if message.startswith("calibration ")] == \
        [(logging.WARNING, "calibration out_of_control")]


# --- maintenance: a planned end -------------------------------------------------------------


def test_maintenance_closes_itself_at_its_planned_end(tmp_path: Path) -> None:
    config, scenario = _plant(tmp_path)
    epoch = scenario.epoch
    sock = config.storage.state_dir / "cemsd.sock"
    replies: dict[str, Any] = {}
    names = ("cemsd.qaqc.maintenance",)

    async def scenario_run() -> None:
        async with RunningDaemon(config, scenario, epoch + 4 * 3600) as running:
            clock = running.clock
            handler = _logging(clock, *names)
            try:
                with clock.participant():
                    await clock.sleep_until(epoch + 600)
                    # one window for 45 minutes, one with the configured default (2 h)
                    replies["short"] = await request_async(sock, {
                        "op": "maintenance.start", "channel": "analyzer.n2o",
                        "reason": "probe cleaning", "technician": "Li Wei",
                        "duration_s": 2700})
                    replies["refused"] = await request_async(sock, {
                        "op": "maintenance.start", "device": "analyzer", "reason": "x",
                        "technician": "Li Wei", "duration_s": 0})
                    await clock.sleep_until(epoch + 1200)
                    replies["default"] = await request_async(sock, {
                        "op": "maintenance.start", "device": "analyzer",
                        "reason": "filter change", "technician": "Zhao"})
                    await clock.sleep_until(epoch + 3600)
                    replies["status"] = await request_async(sock, {"op": "status"})
                await running.finished()
            finally:
                _unhook(handler, *names)
            replies["log"] = handler.records

    asyncio.run(scenario_run())
    short = replies["short"][-1]["result"]
    assert short["planned_end_at"] == epoch + 600 + 2700
    assert "more than 0 s" in replies["refused"][-1]["error"]
    default = replies["default"][-1]["result"]
    assert default["planned_end_at"] == epoch + 1200 + 2 * 3600
    windows = {w["key"]: w for w in replies["status"][-1]["result"]["windows"]}
    assert windows[f"maintenance:{default['id']}"]["until"] == "2026-06-01T10:20+08:00"

    db = database(config)
    try:
        stored = {w.id: w for w in maintenance_windows(db)}
        audit = [(a.actor, a.action, a.target) for a in audit_entries(db)
                 if a.action.startswith("maintenance")]
        readings = [r for r in db.readings_between(0, 2e9) if r.channel == "analyzer.n2o"]
    finally:
        db.close()
    # each closed by itself exactly at its planned end, recorded and audited
    assert stored[short["id"]].ended_at.timestamp() == epoch + 3300
    assert stored[default["id"]].ended_at.timestamp() == epoch + 1200 + 7200
    assert audit == [("Li Wei", "maintenance.start", "analyzer.n2o"),
                     ("Zhao", "maintenance.start", "analyzer"),
                     ("cemsd (planned end)", "maintenance.stop", "analyzer.n2o"),
                     ("cemsd (planned end)", "maintenance.stop", "analyzer")]
    # data are M inside the windows only
    flags = {r.ts.timestamp() - epoch: r.flag for r in readings}
    assert flags[600 + 5] == "M" and flags[1200 + 7200 - 5] == "M"
    assert flags[1200 + 7200 + 5] == "N" and flags[595] == "N"
    # logged: start at WARNING with who and why, a warning 15 minutes before each end,
    # a warning when each closes
    log = [(at - epoch, level, message) for at, level, message in replies["log"]]
    assert [(at, level) for at, level, m in log if m.startswith("maintenance started")] == \
        [(600, logging.WARNING), (1200, logging.WARNING)]
    assert [(at, level) for at, level, m in log if m.startswith("maintenance closes soon")] \
        == [(3300 - 900, logging.WARNING), (8400 - 900, logging.WARNING)]
    assert [(at, level) for at, level, m in log
            if m.startswith("maintenance closed at its planned end")] == \
        [(3300, logging.WARNING), (8400, logging.WARNING)]
