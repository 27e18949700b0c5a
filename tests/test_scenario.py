"""simulators.scenario and simulators.instrument: time offsets, signals, noise, events,
register images, faults, wire corruption and the scenario cross-checks."""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pymodbus.constants import ExcCodes

from cemsd.config import Channel
from cemsd.errors import ConfigError
from drivers import registry
from drivers.codec import ByteOrder, DataType, decode
from helpers import REPO, write_scenario
from simulators.instrument import NoReply, SimulatedInstrument, corrupt, gaussian
from simulators.scenario import Scenario, Signal, load_scenario, parse_offset

H = 3600.0


def base_scenario() -> dict[str, Any]:
    return {
        "start": "2026-06-01T00:00:00+08:00",
        "seed": 7,
        "buses": [
            {"name": "analyzers", "transport": "tcp", "port": 15020},
            {"name": "flow", "transport": "tcp", "port": 15021},
            {"name": "io", "transport": "tcp", "port": 15022},
        ],
        "devices": [
            {"name": "inlet-analyzer", "bus": "analyzers", "device_id": 1,
             "profile": "n2o-analyzer-percent",
             "signals": {"n2o": {"base": 24.0}, "status": {"base": 1}}},
            {"name": "outlet-analyzer", "bus": "analyzers", "device_id": 2,
             "profile": "n2o-analyzer-ppm",
             "signals": {"n2o": {"base": 2000.0, "amplitude": 150.0, "noise": 10.0}}},
            {"name": "inlet-flow", "bus": "flow", "device_id": 1, "profile": "stack-flow-meter",
             "signals": {"velocity": {"base": 14.0}, "temperature": {"base": 60.04},
                         "pressure": {"base": -2.5}, "moisture": {"base": 5.0},
                         "volume_flow": {"base": 12_600.0}}},
            {"name": "plant", "bus": "io", "device_id": 1, "profile": "plant-io",
             "signals": {"abatement_running": {"base": 1}, "production_running": {"base": 1},
                         "production_counter": {"base": 10_000.0, "ramp_per_hour": 18.0}}},
        ],
        "events": [],
    }


def scenario_with(tmp_path: Path, *events: dict[str, Any], **changes: Any) -> Scenario:
    data = copy.deepcopy(base_scenario())
    data["events"] = list(events)
    data.update(changes)
    return write_scenario(tmp_path, data)


def instrument(scenario: Scenario, name: str) -> SimulatedInstrument:
    return SimulatedInstrument(scenario.device(name), scenario)


@pytest.fixture
def scenario(tmp_path: Path) -> Scenario:
    return scenario_with(tmp_path)


# --- parse_offset -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("5h20m", 5 * 3600 + 20 * 60),
    ("1d2h", 86400 + 2 * 3600),
    ("1d2h30m10s", 86400 + 2 * 3600 + 30 * 60 + 10),
    ("90s", 90),
    ("45m", 2700),
    ("1.5h", 5400),
    ("2d", 172_800),
    (" 5h 20m ", 19_200),
    ("0s", 0),
])
def test_parse_offset_strings(text: str, seconds: float) -> None:
    assert parse_offset(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("number", "seconds"), [(300, 300.0), (2.5, 2.5), (0, 0.0)])
def test_parse_offset_numbers(number: float, seconds: float) -> None:
    value = parse_offset(number)
    assert value == seconds
    assert isinstance(value, float)


@pytest.mark.parametrize("text", ["", "   ", "abc", "5x", "h", "5m20h", "5h5h", "-5h", "5 hours",
                                  "1d 2", "soon", "5h20"])
def test_parse_offset_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read time offset"):
        parse_offset(text)


# --- Signal -------------------------------------------------------------------------------------


def numeric_mean(signal: Signal, t0: float, t1: float, n: int) -> float:
    """Midpoint rule on a fine grid: an independent check of the analytic mean."""
    dt = (t1 - t0) / n
    return statistics.fmean(signal.deterministic(t0 + (i + 0.5) * dt) for i in range(n))


SIGNALS = [
    Signal(base=24.0, amplitude=1.0, phase=21600.0),
    Signal(base=2000.0, amplitude=150.0, ramp_per_hour=-3.0),
    Signal(base=10_000.0, ramp_per_hour=18.0),
    Signal(base=5.0, amplitude=2.0, period=1800.0, phase=-100.0, ramp_per_hour=0.5),
]
WINDOWS = [(0.0, H), (5 * H, 6 * H), (0.0, 86400.0), (1234.5, 1234.5 + 60.0),
           (3 * H + 17.0, 27 * H)]


