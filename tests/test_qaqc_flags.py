"""Every flag path end to end, through simulators, the control socket and storage.

Eight simulated hours; in hour h a condition holds from h:10 to h:40 (30 minutes, so the
hour keeps 30 valid minutes and is invalid with that condition's flag):

    h1 analyzer fault bit (D)        h5 maintenance window via the control socket (M)
    h2 value above the range (T)     h6 remote zero check via the control socket (C)
    h3 no reply (B)                  h7 the analyzer's own calibration bit (C)
    h4 production stopped (F)

Readings, minutes and hours must carry the flag, and invalid records must name the cause.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cemsd.control import request_async
from cemsd.qaqc.substitution import share_report
from cemsd.records import audit_entries, calibrations
from cemsd.store import schema
from helpers import RunningDaemon, database, free_port, write_config, write_scenario

START = "2026-06-01T00:00:00+08:00"
HOURS = 8
EXPECTED = {0: "N", 1: "D", 2: "T", 3: "B", 4: "F", 5: "M", 6: "C", 7: "C"}
CAUSE = {1: "analyzer fault", 2: "over range", 3: "no reply", 4: "source stopped",
         5: "filter change", 6: "zero check of analyzer.n2o", 7: "zero calibration running"}


def _window(hour: int) -> dict:
    return {"start": f"{hour}h10m", "end": f"{hour}h40m"}


def _files(tmp: Path) -> tuple:
    port = free_port()
    scenario = write_scenario(tmp, {
        "start": START,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [
            {"name": "analyzer", "bus": "bus", "device_id": 1,
             "profile": "n2o-analyzer-percent", "signals": {"n2o": {"base": 24.0, "noise": 0.05}},
             "calibration": {"channel": "n2o", "zero_gas": 0.0, "span_gas": 40.0}},
            {"name": "plant", "bus": "bus", "device_id": 2, "profile": "plant-io",
             "signals": {"production_running": {"base": 1}, "abatement_running": {"base": 1}}},
        ],
        "events": [
            {"device": "analyzer", "kind": "status", "bits": [0], **_window(1)},
            {"device": "analyzer", "kind": "set", "channel": "n2o", "value": 60.0, **_window(2)},
            {"device": "analyzer", "kind": "no_reply", **_window(3)},
            {"device": "plant", "kind": "set", "channel": "production_running", "value": 0,
             **_window(4)},
            {"device": "analyzer", "kind": "status", "bits": [2], **_window(7)},
        ],
    })
    config = write_config(tmp, {
        "plant": {"id": "flags"},
        "points": {"inlet": {}},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.2, "retries": 0}],
        "devices": [
            {"name": "analyzer", "bus": "bus", "device_id": 1,
             "profile": "n2o-analyzer-percent", "poll_interval": 5.0, "backoff_max": 20.0,
             "channels": {"n2o": {"calibration": {"stabilisation_s": 900, "purge_s": 900,
                                                  "readings": 10}}}},
            {"name": "plant", "bus": "bus", "device_id": 2, "profile": "plant-io",
             "poll_interval": 5.0},
        ],
    })
    return config, scenario


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("flags")
    config, scenario = _files(tmp)
    epoch = scenario.epoch
    sock = config.storage.state_dir / "cemsd.sock"
    replies: dict[str, list] = {}

    async def main() -> None:
        async with RunningDaemon(config, scenario, epoch + HOURS * 3600) as running:
            clock = running.clock
            with clock.participant():
                await clock.sleep_until(epoch + 5 * 3600 + 600)
                replies["start"] = await request_async(sock, {
                    "op": "maintenance.start", "device": "analyzer", "reason": "filter change",
                    "technician": "Li Wei"})
                await clock.sleep_until(epoch + 5 * 3600 + 2400)
                replies["stop"] = await request_async(sock, {
                    "op": "maintenance.stop", "device": "analyzer", "technician": "Li Wei"})
                await clock.sleep_until(epoch + 6 * 3600 + 600)
                check = asyncio.create_task(request_async(sock, {
                    "op": "calibrate", "channel": "analyzer.n2o", "kind": "zero",
                    "reference": 0.0, "technician": "Li Wei", "note": "weekly zero"}))
                await clock.sleep_until(epoch + 7 * 3600)
            replies["calibrate"] = await check
            await running.finished()

    asyncio.run(main())
    db = database(config)
    out = {
        "epoch": epoch, "replies": replies,
        "readings": [r for r in db.readings_between(0, 2e9) if r.channel == "analyzer.n2o"],
        "minutes": db.aggregates_between(schema.minutes, 0, 2e9, ["analyzer.n2o"]),
        "hours": db.aggregates_between(schema.hours, 0, 2e9, ["analyzer.n2o"]),
        "calibrations": calibrations(db), "audit": audit_entries(db),
        "share": share_report(db, "analyzer.n2o", epoch, epoch + HOURS * 3600),
    }
    db.close()
    return out


def _inside(rows: list, epoch: float, hour: int, a: float = 12, b: float = 28) -> list:
    t0 = epoch + hour * 3600
    return [r for r in rows if t0 + a * 60 <= r.ts.timestamp() < t0 + b * 60]


@pytest.mark.parametrize("hour", sorted(EXPECTED))
def test_readings_carry_the_flag_and_its_cause(run: dict, hour: int) -> None:
    rows = _inside(run["readings"], run["epoch"], hour)
    # 16 minutes at 5 s; a silent device is retried about every 25 s (20 s back-off,
    # its timeout, the next 5 s slot)
    assert len(rows) >= (16 * 60 // 25 if hour == 3 else 190)
    assert {r.flag for r in rows} == {EXPECTED[hour]}
    if hour:
        assert all(CAUSE[hour] in (r.reason or "") for r in rows), rows[0].reason


@pytest.mark.parametrize("hour", sorted(EXPECTED))
def test_minutes_carry_the_flag(run: dict, hour: int) -> None:
    minutes = _inside(run["minutes"], run["epoch"], hour)
    assert len(minutes) == 16
    assert {m.flag for m in minutes} == {EXPECTED[hour]}
    before = _inside(run["minutes"], run["epoch"], hour, 0, 9)
    assert {m.flag for m in before} == {"N"}


def test_hours_carry_the_flag_and_name_the_cause(run: dict) -> None:
    hours = run["hours"]
    assert [h.ts.timestamp() for h in hours] == [run["epoch"] + 3600 * i for i in range(HOURS)]
    assert {i: h.flag for i, h in enumerate(hours)} == EXPECTED
    for i, h in enumerate(hours):
        if i:
            assert 28 <= h.n_valid <= 31, (i, h.n_valid)
            assert CAUSE[i] in h.reason, (i, h.reason)


def test_stop_hours_leave_the_capture_rate(run: dict) -> None:
    share = run["share"]
    assert share["hours"] == HOURS and share["stop_hours"] == 1
    assert share["operating_hours"] == HOURS - 1
    assert share["capture_rate"] == pytest.approx(1 / 7)


def test_the_zero_check_and_the_maintenance_are_recorded_once(run: dict) -> None:
    assert run["replies"]["start"][-1]["ok"] and run["replies"]["stop"][-1]["ok"]
    lines = run["replies"]["calibrate"]
    assert any("zero gas on" in line.get("progress", "") for line in lines)
    result = lines[-1]["result"]
    [record] = run["calibrations"]
    assert record.id == result["id"] and record.result == "pass" == result["result"]
    assert record.mode == "remote" and record.technician == "Li Wei"
    assert record.n_readings == 10 and abs(record.measured) < 0.2  # zero gas, noise 0.05
    assert record.drift_pct_fs == pytest.approx(record.measured / 50 * 100)
    actions = [(a.action, a.actor, a.target) for a in run["audit"]]
    assert actions == [
        ("config.load", "cemsd", str(Path(run["audit"][0].target))),
        ("maintenance.start", "Li Wei", "analyzer"),
        ("maintenance.stop", "Li Wei", "analyzer"),
        ("calibration.remote", "Li Wei", "analyzer.n2o"),
    ]
