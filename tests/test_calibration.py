"""Calibration scenarios with simulated drift, through the control socket, on real sockets.

One analyzer (0-5000 ppm, full scale 5000), zero gas 0 ppm and span gas 4000 ppm behind
remote valves. Its error follows the scenario: drift (corrected by the analyzer's adjust
coil), offsets (not correctable: a fault), gain drift (span). Limits from HJ 75-2017 §11:
pass ±2.5 % F.S., out of control beyond 5 % (zero) or 10 % (span).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cemsd.control import request_async
from cemsd.records import audit_entries, calibrations, control_periods
from cemsd.store import schema
from helpers import RunningDaemon, calibration_plant, database

START = "2026-06-01T00:00:00+08:00"
FULL_SCALE = 5000.0


def _files(tmp: Path, events: list[dict], calibration: dict[str, Any] | None = None,
           qaqc: dict[str, Any] | None = None) -> tuple:
    settings = {"stabilisation_s": 120, "purge_s": 60, "readings": 6, "span_reference": 4000.0,
                "adjust_automatically": True, **(calibration or {})}
    return calibration_plant(tmp, START, settings, events, **({"qaqc": qaqc} if qaqc else {}))


def _run(config, scenario, hours: float, checks: list[tuple[float, dict]]) -> dict:
    """Run the plant; at each (minutes, request) send the request through the socket."""
    epoch = scenario.epoch
    sock = config.storage.state_dir / "cemsd.sock"
    replies: list[list[dict]] = []

    async def main() -> None:
        async with RunningDaemon(config, scenario, epoch + hours * 3600) as running:
            clock = running.clock
            pending = []
            with clock.participant():
                for minutes, payload in checks:
                    await clock.sleep_until(epoch + minutes * 60)
                    pending.append(asyncio.create_task(request_async(sock, payload)))
                await clock.sleep_until(clock.now() + 1)
            replies.extend([await task for task in pending])
            await running.finished()

    asyncio.run(main())
    db = database(config)
    try:
        return {
            "epoch": epoch, "replies": replies,
            "calibrations": calibrations(db), "periods": control_periods(db),
            "readings": [r for r in db.readings_between(0, 2e9) if r.channel == "analyzer.n2o"],
            "minutes": db.aggregates_between(schema.minutes, 0, 2e9, ["analyzer.n2o"],
                                             current=False),
            "hours": db.aggregates_between(schema.hours, 0, 2e9, ["analyzer.n2o"],
                                           current=False),
            "audit": audit_entries(db),
        }
    finally:
        db.close()


def _check(kind: str, reference: float, **extra: Any) -> dict:
    return {"op": "calibrate", "channel": "analyzer.n2o", "kind": kind, "reference": reference,
            "technician": "Wang Fang", **extra}


# --- pass, adjust, out of control -----------------------------------------------------------

DRIFT_EVENTS = [
    # +180 ppm/h from 00:40 to 01:30: 150 ppm of zero drift, correctable
    {"device": "analyzer", "kind": "drift", "channel": "n2o", "per_hour": 180.0,
     "start": "40m", "end": "1h30m"},
    # +300 ppm from 02:30 to 03:30: a fault the adjustment cannot correct
    {"device": "analyzer", "kind": "offset", "channel": "n2o", "value": 300.0,
     "start": "2h30m", "end": "3h30m"},
    # span: +14 % of the reading per hour from 04:00 to 05:00
    {"device": "analyzer", "kind": "gain_drift", "channel": "n2o", "per_hour": 14.0,
     "start": "4h", "end": "5h"},
]
CHECKS = [(30, _check("zero", 0.0)), (95, _check("zero", 0.0)), (120, _check("zero", 0.0)),
          (160, _check("zero", 0.0)), (220, _check("zero", 0.0)),
          (305, _check("span", 4000.0)), (330, _check("zero", 0.0))]


@pytest.fixture(scope="module")
def drift(tmp_path_factory: pytest.TempPathFactory) -> dict:
    config, scenario = _files(tmp_path_factory.mktemp("drift"), DRIFT_EVENTS)
    return _run(config, scenario, 6, CHECKS)


def test_results_follow_the_drift(drift: dict) -> None:
    results = [(c.kind, c.result) for c in drift["calibrations"]]
    assert results == [("zero", "pass"), ("zero", "adjust"), ("zero", "pass"),
                       ("zero", "out_of_control"), ("zero", "pass"), ("span", "out_of_control"),
                       ("zero", "pass")]
    drifts = [c.drift_pct_fs for c in drift["calibrations"]]
    # hand calculation: (measured - reference) / 5000 * 100, noise 2 ppm over 6 readings
    expected = [0.0, 150 / FULL_SCALE * 100, 0.0, 300 / FULL_SCALE * 100, 0.0,
                4000 * 0.14 / FULL_SCALE * 100, 0.0]
    assert drifts == pytest.approx(expected, abs=0.05)
    assert all(c.technician == "Wang Fang" and c.mode == "remote" and c.n_readings == 6
               for c in drift["calibrations"])
    assert [r[-1]["result"]["id"] for r in drift["replies"]] == \
        [c.id for c in drift["calibrations"]]


def test_adjust_is_applied_by_the_analyzer(drift: dict) -> None:
    adjust, after = drift["calibrations"][1], drift["calibrations"][2]
    assert adjust.result == "adjust" and adjust.pass_limit_pct == 2.5
    assert abs(after.drift_pct_fs) < 0.1  # the drift is gone after the adjust coil
    lines = [line.get("progress", "") for line in drift["replies"][1]]
    assert "adjustment applied by the analyzer" in lines


def test_out_of_control_invalidates_exactly_until_the_passing_check(drift: dict) -> None:
    cals, epoch = drift["calibrations"], drift["epoch"]
    failed, passed = cals[3], cals[4]
    [zero_period] = [p for p in drift["periods"] if p.opened_by == failed.id]
    assert zero_period.kind == "out_of_control"
    assert zero_period.started_at == failed.ended_at
    assert zero_period.ended_at == passed.ended_at and zero_period.closed_by == passed.id
    start, end = failed.ended_at.timestamp(), passed.started_at.timestamp()
    inside = [r for r in drift["readings"] if start <= r.ts.timestamp() < end]
    assert len(inside) == pytest.approx((end - start) / 5, abs=1)
    assert {r.flag for r in inside} == {"D"}
    assert all(f"out of control since zero check #{failed.id}" in r.reason for r in inside)
    # just before: the purge of the failing check (C); after the passing check: N again
    purge = [r for r in drift["readings"] if start - 50 <= r.ts.timestamp() < start]
    assert purge and {r.flag for r in purge} == {"C"}
    after = [r for r in drift["readings"]
             if passed.ended_at.timestamp() <= r.ts.timestamp() < epoch + 300 * 60]
    assert after and {r.flag for r in after} == {"N"}


def test_a_span_period_is_not_closed_by_a_zero_check(drift: dict) -> None:
    cals = drift["calibrations"]
    span, zero_after = cals[5], cals[6]
    [period] = [p for p in drift["periods"] if p.opened_by == span.id]
    assert period.ended_at is None  # the passing zero check at 05:30 does not end it
    assert zero_after.result == "pass"
    late = [r for r in drift["readings"] if r.ts.timestamp() > zero_after.ended_at.timestamp()]
    assert late and {r.flag for r in late} == {"D"}
    assert all("span check" in r.reason for r in late)


def test_each_check_is_one_audit_entry(drift: dict) -> None:
    entries = [a for a in drift["audit"] if a.action.startswith("calibration.")]
    assert len(entries) == len(CHECKS)
    assert all(a.actor == "Wang Fang" and a.target == "analyzer.n2o" for a in entries)


# --- overdue ------------------------------------------------------------------------------


def test_an_overdue_calibration_flags_data_until_a_check(tmp_path: Path) -> None:
    config, scenario = _files(tmp_path, [], {"interval_hours": 2.0})
    manual = _check("zero", 0.0, manual_reading=20.0, note="read off the display")
    result = _run(config, scenario, 4, [(180, manual)])
    epoch = result["epoch"]
    due = epoch + 2 * 3600  # commissioning (the first start) + 2 h
    [period] = result["periods"]
    assert period.kind == "calibration_overdue" and period.started_at.timestamp() == due
    [check] = result["calibrations"]
    assert check.mode == "manual" and check.measured == 20.0 and check.result == "pass"
    assert check.drift_pct_fs == pytest.approx(20 / FULL_SCALE * 100)
    assert period.ended_at == check.ended_at and period.closed_by == check.id
    t_check = check.ended_at.timestamp()
    # a poll at the very instant the technician records the check may fall either side
    flags = {(r.ts.timestamp() < due, r.ts.timestamp() < t_check, r.flag)
             for r in result["readings"] if r.ts.timestamp() != t_check}
    assert flags == {(True, True, "N"), (False, True, "D"), (False, False, "N")}
    overdue = [r for r in result["readings"] if due <= r.ts.timestamp() < t_check]
    assert all("calibration overdue since 2026-06-01T02:00+08:00" in r.reason for r in overdue)


# --- back to the last passing check: corrections ------------------------------------------------


def test_out_of_control_back_to_the_last_pass_supersedes_stored_periods(tmp_path: Path) -> None:
    events = [{"device": "analyzer", "kind": "offset", "channel": "n2o", "value": 400.0,
               "start": "2h50m"}]
    config, scenario = _files(tmp_path, events, qaqc={"out_of_control_back_to_last_pass": True})
    result = _run(config, scenario, 4, [(30, _check("zero", 0.0)), (180, _check("zero", 0.0))])
    good, bad = result["calibrations"]
    assert (good.result, bad.result) == ("pass", "out_of_control")
    t0, t1 = good.ended_at.timestamp(), bad.started_at.timestamp()
    minutes = result["minutes"]
    corrected = [m for m in minutes if m.revision == 1]
    originals = {m.id: m for m in minutes if m.revision == 0}
    assert corrected
    assert all(t0 <= m.ts.timestamp() < t1 and m.flag == "D" for m in corrected)
    for m in corrected:
        old = originals[m.supersedes]
        assert (old.channel, old.ts, old.flag) == (m.channel, m.ts, "N")
        assert old.value == m.value  # kept, now flagged
        assert "back to the last good check" in m.reason
    whole = int((t1 - t0) // 60) - 1  # every whole minute between the checks
    assert len(corrected) >= whole
    hours = {(h.ts, h.revision): h for h in result["hours"]}
    epoch = result["epoch"]
    for hour in (1, 2):
        ts = next(k[0] for k in hours if k[0].timestamp() == epoch + hour * 3600)
        first, second = hours[(ts, 0)], hours[(ts, 1)]
        assert first.flag == "N" and second.flag == "D" and second.supersedes == first.id
    assert [a.action for a in result["audit"]].count("correction.invalidate") == 1


# --- the daily schedule ---------------------------------------------------------------------------


def test_automatic_checks_run_on_schedule(tmp_path: Path) -> None:
    config, scenario = _files(tmp_path, [], {"mode": "automatic", "zero_at": "00:30",
                                             "span_at": "01:10"})
    result = _run(config, scenario, 2, [])
    checks = [(c.kind, c.mode, c.technician, c.started_at.timestamp() - result["epoch"])
              for c in result["calibrations"]]
    assert checks == [("zero", "automatic", "cemsd (scheduled)", 30 * 60),
                      ("span", "automatic", "cemsd (scheduled)", 70 * 60)]
    assert all(c.result == "pass" for c in result["calibrations"])


# --- requests that must change nothing ------------------------------------------------------


def test_bad_requests_are_refused_and_change_nothing(tmp_path: Path) -> None:
    config, scenario = _files(tmp_path, [])
    requests = [
        (10, _check("zero", 0.0, channel="analyzer.nox")),
        (11, _check("span", 6000.0)),
        (12, _check("zero", 0.0, technician=" ")),
        (13, _check("zero", 0.0)),  # runs for 3 minutes ...
        (14, _check("span", 4000.0)),  # ... so this one finds it busy
    ]
    result = _run(config, scenario, 0.5, requests)
    errors = [r[-1].get("error") for r in result["replies"]]
    assert "unknown channel 'analyzer.nox'" in errors[0]
    assert "reference 6000 ppm is outside the measuring range [0, 5000]" in errors[1]
    assert "say who calibrates" in errors[2]
    assert errors[3] is None and result["replies"][3][-1]["result"]["result"] == "pass"
    assert "a calibration of analyzer.n2o is running on analyzer" in errors[4]
    assert len(result["calibrations"]) == 1
    assert [a.action for a in result["audit"]] == ["config.load", "calibration.remote"]
