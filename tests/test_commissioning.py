"""Commissioning tools against real simulators (a `cemsd sim` process serving Modbus TCP and
RTU on a pty pair): `cemsd probe` ad hoc, from the configuration and through a running
daemon; `cemsd run --once`; `cemsd profiles NAME`; and errors that name their cause."""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cemsd.errors import NoConnection
from drivers.modbus import ModbusTransport
from helpers import cli, free_port, listening, simulator_process, wait_for, write_toml

START = "2026-06-01T00:00:00+08:00"


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory, socat: str) -> Iterator[dict]:
    """An analyzer on Modbus TCP and a flow meter on RTU, served by `cemsd sim`."""
    tmp = tmp_path_factory.mktemp("commissioning")
    port = free_port()
    scenario = write_toml(tmp / "scenario.toml", {
        "start": START,
        "buses": [{"name": "tcp", "transport": "tcp", "port": port},
                  {"name": "rtu", "transport": "serial", "port": str(tmp / "tty-sim"),
                   "link": str(tmp / "tty-cemsd"), "baudrate": 19200, "parity": "N"}],
        "devices": [
            {"name": "analyzer", "bus": "tcp", "device_id": 1, "profile": "n2o-analyzer-percent",
             "signals": {"n2o": {"base": 24.0, "noise": 0.05}}},
            {"name": "flow", "bus": "rtu", "device_id": 3, "profile": "stack-flow-meter",
             "signals": {"velocity": {"base": 14.0, "noise": 0.1},
                         "temperature": {"base": 60.0}, "pressure": {"base": 2.0},
                         "moisture": {"base": 5.0}, "volume_flow": {"base": 50400.0}}},
        ],
    })
    config = write_toml(tmp / "cemsd.toml", {
        "plant": {"id": "commissioning"},
        "storage": {"state_dir": str(tmp / "state")},
        "points": {"inlet": {"duct_area_m2": 1.0}},
        "buses": [{"name": "tcp", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.3, "retries": 0},
                  {"name": "rs485", "transport": "serial", "port": str(tmp / "tty-cemsd"),
                   "baudrate": 19200, "parity": "N", "timeout": 0.3, "retries": 0}],
        "devices": [{"name": "analyzer", "bus": "tcp", "device_id": 1,
                     "profile": "n2o-analyzer-percent"},
                    {"name": "flow", "bus": "rs485", "device_id": 3, "point": "inlet",
                     "profile": "stack-flow-meter"}],
    })
    with simulator_process(scenario, lambda: listening(port) and (tmp / "tty-cemsd").exists()):
        yield {"tmp": tmp, "port": port, "config": config, "tty": tmp / "tty-cemsd"}


def cells(output: str, start: int, data_type: str) -> dict[str, str]:
    """The decodings of `data_type` at register `start`: byte order -> printed cell."""
    block = output.split(f"decoded from @{start}", 1)[1]
    line = next(ln for ln in block.splitlines() if ln.split()[:1] == [data_type])
    return dict(zip(["ABCD", "CDAB", "BADC", "DCBA"], line.split()[1:], strict=True))


def number(cell: str) -> float:
    return float(cell.rstrip("*<"))


# --- probe -------------------------------------------------------------------------------------


def test_probe_over_tcp_prints_raw_words_and_marks_decodings_in_range(plant: dict) -> None:
    code, out, err = cli("probe", "--host", "127.0.0.1", "--port", str(plant["port"]),
                         "--unit", "1", "--address", "0", "--count", "3", "--range", "0", "50")
    assert code == 0, err
    assert "holding 0..2 of device id 1:" in out
    assert re.search(r"@0\s+0x41(BF|C0)\s+\d+\s+[01]{16}", out)  # 24 %vol: 0x41C0 0000
    assert re.search(r"@2\s+0x0000\s+0\s", out)  # the status word
    floats = cells(out, 0, "float32")
    assert number(floats["ABCD"]) == pytest.approx(24.0, abs=0.3)
    assert floats["ABCD"].endswith("*")
    assert number(floats["BADC"]) < 0 and not floats["BADC"].endswith("*")
    assert {ln.split()[0] for ln in out.split("decoded from @0")[1].splitlines()
            if ln.startswith("    ")} == {"int16", "uint16", "int32", "uint32", "float32"}


def test_probe_from_the_configuration_over_rtu(plant: dict) -> None:
    code, out, err = cli("probe", "--config", str(plant["config"]), "--device", "flow")
    assert code == 0, err
    assert "input 0..7 of device id 3:" in out  # the device's whole map, one block
    velocity = cells(out, 0, "float32")
    assert number(velocity["CDAB"]) == pytest.approx(14.0, abs=0.6)
    assert velocity["CDAB"].endswith("*<")  # in range, and how the profile decodes it
    assert "decoded from @2 (temperature, range [0, 400] degC)" in out
    assert cells(out, 2, "int16")["ABCD"] == "60*<"  # scaled by the channel's 0.1
    assert {ln.split()[0] for ln in out.split("decoded from @0")[1].splitlines()
            if ln.startswith("    ")} >= {"int64", "uint64", "float64"}


