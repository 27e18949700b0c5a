"""The [[hj212]] configuration: defaults from CN 1000, and every mistake reported with its
key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cemsd.cli import main
from cemsd.config import load_config
from cemsd.errors import ConfigError
from cemsd.settings.hj212 import hj212_warnings
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
            "codes": {"outlet.n2o_mg_m3": "a99001"}, **extra}


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
        _platform(codes={"outlet.n2o_mg_m3": "a99001", "outlet.nothing": "x00001",
                         "outlet-flow.velocity": "a00000", "outlet-flow.moisture": "a99001"},
                  uploads=[2051, 2021], reconnect_min_s=100, reconnect_max_s=10),
        _platform(codes={}, abatement_code="SB1"),
    ])
    assert problems == {
        'hj212[0].codes."outlet.nothing"': "no channel or derived series 'outlet.nothing' "
                                           "(channels are <device>.<key>, derived "
                                           "<point>.n2o_mg_m3 ...)",
        'hj212[0].codes."outlet-flow.velocity"': "code a00000 is sent in m3/s; "
                                                 "outlet-flow.velocity is in 'm/s'",
        "hj212[0].codes": "code 'a99001' is given to 2 series",
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
    problems = _problems(tmp_path, [_platform(codes={"outlet.n2o_mg_m3": "n2o-out"},
                                              custom_codes=True)])
    assert list(problems) == ['hj212[prov].codes.outlet.n2o_mg_m3']


FORM = "is not of HJ 212's form (a letter and five digits, e.g. a21026; SB and a number for a unit)"


@pytest.mark.parametrize("code", ["n2o_out", "a2102", "a210261", "A21026", "ab2102", "210260"])
def test_codes_must_have_the_standards_form(tmp_path: Path, code: str) -> None:
    problems = _problems(tmp_path, [_platform(codes={"outlet.n2o_mg_m3": code},
                                              uploads=[2061, 2021], abatement_code="SB01x")])
    assert problems == {
        'hj212[prov].codes."outlet.n2o_mg_m3"': f"code {code!r} {FORM}; if the platform agreed "
                                             "it, set custom_codes = true",
        "hj212[prov].abatement_code": f"code 'SB01x' {FORM}; if the platform agreed it, set "
                                   "custom_codes = true"}


def test_custom_codes_are_allowed_and_warned_about(tmp_path: Path) -> None:
    config = write_config(tmp_path, _plant([
        _platform(custom_codes=True, codes={"outlet.n2o_mg_m3": "n2o_out",
                                            "outlet.flow_nm3_h": "a00000"}),
        _platform(name="other", codes={"outlet.n2o_mg_m3": "a99001"})]))
    assert [(w.path, w.message) for w in hj212_warnings(config)] == [
        ('hj212[prov].codes."outlet.n2o_mg_m3"', f"code 'n2o_out' {FORM}: allowed by "
                                              "custom_codes, but other platforms and parsers "
                                              "may reject it")]
    path = tmp_path / "custom.toml"
    path.write_text(Path(config.source).read_text())
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "'n2o_out'" in result.output
    assert "a00000" not in result.output.split("warning:", 1)[1]


def test_the_example_plant_configuration_loads() -> None:
    config = load_config(REPO / "config" / "example-plant.toml")
    assert [p.name for p in config.hj212] == ["provincial"]
    assert config.hj212[0].codes["outlet.n2o_mg_m3"] == "a99001"
    assert not config.hj212[0].custom_codes and config.hj212[0].nonstandard_codes() == []
