"""cemsd.config.load_config and `cemsd check-config`.

Every malformed configuration must be refused before anything starts, with the file, the
key path of the problem and a message that says what is wrong; every problem of a file
is reported at once.
"""

from __future__ import annotations

import copy
import os
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cemsd.cli import main
from cemsd.config import Config, load_config
from cemsd.errors import ConfigError, ConfigProblem
from drivers.registry import load_profile
from helpers import REPO, write_config, write_toml
from helpers import all_of as _all
from helpers import set_at as _set

Data = dict[str, Any]


def good() -> Data:
    """A valid plant: %vol inlet analyzer, ppm outlet analyzer, inlet flow meter, plant I/O."""
    return {
        "plant": {"id": "test-plant", "timezone": "Asia/Shanghai"},
        "points": {
            "inlet": {"duct_area_m2": 0.25},
            "outlet": {"duct_area_m2": 0.5, "flow_basis": "standard_dry"},
        },
        "buses": [
            {"name": "analyzers", "transport": "tcp", "host": "127.0.0.1", "port": 15020,
             "timeout": 0.3, "retries": 1},
            {"name": "flow", "transport": "tcp", "host": "127.0.0.1", "port": 15021,
             "timeout": 0.3, "retries": 1},
        ],
        "devices": [
            {"name": "inlet-analyzer", "bus": "analyzers", "device_id": 1,
             "profile": "n2o-analyzer-percent", "poll_interval": 5.0},
            {"name": "outlet-analyzer", "bus": "analyzers", "device_id": 2,
             "profile": "n2o-analyzer-ppm", "poll_interval": 5.0},
            {"name": "inlet-flow", "bus": "flow", "device_id": 1, "profile": "stack-flow-meter",
             "poll_interval": 2.0, "point": "inlet",
             "channels": {"volume_flow": {"enabled": False}}},
            {"name": "plant", "bus": "flow", "device_id": 9, "profile": "plant-io",
             "poll_interval": 5.0},
        ],
    }


def problems_of(tmp_path: Path, data: Data) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, data)
    problems = info.value.problems
    assert problems, "a ConfigError must carry at least one problem"
    return problems


def paths(problems: list[ConfigProblem]) -> list[str]:
    return [p.path for p in problems]


def find(problems: list[ConfigProblem], path: str) -> ConfigProblem:
    found = [p for p in problems if p.path == path]
    assert found, f"no problem at {path!r}; got {[str(p) for p in problems]}"
    return found[0]


def test_the_base_config_is_valid(tmp_path: Path) -> None:
    config = write_config(tmp_path, good())
    assert config.plant.id == "test-plant"
    assert [d.name for d in config.devices] == [
        "inlet-analyzer", "outlet-analyzer", "inlet-flow", "plant"]
    assert config.source == tmp_path / "cemsd.toml"


# --- the shipped configurations ------------------------------------------------------------------


def plant_configs() -> list[Path]:
    files = sorted((REPO / "config").glob("*.toml"))
    return [f for f in files if "start" not in tomllib.loads(f.read_text(encoding="utf-8"))]


def test_there_are_shipped_plant_configs() -> None:
    names = [p.name for p in plant_configs()]
    assert "demo.toml" in names
    assert "demo-scenario.toml" not in names  # a scenario: it has a top-level start


@pytest.mark.parametrize("path", plant_configs(), ids=lambda p: p.name)
def test_shipped_plant_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.plant.id
    assert config.devices
    assert config.source == path


def test_demo_config_paths_are_relative_to_the_file() -> None:
    config = load_config(REPO / "config" / "demo.toml")
    assert config.storage.state_dir == (REPO / ".demo").resolve()
    serial = config.bus("rs485-flow")
    assert serial.endpoint == str((REPO / ".demo" / "tty-cemsd").resolve())


# --- malformed configurations --------------------------------------------------------------


def _del(path: str) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]
    return mutate


def _add_device(**device: Any) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        data["devices"].append({"bus": "flow", "poll_interval": 5.0, **device})
    return mutate


def _channel(device: int, key: str, **spec: Any) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        data["devices"][device].setdefault("channels", {})[key] = spec
    return mutate


