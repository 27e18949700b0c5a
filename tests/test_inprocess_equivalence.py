"""The in-process transport (0241) stands in for the wire in long simulations
(bench_simulation, test_month): the demo plant over the same simulated hour, once in
process and once through real sockets and a pty, must store the same readings, minutes and
hours (values, flags, counts). The hour holds the demo scenario's silent outlet analyzer
(5h to 5h20m), so failures and the back-off are compared as well as plain polls. Reasons
are left out: they quote each transport's own error text."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cemsd.clock import VirtualClock
from cemsd.config import load_config
from cemsd.daemon import Daemon
from cemsd.store import schema
from helpers import database, run_virtual
from simulators.demo import plant_copy
from simulators.inprocess import InProcessSimulator
from simulators.instrument import SimulatedInstrument
from simulators.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0
FROM = 5 * HOUR  # the scenario's outlet analyzer is silent from 5h to 5h20m


def _stored(config_path: Path, t0: float, t1: float) -> dict[str, list[tuple[Any, ...]]]:
    db = database(load_config(config_path))
    try:
        periods = {name: sorted((r.channel, r.ts.timestamp(), r.value, r.minimum, r.maximum,
                                 r.n_valid, r.n_expected, r.flag)
                                for r in db.aggregates_between(table, t0, t1))
                   for name, table in (("minutes", schema.minutes), ("hours", schema.hours))}
        periods["readings"] = sorted((r.channel, r.ts.timestamp(), r.value, r.flag)
                                     for r in db.readings_between(t0, t1))
    finally:
        db.close()
    return periods


async def _in_process(config_path: Path, scenario_path: Path) -> None:
    scenario = load_scenario(scenario_path)
    clock = VirtualClock(scenario.epoch + FROM)
    await Daemon(load_config(config_path), clock, clock_name="virtual",
                 until=clock.now() + HOUR,
                 transport_factory=InProcessSimulator(scenario, clock).transport).run()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    tmp = tmp_path_factory.mktemp("equivalence")
    plant, scenario_file = ROOT / "config/demo.toml", ROOT / "config/demo-scenario.toml"
    epoch = load_scenario(scenario_file).epoch
    span = epoch + FROM, epoch + FROM + HOUR
    direct = plant_copy(plant, scenario_file, tmp / "in-process", sockets=False)
    asyncio.run(_in_process(*direct))
    wired = plant_copy(plant, scenario_file, tmp / "sockets", sockets=True)
    scenario = load_scenario(wired[1])
    asyncio.run(run_virtual(load_config(wired[0]), scenario, until=span[1], start=span[0]))
    return {"in process": _stored(direct[0], *span), "sockets": _stored(wired[0], *span)}


@pytest.mark.parametrize("kind", ["readings", "minutes", "hours"])
def test_in_process_stores_what_the_sockets_store(both: dict[str, Any], kind: str) -> None:
    direct, wired = both["in process"][kind], both["sockets"][kind]
    assert direct, f"no {kind} stored"
    assert direct == wired


def test_the_hour_compared_holds_failures_and_valid_values(both: dict[str, Any]) -> None:
    minutes = both["in process"]["minutes"]
    flags = {(channel, flag) for channel, _, _, _, _, _, _, flag in minutes}
    assert ("outlet-analyzer.n2o", "B") in flags and ("outlet-analyzer.n2o", "N") in flags
    assert len(both["in process"]["hours"]) == len({m[0] for m in minutes})


def test_a_read_returns_its_part_of_the_register_image() -> None:
    """A read computes only the channels it reaches (the per-read shortcut); what it
    returns is still that part of the instrument's whole image, at any start and length."""
    scenario = load_scenario(ROOT / "config/demo-scenario.toml")
    checked = 0
    for device in scenario.devices:
        instrument = SimulatedInstrument(device, scenario)
        for function_code, (low, high) in instrument._spans.items():
            for t in (6 * HOUR, 14.2 * HOUR, 20 * HOUR + 5):
                image = instrument.image(function_code, t)
                for first in range(low, high):
                    for count in range(1, high - first + 1):
                        read = instrument.read(function_code, first, count, t).registers
                        assert read == [image.get(a, 0) for a in range(first, first + count)]
                        checked += 1
    assert checked > 100
