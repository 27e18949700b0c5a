"""Reading-level validity (cemsd/validity.py): range, bad numbers, status words, failures.

Flag precedence (cemsd/flags.py, written out here by hand): F, M, C, D, B, T, S, N.
"""

from __future__ import annotations

import math

import pytest

from cemsd.config import Channel, StatusMeaning
from cemsd.flags import Flag
from cemsd.plan import ChannelPlan, DevicePlan
from cemsd.readings import Reading
from cemsd.units import Unit
from cemsd.validity import DeviceValidator, over_range, status_conditions
from drivers.codec import DataType

TS = 1_780_000_000.0


def cp(key: str, spec: Channel, device: str = "ana") -> ChannelPlan:
    return ChannelPlan(name=f"{device}.{key}", key=key, device=device, spec=spec, point=None)


def device(*channels: ChannelPlan, name: str = "ana") -> DevicePlan:
    return DevicePlan(name=name, bus="bus1", device_id=1, poll_interval=2.0, timeout=0.3,
                      retries=1, backoff_max=60.0, blocks=(), channels=channels)


CONC = cp("conc", Channel(address=0, unit=Unit.PPM, range=(0.0, 100.0)))
O2 = cp("o2", Channel(address=2, unit=Unit.PERCENT_VOL, range=(0.0, 25.0)))
TEMP = cp("temp", Channel(address=4, unit=Unit.DEG_C))  # no measuring range
VALVE = cp("valve", Channel(function_code=1, address=0, data_type=DataType.BOOL,
                            unit=Unit.BOOL, kind="digital"))
STATUS = cp("status", Channel(
    address=10, data_type=DataType.UINT16, unit=Unit.CODE, kind="status",
    bits={
        0: StatusMeaning(flag=Flag.D, text="analyzer fault"),
        1: StatusMeaning(flag=Flag.M, text="maintenance mode"),
        2: StatusMeaning(flag=Flag.C, text="calibrating"),
        15: StatusMeaning(flag=Flag.F, text="sample pump stopped"),
    },
    applies_to=["conc"],
))

DEVICE = device(CONC, O2, TEMP, VALVE, STATUS)


def poll(values: dict[str, float], failures: dict[str, tuple[Flag, str]] | None = None,
         dev: DevicePlan = DEVICE, **kwargs: object) -> dict[str, Reading]:
    validator = DeviceValidator(dev, **kwargs)  # type: ignore[arg-type]
    readings = validator.readings(TS, values, failures or {})
    by_key = {r.channel.split(".", 1)[1]: r for r in readings}
    assert len(by_key) == len(readings) == len(dev.channels)
    return by_key


def normal(**overrides: float) -> dict[str, float]:
    values = {"conc": 42.5, "o2": 8.0, "temp": 180.0, "valve": 1.0, "status": 0.0}
    values.update(overrides)
    return values


# --- the ordinary case ------------------------------------------------------------------------


def test_all_normal() -> None:
    r = poll(normal())
    for key, value in normal().items():
        assert r[key].flag is Flag.N, key
        assert r[key].reason is None
        assert r[key].value == value
        assert r[key].ts == TS
        assert r[key].valid
    assert r["conc"].channel == "ana.conc"


def test_readings_come_out_in_channel_order() -> None:
    validator = DeviceValidator(DEVICE)
    readings = validator.readings(TS, normal(), {})
    assert [x.channel for x in readings] == [c.name for c in DEVICE.channels]


# --- over range -------------------------------------------------------------------------------


def test_over_range_is_t_with_the_limit_in_the_reason() -> None:
    r = poll(normal(conc=100.5))
    assert r["conc"].flag is Flag.T
    assert r["conc"].value == 100.5  # HJ 212: keep the raw value, mark it
    reason = r["conc"].reason
    assert reason is not None
    assert "100.5" in reason
    assert "100" in reason.replace("100.5", "")  # the full scale itself
    assert "ppm" in reason
    assert r["o2"].flag is Flag.N


def test_full_scale_itself_is_in_range() -> None:
    r = poll(normal(conc=100.0, o2=25.0))
    assert r["conc"].flag is Flag.N
    assert r["o2"].flag is Flag.N


def test_each_channel_has_its_own_range() -> None:
    r = poll(normal(conc=99.0, o2=25.1))
    assert r["conc"].flag is Flag.N
    assert r["o2"].flag is Flag.T
    assert "25" in (r["o2"].reason or "")


def test_no_range_no_over_range() -> None:
    r = poll(normal(temp=1e9))
    assert r["temp"].flag is Flag.N