ANALOG_T = {"address": 0, "function_code": 4, "data_type": "int16", "unit": "degC",
            "range": [0.0, 400.0], "role": "temperature"}

# (id, mutation, key path of the problem, fragment of its message)
MALFORMED: list[tuple[str, Callable[[Data], None], str, str]] = [
    ("missing-plant", _del("plant"), "plant", "required key is missing"),
    ("missing-plant-id", _del("plant.id"), "plant.id", "required key is missing"),
    ("missing-buses", _del("buses"), "buses", "required key is missing"),
    ("typo-device-key", _set("devices.0.poll_intervall", 5.0),
     "devices[inlet-analyzer].poll_intervall", "unknown key"),
    ("typo-section", _set("procesing", {"standard_state": "SI"}), "procesing", "unknown key"),
    ("typo-channel-key", _channel(0, "n2o", rnage=[0.0, 50.0]),
     "devices[inlet-analyzer].channels.n2o.rnage", "unknown key"),
    ("port-not-a-number", _set("buses.0.port", "five"), "buses[analyzers].port", "valid integer"),
    ("port-out-of-range", _set("buses.0.port", 70000), "buses[analyzers].port", "65535"),
    ("poll-not-a-number", _set("devices.0.poll_interval", "fast"),
     "devices[inlet-analyzer].poll_interval", "valid number"),
    ("channels-not-a-table", _set("devices.0.channels", "n2o"),
     "devices[inlet-analyzer].channels", "valid dictionary"),
    ("devices-not-a-list", _set("devices", "inlet-analyzer"), "devices", "valid list"),
    ("bad-timezone", _set("plant.timezone", "Mars/Olympus_Mons"),
     "plant.timezone", "unknown time zone"),
    ("bad-device-name", _set("devices.0.name", "inlet analyzer"),
     "devices[0].name", "pattern"),
    ("unknown-transport", _set("buses.0.transport", "udp"), "buses[analyzers]", "'tcp', 'serial'"),
    ("unknown-bus", _set("devices.0.bus", "analyzerz"), "devices[inlet-analyzer].bus",
     "no bus named 'analyzerz'"),
    ("duplicate-device-name", _set("devices.1.name", "inlet-analyzer"),
     "devices[1].name", "duplicate name 'inlet-analyzer': already used by devices[0]"),
    ("duplicate-bus-name", _all(_set("buses.1.name", "analyzers"), _set("buses.1.port", 1502)),
     "buses[1].name", "duplicate name 'analyzers'"),
    ("duplicate-device-id", _set("devices.1.device_id", 1), "devices[outlet-analyzer].device_id",
     "already used on bus 'analyzers'"),
    ("device-id-300", _set("devices.0.device_id", 300), "devices[inlet-analyzer].device_id", "255"),
    ("unknown-profile", _set("devices.0.profile", "n2o-analyser"),
     "devices[inlet-analyzer].profile",
     "unknown profile 'n2o-analyser'"),
    ("range-reversed", _channel(0, "n2o", range=[50.0, 0.0]),
     "devices[inlet-analyzer].channels.n2o.range", "low < high"),
    ("range-empty", _channel(0, "n2o", range=[10.0, 10.0]),
     "devices[inlet-analyzer].channels.n2o.range", "low < high"),
    ("unit-does-not-fit-role", _channel(2, "temperature", unit="kPa"),
     "devices[inlet-flow].channels.temperature.unit", "does not fit role temperature"),
    ("unknown-unit", _channel(2, "temperature", unit="K"),
     "devices[inlet-flow].channels.temperature.unit", "Input should be"),
    ("unknown-role", _channel(0, "n2o", role="n2o"), "devices[inlet-analyzer].channels.n2o.role",
     "Input should be"),
    ("fc2-with-float", _channel(0, "n2o", function_code=2),
     "devices[inlet-analyzer].channels.n2o.data_type", "function codes 1 and 2"),
    ("fc3-with-bool", _channel(3, "bypass_position", data_type="bool"),
     "devices[plant].channels.bypass_position.data_type", "function codes 1 and 2"),
    ("type-wider-than-max-registers", _set("devices.0.max_registers", 1),
     "devices[inlet-analyzer].channels.n2o.data_type", "max_registers"),
    ("status-without-bits", _channel(0, "status2", address=10, data_type="uint16",
                                     unit="code", kind="status"),
     "devices[inlet-analyzer].channels.status2.bits", "needs 'bits' or 'codes'"),
    ("bits-on-analog", _channel(0, "n2o", bits={"0": {"flag": "D", "text": "fault"}}),
     "devices[inlet-analyzer].channels.n2o.kind", "belong to kind = 'status'"),
    ("status-bit-unknown-flag", _channel(0, "status", bits={"0": {"flag": "X", "text": "?"}}),
     "devices[inlet-analyzer].channels.status.bits.0.flag", "Input should be"),
    ("applies-to-unknown-channel", _add_device(
        name="o2-meter", device_id=7, point="inlet",
        channels={"o2": {"address": 0, "unit": "%vol", "range": [0.0, 25.0], "role": "o2"},
                  "status": {"address": 2, "data_type": "uint16", "unit": "code",
                             "kind": "status", "applies_to": ["o3"],
                             "bits": {"0": {"flag": "D", "text": "fault"}}}}),
     "devices[o2-meter].channels.status.applies_to", "no channel 'o3'"),
    ("gas-channel-without-point", _add_device(
        name="thermo", device_id=7, channels={"t": ANALOG_T}),
     "devices[thermo].channels.t.point", "needs a point"),
    ("point-not-configured", _add_device(
        name="thermo", device_id=7, channels={"t": {**ANALOG_T, "point": "stack"}}),
     "devices[thermo].channels.t.point", "no point named 'stack'"),
    ("gas-channel-without-range", _add_device(
        name="o2-meter", device_id=7, point="outlet",
        channels={"o2": {"address": 0, "unit": "%vol", "role": "o2"}}),
     "devices[o2-meter].channels.o2.range", "measuring range"),
    ("velocity-without-duct-area", _del("points.inlet.duct_area_m2"),
     "points.inlet.duct_area_m2", "velocity"),
    ("poll-interval-above-5s", _set("devices.0.poll_interval", 6.0),
     "devices[inlet-analyzer].poll_interval", "longer than 5 s"),
    ("too-few-readings-a-minute", _set("processing", {"minute_min_readings": 20}),
     "devices[inlet-analyzer].poll_interval", "gives 12 readings a minute"),
    ("timeout-times-attempts-fills-the-cycle", _set("devices.0.timeout", 2.5),
     "devices[inlet-analyzer].timeout", "shorter than poll_interval"),
    ("bus-retries-fill-the-cycle", _all(_set("buses.0.timeout", 1.0),
                                        _set("buses.0.retries", 4)),
     "devices[inlet-analyzer].timeout", "shorter than poll_interval"),
    ("serial-without-baudrate", _set("buses.1", {"name": "flow", "transport": "serial",
                                                 "port": "/dev/ttyS0", "parity": "E"}),
     "buses[flow].baudrate", "required key is missing"),
    ("serial-without-parity", _set("buses.1", {"name": "flow", "transport": "serial",
                                               "port": "/dev/ttyS0", "baudrate": 9600}),
     "buses[flow].parity", "required key is missing"),
    ("serial-odd-baudrate", _set("buses.1", {"name": "flow", "transport": "serial",
                                             "port": "/dev/ttyS0", "baudrate": 14400,
                                             "parity": "E"}),
     "buses[flow].baudrate", "Input should be"),
    ("hour-rule-looser-than-standard", _set("processing", {"hour_min_valid_minutes": 40}),
     "processing.hour_min_valid_minutes", "greater than or equal to 45"),
    ("minute-rule-looser-than-standard", _set("processing", {"minute_min_valid_fraction": 0.5}),
     "processing.minute_min_valid_fraction", "greater than or equal to 0.75"),
    ("minute-readings-looser-than-standard", _set("processing", {"minute_min_readings": 6}),
     "processing.minute_min_readings", "greater than or equal to 12"),
    ("unknown-standard-state", _set("processing", {"standard_state": "STP"}),
     "processing.standard_state", "'SI' or 'HJ212'"),
    ("same-role-twice-at-a-point", _add_device(
        name="inlet-analyzer-2", bus="analyzers", device_id=3, profile="n2o-analyzer-percent"),
     "devices[inlet-analyzer-2].channels.n2o.role", "already taken by inlet-analyzer.n2o"),
    ("device-named-like-a-point", _set("devices.0.name", "inlet"),
     "devices[inlet].name", "share its name with a point"),
    ("scale-zero", _channel(2, "temperature", scale=0),
     "devices[inlet-flow].channels.temperature.scale",
     "non-zero"),
    ("device-without-channels", _add_device(name="empty", device_id=7, channels={}),
     "devices[empty].channels", "at least one channel"),
    ("barometric-pressure-implausible", _set("points.inlet.barometric_kpa", 30.0),
     "points.inlet.barometric_kpa", "greater than 50"),
    ("moisture-default-100", _set("points.inlet.moisture_default_pct", 100.0),
     "points.inlet.moisture_default_pct", "less than 100"),
    ("nm3-flow-declared-actual", _all(
        _channel(2, "velocity", enabled=False),
        _channel(2, "volume_flow", unit="Nm3/h", role="flow", range=[0.0, 50_000.0])),
     "points.inlet.flow_basis", "already standard"),
    ("actual-flow-without-temperature", _channel(2, "temperature", enabled=False),
     "points.inlet", "temperature channel or temperature_default_c"),
]


