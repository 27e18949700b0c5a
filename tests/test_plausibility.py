"""Plausibility on by default (cemsd/plausibility.py): what is implausible, and the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cemsd.config import Channel, Point
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


# --- flows that disagree ---------------------------------------------------------------------

def _flows(area: float | None = 1.0, **settings: object) -> tuple[ChannelPlan, ChannelPlan,
                                                                    PlausibilityChecks]:
    extra = {"plausibility": settings} if settings else {}
    velocity = ChannelPlan(name="flow.velocity", key="velocity", device="flow", point="stack",
                           spec=Channel.model_validate({"address": 0, "unit": Unit.M_S,
                                                        "range": (0.0, 40.0),
                                                        "role": Role.FLOW, **extra}))
    volume = ChannelPlan(name="flow.volume_flow", key="volume_flow", device="flow",
                         point="stack", spec=Channel.model_validate(
                             {"address": 6, "unit": Unit.M3_H, "range": (0.0, 500000.0),
                              **extra}))
    points = {"stack": Point.model_validate({"duct_area_m2": area} if area else {})}
    return velocity, volume, PlausibilityChecks(points)


def _poll(checks: PlausibilityChecks, velocity: ChannelPlan, volume: ChannelPlan, ts: float,
          v: float, q: float) -> tuple[tuple[Flag, str] | None, tuple[Flag, str] | None]:
    return (checks(Reading(velocity.name, ts, v, Flag.N), velocity),
            checks(Reading(volume.name, ts, q, Flag.N), volume))


def test_a_volume_flow_that_velocity_times_area_contradicts_is_d_and_so_is_the_velocity(
) -> None:
    """50,400 m3/h served CDAB and read DCBA is 199 m3/h: plausible alone, not beside 14 m/s
    through 1 m2 (HJ 212-2017 Annex D: Qs = 3600 F Vs)."""
    velocity, volume, checks = _flows()
    assert _poll(checks, velocity, volume, TS, 14.0, 49000.0) == (None, None)  # 2.8 % apart
    flagged = _poll(checks, velocity, volume, TS + 2, 14.0, 199.1)
    reason = ("implausible: volume_flow 199.1 m3/h disagrees with velocity 14 m/s x 1 m2 = "
              "5.04e+04 m3/h on point stack (more than 20 % apart)")
    assert flagged[1] == (Flag.D, reason)
    # the velocity of the next poll, against the last volume flow: either may be the wrong one
    assert _poll(checks, velocity, volume, TS + 4, 14.0, 199.1)[0] == (Flag.D, reason)


def test_flows_near_zero_agree_within_the_flow_zero_tolerance() -> None:
    """A stopped fan: 0.2 m/s and 0 m3/h differ by 100 % of the larger, but by less than
    the HJ 75-2017 flow zero pass limit of 0.9 m/s."""
    velocity, volume, checks = _flows()
    assert _poll(checks, velocity, volume, TS, 0.2, 0.0) == (None, None)


@pytest.mark.parametrize(("area", "settings"), [(None, {}),  # no duct area: nothing to compare
                                                (1.0, {"flow_agreement_pct": 0})])  # off
def test_flows_are_not_compared_without_an_area_or_when_switched_off(
        area: float | None, settings: dict) -> None:
    velocity, volume, checks = _flows(area, **settings)
    for i in range(3):
        assert _poll(checks, velocity, volume, TS + 2 * i, 14.0, 199.0) == (None, None)


def test_a_plausible_float_decoded_like_an_implausible_sibling_is_held_d() -> None:
    """One wrong byte order misreads every float of the device: while its velocity is
    impossible, its volume flow (199 m3/h, plausible alone) is not data either."""
    velocity, volume, _ = _flows(area=None)
    checks = PlausibilityChecks()
    flagged = _poll(checks, velocity, volume, TS, -3.2e19, 199.1)
    assert flagged[1] == (Flag.D, "implausible: held 60 s after velocity -3.2e+19 m/s below "
                                  "-1.2 m/s (3 % F.S. below the range's low end 0), decoded "
                                  "like volume_flow (float32 ABCD: wrong byte order?)")
    other = channel("n2o")  # another device: not concerned
    assert checks(Reading(other.name, TS, 24.0, Flag.N), other) is None
    assert _poll(checks, velocity, volume, TS + 61, 14.0, 50400.0) == (None, None)