@pytest.mark.parametrize("signal", SIGNALS, ids=lambda s: f"b{s.base}-a{s.amplitude}")
@pytest.mark.parametrize(("t0", "t1"), WINDOWS)
def test_signal_mean_equals_the_numerical_average(signal: Signal, t0: float, t1: float
                                                  ) -> None:
    n = 20_000
    dt = (t1 - t0) / n
    w = 2 * math.pi / signal.period
    # midpoint rule error bound: dt^2/24 * max|f''|, f'' = -A w^2 sin(...) (the ramp is exact)
    bound = dt**2 / 24 * abs(signal.amplitude) * w**2
    expected = numeric_mean(signal, t0, t1, n)
    assert signal.mean(t0, t1) == pytest.approx(expected, abs=bound + 1e-9 * abs(expected))


def test_signal_mean_analytically() -> None:
    # sine over half a period: 2A/pi
    assert Signal(amplitude=2.0, period=H).mean(0.0, H / 2) == pytest.approx(4 / math.pi)
    # a whole period of the daily cycle averages to the base
    assert Signal(base=24.0, amplitude=1.0, phase=21600).mean(7 * H, 31 * H) == \
        pytest.approx(24.0)
    # a ramp averages to its value at the middle of the window
    assert Signal(base=10.0, ramp_per_hour=6.0).mean(0.0, H) == pytest.approx(13.0)
    assert Signal(base=10.0, ramp_per_hour=6.0).mean(2 * H, 4 * H) == pytest.approx(28.0)
    assert Signal(base=3.0).mean(0.0, 1.0) == 3.0


def test_signal_deterministic_values() -> None:
    daily = Signal(base=24.0, amplitude=1.0, phase=21600.0)
    assert daily.deterministic(21600.0) == pytest.approx(24.0)  # rising zero crossing
    assert daily.deterministic(21600.0 + 86400 / 4) == pytest.approx(25.0)  # peak at noon
    assert daily.deterministic(21600.0 + 3 * 86400 / 4) == pytest.approx(23.0)
    ramp = Signal(base=100.0, ramp_per_hour=18.0)
    assert ramp.deterministic(0.0) == 100.0
    assert ramp.deterministic(2 * H) == pytest.approx(136.0)


# --- noise --------------------------------------------------------------------------------------


def test_noise_is_deterministic(tmp_path: Path) -> None:
    a = scenario_with(tmp_path / "a")
    b = scenario_with(tmp_path / "b")
    one, other = instrument(a, "outlet-analyzer"), instrument(b, "outlet-analyzer")
    times = [0.0, 2.0, 3601.5, 86_399.0]
    first = [one.value("n2o", t) for t in times]
    assert first == [one.value("n2o", t) for t in times]  # same instrument, asked again
    assert first == [other.value("n2o", t) for t in times]  # rebuilt from the same file
    assert gaussian(7, 123, 10.0) == gaussian(7, 123, 10.0)
    assert gaussian(7, 123, 10.0) != gaussian(8, 123, 10.0)
    assert gaussian(7, 123, 10.0) != gaussian(7, 124, 10.0)
    assert gaussian(7, 123, 10.0) != gaussian(7, 123, 10.001)


def test_another_seed_gives_other_noise(tmp_path: Path) -> None:
    a = instrument(scenario_with(tmp_path / "a"), "outlet-analyzer")
    b = instrument(scenario_with(tmp_path / "b", seed=8), "outlet-analyzer")
    values_a = [a.value("n2o", t) for t in range(0, 100, 2)]
    values_b = [b.value("n2o", t) for t in range(0, 100, 2)]
    assert all(x != y for x, y in zip(values_a, values_b, strict=True))


def test_noise_has_zero_mean_and_the_configured_deviation(scenario: Scenario) -> None:
    outlet = instrument(scenario, "outlet-analyzer")
    signal = scenario.device("outlet-analyzer").signals["n2o"]
    n = 20_000
    times = np.arange(n) * 2.0  # a reading every 2 s for 11 hours
    noise = np.array([outlet.value("n2o", t) - signal.deterministic(t) for t in times])
    sigma = 10.0
    assert abs(noise.mean()) < 4 * sigma / math.sqrt(n)
    assert noise.std() == pytest.approx(sigma, rel=0.03)  # sampling error ~ 0.5 %
    assert np.mean(np.abs(noise) < sigma) == pytest.approx(0.6827, abs=0.015)
    lag1 = np.corrcoef(noise[:-1], noise[1:])[0, 1]
    assert abs(lag1) < 4 / math.sqrt(n)  # consecutive readings are independent