def test_there_are_at_least_30_malformed_cases() -> None:
    ids = [case[0] for case in MALFORMED]
    assert len(set(ids)) == len(ids) >= 30


@pytest.mark.parametrize(("mutate", "path", "fragment"), [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_malformed_config_is_refused(tmp_path: Path, mutate: Callable[[Data], None],
                                     path: str, fragment: str) -> None:
    data = copy.deepcopy(good())
    mutate(data)
    problems = problems_of(tmp_path, data)
    problem = find(problems, path)
    assert fragment in problem.message
    assert problem.file == str(tmp_path / "cemsd.toml")
    assert str(problem).startswith(f"{tmp_path / 'cemsd.toml'}: {path}: ")


def test_duplicate_tcp_endpoint(tmp_path: Path) -> None:
    data = good()
    data["buses"][1]["port"] = 15020
    problems = problems_of(tmp_path, data)
    assert len(problems) == 1
    assert problems[0].path.startswith("buses[flow]")
    assert "duplicate port '127.0.0.1:15020'" in problems[0].message


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[plant]\nid = "x\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.path == ""
    assert problem.file == str(path)
    assert "TOML syntax" in problem.message
    assert "line 2" in problem.message


def test_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.path == ""
    assert problem.file == str(path)
    assert "cannot read" in problem.message
    assert "No such file" in problem.message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[plant]\nid = "p"\nname = "Usine de Chalampé"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.path == ""
    assert "not UTF-8" in problem.message


def test_all_schema_problems_are_reported_together(tmp_path: Path) -> None:
    data = good()
    data["plant"]["timezone"] = "Nowhere/Atlantis"
    data["devices"][0]["device_id"] = 300
    data["devices"][1]["poll_intervall"] = 5.0
    data["devices"][2]["channels"]["temperature"] = {"range": [400.0, 0.0]}
    data["processing"] = {"hour_min_valid_minutes": 40}
    data["devices"][3]["profile"] = "no-such-profile"
    problems = problems_of(tmp_path, data)
    assert set(paths(problems)) >= {
        "plant.timezone", "devices[inlet-analyzer].device_id",
        "devices[outlet-analyzer].poll_intervall",
        "devices[inlet-flow].channels.temperature.range", "processing.hour_min_valid_minutes",
        "devices[plant].profile"}


def test_all_cross_check_problems_are_reported_together(tmp_path: Path) -> None:
    data = good()
    data["devices"][0]["bus"] = "nobus"
    data["devices"][0]["device_id"] = 2
    data["devices"][1]["poll_interval"] = 6.0
    data["devices"][2]["channels"]["temperature"] = {"unit": "Pa"}
    data["devices"][3]["name"] = "outlet"
    data["devices"].append({"name": "inlet-analyzer", "bus": "flow", "device_id": 1,
                            "profile": "n2o-analyzer-percent", "poll_interval": 5.0})
    problems = problems_of(tmp_path, data)
    assert set(paths(problems)) >= {
        "devices[0].bus", "devices[outlet-analyzer].poll_interval",
        "devices[inlet-flow].channels.temperature.unit", "devices[outlet].name",
        "devices[4].name", "devices[4].device_id", "devices[4].channels.n2o.role"}


def test_config_error_message_lists_every_problem(tmp_path: Path) -> None:
    data = good()
    data["devices"][0]["device_id"] = 300
    data["plant"]["timezone"] = "Nowhere/Atlantis"
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, data)
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.problems) == 2
    file = tmp_path / "cemsd.toml"
    assert (f"{file}: devices[inlet-analyzer].device_id: Input should be less than or equal "
            "to 255") in lines


