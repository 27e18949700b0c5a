"""Hostile configurations and arguments: each refused before anything starts.

Every case names the key (or the file or the argument) and exits non-zero; `cemsd run`
creates nothing (no state directory, no database) when it refuses. The first table holds
the holes found on the way to issue 11, the second more of the same kinds, the third
command-line arguments.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cemsd.cli import main
from cemsd.config import load_config
from cemsd.errors import ConfigError, ConfigProblem
from cemsd.settings.base import takes_bool
from drivers.registry import available_profiles, load_profile
from helpers import REPO, free_port, write_config, write_toml
from helpers import all_of as both
from helpers import set_at as at

Data = dict[str, Any]
CEMSD = [sys.executable, "-m", "cemsd"]
NOBODY = 65534


def base(tmp: Path) -> Data:
    """A valid plant: an analyzer (float32 N2O at 0-1, status at 2) on a TCP bus."""
    return {
        "plant": {"id": "holes", "timezone": "Asia/Shanghai"},
        "storage": {"state_dir": str(tmp / "state")},
        "points": {"outlet": {"duct_area_m2": 0.5}},
        "buses": [{"name": "gw", "transport": "tcp", "host": "127.0.0.1", "port": 1502,
                   "timeout": 0.3, "retries": 0}],
        "devices": [{"name": "stack", "bus": "gw", "device_id": 1,
                     "profile": "n2o-analyzer-ppm", "point": "outlet", "poll_interval": 5.0}],
    }


def channel(key: str, **spec: Any) -> Callable[[Data], None]:
    return at(f"devices.0.channels.{key}", {"unit": "ppm", **spec})


LONG = "x" * 300  # one name longer than any file system allows (255)
PLATFORM = {"name": "epb", "host": "198.51.100.7", "port": 9000, "mn": "M" * 24,
            "pw": "123456", "codes": {"outlet.n2o_mg_m3": "n2o_out"}}
ST = "storage.state_dir"

# (id, mutation, key path, fragment of the message) -- the holes listed in issue 11
HOLES: list[tuple[str, Callable[[Data], None], str, str]] = [
    ("state-dir-proc", at(ST, "/proc"), ST, "virtual file system"),
    ("state-dir-dev-null", at(ST, "/dev/null"), ST, "virtual file system"),
    ("state-dir-a-file", at(ST, "/etc/hostname"), ST, "is a file"),
    ("state-dir-too-long", at(ST, "/tmp/" + LONG), ST, "too long"),
    ("state-dir-too-long-for-the-socket", at(ST, "/tmp/" + "d" * 100), ST,
     "too long for the control socket"),
    ("url-garbage", at("storage.url", "garbage"), "storage.url", "not a database URL"),
    ("url-mysql", at("storage.url", "mysql://u@db/cemsd"), "storage.url",
     "unsupported database 'mysql'"),
    ("retention-inf", at("storage.reading_retention_days", float("inf")),
     "storage.reading_retention_days", "finite"),
    ("offset-inf", channel("n2o", address=0, offset=float("inf")),
     "devices[stack].channels.n2o.offset", "finite"),
    ("scale-nan", channel("n2o", address=0, scale=float("nan")),
     "devices[stack].channels.n2o.scale", "finite"),
    ("range-infinite", channel("n2o", address=0, range=[float("-inf"), float("inf")]),
     "devices[stack].channels.n2o.range[0]", "finite"),
    ("overlapping-registers", channel("copy", address=1),
     "devices[stack].channels.copy.address", "register 1 (function code 3) is also read"),
    ("float32-at-65535", channel("last", address=65535),
     "devices[stack].channels.last.address", "spans to 65536"),
    ("port-true", at("buses.0.port", True), "buses[gw].port", "not true/false"),
    ("api-and-metrics-on-one-port", both(at("api", {"port": 9300}),
                                         at("metrics", {"port": 9300})),
     "metrics.port", "already taken by api.port"),
    ("host-not-idna", at("buses.0.host", "modbus-gw..plant.local"), "buses[gw].host",
     "not a valid host name"),
]

# (id, mutation, key path, fragment) -- more of the same kinds
HOSTILE: list[tuple[str, Callable[[Data], None], str, str]] = [
    ("bus-timeout-true", at("buses.0.timeout", True), "buses[gw].timeout", "not true/false"),
    ("bus-retries-false", at("buses.0.retries", False), "buses[gw].retries", "not true/false"),
    ("device-id-true", at("devices.0.device_id", True), "devices[stack].device_id",
     "not true/false"),
    ("max-gap-true", at("devices.0.max_gap", True), "devices[stack].max_gap",
     "not true/false"),
    ("poll-interval-nan", at("devices.0.poll_interval", float("nan")),
     "devices[stack].poll_interval", "finite"),
    ("bus-timeout-inf", at("buses.0.timeout", float("inf")), "buses[gw].timeout", "finite"),
    ("function-code-true", channel("n2o", address=0, function_code=True),
     "devices[stack].channels.n2o.function_code", "not true/false"),
    ("range-with-a-boolean", channel("n2o", address=0, range=[0.0, True]),
     "devices[stack].channels.n2o.range[1]", "not true/false"),
    ("range-high-nan", channel("n2o", address=0, range=[0.0, float("nan")]),
     "devices[stack].channels.n2o.range[1]", "finite"),
    ("barometric-nan", at("points.outlet.barometric_kpa", float("nan")),
     "points.outlet.barometric_kpa", "finite"),
    ("duct-area-inf", at("points.outlet.duct_area_m2", float("inf")),
     "points.outlet.duct_area_m2", "finite"),
    ("temperature-default-inf", at("points.outlet.temperature_default_c", float("-inf")),
     "points.outlet.temperature_default_c", "finite"),
    ("calibration-reference-nan", channel("n2o", address=0, range=[0.0, 5000.0],
                                          calibration={"zero_reference": float("nan")}),
     "devices[stack].channels.n2o.calibration.zero_reference", "finite"),
    ("calibration-interval-absurd", channel("n2o", address=0, range=[0.0, 5000.0],
                                            calibration={"interval_hours": 1e12}),
     "devices[stack].channels.n2o.calibration.interval_hours", "less than or equal"),
    ("stuck-minutes-absurd", channel("n2o", address=0, checks={"stuck_minutes": 1e15}),
     "devices[stack].channels.n2o.checks.stuck_minutes", "less than or equal"),
    ("production-signal-age-inf", at("qaqc.production_signal_max_age_s", float("inf")),
     "qaqc.production_signal_max_age_s", "finite"),
    ("retention-absurd", at("storage.reading_retention_days", 1e9),
     "storage.reading_retention_days", "less than or equal"),
    ("batch-seconds-true", at("storage.batch_seconds", True), "storage.batch_seconds",
     "not true/false"),
    ("close-grace-inf", at("processing.close_grace_seconds", float("inf")),
     "processing.close_grace_seconds", "finite"),
    ("bypass-debounce-inf", at("reduction.bypass.debounce_s", float("inf")),
     "reduction.bypass.debounce_s", "finite"),
    ("gwp-inf", at("reduction.gwp", float("inf")), "reduction.gwp", "finite"),
    ("mqtt-keepalive-true", at("mqtt", {"host": "broker", "keepalive": True}),
     "mqtt.keepalive", "not true/false"),
    ("mqtt-retention-inf", at("mqtt", {"host": "broker", "retention_days": float("inf")}),
     "mqtt.retention_days", "finite"),
    ("mqtt-host-empty-label", at("mqtt", {"host": "broker..plant"}), "mqtt.host",
     "not a valid host name"),
    ("api-port-true", at("api", {"port": True}), "api.port", "not true/false"),
    ("api-page-size-true", at("api", {"max_page_size": True}), "api.max_page_size",
     "not true/false"),
    ("api-host-blank", at("api", {"host": "local host"}), "api.host", "not a host name"),
    ("metrics-port-false", at("metrics", {"port": False}), "metrics.port", "not true/false"),
    ("metrics-address-64-char-label", at("metrics", {"address": "a" * 64 + ".plant"}),
     "metrics.address", "not a valid host name"),
    ("hj212-port-true", at("hj212", [{**PLATFORM, "port": True}]), "hj212[epb].port",
     "not true/false"),
    ("hj212-host-empty-label", at("hj212", [{**PLATFORM, "host": "epb..gov.cn"}]),
     "hj212[epb].host", "not a valid host name"),
    ("hj212-rtd-nan", at("hj212", [{**PLATFORM, "rtd_interval_s": float("nan")}]),
     "hj212[epb].rtd_interval_s", "finite"),
    ("bus-host-empty", at("buses.0.host", ""), "buses[gw].host", "at least 1 character"),
    ("bus-host-with-a-newline", at("buses.0.host", "gw\n1"), "buses[gw].host",
     "not a host name"),
    ("uint32-past-65535", channel("total", address=65535, data_type="uint32"),
     "devices[stack].channels.total.address", "spans to 65536"),
    ("int16-inside-a-float32", channel("low", address=1, data_type="int16"),
     "devices[stack].channels.low.address", "also read by channel 'n2o'"),
    ("coil-read-twice", both(channel("run1", address=7, function_code=1, data_type="bool",
                                     unit=""),
                             channel("run2", address=7, function_code=1, data_type="bool",
                                     unit="")),
     "devices[stack].channels.run2.address", "register 7 (function code 1)"),
    ("state-dir-under-sys", at(ST, "/sys/kernel/cemsd"), ST, "virtual file system"),
    ("state-dir-inside-a-file", at(ST, "/etc/hostname/cemsd"), ST, "is a file"),
    ("url-in-memory", at("storage.url", "sqlite:///:memory:"), "storage.url", "in-memory"),
    ("url-unknown-driver", at("storage.url", "postgresql+nosuchdriver://h/cemsd"),
     "storage.url", "no driver"),
    ("url-mssql", at("storage.url", "mssql+pyodbc://u@h/cemsd"), "storage.url",
     "unsupported database 'mssql'"),
    ("url-sqlite-in-proc", at("storage.url", "sqlite:////proc/cemsd.db"), "storage.url",
     "virtual file system"),
    ("url-sqlite-a-directory", at("storage.url", "sqlite:////tmp"), "storage.url",
     "not a regular file"),
    ("api-and-metrics-one-port-two-addresses",
     both(at("api", {"host": "127.0.0.1", "port": 9301}),
          at("metrics", {"address": "0.0.0.0", "port": 9301})),
     "metrics.port", "already taken by api.port"),
    ("bus-polls-the-daemons-own-api", both(at("api", {"port": 1502})), "buses[gw].port",
     "this daemon's own api.port"),
    ("hj212-uploads-to-the-own-metrics",
     both(at("metrics", {"port": 9302}),
          at("hj212", [{**PLATFORM, "host": "localhost", "port": 9302}])),
     "hj212[epb].port", "this daemon's own metrics.port"),
    ("nesting-15-levels", at("points.outlet.description", [[[[[[[[[[[[["deep"]]]]]]]]]]]]]),
     "points.outlet.description" + "[0]" * 10, "nested deeper than 12 levels"),
    ("control-socket-too-long", at("qaqc.control_socket", "/run/" + "s" * 120),
     "qaqc.control_socket", "too long for the control socket"),
    ("control-socket-in-a-file", at("qaqc.control_socket", "/etc/hostname/cemsd.sock"),
     "qaqc.control_socket", "is a file"),
    ("mqtt-password-true", at("mqtt", {"host": "broker", "username": "u", "password": True}),
     "mqtt.password", "valid string"),
    ("mqtt-refused-backoff-zero", at("mqtt", {"host": "broker", "refused_backoff": 0}),
     "mqtt.refused_backoff", "greater than 0"),
]


def _problems(tmp_path: Path, mutate: Callable[[Data], None]) -> list[ConfigProblem]:
    data = copy.deepcopy(base(tmp_path))
    mutate(data)
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, data)
    return info.value.problems


def _assert_named(problems: list[ConfigProblem], path: str, fragment: str) -> None:
    found = [p for p in problems if p.path == path]
    assert found, f"no problem at {path!r}: {[str(p) for p in problems]}"
    assert fragment in found[0].message, str(found[0])


def test_the_base_plant_is_valid(tmp_path: Path) -> None:
    config = write_config(tmp_path, base(tmp_path))
    assert config.devices[0].channels["n2o"].address == 0


def test_there_are_at_least_30_more_hostile_configurations() -> None:
    ids = [case[0] for case in HOSTILE]
    assert len(ids) == len(set(ids)) >= 30
    assert not set(ids) & {case[0] for case in HOLES}


@pytest.mark.parametrize(("mutate", "path", "fragment"), [c[1:] for c in HOLES + HOSTILE],
                         ids=[c[0] for c in HOLES + HOSTILE])
def test_hostile_configuration_is_refused_naming_the_key(
        tmp_path: Path, mutate: Callable[[Data], None], path: str, fragment: str) -> None:
    _assert_named(_problems(tmp_path, mutate), path, fragment)


@pytest.mark.parametrize(("mutate", "path", "fragment"), [c[1:] for c in HOLES],
                         ids=[c[0] for c in HOLES])
def test_check_config_refuses_each_hole(tmp_path: Path, mutate: Callable[[Data], None],
                                        path: str, fragment: str) -> None:
    data = copy.deepcopy(base(tmp_path))
    mutate(data)
    file = write_toml(tmp_path / "cemsd.toml", data)
    result = CliRunner().invoke(main, ["check-config", "--config", str(file)])
    assert result.exit_code == 1
    assert any(line.startswith(f"{file}: {path}: ") and fragment in line
               for line in result.stdout.splitlines()), result.output


def test_deeply_nested_toml_is_a_problem_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.file == str(path) and "nested too deeply" in problem.message
    result = subprocess.run([*CEMSD, "check-config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{path}: TOML nested too deeply" in result.stdout


def test_a_boolean_where_a_number_belongs_is_refused_in_every_section() -> None:
    """The rule is the base model's, so a new int or float key gets it too."""
    from cemsd.config import Channel, Device, Storage
    from cemsd.settings.hj212 import Hj212Platform
    from cemsd.settings.mqtt import MqttConfig

    assert not takes_bool(Channel.model_fields["range"].annotation)
    assert not takes_bool(Hj212Platform.model_fields["port"].annotation)
    assert not takes_bool(MqttConfig.model_fields["keepalive"].annotation)
    assert not takes_bool(Storage.model_fields["reading_retention_days"].annotation)
    assert takes_bool(Device.model_fields["enabled"].annotation)
    assert takes_bool(Hj212Platform.model_fields["ack"].annotation)