def test_noise_streams_of_two_devices_are_independent(tmp_path: Path) -> None:
    data = base_scenario()
    data["devices"][0]["signals"]["n2o"] = {"base": 24.0, "noise": 0.05}
    s = write_scenario(tmp_path, data)
    inlet, outlet = instrument(s, "inlet-analyzer"), instrument(s, "outlet-analyzer")
    times = np.arange(5_000) * 5.0
    a = np.array([inlet.value("n2o", t) for t in times])
    b = np.array([outlet.value("n2o", t) for t in times])
    assert abs(np.corrcoef(a, b)[0, 1]) < 4 / math.sqrt(len(times))


def test_gaussian_is_standard_normal() -> None:
    x = np.array([gaussian(1, 99, t * 0.5) for t in range(20_000)])
    assert abs(x.mean()) < 4 / math.sqrt(len(x))
    assert x.std() == pytest.approx(1.0, rel=0.03)


# --- events -------------------------------------------------------------------------------------


def test_set_event_replaces_the_value_inside_its_window(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "plant", "kind": "set", "channel": "bypass_position",
                                 "value": 100.0, "start": "14h", "end": "14h30m"})
    plant = instrument(s, "plant")
    assert plant.value("bypass_position", 14 * H - 1) == 0.0
    assert plant.value("bypass_position", 14 * H) == 100.0
    assert plant.value("bypass_position", 14.25 * H) == 100.0
    assert plant.value("bypass_position", 14.5 * H) == 0.0  # end is exclusive
    words = plant.image(3, 14.25 * H)
    assert words[0] == 1000  # 100 % / scale 0.1


def test_offset_event_adds_to_the_signal(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "inlet-analyzer", "kind": "offset", "channel": "n2o",
                                 "value": -0.5, "start": 600, "end": 1200})
    inlet = instrument(s, "inlet-analyzer")
    assert inlet.value("n2o", 599.0) == 24.0
    assert inlet.value("n2o", 600.0) == pytest.approx(23.5)
    assert inlet.value("n2o", 1199.0) == pytest.approx(23.5)
    assert inlet.value("n2o", 1200.0) == 24.0


def test_drift_grows_during_its_window_and_persists_after_it(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "inlet-analyzer", "kind": "drift", "channel": "n2o",
                                 "per_hour": 0.4, "start": "1h", "end": "3h"})
    inlet = instrument(s, "inlet-analyzer")
    assert inlet.value("n2o", 0.5 * H) == 24.0
    assert inlet.value("n2o", 1 * H) == pytest.approx(24.0)
    assert inlet.value("n2o", 2 * H) == pytest.approx(24.4)
    assert inlet.value("n2o", 3 * H) == pytest.approx(24.8)
    assert inlet.value("n2o", 10 * H) == pytest.approx(24.8)  # the instrument stays off


def test_open_ended_drift(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "inlet-analyzer", "kind": "drift", "channel": "n2o",
                                 "per_hour": -0.1, "start": "2h"})
    inlet = instrument(s, "inlet-analyzer")
    assert inlet.value("n2o", 12 * H) == pytest.approx(23.0)


def test_events_of_one_channel_do_not_touch_another(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "inlet-flow", "kind": "set", "channel": "moisture",
                                 "value": 30.0, "start": 0})
    flow = instrument(s, "inlet-flow")
    assert flow.value("moisture", 10.0) == 30.0
    assert flow.value("velocity", 10.0) == 14.0
    other = instrument(s, "inlet-analyzer")
    assert other.value("n2o", 10.0) == 24.0


def decode_channel(inst: SimulatedInstrument, key: str, t: float) -> float:
    ch = inst.channels[key]
    words = inst.image(ch.function_code, t)
    regs = [words[ch.address + i] for i in range(ch.data_type.registers)]
    return decode(regs, ch.data_type, ch.byte_order) * ch.scale + ch.offset