# --- profiles, overrides, disabled channels, paths --------------------------------------------


def test_profile_override_merges_over_the_profile(tmp_path: Path) -> None:
    data = good()
    data["devices"][0]["channels"] = {"n2o": {"range": [0.0, 40.0]}}
    config = write_config(tmp_path, data)
    n2o = config.devices[0].channels["n2o"]
    profile = load_profile("n2o-analyzer-percent").channels["n2o"]
    assert n2o.range == (0.0, 40.0)
    assert profile["range"] == [0.0, 50.0]  # the profile itself is untouched
    assert n2o.address == profile["address"] == 0
    assert n2o.data_type.value == "float32"
    assert n2o.byte_order.value == "ABCD"
    assert n2o.unit.value == "%vol"
    assert n2o.role is not None and n2o.role.value == "n2o_inlet"
    assert set(config.devices[0].channels) == {"n2o", "status"}
    # a second device of the same profile keeps the profile's range
    data["devices"].append({"name": "spare", "bus": "flow", "device_id": 3, "point": "outlet",
                            "profile": "n2o-analyzer-percent", "poll_interval": 5.0,
                            "channels": {"n2o": {"role": "n2o_outlet"}}})
    data["devices"][1]["channels"] = {"n2o": {"enabled": False}}
    config = write_config(tmp_path, data)
    assert config.devices[4].channels["n2o"].range == (0.0, 50.0)