@pytest.mark.parametrize("name", available_profiles())
def test_no_shipped_profile_reads_a_register_twice(tmp_path: Path, name: str) -> None:
    data = base(tmp_path)
    data["devices"][0]["profile"] = name
    data["devices"][0].pop("point")
    try:
        write_config(tmp_path, data)
    except ConfigError as exc:  # roles a small plant lacks are fine; registers are not
        assert not [p for p in exc.problems if p.path.endswith(".address")], exc
    assert load_profile(name).channels


def test_problems_name_buses_and_devices_by_name_and_duplicates_by_position(
        tmp_path: Path) -> None:
    serial = {"name": "rs485-flow", "transport": "serial", "port": "/dev/ttyS0",
              "baudrate": 9600, "parity": "X"}
    problems = _problems(tmp_path, lambda d: d["buses"].append(serial))
    _assert_named(problems, "buses[rs485-flow].parity", "'N', 'E' or 'O'")
    twice = _problems(tmp_path, lambda d: d["devices"].append({**d["devices"][0],
                                                               "device_id": 2}))
    _assert_named(twice, "devices[1].name", "duplicate name 'stack': already used by "
                                            "devices[0]")


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def plant_file(tmp_path: Path) -> Path:
    return write_toml(tmp_path / "cemsd.toml", base(tmp_path))


