"""A simulated month of a small plant through to the month's report and bundle (the
in-process transport, decision 0241; the same daemon as production otherwise).

Checked: every hour of the month is stored for every series; the report's totals equal
a recompute from the stored hours; `cemsd report` gives the same report; the signed
bundle of the month passes every check of `cemsd verify-bundle` and recomputes the report.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from cemsd.cli import main
from cemsd.clock import VirtualClock
from cemsd.config import Config
from cemsd.daemon import Daemon
from cemsd.reduction.bundle import export_bundle
from cemsd.reduction.production import import_days
from cemsd.reduction.report import build_report
from cemsd.reduction.verify import verify_bundle
from cemsd.store import schema
from helpers import database, write_config, write_scenario, write_toml
from simulators.inprocess import InProcessSimulator
from simulators.scenario import Scenario

# minutes of CPU (the first test also waits for the month): docs/PERFORMANCE.md
pytestmark = [pytest.mark.slow, pytest.mark.long, pytest.mark.timeout(1800)]

START = "2026-06-01T00:00:00+08:00"
DAYS = 30  # June
TONNES_A_DAY = 420.0
REL = 1e-9


# The plant's data acquisition system (DAS) as one Modbus device, as many plants expose
# their CEMS: both points' N2O and flow in one block, one request a poll. The smallest
# plant that has a report: a month of it is ~520,000 polls and 43,200 minutes.
GATEWAY = {
    "description": "CEMS data acquisition system: N2O and flow of the inlet and the outlet",
    "channels": {
        f"{point}_{what}": {"function_code": 4, "address": 2 * i, "unit": unit,
                            "range": [0.0, top], "role": role, "point": point}
        for i, (point, what, unit, top, role) in enumerate([
            ("inlet", "n2o", "%vol", 50.0, "n2o_inlet"),
            ("inlet", "flow", "m3/h", 500_000.0, "flow"),
            ("outlet", "n2o", "ppm", 5000.0, "n2o_outlet"),
            ("outlet", "flow", "m3/h", 500_000.0, "flow"),
        ])
    },
}


def _plant(tmp: Path) -> tuple[Config, Scenario]:
    scenario = write_scenario(tmp, {
        "start": START, "seed": 9,
        "buses": [{"name": "bus", "transport": "tcp", "port": 1}],
        "devices": [{"name": "das", "bus": "bus", "device_id": 1, "profile": "test-month-das",
                     "signals": {
                         "inlet_n2o": {"base": 24.0, "amplitude": 1.0, "noise": 0.05},
                         "inlet_flow": {"base": 10_000.0, "noise": 20.0},
                         "outlet_n2o": {"base": 2000.0, "amplitude": 150.0, "noise": 10.0},
                         "outlet_flow": {"base": 12_000.0, "noise": 20.0}}}],
        # three hours without the outlet's N2O: those hours are substituted
        "events": [{"device": "das", "kind": "set", "channel": "outlet_n2o",
                    "value": float("nan"), "start": "10d2h", "end": "10d5h"}],
    })
    config = write_config(tmp, {
        "plant": {"id": "month", "name": "Adipic acid line 1", "timezone": "Asia/Shanghai"},
        "storage": {"finalise_after_hours": 0},  # every hour sealed as it is closed
        "points": {"inlet": {"flow_basis": "standard_dry"},
                   "outlet": {"flow_basis": "standard_dry"}},
        "reduction": {"production_cap_t_per_year": 160_000.0,
                      "installation_date": "2025-01-01"},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": 1,
                   "timeout": 0.2, "retries": 0}],
        "devices": [{"name": "das", "bus": "bus", "device_id": 1, "profile": "test-month-das",
                     "poll_interval": 5.0}],
    })
    return config, scenario


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("month")
    (tmp / "profiles").mkdir()
    write_toml(tmp / "profiles" / "test-month-das.toml", GATEWAY)
    profiles = os.environ.get("CEMSD_PROFILE_PATH")
    os.environ["CEMSD_PROFILE_PATH"] = str(tmp / "profiles")
    try:
        return _month(tmp)
    finally:
        if profiles is None:
            del os.environ["CEMSD_PROFILE_PATH"]
        else:
            os.environ["CEMSD_PROFILE_PATH"] = profiles


def _month(tmp: Path) -> dict:
    config, scenario = _plant(tmp)
    start, end = scenario.epoch, scenario.epoch + DAYS * 86400

    async def run() -> None:
        clock = VirtualClock(start)
        sim = InProcessSimulator(scenario, clock)
        # two minutes past the month: its last hour is closed and sealed
        await Daemon(config, clock, clock_name="virtual", until=end + 120,
                     transport_factory=sim.transport).run()

    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run())
    print(f"\n{DAYS} simulated days in {time.perf_counter() - wall:.1f} s wall, "
          f"{time.process_time() - cpu:.1f} s CPU")
    db = database(config)
    days = [date(2026, 6, 1) + timedelta(days=i) for i in range(DAYS)]
    import_days(db, [(d, TONNES_A_DAY) for d in days], "import:test", end + 3600)
    report = build_report(db, config, start, end, end + 3600)
    hours = db.aggregates_between(schema.hours, start, end)
    subs = db.fetch(schema.substitutions.select())
    bundle = tmp / "bundle.tar.gz"
    export_bundle(db, config, start, end, end + 3600, bundle)
    db.close()
    return {"tmp": tmp, "config": config, "start": start, "end": end, "report": report,
            "hours": hours, "subs": subs, "bundle": bundle}


def test_every_hour_of_the_month_is_stored(month: dict) -> None:
    per_channel: dict[str, list[float]] = {}
    for row in month["hours"]:
        per_channel.setdefault(row.channel, []).append(row.ts.timestamp())
    expected = [month["start"] + 3600 * h for h in range(DAYS * 24)]
    assert {"inlet.n2o_kg_h", "outlet.n2o_kg_h", "das.inlet_n2o"} <= set(per_channel)
    assert all(sorted(times) == expected for times in per_channel.values())
    outlet = {round(r.ts.timestamp() - month["start"]) // 3600: r.flag
              for r in month["hours"] if r.channel == "outlet.n2o_kg_h"}
    outage = {10 * 24 + h for h in (2, 3, 4)}
    assert {h for h, flag in outlet.items() if flag != "N"} == outage


def test_report_totals_equal_a_recompute_from_stored_hours(month: dict) -> None:
    hours = {(r.channel, r.ts.timestamp()): r.value for r in month["hours"]}
    subs = {s.ts.timestamp(): s.value for s in month["subs"] if s.channel == "outlet.n2o_kg_h"}
    assert len(subs) == 3
    times = [month["start"] + 3600 * h for h in range(DAYS * 24)]
    generated = sum(hours[("inlet.n2o_kg_h", t)] for t in times) / 1000
    outlet = sum(subs.get(t, hours[("outlet.n2o_kg_h", t)]) for t in times) / 1000
    result = month["report"]["result"]
    assert result["totals"]["n2o_generated_t"] == pytest.approx(generated, rel=REL)
    assert result["totals"]["n2o_outlet_t"] == pytest.approx(outlet, rel=REL)
    assert result["project_emissions_t"] == pytest.approx(outlet, rel=REL)
    assert result["de_overall"] == pytest.approx(1 - outlet / generated, rel=REL)
    assert month["report"]["production"]["total_t"] == pytest.approx(DAYS * TONNES_A_DAY)
    assert result["er_t"] > 0 and len(month["report"]["hours"]) == DAYS * 24


def test_cemsd_report_gives_the_same_month(month: dict) -> None:
    last = date(2026, 6, 1) + timedelta(days=DAYS)
    cli = CliRunner().invoke(main, ["report", "--config", str(month["config"].source),
                                    "--from", "2026-06-01", "--to", last.isoformat(),
                                    "--format", "json"])
    assert cli.exit_code == 0, cli.output
    again = json.loads(cli.output)
    assert again["inputs_sha256"] == month["report"]["inputs_sha256"]
    assert again["result"] == month["report"]["result"]


def test_the_month_bundle_verifies(month: dict) -> None:
    checks = verify_bundle(month["bundle"])
    assert {c.name for c in checks} >= {"files", "chain", "rows", "recompute"}
    assert [(c.name, c.problems) for c in checks if not c.ok] == []