def test_over_range_check_directly() -> None:
    reading = Reading("ana.conc", TS, 250.0, Flag.N)
    flag, reason = over_range(reading, CONC)  # type: ignore[misc]
    assert flag is Flag.T
    assert "250" in reason and "100" in reason
    assert over_range(Reading("ana.conc", TS, 99.9, Flag.N), CONC) is None
    assert over_range(Reading("ana.conc", TS, None, Flag.B), CONC) is None
    assert over_range(Reading("ana.temp", TS, 1e6, Flag.N), TEMP) is None


def test_without_checks_nothing_is_over_range() -> None:
    r = poll(normal(conc=500.0), checks=())
    assert r["conc"].flag is Flag.N


def test_custom_checks_run_and_obey_precedence() -> None:
    def stopped(reading: Reading, channel: ChannelPlan) -> tuple[Flag, str] | None:
        return (Flag.F, "source stopped") if channel.key == "conc" else None

    r = poll(normal(conc=500.0), checks=(stopped, over_range))
    assert r["conc"].flag is Flag.F  # F before T
    assert r["conc"].reason == "source stopped"
    r = poll(normal(conc=500.0), checks=(over_range, stopped))
    assert r["conc"].flag is Flag.F
    assert r["conc"].reason == "source stopped"


# --- numbers that are not numbers ------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_an_instrument_fault(bad: float) -> None:
    r = poll(normal(conc=bad, temp=bad))
    for key in ("conc", "temp"):
        assert r[key].flag is Flag.D
        assert r[key].value is None
        assert r[key].reason
    assert r["o2"].flag is Flag.N


def test_infinite_value_is_d_not_t() -> None:
    # +inf is above any range, but an instrument fault takes precedence
    r = poll(normal(conc=math.inf))
    assert r["conc"].flag is Flag.D


# --- status words --------------------------------------------------------------------------------


@pytest.mark.parametrize(("word", "expected", "text"), [
    (0b001, Flag.D, "analyzer fault"),
    (0b010, Flag.M, "maintenance mode"),
    (0b100, Flag.C, "calibrating"),
    (0x8000, Flag.F, "sample pump stopped"),
])
def test_status_bit_flags_governed_channels_only(word: int, expected: Flag, text: str) -> None:
    r = poll(normal(status=float(word)))
    assert r["conc"].flag is expected
    assert r["conc"].reason == text
    assert r["conc"].value == 42.5  # the value is kept
    # applies_to = ["conc"]: the other channels are not governed
    for key in ("o2", "temp", "valve"):
        assert r[key].flag is Flag.N, key
    # the status word itself is a reading like any other
    assert r["status"].flag is Flag.N
    assert r["status"].value == float(word)


def test_unmapped_status_bits_are_ignored() -> None:
    r = poll(normal(status=float(0b0111_1000)))  # bits 3..6 have no meaning
    assert r["conc"].flag is Flag.N


@pytest.mark.parametrize(("word", "expected"), [
    (0b111, Flag.M),   # M beats C and D
    (0b110, Flag.M),   # M beats C
    (0b101, Flag.C),   # C beats D
    (0b011, Flag.M),
    (0x8002, Flag.F),  # F beats M
    (0x8000 | 0b101, Flag.F),
])
def test_several_status_bits_take_precedence(word: int, expected: Flag) -> None:
    r = poll(normal(status=float(word)))
    assert r["conc"].flag is expected


def test_calibration_beats_over_range() -> None:
    r = poll(normal(conc=150.0, status=float(0b100)))
    assert r["conc"].flag is Flag.C
    assert r["conc"].reason == "calibrating"
    assert r["conc"].value == 150.0


def test_calibration_explains_a_status_fault_and_over_range() -> None:
    r = poll(normal(conc=150.0, status=float(0b101)))
    assert r["conc"].flag is Flag.C
    assert r["conc"].reason == "calibrating"


def test_maintenance_beats_over_range() -> None:
    r = poll(normal(conc=150.0, status=float(0b010)))
    assert r["conc"].flag is Flag.M


def test_stopped_beats_over_range() -> None:
    r = poll(normal(conc=150.0, status=float(0x8000)))
    assert r["conc"].flag is Flag.F


def test_status_without_applies_to_governs_every_analog_channel() -> None:
    status = cp("status", STATUS.spec.model_copy(update={"applies_to": None}))
    dev = device(CONC, O2, TEMP, VALVE, status)
    r = poll(normal(status=float(0b100)), dev=dev)
    for key in ("conc", "o2", "temp"):
        assert r[key].flag is Flag.C, key
    assert r["valve"].flag is Flag.N  # digital: not governed by default
    assert r["status"].flag is Flag.N