RUN = ["run", "--config"]
# (id, arguments after `run --config FILE`, fragment of the usage error)
BAD_RUN_ARGUMENTS = [
    ("accelerate-abc", ["--accelerate", "abc"], "'abc' is not a positive factor"),
    ("accelerate-nan", ["--accelerate", "nan"], "'nan' is not a positive factor"),
    ("accelerate-inf", ["--accelerate", "inf"], "'inf' is not a positive factor"),
    ("accelerate-zero", ["--accelerate", "0"], "'0' is not a positive factor"),
    ("accelerate-negative", ["--accelerate", "-5"], "'-5' is not a positive factor"),
    ("accelerate-overflow", ["--accelerate", "1e400"], "'1e400' is not a positive factor"),
    ("accelerate-empty", ["--accelerate", ""], "'' is not a positive factor"),
    ("start-words", ["--accelerate", "max", "--start", "yesterday"],
     "'yesterday' is not a time"),
    ("start-month-13", ["--accelerate", "max", "--start", "2026-13-01T00:00"],
     "is not a time"),
    ("start-without-accelerate", ["--start", "2026-01-01T00:00+08:00"],
     "--start and --clock-file need --accelerate"),
    ("until-garbage", ["--accelerate", "max", "--until", "+abc"], "cannot read time offset"),
    ("until-zero", ["--accelerate", "max", "--until", "+0"], "a duration above 0"),
    ("until-negative", ["--accelerate", "max", "--until", "+-5"], "a duration above 0"),
    ("until-absurd", ["--accelerate", "max", "--until", "+1e20"], "a duration above 0"),
    ("until-nan", ["--accelerate", "max", "--until", "+nan"], "a duration above 0"),
    ("until-not-a-time", ["--accelerate", "max", "--until", "tomorrow"], "is not a time"),
    ("until-before-start", ["--accelerate", "max", "--start", "2026-01-02T00:00+08:00",
                            "--until", "2026-01-01T00:00+08:00"], "must be after the start"),
]