def test_probe_of_a_silent_device_id_names_host_port_and_id(plant: dict) -> None:
    code, _, err = cli("probe", "--host", "127.0.0.1", "--port", str(plant["port"]),
                       "--unit", "9", "--address", "0", "--timeout", "0.3")
    assert code == 1
    assert (f"no reply within 0.3 s x 1 from device id 9 at 127.0.0.1:{plant['port']}"
            in err)


def test_a_silent_device_id_on_a_serial_bus_names_the_port(plant: dict) -> None:
    code, _, err = cli("probe", "--serial-port", str(plant["tty"]), "--baudrate", "19200",
                       "--parity", "N", "--unit", "7", "--address", "0", "--timeout", "0.3")
    assert code == 1
    assert f"no reply within 0.3 s x 1 from device id 7 at {plant['tty']}" in err


# --- run --once --------------------------------------------------------------------------------


def test_run_once_polls_every_device_once_and_stores_nothing(plant: dict) -> None:
    code, out, err = cli("run", "--config", str(plant["config"]), "--once")
    assert code == 0, out + err
    lines = out.splitlines()
    assert f"analyzer (id 1 on tcp, 127.0.0.1:{plant['port']}): ok" in lines
    assert f"flow (id 3 on rs485, {plant['tty']}): ok" in lines
    n2o = next(ln.split() for ln in lines if ln.split()[:1] == ["n2o"])
    assert float(n2o[1]) == pytest.approx(24.0, abs=0.3) and n2o[2:4] == ["%vol", "N"]
    velocity = next(ln.split() for ln in lines if ln.split()[:1] == ["velocity"])
    assert float(velocity[1]) == pytest.approx(14.0, abs=0.6) and velocity[3] == "N"
    assert not (plant["tmp"] / "state").exists()  # no database, no state


def test_run_once_shows_flags_and_reasons(plant: dict, tmp_path: Path) -> None:
    data = tomllib.loads(plant["config"].read_text())
    data["devices"][0]["channels"] = {"n2o": {"byte_order": "BADC"}}  # a wrong byte order
    config = write_toml(tmp_path / "wrong.toml", data)
    code, out, err = cli("run", "--config", str(config), "--once")
    assert code == 0, out + err
    n2o = next(ln for ln in out.splitlines() if ln.split()[:1] == ["n2o"])
    assert " D  implausible: n2o -" in n2o and "%vol below -0.25 %vol" in n2o


# --- through the running daemon ----------------------------------------------------------------


def test_probe_goes_through_the_daemon_that_owns_the_bus(plant: dict, tmp_path: Path) -> None:
    data = tomllib.loads(plant["config"].read_text())
    data["storage"]["state_dir"] = str(tmp_path / "state")
    config = write_toml(tmp_path / "cemsd.toml", data)
    daemon = subprocess.Popen([sys.executable, "-m", "cemsd", "--log-level", "WARNING", "run",
                               "--config", str(config)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "state" / "cemsd.sock").exists(), timeout=60)
        code, out, err = cli("probe", "--config", str(config), "--device", "flow")
        assert code == 0, err
        assert "read by the running daemon's owner of bus rs485" in err
        assert number(cells(out, 0, "float32")["CDAB"]) == pytest.approx(14.0, abs=0.6)
        # any id on the daemon's serial bus: 3 answers, 7 is silent, named with the port
        code, out, err = cli("probe", "--config", str(config), "--bus", "rs485", "--unit", "3",
                             "--address", "2", "--count", "1", "--kind", "input")
        assert code == 0, err
        assert "read by the running daemon's owner of bus rs485" in err
        assert "input 2..2 of device id 3:" in out and re.search(r"@2\s+0x0258\s+600", out)
        code, _, err = cli("probe", "--config", str(config), "--bus", "rs485", "--unit", "7",
                           "--address", "0")
        assert code == 1
        assert (f"through the daemon: no reply within 0.3 s x 1 from device id 7 at "
                f"{plant['tty']}") in err
        # the daemon holds the serial port: a direct open is refused, naming why
        code, _, err = cli("probe", "--serial-port", str(plant["tty"]), "--baudrate", "19200",
                           "--parity", "N", "--unit", "3", "--address", "0")
        assert code == 1
        assert f"Could not exclusively lock port {plant['tty']}" in err
        assert f"errno {errno.EAGAIN}" in err and "another process holds the port" in err
        assert f"fuser -v {plant['tty']}" in err
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


