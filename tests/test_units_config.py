"""[[units]]: abatement units in the configuration, their checks, the implicit unit of a
plant without them, and which HJ 212 platform reports which unit."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from cemsd.config import IMPLICIT_UNIT, Config, load_config
from cemsd.errors import ConfigError
from helpers import REPO, write_config

MN = "010000A8900016F000169DC0"


def two_units() -> dict[str, Any]:
    devices: list[dict[str, Any]] = []
    for i, unit in enumerate(("l1", "l2")):
        devices += [
            {"name": f"{unit}-in", "bus": "b", "device_id": 10 * i + 1,
             "profile": "n2o-analyzer-percent", "poll_interval": 5.0, "point": f"{unit}_in"},
            {"name": f"{unit}-out", "bus": "b", "device_id": 10 * i + 2,
             "profile": "n2o-analyzer-ppm", "poll_interval": 5.0, "point": f"{unit}_out"},
            {"name": f"{unit}-io", "bus": "b", "device_id": 10 * i + 3, "profile": "plant-io",
             "poll_interval": 5.0, "channels": {} if i == 0 else {
                 "production_running": {"enabled": False},
                 "production_counter": {"enabled": False}}},
        ]
    return {
        "plant": {"id": "p"},
        "points": {f"{u}_{s}": {} for u in ("l1", "l2") for s in ("in", "out")},
        "units": [{"name": u, "inlet": f"{u}_in", "outlet": f"{u}_out",
                   "running": f"{u}-io.abatement_running", "bypass": f"{u}-io.bypass_position"}
                  for u in ("l1", "l2")],
        "buses": [{"name": "b", "transport": "tcp", "host": "127.0.0.1", "port": 1502}],
        "devices": devices,
    }


def problems(tmp_path: Path, data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        write_config(tmp_path, data)
    return {p.path: p.message for p in caught.value.problems}


def test_two_units_load_with_their_points_and_signals(tmp_path: Path) -> None:
    config = write_config(tmp_path, two_units())
    [l1, l2] = config.abatement_units()
    assert (l1.name, l1.points, l1.running, l1.bypass_channels) == \
        ("l1", ("l1_in", "l1_out"), "l1-io.abatement_running", ("l1-io.bypass_position",))
    assert config.unit_of_point("l2_out") == l2
    assert config.default_point(None) is None


def test_a_plant_without_units_is_one_implicit_unit(tmp_path: Path) -> None:
    for name in ("demo.toml", "example-plant.toml"):
        config = load_config(REPO / "config" / name)
        [unit] = config.abatement_units()
        assert (unit.name, unit.points, unit.running, unit.bypass_channels) == \
            (IMPLICIT_UNIT, ("inlet", "outlet"), "plant.abatement_running",
             ("plant.bypass_position",))
        n2o = {ch.role.value: config.channel_point(d, ch) for d, _, ch in config.all_channels()
               if ch.role is not None and ch.role.value.startswith("n2o")}
        assert n2o == {"n2o_inlet": "inlet", "n2o_outlet": "outlet"}


def test_the_shipped_two_unit_example_loads() -> None:
    config: Config = load_config(REPO / "config" / "example-two-units.toml")
    assert [u.name for u in config.abatement_units()] == ["line1", "line2"]
    assert config.abatement_units()[1].bypass_channels == ("line2-io.bypass_position",)


def test_unit_references_are_checked(tmp_path: Path) -> None:
    data = two_units()
    data["units"][0].update(inlet="nowhere", running="l1-io.production_running",
                            bypass=["l1-io.bypass_position", "l1-io.nothing"])
    data["units"][1].update(outlet="l2_out", bypass_point="l2_in")
    found = problems(tmp_path, data)
    assert found["units[0].inlet"] == "no point named 'nowhere' under [points]"
    assert found["units[0].running"] == ("channel 'l1-io.production_running' needs role "
                                         "'abatement_running'")
    assert "no channel 'l1-io.nothing'" in found["units[0].bypass"]
    assert found["units[1].bypass_point"] == "point 'l2_in' already belongs to units[1]"
    assert "'l1-io.abatement_running' (role abatement_running) belongs to no unit" in \
        found["units"]
    # the inlet analyzer of line 1 now measures at no unit's inlet
    assert "measures at an abatement unit's inlet" in found["devices[l1-in].channels.n2o.point"]


def test_a_signal_or_point_belongs_to_one_unit(tmp_path: Path) -> None:
    data = two_units()
    data["units"][1].update(inlet="l1_in", running="l1-io.abatement_running")
    data["units"][1]["bypass"] = "l1-io.bypass_position"
    found = problems(tmp_path, data)
    assert found["units[1].inlet"] == "point 'l1_in' already belongs to units[0]"
    assert found["units[1].running"] == ("channel 'l1-io.abatement_running' already belongs "
                                         "to units[0]")
    assert "already belongs to units[0]" in found["units[1].bypass"]


def test_units_and_reduction_points_do_not_mix(tmp_path: Path) -> None:
    data = two_units()
    data["reduction"] = {"inlet_point": "l1_in"}
    data["units"].append(copy.deepcopy(data["units"][0]))
    found = problems(tmp_path, data)
    assert "remove inlet_point here" in found["reduction.inlet_point"]
    assert found["units[2].name"] == "duplicate name 'l1': already used by units[0]"


def test_an_analyzer_without_a_point_needs_one_when_there_are_several_units(
        tmp_path: Path) -> None:
    data = two_units()
    del data["devices"][0]["point"]
    found = problems(tmp_path, data)
    assert "needs a point" in found["devices[l1-in].channels.n2o.point"]
    one = two_units()
    one["units"] = one["units"][:1]
    one["devices"] = [d for d in one["devices"] if d["name"].startswith("l1")]
    del one["devices"][0]["point"]
    config = write_config(tmp_path, one)  # one unit: its inlet is the default
    device = config.devices[0]
    assert config.channel_point(device, device.channels["n2o"]) == "l1_in"


def _platform(**extra: Any) -> dict[str, Any]:
    return {"name": "prov", "host": "198.51.100.7", "port": 9000, "mn": MN, "pw": "123456",
            "uploads": [2011, 2021], "codes": {"l1_out.n2o_mg_m3": "a99002"}, **extra}


def test_an_hj212_platform_reports_one_unit(tmp_path: Path) -> None:
    data = two_units()
    data["hj212"] = [
        _platform(abatement_code="SB1"),
        _platform(name="l2", unit="l2", bypass_code="SB2"),
        _platform(name="l3", unit="l3", abatement_code="SB1"),
    ]
    found = problems(tmp_path, data)
    assert "several abatement units" in found["hj212[prov].unit"]
    assert found['hj212[l2].codes."l1_out.n2o_mg_m3"'] == ("'l1_out' is another unit's point; "
                                                          "this platform reports unit 'l2'")
    assert found["hj212[l3].unit"] == "no abatement unit 'l3' (units: l1, l2)"
    data["hj212"] = [_platform(unit="l1", abatement_code="SB1", bypass_code="SB2")]
    assert write_config(tmp_path, data).hj212[0].unit == "l1"