@pytest.mark.parametrize(("arguments", "fragment"), [
    (["--hours", "nan"], "'nan' is not a positive number of hours"),
    (["--hours", "-1"], "'-1' is not a positive number of hours"),
    (["--hours", "1e9"], "at most 8784"),
    (["--speed", "fast"], "'fast' is not a positive factor"),
    (["--speed", "inf"], "'inf' is not a positive factor"),
], ids=["hours-nan", "hours-negative", "hours-absurd", "speed-words", "speed-inf"])
def test_bad_demo_arguments_are_usage_errors(arguments: list[str], fragment: str) -> None:
    result = CliRunner().invoke(main, ["demo", *arguments])
    assert result.exit_code == 2 and fragment in result.output, result.output


@pytest.mark.parametrize(("arguments", "fragment"), [c[1:] for c in BAD_RUN_ARGUMENTS],
                         ids=[c[0] for c in BAD_RUN_ARGUMENTS])
def test_bad_run_arguments_are_usage_errors_and_create_nothing(
        tmp_path: Path, plant_file: Path, arguments: list[str], fragment: str) -> None:
    result = CliRunner().invoke(main, [*RUN, str(plant_file), *arguments])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("arguments", "fragment"), [
    (["report", "--period", "0001-01"], "reports cover days from 2000-01-01 to before 2200-01-01"),
    (["report", "--from", "0001-01-01", "--to", "9999-12-31"], "cover days from 2000-01-01"),
    (["serve", "--host", "gw..plant.local"], "not a valid host name"),
    (["serve", "--port", "0"], "'--port'"),
], ids=["report-year-1", "report-to-year-9999", "serve-host-not-idna", "serve-port-0"])
def test_bad_arguments_of_reading_commands_are_usage_errors(
        plant_file: Path, arguments: list[str], fragment: str) -> None:
    result = CliRunner().invoke(main, [*arguments, "--config", str(plant_file)])
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_check_config_takes_the_file_as_option_or_argument(plant_file: Path) -> None:
    for arguments in (["--config", str(plant_file)], [str(plant_file)]):
        result = CliRunner().invoke(main, ["check-config", *arguments])
        assert result.exit_code == 0, result.output
        assert "OK: plant holes" in result.stdout
    twice = CliRunner().invoke(main, ["check-config", str(plant_file), "--config",
                                      str(plant_file)])
    neither = CliRunner().invoke(main, ["check-config"])
    assert twice.exit_code == neither.exit_code == 2
    assert "give the configuration file once" in neither.output


