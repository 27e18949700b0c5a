"""Plausibility on by default (cemsd/plausibility.py): what is implausible, and the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cemsd.config import Channel
from cemsd.flags import Flag
from cemsd.plan import ChannelPlan
from cemsd.plausibility import PlausibilityChecks, PlausibilitySettings, limits
from cemsd.readings import Reading
from cemsd.units import Role, Unit
from drivers.codec import DataType

TS = 1_780_000_000.0


def channel(key: str = "n2o", **spec: object) -> ChannelPlan:
    fields = {"address": 0, "unit": Unit.PERCENT_VOL, "range": (0.0, 50.0),
              "role": Role.N2O_INLET, **spec}
    return ChannelPlan(name=f"ana.{key}", key=key, device="ana",
                       spec=Channel.model_validate(fields), point=None)


def check(ch: ChannelPlan, *values: float, step: float = 5.0,
          checks: PlausibilityChecks | None = None) -> list[tuple[Flag, str] | None]:
    checks = checks or PlausibilityChecks()
    return [checks(Reading(ch.name, TS + i * step, v, Flag.N), ch) for i, v in enumerate(values)]


def test_a_plausible_reading_passes() -> None:
    assert check(channel(), 24.0, -0.25, 0.0, 50.0, 60.0) == [None] * 5  # 60: over range is T


@pytest.mark.parametrize(("spec", "value", "reason"), [
    ({}, -0.755, "implausible: n2o -0.755 %vol below -0.25 %vol (0.5 % F.S. below the "
                 "range's low end 0)"),
    ({}, 100.5, "implausible: n2o 100.5 %vol above 100.2 %vol (the whole (100 %vol))"),
    ({"unit": Unit.PPM, "range": (0.0, 5000.0), "role": Role.N2O_OUTLET}, 60000.0,
     "implausible: n2o 6e+04 ppm above 5.5e+04 ppm (10 spans above full scale)"),
    ({}, 2.36e-41, "implausible: n2o 2.36e-41 %vol is a vanishing float, below 1e-12 of "
                   "the span"),
    ({"unit": Unit.DEG_C, "range": (0.0, 400.0), "role": Role.TEMPERATURE,
      "data_type": DataType.INT16}, -2047.6,
     "implausible: n2o -2048 degC below -273.1 degC (absolute zero)"),
    ({"unit": Unit.KPA, "range": (-10.0, 10.0), "role": Role.PRESSURE}, -143.36,
     "implausible: n2o -143.4 kPa below -101.3 kPa (vacuum (a gauge pressure below -1 atm))"),
    ({"unit": Unit.M_S, "range": (0.0, 40.0), "role": Role.FLOW}, -1.5,
     "implausible: n2o -1.5 m/s below -1.2 m/s (3 % F.S. below the range's low end 0)"),
])
def test_implausible_values_are_d_saying_what(spec: dict, value: float, reason: str) -> None:
    assert check(channel(**spec), value) == [(Flag.D, reason)]


def test_after_an_implausible_value_the_channel_is_held_d() -> None:
    ch = channel()
    out = check(ch, -3.0, 23.9, 24.0, 24.1, step=20.0)
    assert out[0] is not None and out[0][0] is Flag.D
    for held in out[1:3]:  # 20 s and 40 s later: inside the 60 s hold
        assert held == (Flag.D, "implausible: held 60 s after n2o -3 %vol below -0.25 %vol "
                                "(0.5 % F.S. below the range's low end 0) (wrong byte order "
                                "or scale?)")
    assert out[3] is None  # 60 s of plausible values: valid again


def test_a_noisy_gas_value_that_freezes_is_d_after_an_hour() -> None:
    ch, checks = channel(), PlausibilityChecks()
    noisy = [24.0, 24.01, 23.99, 24.02]
    assert check(ch, *noisy, checks=checks) == [None] * 4
    frozen = [checks(Reading(ch.name, TS + 20 + i * 60, 24.5, Flag.N), ch) for i in range(62)]
    assert frozen[:60] == [None] * 60
    assert frozen[61] == (Flag.D, "implausible: n2o 24.5 %vol frozen for 61 min where noise "
                                  "is expected (limit 60 min)")
    assert checks(Reading(ch.name, TS + 4000, 24.51, Flag.N), ch) is None  # alive again


def test_a_value_constant_from_the_start_is_not_frozen() -> None:
    """A signal never seen moving (a noise-free simulator, a setpoint) is left alone."""
    ch = channel()
    assert check(ch, *[24.0] * 200, step=60.0) == [None] * 200


@pytest.mark.parametrize("spec", [
    {"unit": Unit.DEG_C, "range": (0.0, 400.0), "role": Role.TEMPERATURE},  # no noise expected
    {"data_type": DataType.UINT16},  # scaled integers repeat legitimately
    {"plausibility": {"frozen_minutes": 0}},  # switched off
])
def test_frozen_only_where_noise_is_expected(spec: dict) -> None:
    ch = channel(**spec)
    values = [20.0, 21.0, 20.0, 21.0] + [20.0] * 100
    assert check(ch, *values, step=60.0) == [None] * len(values)


def test_digital_status_and_counter_channels_are_not_checked() -> None:
    for spec in ({"kind": "digital", "unit": Unit.BOOL, "role": None, "range": None,
                  "function_code": 2, "data_type": DataType.BOOL},
                 {"kind": "counter", "unit": Unit.TONNE, "role": Role.PRODUCTION_COUNTER,
                  "range": None, "data_type": DataType.UINT32}):
        assert limits(channel(**spec).spec) is None
        assert check(channel(**spec), -5.0) == [None]


def test_settings_override_and_disable() -> None:
    ch = channel(plausibility={"low": -5.0, "high": 60.0, "hold_s": 0})
    assert check(ch, -4.0, 59.0) == [None, None]
    out = check(ch, -6.0, 1.0)
    assert out[0] == (Flag.D, "implausible: n2o -6 %vol below -5 %vol (the configured low "
                              "limit)")
    assert out[1] is None  # no hold
    assert check(channel(plausibility={"enabled": False}), -1e30) == [None]
    tolerant = channel(plausibility={"tolerance_pct_fs": 10.0})
    assert check(tolerant, -4.9) == [None]


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="frozen_minute"):
        PlausibilitySettings.model_validate({"frozen_minute": 5})


def test_a_reading_the_status_word_already_flags_does_not_start_a_hold() -> None:
    """Zero gas read below the floor while the analyzer says "calibrating" (C): the sample
    readings after it are valid at once."""
    ch, checks = channel(), PlausibilityChecks()
    zero = Reading(ch.name, TS, -0.4, Flag.C, "zero calibration running")
    assert checks(zero, ch) == (Flag.D, "implausible: n2o -0.4 %vol below -0.25 %vol (0.5 % "
                                        "F.S. below the range's low end 0)")
    assert checks(Reading(ch.name, TS + 5, 24.0, Flag.N), ch) is None
