"""Bus owners against simulated instruments on real sockets: faults become flagged readings
with reasons, each fault episode is logged once, a lost link comes back without a restart,
and a dead device costs its neighbours at most its own timeout."""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

import pytest

from cemsd.acquisition import BusOwner
from cemsd.clock import VirtualClock, WallClock
from cemsd.daemon import modbus_transport
from cemsd.plan import compile_plan
from cemsd.readings import Reading
from cemsd.store import schema
from helpers import (
    database,
    free_port,
    interrupt_bus,
    run_virtual,
    write_config,
    write_scenario,
)
from simulators.server import SimulatorServer

START = "2026-06-01T00:00:00+08:00"
FAULTS = [  # (kind, start, end, extra), minutes after start
    ("exception", 2, 4, {"code": 2}),
    ("garbage", 6, 8, {}),
    ("no_reply", 10, 12, {}),
    ("slow", 14, 16, {"delay": 0.15}),  # slower than usual, within its 0.25 s timeout
]


def _plant(tmp: Path, port: int, *, transport: str = "tcp", poll: float = 2.0,
           faulty: dict | None = None, healthy: dict | None = None) -> dict:
    if transport == "tcp":
        bus = {"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port}
    else:
        bus = {"name": "bus", "transport": "serial", "port": str(tmp / "tty-daemon"),
               "baudrate": 19200, "parity": "N"}
    return {
        "plant": {"id": "acq"},
        "points": {"outlet": {}},
        "buses": [{**bus, "timeout": 0.25, "retries": 0}],
        "devices": [
            {"name": "healthy", "bus": "bus", "device_id": 1, "profile": "n2o-analyzer-ppm",
             "poll_interval": poll, **(healthy or {})},
            {"name": "faulty", "bus": "bus", "device_id": 2, "profile": "n2o-analyzer-ppm",
             "poll_interval": poll, "backoff_max": 20.0,
             "channels": {"n2o": {"role": "o2", "unit": "%vol", "range": [0, 25],
                                  "point": "outlet"}},
             **(faulty or {})},
        ],
    }


def _scenario(tmp: Path, port: int, events: list[dict], transport: str = "tcp") -> dict:
    if transport == "tcp":
        bus = {"name": "bus", "transport": "tcp", "port": port}
    else:
        bus = {"name": "bus", "transport": "serial", "port": str(tmp / "tty-sim"),
               "link": str(tmp / "tty-daemon"), "baudrate": 19200}
    return {
        "start": START,
        "buses": [bus],
        "devices": [
            {"name": "healthy", "bus": "bus", "device_id": 1, "profile": "n2o-analyzer-ppm",
             "signals": {"n2o": {"base": 100.0}}},
            {"name": "faulty", "bus": "bus", "device_id": 2, "profile": "n2o-analyzer-ppm",
             "signals": {"n2o": {"base": 12.0}}},
        ],
        "events": events,
    }


def _events(faults: list) -> list[dict]:
    return [{"device": "faulty", "kind": kind, "start": f"{a}m", "end": f"{b}m", **extra}
            for kind, a, b, extra in faults]


def _readings(config, channel: str) -> list:
    db = database(config)
    try:
        return [r for r in db.readings_between(0, 2e9) if r.channel == channel]
    finally:
        db.close()


def _window(rows: list, epoch: float, a: float, b: float) -> list:
    return [r for r in rows if epoch + a * 60 <= r.ts.timestamp() < epoch + b * 60]


@pytest.mark.parametrize("transport", ["tcp", "serial"])
def test_each_fault_is_a_flagged_reading_with_its_reason(
    tmp_path: Path, transport: str, caplog: pytest.LogCaptureFixture, socat: str
) -> None:
    port = free_port()
    scenario = write_scenario(tmp_path, _scenario(tmp_path, port, _events(FAULTS), transport))
    config = write_config(tmp_path, _plant(tmp_path, port, transport=transport))
    caplog.set_level(logging.INFO, logger="cemsd.acquisition")
    asyncio.run(run_virtual(config, scenario, scenario.epoch + 18 * 60))

    epoch = scenario.epoch
    faulty = _readings(config, "faulty.n2o")
    expected = {
        "exception": ("D", "exception 2 (illegal data address)"),
        "garbage": ("B", "unreadable reply"),
        "no_reply": ("B", "no reply"),
    }
    slow = _window(faulty, epoch, 14, 16)
    assert len(slow) == 60 and all(r.flag == "N" for r in slow)
    for kind, a, b, _ in FAULTS[:3]:
        inside = _window(faulty, epoch, a, b)
        assert inside, kind
        flag, reason = expected[kind]
        assert {r.flag for r in inside} == {flag}, kind
        assert all(reason in r.reason and r.value is None for r in inside), kind
    # between the faults the device delivers normal values again, without a restart
    for a, b in ((0, 2), (5, 6), (9, 10), (13, 14), (17, 18)):
        rows = _window(faulty, epoch, a, b)
        assert rows and all(r.flag == "N" and r.value == pytest.approx(12.0) for r in rows)
    healthy = _window(_readings(config, "healthy.n2o"), epoch, 0, 18)
    assert len(healthy) == 18 * 30 and all(r.flag == "N" for r in healthy)

    downs = [r for r in caplog.records if r.getMessage() == "device down"]
    ups = [r for r in caplog.records if r.getMessage() == "device up"]
    assert [r.device for r in downs] == ["faulty"] * 3  # once per fault episode
    assert [r.device for r in ups] == ["faulty"] * 3


def test_lost_link_is_reopened_without_a_restart(tmp_path: Path) -> None:
    port = free_port()
    scenario = write_scenario(tmp_path, _scenario(tmp_path, port, []))
    config = write_config(tmp_path, _plant(tmp_path, port))
    epoch = scenario.epoch

    asyncio.run(interrupt_bus(config, scenario, "bus", epoch + 120, epoch + 240, epoch + 360))
    rows = _readings(config, "healthy.n2o")
    before, during, after = (_window(rows, epoch, a, b) for a, b in ((0, 2), (2.2, 3.9), (5, 6)))
    assert before and all(r.flag == "N" for r in before)
    assert during and all(r.flag == "B" for r in during)
    assert {r.reason.split(":")[0] for r in during} <= {"no link", "no reply"}
    assert after and all(r.flag == "N" for r in after)


def test_dead_device_costs_neighbours_at_most_its_timeout_in_virtual_time(
    tmp_path: Path,
) -> None:
    port = free_port()
    events = [{"device": "faulty", "kind": "no_reply", "start": 0}]
    scenario = write_scenario(tmp_path, _scenario(tmp_path, port, events))
    plant = _plant(tmp_path, port, poll=1.0, faulty={"timeout": 0.2, "retries": 1})
    config = write_config(tmp_path, plant)

    clock = VirtualClock(scenario.epoch)
    sim = SimulatorServer(scenario, clock)
    asyncio.run(run_virtual(config, scenario, scenario.epoch + 300, clock=clock, sim=sim))
    healthy = [r.ts.timestamp() for r in _readings(config, "healthy.n2o")]
    gaps = [b - a for a, b in itertools.pairwise(healthy)]
    cost = 0.2 * 2
    assert max(gaps) <= 1.0 + cost + 1e-6
    assert len(healthy) >= 299
    # back-off: far fewer attempts than polls (300 s at 1 s, doubling to 20 s)
    attempts = sim.buses["bus"].requests_by_device[2] / 2  # two tries per attempt
    assert 12 <= attempts <= 30


async def test_dead_device_costs_neighbours_at_most_its_timeout_on_the_wall_clock(
    tmp_path: Path,
) -> None:
    """Real time: the healthy device's readings keep coming while its neighbour is silent."""
    port = free_port()
    events = [{"device": "faulty", "kind": "no_reply", "start": 0}]
    scenario = write_scenario(tmp_path, _scenario(tmp_path, port, events))
    plant = _plant(tmp_path, port, poll=0.5, faulty={"timeout": 0.1, "retries": 2,
                                                      "backoff_max": 2.0},
                   healthy={"channels": {"n2o": {"range": [0, 5000]}}})
    plant["devices"][0]["timeout"] = 0.1
    config = write_config(tmp_path, plant)
    plan = compile_plan(config)
    clock = WallClock()
    sim = SimulatorServer(scenario, clock)
    await sim.start()
    received: list[Reading] = []
    owner = BusOwner(plan.buses[0], modbus_transport(plan.buses[0]), clock, received.extend)
    task = asyncio.create_task(owner.run())
    await asyncio.sleep(5.0)
    owner.request_stop()
    await asyncio.wait_for(task, 5)
    await sim.stop()
    healthy = [r.ts for r in received if r.channel == "healthy.n2o" and r.flag == "N"]
    gaps = [b - a for a, b in itertools.pairwise(healthy)]
    # pymodbus' defaults (3 s x 4 tries) would stall the bus for 12 s; here the silent
    # device costs 0.3 s at most per attempt, and attempts thin out with back-off
    assert len(healthy) >= 8
    assert max(gaps) < 0.5 + 0.3 + 0.4
    assert owner.health["faulty"].up is False
    assert sim.buses["bus"].requests_by_device[2] < 3 * len(healthy)


def test_exception_reply_on_one_block_keeps_the_others(tmp_path: Path) -> None:
    """A device answering one block with an exception still delivers its other blocks."""
    port = free_port()
    scenario = write_scenario(tmp_path, _scenario(tmp_path, port, []))
    plant = _plant(tmp_path, port)
    # a register the simulated analyzer does not have, in a block of its own
    plant["devices"][0]["channels"] = {
        "extra": {"function_code": 3, "address": 40, "data_type": "uint16", "unit": "code",
                  "kind": "digital"},
    }
    config = write_config(tmp_path, plant)
    asyncio.run(run_virtual(config, scenario, scenario.epoch + 60))
    extra = _readings(config, "healthy.extra")
    n2o = _readings(config, "healthy.n2o")
    assert extra and all(r.flag == "D" and "illegal data address" in r.reason for r in extra)
    assert n2o and all(r.flag == "N" for r in n2o)
    db = database(config)
    minutes = db.aggregates_between(schema.minutes, 0, 2e9, ["healthy.n2o"])
    db.close()
    assert minutes[0].flag == "N"