# Commands that must find an existing database: a mistyped state_dir creates nothing.
EXISTING_DB_COMMANDS = [
    ["token", "create", "--name", "registry"],
    ["token", "list"],
    ["token", "revoke", "--name", "registry"],
    ["verify"],
    ["hours"],
    ["hj212-cursors"],
    ["calibrations"],
]


@pytest.mark.parametrize("command", EXISTING_DB_COMMANDS, ids=lambda c: "-".join(c))
def test_commands_never_create_a_database_for_a_mistyped_state_dir(
        tmp_path: Path, command: list[str]) -> None:
    data = base(tmp_path)
    data["storage"]["state_dir"] = str(tmp_path / "stat")  # the real one is "state"
    file = write_toml(tmp_path / "typo.toml", data)
    result = CliRunner().invoke(main, [*command, "--config", str(file)])
    assert result.exit_code != 0
    assert f"no database at {tmp_path / 'stat' / 'cemsd.db'}" in result.output
    assert not (tmp_path / "stat").exists()


def test_a_database_without_cemsd_schema_is_refused(tmp_path: Path) -> None:
    data = base(tmp_path)
    (tmp_path / "state").mkdir()
    import sqlite3

    sqlite3.connect(tmp_path / "state" / "cemsd.db").close()  # some other, empty file
    file = write_toml(tmp_path / "cemsd.toml", data)
    result = CliRunner().invoke(main, ["token", "create", "--config", str(file),
                                       "--name", "x"])
    assert result.exit_code == 1
    assert "is not a cemsd database (no schema)" in result.output


