"""A wrong byte or word order is never stored as valid data (issue 12, item 2).

Every shipped profile is served by the simulator in its own (right) layout while the
configuration declares a wrong byte_order on every analog channel, and the other way round
(the simulator serves a wrong layout, the configuration declares the profile's): each of
the three wrong orders in turn. After the first minute no reading and no minute of an analog
channel whose decoded value differs from the truth may be N: also where the wrong order gives
another plausible number (a byte swap of the flow meter's volume flow is caught by comparing
it with velocity x duct area, cemsd/plausibility.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cemsd.config import Channel
from cemsd.store import schema
from drivers.codec import ByteOrder, decode, encode
from drivers.registry import BUILTIN_DIR, load_profile
from helpers import (
    database,
    free_port,
    run_virtual,
    write_config,
    write_scenario,
    write_toml,
)

START = "2026-06-01T00:00:00+08:00"
MINUTES = 4
ORDERS = list(ByteOrder)

# Realistic signals with noise for every analog channel of every shipped profile.
SIGNALS: dict[str, dict[str, dict[str, float]]] = {
    "n2o-analyzer-percent": {"n2o": {"base": 24.0, "noise": 0.05}},
    "n2o-analyzer-ppm": {"n2o": {"base": 2000.0, "noise": 10.0}},
    "n2o-analyzer": {"n2o": {"base": 800.0, "noise": 5.0}},
    "stack-flow-meter": {"velocity": {"base": 14.0, "noise": 0.1},
                         "temperature": {"base": 60.0, "noise": 0.5},
                         "pressure": {"base": 2.0, "noise": 0.05},
                         "moisture": {"base": 5.0, "noise": 0.1},
                         "volume_flow": {"base": 50400.0, "noise": 200.0}},
    "teledyne-t300": {"co": {"base": 50.0, "noise": 1.0}, "o2": {"base": 3.0, "noise": 0.02},
                      "co2": {"base": 10.0, "noise": 0.05},
                      "sample_temperature": {"base": 48.0, "noise": 0.2},
                      "sample_pressure": {"base": 96.0, "noise": 0.2}},
    "suto-s430": {"temperature": {"base": 25.0, "noise": 0.2},
                  "velocity": {"base": 14.0, "noise": 0.1},
                  "flow": {"base": 2000.0, "noise": 20.0}},
    "plant-io": {"bypass_position": {"base": 35.0, "noise": 0.3},
                 "production_running": {"base": 1}, "abatement_running": {"base": 1}},
}


POINTS = {"stack-flow-meter": "inlet", "teledyne-t300": "outlet", "suto-s430": "outlet"}


def test_every_shipped_profile_is_covered() -> None:
    shipped = {p.stem for p in BUILTIN_DIR.glob("*.toml")}
    assert shipped == set(SIGNALS)
    for name in shipped:
        analog = {k for k, c in load_profile(name).channels.items()
                  if c.get("kind", "analog") == "analog"}
        assert analog <= set(SIGNALS[name]), name


def _analog(profile: str) -> dict[str, Channel]:
    channels = {k: Channel.model_validate(v) for k, v in load_profile(profile).channels.items()}
    return {k: c for k, c in channels.items() if c.kind == "analog"}


def _wrong(order: ByteOrder, shift: int) -> ByteOrder:
    return ORDERS[(ORDERS.index(order) + shift) % len(ORDERS)]


def _plant(tmp: Path, shift: int, served_wrong: bool) -> tuple[Any, Any]:
    """The configuration declares wrong orders, or the simulator serves them (through
    profiles of its own in CEMSD_PROFILE_PATH that extend the shipped ones)."""
    port = free_port()
    names = list(SIGNALS)
    wrong = {n: {k: {"byte_order": _wrong(c.byte_order, shift).value}
                 for k, c in _analog(n).items()} for n in names}
    for n in names:
        # a name per shift: profiles are cached by name for the process
        write_toml(tmp / "profiles" / f"{n}-served{shift}.toml",
                   {"extends": n, "channels": wrong[n]})
    scenario = write_scenario(tmp, {
        "start": START, "seed": 12 + shift,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [{"name": n, "bus": "bus", "device_id": i + 1,
                     "profile": f"{n}-served{shift}" if served_wrong else n,
                     "signals": SIGNALS[n]} for i, n in enumerate(names)],
    })
    config = write_config(tmp, {
        "plant": {"id": "byte-order"},
        "points": {"inlet": {"duct_area_m2": 1.0},
                   "outlet": {"duct_area_m2": 0.04, "pressure_default_kpa": 0.0,
                              "moisture_default_pct": 5.0}},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.3, "retries": 0}],
        "devices": [{"name": n, "bus": "bus", "device_id": i + 1, "profile": n,
                     "poll_interval": 2.0,
                     **({"point": POINTS[n]} if n in POINTS else {}),
                     "channels": {} if served_wrong else wrong[n]}
                    for i, n in enumerate(names)],
    })
    return config, scenario


def _decoded_wrongly(spec: Channel, served: ByteOrder, declared: ByteOrder) -> bool:
    """Whether the orders change what the registers mean (a word swap does nothing to a
    16-bit value)."""
    probe = 1234.5 if spec.data_type.is_float else 1234
    return decode(encode(probe, spec.data_type, served), spec.data_type, declared) != probe


@pytest.mark.parametrize("served_wrong", [False, True], ids=["config-wrong", "served-wrong"])
@pytest.mark.parametrize("shift", [1, 2, 3], ids=lambda s: f"order+{s}")
def test_no_wrongly_decoded_value_is_stored_valid(tmp_path: Path, shift: int,
                                                 served_wrong: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEMSD_PROFILE_PATH", str(tmp_path / "profiles"))
    config, scenario = _plant(tmp_path, shift, served_wrong)
    epoch = scenario.epoch
    asyncio.run(run_virtual(config, scenario, until=epoch + MINUTES * 60))
    orders = {f"{d}.{k}": (c, SIGNALS[d][k], _wrong(c.byte_order, shift), c.byte_order)
              for d in SIGNALS for k, c in _analog(d).items()}
    if served_wrong:
        orders = {n: (c, sig, right, wrong) for n, (c, sig, wrong, right) in orders.items()}
    # name -> (spec, signal, served order, declared order); every channel whose registers
    # mean something else in the declared order, whether or not the number looks plausible
    wrong = {name for name, (c, _, served, declared) in orders.items()
             if _decoded_wrongly(c, served, declared)}
    assert len(wrong) >= 5  # the floats always, the 16-bit values when bytes swap
    db = database(config)
    try:
        readings = [r for r in db.readings_between(epoch + 60, epoch + MINUTES * 60)
                    if r.channel in wrong]
        minutes = [m for m in db.aggregates_between(schema.minutes, epoch + 60,
                                                     epoch + MINUTES * 60)
                   if m.channel in wrong or m.channel.startswith(("inlet.", "outlet."))]
    finally:
        db.close()
    assert {r.channel for r in readings} == wrong  # every channel was polled
    valid = [(r.channel, r.value) for r in readings if r.flag == "N"]
    assert valid == []
    assert minutes and [m.channel for m in minutes if m.flag == "N"] == []
    reasons = {r.reason for r in readings}
    assert any(r and r.startswith("implausible: ") for r in reasons)


def test_a_lone_byte_swapped_volume_flow_is_caught_by_velocity_times_area(
        tmp_path: Path) -> None:
    """Only the volume flow declared in the wrong byte order (DCBA for CDAB: 50,400 m3/h
    reads as a plausible few hundred): no sibling is implausible, so it is the comparison
    with velocity x duct area (HJ 212-2017 Annex D) that keeps it from N, and the velocity
    with it while they disagree."""
    port = free_port()
    scenario = write_scenario(tmp_path, {
        "start": START, "seed": 3,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [{"name": "flow", "bus": "bus", "device_id": 1,
                     "profile": "stack-flow-meter",
                     "signals": SIGNALS["stack-flow-meter"]}]})
    config = write_config(tmp_path, {
        "plant": {"id": "lone-volume-flow"},
        "points": {"inlet": {"duct_area_m2": 1.0}},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.3, "retries": 0}],
        "devices": [{"name": "flow", "bus": "bus", "device_id": 1, "point": "inlet",
                     "profile": "stack-flow-meter", "poll_interval": 2.0,
                     "channels": {"volume_flow": {"byte_order": "DCBA"}}}]})
    epoch = scenario.epoch
    asyncio.run(run_virtual(config, scenario, until=epoch + 3 * 60))
    db = database(config)
    try:
        readings = db.readings_between(epoch + 60, epoch + 3 * 60)
    finally:
        db.close()
    volume = [r for r in readings if r.channel == "flow.volume_flow"]
    assert volume and max(r.value for r in volume) < 20000  # plausible alone, and wrong
    assert [r.value for r in volume if r.flag == "N"] == []
    assert all("disagrees with velocity" in r.reason or "held" in r.reason for r in volume)
    assert any(r.channel == "flow.temperature" and r.flag == "N" for r in readings)