def test_status_event_bits_are_ored_into_the_status_word(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "inlet-analyzer", "kind": "status", "bits": [2, 5],
                                 "start": "10h", "end": "10h10m"})
    inlet = instrument(s, "inlet-analyzer")
    # the status signal's base 1 is bit 0 (analyzer fault) of the profile
    assert inlet.status_word("status", 9 * H) == 0b1
    assert inlet.status_word("status", 10 * H + 300) == 0b100101
    assert decode_channel(inlet, "status", 10 * H + 300) == 0b100101
    assert inlet.status_word("status", 10 * H + 600) == 0b1


def test_status_event_with_a_value_replaces_the_word_then_ors_bits(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "inlet-flow", "kind": "status", "channel": "status",
                                 "value": 2, "bits": [0], "start": 0, "end": 60})
    flow = instrument(s, "inlet-flow")
    assert flow.status_word("status", 30.0) == 0b11
    assert flow.status_word("status", 60.0) == 0


def test_no_reply_event_raises_noreply(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "outlet-analyzer", "kind": "no_reply",
                                 "start": "5h", "end": "5h20m"})
    outlet = instrument(s, "outlet-analyzer")
    with pytest.raises(NoReply):
        outlet.read(3, 0, 3, 5 * H + 60)
    assert outlet.read(3, 0, 3, 5 * H - 1).registers is not None
    assert outlet.read(3, 0, 3, 5 * H + 20 * 60).registers is not None
    # other devices on the same bus still answer
    assert instrument(s, "inlet-analyzer").read(3, 0, 3, 5 * H + 60).registers is not None


def test_exception_event_gives_its_modbus_code(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "inlet-flow", "kind": "exception", "code": 6,
                                 "start": 0, "end": 60})
    flow = instrument(s, "inlet-flow")
    outcome = flow.read(4, 0, 6, 30.0)
    assert outcome.exception == ExcCodes.DEVICE_BUSY
    assert int(outcome.exception) == 6
    assert outcome.registers is None
    assert flow.read(4, 0, 6, 61.0).exception is None


def test_exception_event_defaults_to_server_device_failure(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "inlet-flow", "kind": "exception", "start": 0})
    assert instrument(s, "inlet-flow").read(4, 0, 1, 1.0).exception == 4


@pytest.mark.parametrize("kind", ["garbage", "truncated", "oversized", "bad_crc"])
def test_corruption_events_mark_the_reply(tmp_path: Path, kind: str) -> None:
    s = scenario_with(tmp_path, {"device": "inlet-analyzer", "kind": kind, "start": 0,
                                 "end": 60})
    inlet = instrument(s, "inlet-analyzer")
    outcome = inlet.read(3, 0, 2, 10.0)
    assert outcome.corruption == kind
    assert outcome.registers == [0x41C0, 0x0000]  # the reply that gets corrupted on the wire
    assert inlet.read(3, 0, 2, 60.0).corruption is None


def test_slow_event_delays_the_reply(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "inlet-analyzer", "kind": "slow", "delay": 0.7,
                                 "start": 0, "end": 60})
    inlet = instrument(s, "inlet-analyzer")
    assert inlet.read(3, 0, 2, 1.0).delay == 0.7
    assert inlet.read(3, 0, 2, 61.0).delay == 0.0


# --- register images ----------------------------------------------------------------------------


def test_float32_abcd_image(scenario: Scenario) -> None:
    inlet = instrument(scenario, "inlet-analyzer")
    words = inlet.image(3, 0.0)
    assert words[0] == 0x41C0 and words[1] == 0x0000  # 24.0 = 0x41C00000, big endian
    assert words[2] == 1  # status word
    assert inlet.read(3, 0, 3, 0.0).registers == [0x41C0, 0x0000, 1]


def test_flow_meter_image_cdab_and_scaled_integers(scenario: Scenario) -> None:
    flow = instrument(scenario, "inlet-flow")
    words = flow.image(4, 0.0)
    assert [words[0], words[1]] == [0x0000, 0x4160]  # 14.0 = 0x41600000, words swapped
    assert words[2] == 600  # 60.04 degC / 0.1, rounded
    assert words[3] == 0xFF06  # -2.5 kPa / 0.01 = -250 as int16
    assert words[4] == 500  # 5 %vol / 0.01
    assert words[5] == 0  # status