def test_profile_override_can_add_a_channel(tmp_path: Path) -> None:
    data = good()
    data["devices"][2]["channels"]["o2"] = {"function_code": 4, "address": 20, "unit": "%vol",
                                            "range": [0.0, 25.0], "role": "o2"}
    config = write_config(tmp_path, data)
    assert config.devices[2].channels["o2"].address == 20
    assert config.channel_point(config.devices[2], config.devices[2].channels["o2"]) == "inlet"


def test_disabled_channel_disappears_and_leaves_applies_to(tmp_path: Path) -> None:
    config = write_config(tmp_path, good())
    flow = config.devices[2]
    assert "volume_flow" not in flow.channels
    assert flow.channels["status"].applies_to == ["velocity", "temperature", "pressure",
                                                  "moisture"]
    data = good()
    data["devices"][2]["channels"].update(moisture={"enabled": False}, volume_flow={})
    data["points"]["inlet"]["moisture_default_pct"] = 5.0
    config = write_config(tmp_path, data)
    flow = config.devices[2]
    assert "moisture" not in flow.channels
    assert "volume_flow" in flow.channels  # an empty override keeps the profile's channel
    assert flow.channels["status"].applies_to == ["velocity", "temperature", "pressure",
                                                  "volume_flow"]


def test_demo_disables_volume_flow_of_both_flow_meters() -> None:
    config = load_config(REPO / "config" / "demo.toml")
    for name in ("inlet-flow", "outlet-flow"):
        device = next(d for d in config.devices if d.name == name)
        assert "volume_flow" not in device.channels
        assert "volume_flow" not in (device.channels["status"].applies_to or [])