def test_applies_to_may_name_a_digital_channel() -> None:
    status = cp("status", STATUS.spec.model_copy(update={"applies_to": ["valve", "o2"]}))
    dev = device(CONC, O2, TEMP, VALVE, status)
    r = poll(normal(status=float(0b010)), dev=dev)
    assert r["valve"].flag is Flag.M
    assert r["o2"].flag is Flag.M
    assert r["conc"].flag is Flag.N
    assert r["temp"].flag is Flag.N


def test_status_codes() -> None:
    coded = cp("mode", Channel(
        address=12, data_type=DataType.UINT16, unit=Unit.CODE, kind="status",
        codes={
            1: StatusMeaning(flag=Flag.M, text="i12001=1 maintenance"),
            2: StatusMeaning(flag=Flag.D, text="i12001=2 fault"),
            3: StatusMeaning(flag=Flag.C, text="i12001=3 calibration"),
        },
    ))
    dev = device(CONC, O2, VALVE, coded)
    values = {"conc": 150.0, "o2": 5.0, "valve": 0.0}
    for code, flag, text in [(1, Flag.M, "i12001=1 maintenance"),
                             (2, Flag.D, "i12001=2 fault"),
                             (3, Flag.C, "i12001=3 calibration")]:
        r = poll({**values, "mode": float(code)}, dev=dev)
        assert r["conc"].flag is flag and r["conc"].reason == text
        assert r["o2"].flag is flag
        assert r["valve"].flag is Flag.N
    # 0 (running) and 7 (measuring) are not mapped: only the over-range remains
    for code in (0, 7):
        r = poll({**values, "mode": float(code)}, dev=dev)
        assert r["conc"].flag is Flag.T
        assert r["o2"].flag is Flag.N


def test_status_conditions_bits_and_codes() -> None:
    spec = Channel(
        address=0, data_type=DataType.UINT16, unit=Unit.CODE, kind="status",
        bits={4: StatusMeaning(flag=Flag.M, text="door open")},
        codes={16: StatusMeaning(flag=Flag.C, text="zero check"),
               5: StatusMeaning(flag=Flag.D, text="code five")},
    )
    assert status_conditions(spec, 0) == []
    assert status_conditions(spec, 5) == [(Flag.D, "code five")]
    assert sorted(status_conditions(spec, 16)) == sorted([(Flag.M, "door open"),
                                                           (Flag.C, "zero check")])
    assert status_conditions(spec, 17) == [(Flag.M, "door open")]


# --- communication failures ---------------------------------------------------------------------


def test_failure_gives_no_value_and_its_flag() -> None:
    values = normal()
    del values["conc"]
    r = poll(values, {"conc": (Flag.B, "no reply: timed out")})
    assert r["conc"].value is None
    assert r["conc"].flag is Flag.B
    assert r["conc"].reason == "no reply: timed out"
    assert r["o2"].flag is Flag.N


def test_exception_reply_failure_is_kept_as_given() -> None:
    r = poll(normal(), {"o2": (Flag.D, "refused: illegal data address")})
    assert r["o2"].value is None
    assert r["o2"].flag is Flag.D
    assert r["o2"].reason == "refused: illegal data address"


def test_failure_wins_over_a_value_that_was_also_decoded() -> None:
    r = poll(normal(conc=150.0), {"conc": (Flag.B, "no reply")})
    assert r["conc"].value is None
    assert r["conc"].flag is Flag.B


def test_failure_beats_status_bits() -> None:
    r = poll(normal(status=float(0b111)), {"conc": (Flag.B, "no reply")})
    assert r["conc"].flag is Flag.B
    assert r["conc"].reason == "no reply"


def test_unreadable_status_word_marks_governed_channels_b() -> None:
    values = normal()
    del values["status"]
    r = poll(values, {"status": (Flag.B, "no reply")})
    assert r["status"].flag is Flag.B
    assert r["status"].value is None
    assert r["conc"].flag is Flag.B
    assert r["conc"].value == 42.5
    assert "status" in (r["conc"].reason or "")
    for key in ("o2", "temp", "valve"):
        assert r[key].flag is Flag.N, key


def test_refused_status_word_also_marks_governed_channels_b() -> None:
    r = poll(normal(), {"status": (Flag.D, "refused")})
    assert r["status"].flag is Flag.D
    assert r["conc"].flag is Flag.B


def test_nan_status_word_marks_governed_channels_b() -> None:
    r = poll(normal(status=math.nan))
    assert r["status"].flag is Flag.D
    assert r["conc"].flag is Flag.B


def test_everything_failed() -> None:
    failures = {k: (Flag.B, "no link") for k in ("conc", "o2", "temp", "valve", "status")}
    r = poll({}, failures)
    for key in failures:
        assert r[key].flag is Flag.B
        assert r[key].value is None
