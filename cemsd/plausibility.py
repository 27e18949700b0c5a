"""Plausibility of analog readings, on by default: values no instrument can mean are D.

Over range (T) says the instrument measured more than its span. Implausible (D) says the
number cannot be a measurement at all, which is what a wrong byte or word order, a wrong
scale or a stale register produces. Per analog channel, from its unit, role and range:

- below a floor: the range's low end minus a tolerance in % of full scale for fractions
  and flows (a negative concentration or flow), absolute zero for temperatures, vacuum
  for pressures;
- above a ceiling: 100 % for volume fractions and positions (10^6 ppm), and in any case
  more than `FAR_ABOVE_SPANS` spans above full scale;
- a float that is not zero but vanishingly small against its span (1e-41 %vol: the bytes
  of a float read in the wrong order);
- frozen: a float of a gas or flow channel that has shown noise, then stayed bit-identical
  for `frozen_minutes` (a hung analyzer or a stale register);
- after an implausible value the channel stays D for `hold_s`: a decoding error gives
  plausible-looking numbers between the impossible ones, and those are not data either;
  so do the other channels of the device read with the same data type and byte order (a
  wrong order is the firmware's, and it misreads them all, even where a number looks right);
- flows that disagree: a volume flow (m3/h) and a velocity (m/s) of the same point are one
  quantity twice (HJ 212-2017 Annex D: Qs = 3600 F Vs); when they differ by more than
  `flow_agreement_pct`, both are D. This catches what no limit can: a float whose bytes,
  read in the wrong order, give another plausible number (50,400 m3/h read as 199).

Every default is named below with its source; each channel may override them with a
`plausibility` table (docs/PROFILES.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from cemsd import standards
from cemsd.flags import Flag
from cemsd.standards import StandardValue
from cemsd.units import Role, Unit

if TYPE_CHECKING:
    from cemsd.config import Channel, Point
    from cemsd.plan import ChannelPlan
    from cemsd.readings import Reading

ENGINEERING = "engineering default (no standard gives one)"

# --- defaults table ------------------------------------------------------------------------

GAS_TOLERANCE = StandardValue(
    0.5, "% F.S.", f"{ENGINEERING}: about an analyzer's zero noise; where a drifted zero is "
    f"expected raise it, at most to the zero drift pass limit {standards.CAL_PASS_LIMIT.value:g} "
    "% F.S. (HJ 75-2017 §11 [U])")
FLOW_TOLERANCE = StandardValue(
    standards.FLOW_ZERO_PASS_LIMIT.value, "% F.S.",
    "HJ 75-2017 §11 [U] flow zero check pass limit: a lower flow is no in-tolerance zero")
FAR_ABOVE_SPANS = StandardValue(10.0, "spans above full scale", ENGINEERING)
VANISHING_FRACTION = StandardValue(1e-12, "of the span", ENGINEERING)
FROZEN_MINUTES = StandardValue(60.0, "min", ENGINEERING)
FROZEN_ARMED_AFTER = 3  # changes seen before a channel counts as noisy
HOLD_SECONDS = StandardValue(60.0, "s", ENGINEERING)
FLOW_AGREEMENT = StandardValue(
    20.0, "% of the larger flow", f"{ENGINEERING}: a meter's volume flow is its velocity "
    "times its duct area, so a working one stays far closer; a misread float is off by far more")
FLOW_PARTNER_AGE = StandardValue(60.0, "s", f"{ENGINEERING}: the other flow reading is recent")

NOT_SAMPLE = frozenset({Flag.C, Flag.M, Flag.F})  # status says the value is no sample
FRACTION_UNITS = frozenset({Unit.PERCENT_VOL, Unit.PERCENT, Unit.PPM, Unit.MG_M3})
FLOW_UNITS = frozenset({Unit.M_S, Unit.M3_H, Unit.NM3_H})
NOISY_ROLES = frozenset({Role.N2O_INLET, Role.N2O_OUTLET, Role.O2, Role.FLOW})
_WHOLE = {Unit.PERCENT_VOL: standards.WHOLE_FRACTION.value,
          Unit.PERCENT: standards.WHOLE_FRACTION.value, Unit.PPM: standards.PPM_WHOLE.value}
_VACUUM = {Unit.KPA: -standards.STANDARD_PRESSURE.value,
           Unit.PA: -standards.STANDARD_PRESSURE.value * 1000}


class PlausibilitySettings(BaseModel):
    """A channel's `plausibility` table; unset keys take the defaults above."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    low: float | None = None  # readings below are D (replaces the default floor)
    high: float | None = None  # readings above are D (replaces the default ceiling)
    tolerance_pct_fs: Annotated[float, Field(ge=0, le=100)] | None = None
    frozen_minutes: Annotated[float, Field(ge=0, le=10080)] | None = None  # 0: off
    hold_s: Annotated[float, Field(ge=0, le=3600)] = HOLD_SECONDS.value
    # velocity x duct area against volume flow on one point; 0: off
    flow_agreement_pct: Annotated[float, Field(ge=0, le=1000)] = FLOW_AGREEMENT.value


