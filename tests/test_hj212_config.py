"""The [[hj212]] configuration: defaults from CN 1000, and every mistake reported with its
key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cemsd.config import load_config
from cemsd.errors import ConfigError
from helpers import REPO, write_config

MN = "010000A8900016F000169DC0"


def _plant(platforms: list[dict[str, Any]], plant_io: bool = True) -> dict[str, Any]:
    devices = [
        {"name": "outlet-analyzer", "bus": "b", "device_id": 1, "profile": "n2o-analyzer-ppm",
         "poll_interval": 5.0},
        {"name": "outlet-flow", "bus": "b", "device_id": 2, "profile": "stack-flow-meter",
         "poll_interval": 5.0, "point": "outlet"},
    ]
    if plant_io:
        devices.append({"name": "plant", "bus": "b", "device_id": 3, "profile": "plant-io",
                        "poll_interval": 5.0})
    return {
        "plant": {"id": "p"},
        "points": {"outlet": {"duct_area_m2": 0.5}},
        "buses": [{"name": "b", "transport": "tcp", "host": "127.0.0.1", "port": 1502}],
        "devices": devices,
        "hj212": platforms,
    }


def _platform(**extra: Any) -> dict[str, Any]:
    return {"name": "prov", "host": "198.51.100.7", "port": 9000, "mn": MN, "pw": "123456",
            "codes": {"outlet.n2o_mg_m3": "n2o_out"}, **extra}


def _problems(tmp_path: Path, platforms: list[dict[str, Any]], **kw: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        write_config(tmp_path, _plant(platforms, **kw))
    return {p.path: p.message for p in caught.value.problems}


def test_defaults_come_from_cn_1000_and_1061(tmp_path: Path) -> None:
    platform = write_config(tmp_path, _plant([_platform()])).hj212[0]
    assert (platform.timeout_s, platform.retries) == (10.0, 3)
    assert platform.st == 31 and platform.ack and platform.rtd_interval_s == 60.0
    assert platform.uploads == [2011, 2051, 2061, 2031]


def test_no_platforms_is_fine(tmp_path: Path) -> None:
    assert write_config(tmp_path, _plant([])).hj212 == []


def test_reference_and_consistency_problems(tmp_path: Path) -> None:
    problems = _problems(tmp_path, [
        _platform(codes={"outlet.n2o_mg_m3": "n2o", "outlet.nothing": "x1",
                         "outlet-flow.velocity": "a00000", "outlet-flow.moisture": "n2o"},
                  uploads=[2051, 2021], reconnect_min_s=100, reconnect_max_s=10),
        _platform(codes={}, abatement_code="SB1"),
    ])
    assert problems == {
        'hj212[0].codes."outlet.nothing"': "no channel or derived series 'outlet.nothing' "
                                           "(channels are <device>.<key>, derived "
                                           "<point>.n2o_mg_m3 ...)",
        'hj212[0].codes."outlet-flow.velocity"': "code a00000 is sent in m3/s; "
                                                 "outlet-flow.velocity is in 'm/s'",
        "hj212[0].codes": "code 'n2o' is given to 2 series",
        "hj212[0].uploads": "2021 needs abatement_code or bypass_code",
        "hj212[0].reconnect_min_s": "must not exceed reconnect_max_s",
        "hj212[1].name": "duplicate platform name 'prov': already used by hj212[0]",
        "hj212[1].codes": "map at least one series to a pollutant code "
                          "(uploads [2011, 2031, 2051, 2061] carry values)",
        "hj212[1].abatement_code": "is sent with CN 2021: add 2021 to uploads",
    }


def test_state_codes_need_their_channels(tmp_path: Path) -> None:
    problems = _problems(tmp_path, [_platform(uploads=[2021], abatement_code="SB1",
                                              bypass_code="SB2")], plant_io=False)
    assert problems == {"hj212[prov].abatement_code": "needs a channel with role "
                                                   "'abatement_running'",
                        "hj212[prov].bypass_code": "needs a channel with role 'bypass_valve'"}


@pytest.mark.parametrize(("key", "value"), [
    ("mn", "0100"), ("mn", MN + "0"), ("pw", "1234567"), ("pw", "12;4"), ("retries", 0),
    ("retries", 100), ("rtd_interval_s", 10), ("rtd_interval_s", 7200), ("timeout_s", 0),
    ("uploads", [2011, 9014]), ("port", 0), ("st", 100), ("surprise", 1)])
def test_schema_problems_name_the_key(tmp_path: Path, key: str, value: Any) -> None:
    problems = _problems(tmp_path, [_platform(**{key: value})])
    assert list(problems) and all(path.startswith(f"hj212[prov].{key}") for path in problems)


def test_pollutant_codes_may_not_hold_separators(tmp_path: Path) -> None:
    problems = _problems(tmp_path, [_platform(codes={"outlet.n2o_mg_m3": "n2o-out"})])
    assert list(problems) == ['hj212[prov].codes.outlet.n2o_mg_m3']


def test_the_example_plant_configuration_loads() -> None:
    config = load_config(REPO / "config" / "example-plant.toml")
    assert [p.name for p in config.hj212] == ["provincial"]
    assert config.hj212[0].codes["outlet.n2o_mg_m3"] == "n2o_out"