def test_counter_uint32_badc_image(scenario: Scenario) -> None:
    plant = instrument(scenario, "plant")
    at0 = plant.image(3, 0.0)
    assert [at0[1], at0[2]] == [0x9800, 0x8096]  # 10,000,000 = 0x00989680, bytes swapped
    at1h = plant.image(3, H)
    assert [at1h[1], at1h[2]] == [0x9800, 0xD0DC]  # 10,018,000 = 0x0098DCD0
    assert decode_channel(plant, "production_counter", H) == pytest.approx(10_018.0)


def test_discrete_inputs_image(scenario: Scenario) -> None:
    plant = instrument(scenario, "plant")
    assert plant.read(2, 0, 3, 0.0).registers == [1, 1, 0]


@pytest.mark.parametrize(("device", "t"), [("inlet-analyzer", 0.0), ("outlet-analyzer", 4321.0),
                                           ("inlet-flow", 100.0), ("plant", 7 * H + 13.0)])
def test_image_decodes_back_to_every_channel_value(scenario: Scenario, device: str, t: float
                                                   ) -> None:
    inst = instrument(scenario, device)
    assert inst.channels
    for key, ch in inst.channels.items():
        expected = inst.status_word(key, t) if ch.kind == "status" else inst.value(key, t)
        got = decode_channel(inst, key, t)
        if ch.data_type is DataType.FLOAT32:
            assert got == pytest.approx(expected, rel=1e-6), key
        elif ch.data_type is DataType.BOOL:
            assert got == (1.0 if expected else 0.0), key
        else:
            assert abs(got - expected) <= abs(ch.scale) / 2 + 1e-9, key


@pytest.fixture
def probe_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private profile folder on CEMSD_PROFILE_PATH (profiles are cached by name)."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    monkeypatch.setenv("CEMSD_PROFILE_PATH", str(folder))
    registry._load.cache_clear()
    yield folder
    registry._load.cache_clear()


@pytest.mark.parametrize("order", list(ByteOrder))
@pytest.mark.parametrize("data_type", [DataType.INT16, DataType.UINT16, DataType.INT32,
                                       DataType.UINT32, DataType.FLOAT32, DataType.FLOAT64])
def test_image_honours_any_byte_order(tmp_path: Path, probe_profiles: Path, order: ByteOrder,
                                      data_type: DataType) -> None:
    (probe_profiles / "probe.toml").write_text(
        f'[channels.x]\naddress = 10\ndata_type = "{data_type}"\nbyte_order = "{order}"\n'
        'scale = 0.5\noffset = -3.0\nunit = "ppm"\n', encoding="utf-8")
    data = base_scenario()
    data["devices"] = [{"name": "probe", "bus": "io", "device_id": 1, "profile": "probe",
                        "signals": {"x": {"base": 1234.5}}}]
    inst = instrument(write_scenario(tmp_path, data), "probe")
    ch: Channel = inst.channels["x"]
    regs = inst.read(3, 10, data_type.registers, 0.0).registers
    assert regs is not None and len(regs) == data_type.registers
    raw = decode(regs, data_type, order)
    assert raw == (1234.5 + 3.0) / 0.5  # 2475, exact in every type
    assert raw * ch.scale + ch.offset == 1234.5
    big_endian = decode(regs, data_type, ByteOrder.ABCD)
    assert (big_endian == raw) == (order is ByteOrder.ABCD or (
        data_type.registers == 1 and order is ByteOrder.CDAB))


# --- reads outside the map ------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "fc", "address", "count"), [
    ("inlet-analyzer", 3, 0, 4),  # one past the status word
    ("inlet-analyzer", 3, 3, 1),
    ("inlet-analyzer", 4, 0, 1),  # no input registers at all
    ("inlet-flow", 4, 7, 2),  # volume_flow ends at 8
    ("inlet-flow", 3, 0, 1),
    ("inlet-flow", 2, 0, 1),
    ("plant", 2, 2, 2),
    ("inlet-analyzer", 1, 15, 2),  # coils 0-15 only
])
def test_read_outside_the_map_is_illegal_address(scenario: Scenario, device: str, fc: int,
                                                 address: int, count: int) -> None:
    outcome = instrument(scenario, device).read(fc, address, count, 0.0)
    assert outcome.exception == ExcCodes.ILLEGAL_ADDRESS
    assert outcome.registers is None