# --- errors that name their cause ---------------------------------------------------------------


async def _open(port: str) -> None:
    await ModbusTransport.serial("rs485-flow", port, 9600, "N").open(0.5)


def test_a_missing_serial_port_names_path_errno_and_hint(tmp_path: Path) -> None:
    missing = tmp_path / "ttyUSB0"
    with pytest.raises(NoConnection) as caught:
        asyncio.run(_open(str(missing)))
    message = str(caught.value)
    assert message.startswith(f"cannot open rs485-flow ({missing}): ")
    assert "No such file or directory" in message and f"errno {errno.ENOENT}" in message
    assert "ls -l /dev/serial/by-id/" in message


def _open_as_nobody(port: str, queue: multiprocessing.Queue) -> None:
    if os.geteuid() == 0:  # root opens anything: be an ordinary user
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    try:
        asyncio.run(_open(port))
        queue.put("opened")
    except NoConnection as exc:
        queue.put(str(exc))


def test_permission_denied_names_errno_and_the_dialout_hint(tmp_path: Path, socat: str) -> None:
    from simulators.server import open_pty_pair

    pair = open_pty_pair(tmp_path / "a", tmp_path / "b")
    try:
        os.chmod(os.path.realpath(tmp_path / "b"), 0o600)
        os.chmod(tmp_path, 0o755)
        queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
        child = multiprocessing.get_context("fork").Process(
            target=_open_as_nobody, args=(str(tmp_path / "b"), queue))
        child.start()
        child.join(30)
        message = queue.get(timeout=5)
    finally:
        pair.terminate()
        pair.wait()
    assert "Permission denied" in message and f"errno {errno.EACCES}" in message
    assert "dialout group" in message and "DeviceAllow=" in message


def test_check_config_warns_on_a_serial_port_that_does_not_exist(plant: dict,
                                                                 tmp_path: Path) -> None:
    data = tomllib.loads(plant["config"].read_text())
    data["buses"][1]["port"] = "/dev/ttyUSB-cemsd-test-missing"
    config = write_toml(tmp_path / "cemsd.toml", data)
    code, out, err = cli("check-config", str(config))
    assert code == 0, out  # a warning: the adapter may be plugged in later
    assert ("warning: bus 'rs485': serial port /dev/ttyUSB-cemsd-test-missing does not "
            "exist") in err
    _, _, err = cli("check-config", str(plant["config"]))
    assert "warning" not in err
    # polled, the missing port is named with pyserial's message, its errno and a hint
    code, out, _ = cli("run", "--config", str(config), "--once")
    assert code == 1
    missing = "/dev/ttyUSB-cemsd-test-missing"
    assert (f"flow (id 3 on rs485, {missing}): no link: cannot open rs485 ({missing}): "
            f"[Errno 2] could not open port {missing}") in out
    assert f"(errno {errno.ENOENT}; hint: no such device" in out


# --- profiles ----------------------------------------------------------------------------------


def test_profiles_name_prints_the_layout() -> None:
    code, out, _ = cli("profiles", "stack-flow-meter")
    assert code == 0
    velocity = next(ln.split() for ln in out.splitlines() if ln.startswith("velocity "))
    assert velocity == ["velocity", "4", "0", "float32", "CDAB", "1", "0", "m/s", "[0,", "40]",
                        "analog", "flow"]
    assert "    bit 1  -> M: probe blow-back" in out
    assert "    plausible -1.2 .. 440 m/s, frozen after 60 min (else D)" in out
    assert "    plausible -273.15 .. 4400 degC (else D)" in out
    assert "remote calibration (coils): zero_valve_coil = 0" in out
    code, out, err = cli("profiles", "no-such-profile")
    assert code == 1 and "unknown profile 'no-such-profile'" in err


def test_the_register_map_in_docs_profiles_passes_check_config(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "PROFILES.md").read_text()
    example = next(block.split("```", 1)[0] for block in text.split("```toml\n")[1:]
                   if "[plant]" in block)
    data = tomllib.loads(example)
    assert data["devices"][0]["channels"]["n2o"]["byte_order"] == "CDAB"
    config = write_toml(tmp_path / "cemsd.toml", data)
    code, out, err = cli("check-config", str(config))
    assert code == 0, out
    assert "2 device(s), 8 channel(s)" in out
    assert "warning: bus 'rs485-1': serial port /dev/serial/by-id/usb-FTDI" in err


def test_nothing_listening_names_host_port_and_errno() -> None:
    port = free_port()
    code, _, err = cli("probe", "--host", "127.0.0.1", "--port", str(port), "--unit", "1",
                       "--address", "0")
    assert code == 1
    assert (f"cannot open probe (127.0.0.1:{port}): Connection refused "
            f"(errno {errno.ECONNREFUSED})") in err