@dataclass(frozen=True)
class Limits:
    """What one channel's readings are held to, each bound with why it is there."""

    low: float | None = None
    low_why: str = ""
    high: float | None = None
    high_why: str = ""
    vanishing: float | None = None  # floats only
    frozen_s: float | None = None
    hold_s: float = HOLD_SECONDS.value
    flow_agreement_pct: float = FLOW_AGREEMENT.value


def limits(spec: Channel) -> Limits | None:
    """The effective limits of a channel; None for non-analog or disabled channels."""
    settings = spec.plausibility or PlausibilitySettings()
    if spec.kind != "analog" or not settings.enabled:
        return None
    low, low_why = _default_floor(spec, settings)
    high, high_why = _default_ceiling(spec, settings)
    if settings.low is not None:
        low, low_why = settings.low, "the configured low limit"
    if settings.high is not None:
        high, high_why = settings.high, "the configured high limit"
    span = spec.range[1] - spec.range[0] if spec.range else None
    frozen = settings.frozen_minutes
    if frozen is None:
        noisy = spec.role in NOISY_ROLES and spec.data_type.is_float
        frozen = FROZEN_MINUTES.value if noisy else 0.0
    return Limits(
        low, low_why, high, high_why,
        vanishing=span * VANISHING_FRACTION.value if span and spec.data_type.is_float else None,
        frozen_s=frozen * 60 if frozen else None, hold_s=settings.hold_s,
        flow_agreement_pct=settings.flow_agreement_pct)


def _tolerance(spec: Channel, settings: PlausibilitySettings) -> float:
    if settings.tolerance_pct_fs is not None:
        return settings.tolerance_pct_fs
    flow = spec.role is Role.FLOW or spec.unit in FLOW_UNITS
    return (FLOW_TOLERANCE if flow else GAS_TOLERANCE).value


def _default_floor(spec: Channel, settings: PlausibilitySettings) -> tuple[float | None, str]:
    if spec.unit is Unit.DEG_C:
        return standards.ABSOLUTE_ZERO_CELSIUS.value, "absolute zero"
    if spec.unit in _VACUUM:
        return _VACUUM[spec.unit], "vacuum (a gauge pressure below -1 atm)"
    if spec.range is None or not (spec.unit in FRACTION_UNITS or spec.unit in FLOW_UNITS):
        return None, ""
    tolerance = _tolerance(spec, settings)
    floor = spec.range[0] - tolerance / 100 * (spec.range[1] - spec.range[0])
    return floor, f"{tolerance:g} % F.S. below the range's low end {spec.range[0]:g}"