def test_production_import_creates_no_database(tmp_path: Path, plant_file: Path) -> None:
    csv = tmp_path / "production.csv"
    csv.write_text("date,tonnes\n2026-01-01,100\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["production", "import", "--config", str(plant_file),
                                       str(csv)])
    assert result.exit_code != 0
    assert "no database at" in result.output
    assert not (tmp_path / "state").exists()


# --- `cemsd run` in a process of its own -------------------------------------------------------


@pytest.mark.parametrize(("mutate", "path", "fragment"), [c[1:] for c in HOLES[:8]],
                         ids=[c[0] for c in HOLES[:8]])
def test_run_refuses_a_hole_and_creates_nothing(
        tmp_path: Path, mutate: Callable[[Data], None], path: str, fragment: str) -> None:
    data = base(tmp_path)
    mutate(data)
    file = write_toml(tmp_path / "cemsd.toml", data)
    result = subprocess.run([*CEMSD, *RUN, str(file), "--accelerate", "max", "--until",
                             "+1h"], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert f"{file}: {path}: " in result.stderr and fragment in result.stderr
    assert "nothing was started" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cemsd.toml"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="cemsd-holes-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_as_nobody(file: Path) -> subprocess.CompletedProcess[str]:
    """`cemsd run` as user nobody (root may write anything, so these faults need a user)."""
    setpriv = shutil.which("setpriv")  # util-linux
    assert setpriv and os.getuid() == 0, "switching to user nobody needs root and setpriv"
    return subprocess.run([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", *CEMSD, *RUN, str(file), "--accelerate", "max",
                           "--until", "+1h"], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, cwd="/")


def test_a_read_only_database_is_a_clear_error(shared_dir: Path) -> None:
    file = write_toml(shared_dir / "cemsd.toml", base(shared_dir))
    upgraded = CliRunner().invoke(main, ["db-upgrade", "--config", str(file)])
    assert upgraded.exit_code == 0, upgraded.output
    state = shared_dir / "state"
    state.chmod(0o777)
    (state / "cemsd.db").chmod(0o444)
    before = sorted(p.name for p in state.iterdir())
    result = _run_as_nobody(file)
    assert result.returncode == 1
    assert f"the database file {state / 'cemsd.db'} is read-only" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in state.iterdir()) == before