def test_reads_inside_the_map_succeed(scenario: Scenario) -> None:
    flow = instrument(scenario, "inlet-flow")
    assert len(flow.read(4, 0, 8, 0.0).registers or []) == 8
    assert len(flow.read(4, 2, 3, 0.0).registers or []) == 3
    inlet = instrument(scenario, "inlet-analyzer")
    assert inlet.read(1, 0, 2, 0.0).registers == [0, 0]
    inlet.write_coils(0, [True], 0.0)
    assert inlet.read(1, 0, 2, 0.0).registers == [1, 0]


# --- corrupt() -----------------------------------------------------------------------------------

FRAME = bytes([0x01, 0x03, 0x04, 0x41, 0xC0, 0x00, 0x00, 0x8A, 0x5B])


def test_corrupt_truncated_keeps_the_first_half() -> None:
    assert corrupt("truncated", FRAME) == FRAME[:4]
    assert corrupt("truncated", b"\x01") == b"\x01"


def test_corrupt_oversized_appends_300_bytes() -> None:
    out = corrupt("oversized", FRAME)
    assert len(out) == len(FRAME) + 300
    assert out.startswith(FRAME)
    assert out[len(FRAME):] == bytes(300)


def test_corrupt_bad_crc_flips_the_last_byte() -> None:
    out = corrupt("bad_crc", FRAME)
    assert len(out) == len(FRAME)
    assert out[:-1] == FRAME[:-1]
    assert out[-1] == 0x5B ^ 0xFF


def test_corrupt_garbage_same_length_other_bytes_reproducible() -> None:
    out = corrupt("garbage", FRAME, seed=3)
    assert len(out) == len(FRAME)
    assert out != FRAME
    assert out == corrupt("garbage", FRAME, seed=3)
    assert out != corrupt("garbage", FRAME, seed=4)
    long = corrupt("garbage", bytes(100), seed=0)
    assert len(long) == 100 and long != bytes(100)


# --- loading and cross-checks ----------