def _default_ceiling(spec: Channel, settings: PlausibilitySettings) -> tuple[float | None, str]:
    candidates: list[tuple[float, str]] = []
    if spec.range is not None:
        span = spec.range[1] - spec.range[0]
        candidates.append((spec.range[1] + FAR_ABOVE_SPANS.value * span,
                           f"{FAR_ABOVE_SPANS.value:g} spans above full scale"))
    if spec.unit in _WHOLE:
        whole = _WHOLE[spec.unit]
        slack = _tolerance(spec, settings) / 100 * (
            spec.range[1] - spec.range[0] if spec.range else whole)
        candidates.append((whole + slack, f"the whole ({whole:g} {spec.unit.value})"))
    if not candidates:
        return None, ""
    return min(candidates)


@dataclass
class _State:
    value: float | None = None
    unchanged_since: float = 0.0
    changes: int = 0
    implausible_at: float | None = None
    implausible_why: str = ""


class PlausibilityChecks:
    """A value check for validity (one instance per daemon: it remembers each channel).

    `points` (the configuration's) gives the duct areas for the flow cross-check and
    `device_points` the point of a device's channels that have no role (a meter's own volume
    flow); without an area, flows are not compared."""

    def __init__(self, points: Mapping[str, Point] | None = None,
                 device_points: Mapping[str, str | None] | None = None) -> None:
        self._channels: dict[str, _Channel] = {}
        self._flows = FlowAgreement(points or {}, device_points or {})
        self._decodings: dict[tuple[str, str, str], _Failure] = {}

    def __call__(self, reading: Reading, channel: ChannelPlan) -> tuple[Flag, str] | None:
        known = self._channels.get(channel.name)
        if known is None:  # once per channel: this runs for every reading
            known = self._channels[channel.name] = _Channel(limits(channel.spec), _State(),
                                                            _decoding(channel))
        bounds, state = known.limits, known.state
        if bounds is None or reading.value is None:
            return None
        value, ts = reading.value, reading.ts
        frozen_for = _track(state, value, ts)
        why = _impossible(bounds, value, channel)
        sample = reading.flag not in NOT_SAMPLE  # calibration gas, maintenance: no hold
        if why is not None and sample:
            self._decodings[known.decoding] = _Failure(ts, channel.key, why)
        if why is None and sample:
            why = self._flows.disagreement(channel, value, ts, bounds.flow_agreement_pct)
        if why is not None:
            if sample:
                state.implausible_at, state.implausible_why = ts, why
            return Flag.D, f"implausible: {why}"
        if (held := self._held(known, channel, ts)) is not None:
            return Flag.D, held
        if (bounds.frozen_s is not None and state.changes >= FROZEN_ARMED_AFTER
                and frozen_for >= bounds.frozen_s and _in_range(channel, value)):
            return Flag.D, (f"implausible: {channel.key} {value:g} {channel.unit.value} frozen "
                            f"for {frozen_for / 60:.0f} min where noise is expected "
                            f"(limit {bounds.frozen_s / 60:g} min)")
        return None

    def _held(self, known: _Channel, channel: ChannelPlan, ts: float) -> str | None:
        """D for `hold_s` after this channel, or a channel of its device decoded by the
        same type and byte order, was implausible: the same wrong order misreads both."""
        state, bounds = known.state, known.limits
        assert bounds is not None
        if state.implausible_at is not None and ts - state.implausible_at < bounds.hold_s:
            return (f"implausible: held {bounds.hold_s:g} s after "
                    f"{state.implausible_why} (wrong byte order or scale?)")
        sibling = self._decodings.get(known.decoding) if self._decodings else None
        if sibling is not None and sibling.key != channel.key and \
                ts - sibling.ts < bounds.hold_s:
            data_type, order = known.decoding[1:]
            return (f"implausible: held {bounds.hold_s:g} s after {sibling.why}, decoded "
                    f"like {channel.key} ({data_type} {order}: wrong byte order?)")
        return None