def test_relative_state_dir_is_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = good()
    data["storage"] = {"state_dir": "../var/cemsd"}
    path = write_toml(tmp_path / "etc" / "cemsd.toml", data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert config.storage.state_dir == (tmp_path / "var" / "cemsd").resolve()
    assert config.storage.database_url == f"sqlite:///{(tmp_path / 'var' / 'cemsd').resolve()}" \
                                          "/cemsd.db"


def test_absolute_state_dir_is_kept(tmp_path: Path) -> None:
    data = good()
    data["storage"] = {"state_dir": str(tmp_path / "abs")}
    config = load_config(write_toml(tmp_path / "etc" / "cemsd.toml", data))
    assert config.storage.state_dir == tmp_path / "abs"


def test_defaults_come_from_the_standards(tmp_path: Path) -> None:
    config = write_config(tmp_path, good())
    assert config.processing.hour_min_valid_minutes == 45
    assert config.processing.minute_min_readings == 12
    assert config.processing.minute_min_valid_fraction == 0.75
    assert config.processing.standard_state == "SI"
    data = good()
    del data["plant"]["timezone"]
    assert write_config(tmp_path, data).plant.timezone == "Asia/Shanghai"


def test_stricter_processing_rules_are_accepted(tmp_path: Path) -> None:
    data = good()
    data["processing"] = {"hour_min_valid_minutes": 50, "minute_min_valid_fraction": 0.9}
    config = write_config(tmp_path, data)
    assert config.processing.hour_min_valid_minutes == 50


# --- bugs: a typo must not be dropped silently -------------------------------------------------


def test_applies_to_typo_on_a_profile_device_is_reported(tmp_path: Path) -> None:
    """The status word must govern the channel it names. A typo in an override of a
    profile's applies_to is silently filtered away today (config._merge_profiles keeps
    only existing keys), so analyzer faults would never flag the N2O readings."""
    data = good()
    data["devices"][0]["channels"] = {"status": {"applies_to": ["n2oo"]}}
    problems = problems_of(tmp_path, data)
    problem = find(problems, "devices[inlet-analyzer].channels.status.applies_to")
    assert "n2oo" in problem.message


def test_device_point_naming_an_unknown_point_is_reported(tmp_path: Path) -> None:
    """devices[].point = "stack" with no [points.stack] must be refused even if the
    device's channels take their point from their role."""
    data = good()
    data["devices"][0]["point"] = "stack"
    problems = problems_of(tmp_path, data)
    problem = find(problems, "devices[inlet-analyzer].point")
    assert "stack" in problem.message


# --- check-config -------------------------------------------------------------------------------


def test_check_config_ok(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "cemsd.toml", {"storage": {"state_dir": "state"}, **good()})
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: OK: plant test-plant, 2 bus(es), 4 device(s)" in result.stdout
    assert "analyzers/inlet-analyzer id 1 every 5 s: fc3 @0 x3" in result.stdout


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    data = good()
    data["devices"][0]["device_id"] = 300
    data["devices"][2]["channels"]["temperature"] = {"range": [10.0, 0.0]}
    path = write_toml(tmp_path / "bad.toml", data)
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert (f"{path}: devices[inlet-analyzer].device_id: Input should be less than or equal "
            "to 255") in lines
    assert any(line.startswith(f"{path}: devices[inlet-flow].channels.temperature.range: ")
               for line in lines)
    assert "2 problem(s)" in result.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check-config", str(tmp_path / "missing.toml")])
    assert result.exit_code != 0
    assert "missing.toml" in result.output
    assert "cannot read" in result.output


def test_check_config_as_a_real_command(tmp_path: Path) -> None:
    cemsd = REPO / ".venv" / "bin" / "cemsd"
    bad = good()
    bad["devices"][0]["bus"] = "nobus"
    bad_path = write_toml(tmp_path / "bad.toml", bad)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([str(cemsd), "check-config", str(bad_path)], capture_output=True,
                            text=True, timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    first_line = result.stdout.splitlines()[0]
    assert f"{bad_path}: devices[inlet-analyzer].bus: no bus named 'nobus'" in first_line
    assert "1 problem(s)" in result.stderr

    ok = subprocess.run([str(cemsd), "check-config", str(REPO / "config" / "demo.toml")],
                        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: plant demo-aa-plant, 3 bus(es), 5 device(s)" in ok.stdout


def test_config_is_frozen(tmp_path: Path) -> None:
    config: Config = write_config(tmp_path, good())
    with pytest.raises(Exception, match="frozen"):
        config.plant.id = "other"  # type: ignore[misc]