def test_an_unwritable_state_dir_is_a_clear_error(shared_dir: Path) -> None:
    file = write_toml(shared_dir / "cemsd.toml", base(shared_dir))
    (shared_dir / "state").mkdir(mode=0o755)
    result = _run_as_nobody(file)
    assert result.returncode == 1
    assert f"the state_dir {shared_dir / 'state'} is not writable" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((shared_dir / "state").iterdir()) == []

    data = base(shared_dir)
    data["storage"]["state_dir"] = str(shared_dir / "locked" / "state")
    (shared_dir / "locked").mkdir(mode=0o700)
    result = _run_as_nobody(write_toml(shared_dir / "locked.toml", data))
    assert result.returncode == 1
    assert f"cannot create the state_dir {shared_dir / 'locked' / 'state'}" in result.stderr
    assert "Permission denied" in result.stderr and "Traceback" not in result.stderr


def test_sighup_while_starting_does_not_end_the_process(tmp_path: Path) -> None:
    """The daemon ignores SIGHUP until its reload handler is installed, then reloads."""
    data = base(tmp_path)
    data["buses"][0]["port"] = free_port()  # no instrument: the daemon runs all the same
    file = write_toml(tmp_path / "cemsd.toml", data)
    log = tmp_path / "daemon.log"
    with log.open("wb") as err:
        process = subprocess.Popen([*CEMSD, *RUN, str(file)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=err)
    try:
        # Before the interpreter runs cemsd's first line nothing can catch a signal; from
        # then on SIGHUP is ignored (the kernel shows it), through the slow start-up.
        deadline = time.monotonic() + 60
        while not _ignores_sighup(process.pid):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "SIGHUP was never ignored while starting"
            time.sleep(0.002)
        assert b"read plan" not in log.read_bytes()  # still starting
        for _ in range(10):
            process.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        _wait_for_line(process, log, b"cemsd.daemon running")  # alive, and started
        process.send_signal(signal.SIGHUP)  # once running, SIGHUP reloads
        _wait_for_line(process, log, b"reloading the configuration")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for_line(process: subprocess.Popen[bytes], log: Path, text: bytes) -> None:
    deadline = time.monotonic() + 60
    while text not in log.read_bytes():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def _ignores_sighup(pid: int) -> bool:
    """SIGHUP (signal 1) in the process's ignored set, as /proc shows it."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = dict(line.split(":\t") for line in status.splitlines() if ":\t" in line)
    return bool(int(masks["SigIgn"], 16) & 1)


def test_other_commands_keep_the_default_sighup() -> None:
    """Only `run` handles SIGHUP; a long `serve` or `hours` still ends on a hang-up."""
    probe = ("import signal, sys; sys.argv = ['cemsd', 'profiles']\n"
             "from cemsd.cli import main\n"
             "assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(signal.getsignal(signal.SIGHUP) is signal.SIG_DFL)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"