def load_problems(tmp_path: Path, data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        write_scenario(tmp_path, data)
    return [(p.path, p.message) for p in info.value.problems]


def test_demo_scenario_loads() -> None:
    s = load_scenario(REPO / "config" / "demo-scenario.toml")
    assert s.epoch == datetime.fromisoformat("2026-06-01T00:00:00+08:00").timestamp()
    assert s.epoch == 1_780_243_200.0
    assert s.seed == 2026
    serial = next(b for b in s.buses if b.transport == "serial")
    assert serial.port == str((REPO / ".demo" / "tty-sim").resolve())
    assert serial.link == str((REPO / ".demo" / "tty-cemsd").resolve())
    no_reply = next(e for e in s.events if e.kind == "no_reply")
    assert (no_reply.start, no_reply.end) == (5 * H, 5 * H + 20 * 60)


def test_event_offsets_are_parsed(tmp_path: Path) -> None:
    s = scenario_with(tmp_path, {"device": "plant", "kind": "set", "channel": "bypass_open",
                                 "value": 1, "start": "1d2h", "end": 100_000})
    assert s.events[0].start == 93_600.0
    assert s.events[0].end == 100_000.0
    assert s.events[0].active(93_600.0)
    assert not s.events[0].active(100_000.0)


def test_unknown_device_in_an_event(tmp_path: Path) -> None:
    data = base_scenario()
    data["events"] = [{"device": "ghost", "kind": "no_reply", "start": 0}]
    assert ("events[0].device", "no device 'ghost'") in load_problems(tmp_path, data)


def test_unknown_profile(tmp_path: Path) -> None:
    data = base_scenario()
    data["devices"][1]["profile"] = "n2o-analyser"
    [(path, message)] = load_problems(tmp_path, data)
    assert path == "devices[1].profile"
    assert "unknown profile 'n2o-analyser'" in message


def test_signal_for_a_channel_the_profile_lacks(tmp_path: Path) -> None:
    data = base_scenario()
    data["devices"][0]["signals"]["nox"] = {"base": 1.0}
    [(path, message)] = load_problems(tmp_path, data)
    assert path == "devices[0].signals.nox"
    assert "has no channel 'nox'" in message


@pytest.mark.parametrize("end", ["4h", "5h", 100])
def test_event_ending_before_or_at_its_start(tmp_path: Path, end: Any) -> None:
    data = base_scenario()
    data["events"] = [{"device": "plant", "kind": "no_reply", "start": "5h", "end": end}]
    assert ("events[0].end", "end must be after start") in load_problems(tmp_path, data)


def test_unknown_bus_of_a_device(tmp_path: Path) -> None:
    data = base_scenario()
    data["devices"][2]["bus"] = "rs485"
    assert ("devices[2].bus", "no bus 'rs485'") in load_problems(tmp_path, data)


@pytest.mark.parametrize("kind", ["set", "offset", "drift"])
def test_value_events_need_a_channel(tmp_path: Path, kind: str) -> None:
    data = base_scenario()
    data["events"] = [{"device": "plant", "kind": kind, "value": 1.0, "start": 0}]
    assert ("events[0].channel", f"a {kind} event needs a channel") in load_problems(tmp_path,
                                                                                  data)


def test_start_needs_a_utc_offset(tmp_path: Path) -> None:
    data = base_scenario()
    data["start"] = "2026-06-01T00:00:00"
    problems = load_problems(tmp_path, data)
    assert any(p == "start" and "UTC offset" in m for p, m in problems)


def test_garbage_event_offset_and_kind_are_refused(tmp_path: Path) -> None:
    data = base_scenario()
    data["events"] = [{"device": "plant", "kind": "no_reply", "start": "soon"},
                      {"device": "plant", "kind": "explode", "start": 0}]
    problems = load_problems(tmp_path, data)
    assert any("start" in p and "cannot read time offset" in m for p, m in problems)
    assert any("kind" in p and "events" in p for p, _ in problems)


def test_several_scenario_problems_are_reported_together(tmp_path: Path) -> None:
    data = base_scenario()
    data["devices"][0]["signals"]["nox"] = {"base": 1.0}
    data["devices"][1]["profile"] = "nope"
    data["events"] = [{"device": "ghost", "kind": "no_reply", "start": 0},
                      {"device": "plant", "kind": "no_reply", "start": 10, "end": 5}]
    paths = {p for p, _ in load_problems(tmp_path, data)}
    assert paths == {"devices[0].signals.nox", "devices[1].profile", "events[0].device",
                     "events[1].end"}


def test_missing_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(tmp_path / "none.toml")
    assert "cannot read" in info.value.problems[0].message


# --- bugs: scenarios that load but cannot work ----------


def test_event_for_a_channel_the_profile_lacks_is_refused(tmp_path: Path) -> None:
    """A set/offset/drift event on a misspelt channel silently does nothing today; the
    signals get this check (scenario._cross_check), events do not."""
    data = base_scenario()
    data["events"] = [{"device": "plant", "kind": "set", "channel": "bypass_positon",
                       "value": 100.0, "start": "14h", "end": "14h30m"}]
    problems = load_problems(tmp_path, data)
    assert any(p == "events[0].channel" and "bypass_positon" in m for p, m in problems)


def test_exception_event_with_an_undefined_modbus_code_is_refused(tmp_path: Path) -> None:
    """code = 9 loads, then ExcCodes(9) raises ValueError inside the simulator's request
    handler when the event starts (instrument.read)."""
    data = base_scenario()
    data["events"] = [{"device": "plant", "kind": "exception", "code": 9, "start": 0}]
    problems = load_problems(tmp_path, data)
    assert any("code" in p for p, _ in problems)


def test_two_devices_with_one_id_on_a_bus_are_refused(tmp_path: Path) -> None:
    """SimulatedBus keeps one instrument per id: the other device would vanish silently."""
    data = base_scenario()
    data["devices"][1]["device_id"] = 1  # same bus and id as inlet-analyzer
    problems = load_problems(tmp_path, data)
    assert any(p.startswith("devices[1]") and "1" in m for p, m in problems)


def test_non_utf8_scenario_is_a_config_error(tmp_path: Path) -> None:
    """load_scenario catches OSError only: UnicodeDecodeError escapes as a traceback
    (`cemsd sim` only turns ConfigError into a message). load_config handles it."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('start = "2026-06-01T00:00:00+08:00"\n# Chalampé\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert "UTF-8" in info.value.problems[0].message


def test_buses_of_the_wrong_type_is_a_config_error(tmp_path: Path) -> None:
    """scenario._resolve_paths iterates raw["buses"] before validation: `buses = 5`
    raises TypeError instead of a ConfigError naming `buses`."""
    data = base_scenario()
    data["buses"] = 5
    problems = load_problems(tmp_path, data)
    assert any(p == "buses" for p, _ in problems)