@dataclass(frozen=True, slots=True)
class _Channel:
    """What the checks keep per channel: its limits, its state, how it is decoded."""

    limits: Limits | None
    state: _State
    decoding: tuple[str, str, str]


@dataclass(frozen=True)
class _Failure:
    ts: float
    key: str
    why: str


def _decoding(channel: ChannelPlan) -> tuple[str, str, str]:
    """Channels of one device read by one data type and byte order fail together."""
    return channel.device, channel.spec.data_type.value, channel.spec.byte_order.value


def _track(state: _State, value: float, ts: float) -> float:
    """Remember the value; how long it has stayed bit-identical."""
    if state.value is None or value != state.value:
        if state.value is not None:
            state.changes += 1
        state.value, state.unchanged_since = value, ts
    return ts - state.unchanged_since


def _impossible(bounds: Limits, value: float, channel: ChannelPlan) -> str | None:
    if bounds.low is not None and value < bounds.low:
        unit = channel.unit.value
        return (f"{channel.key} {value:.4g} {unit} below {bounds.low:.4g} {unit} "
                f"({bounds.low_why})")
    if bounds.high is not None and value > bounds.high:
        unit = channel.unit.value
        return (f"{channel.key} {value:.4g} {unit} above {bounds.high:.4g} {unit} "
                f"({bounds.high_why})")
    if bounds.vanishing is not None and 0 < abs(value) < bounds.vanishing:
        return (f"{channel.key} {value:.4g} {channel.unit.value} is a vanishing float, below "
                f"{VANISHING_FRACTION.value:g} of the span")
    return None


def _in_range(channel: ChannelPlan, value: float) -> bool:
    """A saturated, over-range output is T, not frozen."""
    span = channel.spec.range
    return span is None or value <= span[1]


@dataclass(frozen=True)
class _Flow:
    ts: float
    value: float
    channel: str


class FlowAgreement:
    """Volume flow against velocity x duct area on one point (HJ 212-2017 Annex D:
    Qs = 3600 F Kv Vp, actual m3/h). Each plausible reading of either is remembered; a new
    one is compared with the other's latest, so both channels go D while they disagree."""

    def __init__(self, points: Mapping[str, Point],
                 device_points: Mapping[str, str | None]) -> None:
        self._area = {name: p.duct_area_m2 * p.velocity_coefficient
                      for name, p in points.items() if p.duct_area_m2}
        self._device_points = device_points
        self._latest: dict[tuple[str, Unit], _Flow] = {}

    def disagreement(self, channel: ChannelPlan, value: float, ts: float,
                     tolerance_pct: float) -> str | None:
        unit, point = channel.unit, channel.point or self._device_points.get(channel.device)
        if unit not in (Unit.M_S, Unit.M3_H) or point not in self._area or not tolerance_pct:
            return None
        self._latest[point, unit] = _Flow(ts, value, channel.key)
        other = self._latest.get((point, Unit.M3_H if unit is Unit.M_S else Unit.M_S))
        if other is None or abs(ts - other.ts) > FLOW_PARTNER_AGE.value:
            return None
        area = self._area[point]
        from_velocity, flow = (value, other.value) if unit is Unit.M_S else (other.value, value)
        expected = 3600.0 * area * from_velocity
        difference = abs(flow - expected)
        floor = 3600.0 * area * standards.FLOW_ZERO_PASS_ABSOLUTE.value  # both near zero
        if difference <= max(tolerance_pct / 100 * max(abs(flow), abs(expected)), floor):
            return None
        velocity_key, flow_key = ((channel.key, other.channel) if unit is Unit.M_S
                                  else (other.channel, channel.key))
        return (f"{flow_key} {flow:.4g} m3/h disagrees with {velocity_key} "
                f"{from_velocity:.4g} m/s x {area:g} m2 = {expected:.4g} m3/h on point "
                f"{point} (more than {tolerance_pct:g} % apart)")
