"""A simulated day through real sockets: simulators over Modbus TCP and over RTU on a pty
pair (two device ids on one serial line), the daemon on a virtual clock, SQLite storage.

One run (module fixture), several assertions:
- every hourly mean equals the scenario's analytic mean within 0.5 %;
- a 20-minute dropout of one analyzer makes exactly its hour invalid;
- a dead device on the analyzers' bus costs its neighbours no valid minute;
- derived N2O mass agrees with a hand calculation from the scenario's values.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cemsd.store import schema
from helpers import database, free_port, run_virtual, write_config, write_scenario

START = "2026-06-01T00:00:00+08:00"
HOURS = 24
DROPOUT = ("5h10m", "5h30m")  # local 05:10-05:30: hour 05 keeps < 45 valid minutes

INLET_N2O = {"base": 24.0, "amplitude": 1.5, "phase": 21600.0, "noise": 0.05}
OUTLET_N2O = {"base": 1800.0, "amplitude": 200.0, "ramp_per_hour": 2.0, "noise": 8.0}
INLET_VELOCITY = {"base": 14.0, "amplitude": 0.8, "period": 43200.0, "noise": 0.05}
OUTLET_VELOCITY = {"base": 10.4, "noise": 0.05}
CONSTANT = {
    "inlet-flow": {"temperature": 60.0, "pressure": 2.0, "moisture": 5.0},
    "outlet-flow": {"temperature": 120.0, "pressure": 0.5, "moisture": 8.0},
}


def _scenario(tmp: Path, tcp_port: int) -> dict:
    flow_signals = {
        name: {"velocity": velocity, **{k: {"base": v} for k, v in CONSTANT[name].items()}}
        for name, velocity in (("inlet-flow", INLET_VELOCITY), ("outlet-flow", OUTLET_VELOCITY))
    }
    return {
        "start": START,
        "seed": 11,
        "buses": [
            {"name": "analyzers", "transport": "tcp", "port": tcp_port},
            {"name": "rs485", "transport": "serial", "port": str(tmp / "tty-sim"),
             "link": str(tmp / "tty-daemon"), "baudrate": 19200, "parity": "N"},
        ],
        "devices": [
            {"name": "dead-analyzer", "bus": "analyzers", "device_id": 1,
             "profile": "n2o-analyzer-ppm"},
            {"name": "inlet-analyzer", "bus": "analyzers", "device_id": 2,
             "profile": "n2o-analyzer-percent", "signals": {"n2o": INLET_N2O}},
            {"name": "outlet-analyzer", "bus": "analyzers", "device_id": 3,
             "profile": "n2o-analyzer-ppm", "signals": {"n2o": OUTLET_N2O}},
            {"name": "inlet-flow", "bus": "rs485", "device_id": 1,
             "profile": "stack-flow-meter", "signals": flow_signals["inlet-flow"]},
            {"name": "outlet-flow", "bus": "rs485", "device_id": 2,
             "profile": "stack-flow-meter", "signals": flow_signals["outlet-flow"]},
        ],
        "events": [
            {"device": "dead-analyzer", "kind": "no_reply", "start": 0},
            {"device": "outlet-analyzer", "kind": "no_reply", "start": DROPOUT[0],
             "end": DROPOUT[1]},
        ],
    }


def _config(tmp: Path, tcp_port: int) -> dict:
    def device(name: str, bus: str, device_id: int, profile: str, **extra: object) -> dict:
        return {"name": name, "bus": bus, "device_id": device_id, "profile": profile,
                "poll_interval": 5.0, **extra}

    no_volume = {"volume_flow": {"enabled": False}}
    return {
        "plant": {"id": "e2e", "timezone": "Asia/Shanghai"},
        "points": {
            "inlet": {"duct_area_m2": 0.25},
            "outlet": {"duct_area_m2": 0.5},
        },
        "buses": [
            {"name": "analyzers", "transport": "tcp", "host": "127.0.0.1", "port": tcp_port,
             "timeout": 0.3, "retries": 1},
            {"name": "rs485", "transport": "serial", "port": str(tmp / "tty-daemon"),
             "baudrate": 19200, "parity": "N", "timeout": 0.3, "retries": 1},
        ],
        "devices": [
            # Silence costs real time even on a virtual clock: keep this one's timeout short.
            device("dead-analyzer", "analyzers", 1, "n2o-analyzer-ppm", timeout=0.05, retries=0,
                   backoff_max=300.0,
                   channels={"n2o": {"role": "o2", "unit": "%vol", "point": "outlet",
                                     "range": [0, 25]}}),
            device("inlet-analyzer", "analyzers", 2, "n2o-analyzer-percent"),
            device("outlet-analyzer", "analyzers", 3, "n2o-analyzer-ppm"),
            device("inlet-flow", "rs485", 1, "stack-flow-meter", point="inlet",
                   channels=no_volume),
            device("outlet-flow", "rs485", 2, "stack-flow-meter", point="outlet",
                   channels=no_volume),
        ],
    }


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory, socat: str) -> dict:
    tmp = tmp_path_factory.mktemp("day")
    port = free_port()
    scenario = write_scenario(tmp, _scenario(tmp, port))
    config = write_config(tmp, _config(tmp, port))
    until = scenario.epoch + HOURS * 3600
    asyncio.run(run_virtual(config, scenario, until))
    db = database(config)
    hours = db.aggregates_between(schema.hours, 0, 2e9)
    minutes = db.aggregates_between(schema.minutes, 0, 2e9)
    db.close()
    return {"scenario": scenario, "config": config, "hours": hours, "minutes": minutes}


def _hours_of(day: dict, channel: str) -> list:
    rows = [r for r in day["hours"] if r.channel == channel]
    assert len(rows) == HOURS, f"{channel}: {len(rows)} hours stored"
    return rows


def _analytic(day: dict, device: str, key: str, hour: int) -> float:
    signal = day["scenario"].device(device).signals[key]
    return signal.mean(hour * 3600.0, (hour + 1) * 3600.0)


@pytest.mark.parametrize(
    ("device", "key"),
    [("inlet-analyzer", "n2o"), ("outlet-analyzer", "n2o"), ("inlet-flow", "velocity"),
     ("outlet-flow", "velocity"), ("inlet-flow", "temperature")],
)
def test_hourly_means_match_the_scenario(day: dict, device: str, key: str) -> None:
    for hour, row in enumerate(_hours_of(day, f"{device}.{key}")):
        if row.flag != "N":
            continue
        expected = _analytic(day, device, key, hour)
        assert row.value == pytest.approx(expected, rel=0.005), f"hour {hour}"


def test_hours_follow_the_plant_clock(day: dict) -> None:
    starts = [r.ts.timestamp() for r in _hours_of(day, "inlet-analyzer.n2o")]
    assert starts[0] == day["scenario"].epoch  # local midnight, 16:00 UTC the day before
    assert starts == [starts[0] + 3600 * i for i in range(HOURS)]


def test_dropout_invalidates_exactly_its_hour(day: dict) -> None:
    rows = _hours_of(day, "outlet-analyzer.n2o")
    invalid = [i for i, r in enumerate(rows) if r.flag != "N"]
    assert invalid == [5]
    assert rows[5].flag == "B"
    assert rows[5].n_valid < 45 and rows[5].n_valid >= 38  # 20 min out, back within a minute
    assert "never received" in rows[5].reason or "B communication fault" in rows[5].reason
    # the derived outlet mass depends on the analyzer: the same hour, and only it
    mass = _hours_of(day, "outlet.n2o_kg_h")
    assert [i for i, r in enumerate(mass) if r.flag != "N"] == [5]


def test_dead_device_costs_its_neighbours_nothing(day: dict) -> None:
    dead = _hours_of(day, "dead-analyzer.n2o")
    assert all(r.flag == "B" and r.n_valid == 0 for r in dead)
    for channel in ("inlet-analyzer.n2o", "inlet-flow.velocity", "outlet-flow.velocity"):
        minutes = [m for m in day["minutes"] if m.channel == channel]
        assert len(minutes) == HOURS * 60
        assert all(m.flag == "N" and m.n_valid == 12 for m in minutes), channel
    outlet = [m for m in day["minutes"] if m.channel == "outlet-analyzer.n2o"]
    assert sum(m.flag == "N" for m in outlet) >= HOURS * 60 - 22


def test_serial_line_carries_two_devices(day: dict) -> None:
    for channel in ("inlet-flow.moisture", "outlet-flow.moisture"):
        rows = _hours_of(day, channel)
        assert all(r.flag == "N" and r.n_valid == 60 for r in rows)
    assert _hours_of(day, "outlet-flow.moisture")[0].value == pytest.approx(8.0, abs=0.01)


def test_inlet_mass_matches_hand_calculation(day: dict) -> None:
    """kg/h = ppm * 44.013/22.414 * Q_dry_std * 1e-6, Q from velocity, area, T, p, moisture."""
    t, p_gauge, water = 60.0, 2.0, 0.05
    for hour, row in enumerate(_hours_of(day, "inlet.n2o_kg_h")):
        n2o_ppm = _analytic(day, "inlet-analyzer", "n2o", hour) * 10_000
        velocity = _analytic(day, "inlet-flow", "velocity", hour)
        q_actual = velocity * 0.25 * 3600
        q_dry_std = q_actual * 273.15 / (273.15 + t) * (101.325 + p_gauge) / 101.325 * (1 - water)
        expected = n2o_ppm * 44.013 / 22.414 * q_dry_std * 1e-6
        assert row.flag == "N"
        assert row.value == pytest.approx(expected, rel=0.005), f"hour {hour}"
