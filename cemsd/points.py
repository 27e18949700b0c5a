"""Measurement points: combine a duct's channels into dry standard concentration, dry
standard flow and N2O mass rate, minute by minute.

Derived series are stored beside the channels, under `<point>.n2o_mg_m3` (mg/m3, dry,
standard state), `<point>.flow_nm3_h` (m3/h, dry, standard state) and `<point>.n2o_kg_h`.
A derived minute is valid only when every input minute is; otherwise it carries the flag
of the input that takes precedence and names it. Hours of derived series are averaged
from their minutes like any channel, so an hour's mass in kg is its mean kg/h.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cemsd import conversion as cv
from cemsd.aggregate import CAUSE_MARK, Aggregates, root_cause
from cemsd.config import Config, Point
from cemsd.flags import CODE, CODES, NORMAL_CODE, Flag
from cemsd.plan import ChannelPlan, Plan
from cemsd.units import Role, Unit

N2O_ROLES = (Role.N2O_INLET, Role.N2O_OUTLET)


@dataclass(frozen=True)
class DerivedChannel:
    name: str
    point: str
    quantity: str  # n2o_mg_m3 | flow_nm3_h | n2o_kg_h
    unit: Unit
    inputs: tuple[str, ...]
    description: str


@dataclass
class _PointChannels:
    config: Point
    roles: dict[Role, ChannelPlan] = field(default_factory=dict)

    @property
    def n2o(self) -> ChannelPlan | None:
        return next((self.roles[r] for r in N2O_ROLES if r in self.roles), None)

    def needs_state(self) -> bool:
        """Actual flow must be brought to standard temperature and pressure."""
        flow = self.roles.get(Role.FLOW)
        return flow is not None and (
            flow.unit is Unit.M_S or self.config.flow_basis == "actual_wet"
        )

    def needs_moisture(self) -> bool:
        flow_wet = Role.FLOW in self.roles and self.config.flow_basis != "standard_dry"
        conc_wet = self.n2o is not None and self.config.concentration_basis == "wet"
        return flow_wet or conc_wet


def point_problems(config: Config, plan: Plan) -> list[tuple[str, str]]:
    """(key path, message) for every point whose inputs cannot give its derived series."""
    problems = []
    for name, pc in _point_channels(config, plan).items():
        path = f"points.{name}"
        if pc.needs_state():
            if Role.TEMPERATURE not in pc.roles and pc.config.temperature_default_c is None:
                problems.append((path, "actual flow needs a temperature channel or "
                                       "temperature_default_c"))
            if Role.PRESSURE not in pc.roles and pc.config.pressure_default_kpa is None:
                problems.append((path, "actual flow needs a pressure channel or "
                                       "pressure_default_kpa"))
        if pc.needs_moisture() and Role.MOISTURE not in pc.roles and \
                pc.config.moisture_default_pct is None:
            problems.append((path, "wet flow or a wet-basis analyzer needs a moisture channel "
                                   "or moisture_default_pct"))
        flow = pc.roles.get(Role.FLOW)
        if flow is not None and flow.unit is Unit.M_S and pc.config.flow_basis != "actual_wet":
            problems.append((path + ".flow_basis", "a velocity (m/s) is measured at actual "
                                                   "conditions: flow_basis must be actual_wet"))
        if flow is not None and flow.unit is Unit.NM3_H and pc.config.flow_basis == "actual_wet":
            problems.append((path + ".flow_basis", "flow in Nm3/h is already standard: set "
                                                   "flow_basis to standard_wet or standard_dry"))
    return problems


def _point_channels(config: Config, plan: Plan) -> dict[str, _PointChannels]:
    points = {name: _PointChannels(p) for name, p in config.points.items()}
    for ch in plan.channels:
        if ch.point in points and ch.role is not None and ch.spec.kind == "analog":
            points[ch.point].roles[ch.role] = ch
    return points


@dataclass
class _Input:
    values: np.ndarray
    codes: np.ndarray
    n_valid: np.ndarray
    name: str | None  # None: a configured constant


class PointCalculator:
    def __init__(self, config: Config, plan: Plan) -> None:
        self.state = cv.STANDARD_STATES[config.processing.standard_state]
        self.points = _point_channels(config, plan)
        self.derived = self._derived_channels()

    def _derived_channels(self) -> list[DerivedChannel]:
        out = []
        for name, pc in self.points.items():
            n2o, flow = pc.n2o, pc.roles.get(Role.FLOW)
            conc_inputs = self._inputs_for(pc, conc=True)
            flow_inputs = self._inputs_for(pc, conc=False)
            if n2o is not None:
                out.append(DerivedChannel(f"{name}.n2o_mg_m3", name, "n2o_mg_m3", Unit.MG_M3,
                                          conc_inputs, "N2O, dry gas, standard state"))
            if flow is not None:
                out.append(DerivedChannel(f"{name}.flow_nm3_h", name, "flow_nm3_h", Unit.NM3_H,
                                          flow_inputs, "flow, dry gas, standard state"))
            if n2o is not None and flow is not None:
                both = tuple(dict.fromkeys(conc_inputs + flow_inputs))
                out.append(DerivedChannel(f"{name}.n2o_kg_h", name, "n2o_kg_h", Unit.KG_H,
                                          both, "N2O mass rate"))
        return out

    def _inputs_for(self, pc: _PointChannels, conc: bool) -> tuple[str, ...]:
        roles: list[Role] = []
        if conc:
            if pc.n2o is not None:
                roles.append(pc.n2o.role)  # type: ignore[arg-type]
            if pc.config.concentration_basis == "wet":
                roles.append(Role.MOISTURE)
        else:
            roles.append(Role.FLOW)
            if pc.needs_state():
                roles += [Role.TEMPERATURE, Role.PRESSURE]
            if pc.config.flow_basis != "standard_dry":
                roles.append(Role.MOISTURE)
        return tuple(pc.roles[r].name for r in roles if r in pc.roles)

    def compute(self, minutes: Mapping[str, Aggregates]) -> dict[str, Aggregates]:
        """Derived minute series from channel minute aggregates over the same minutes."""
        out: dict[str, Aggregates] = {}
        for name, pc in self.points.items():
            conc = self._concentration(pc, minutes)
            flow = self._flow(pc, minutes)
            if conc is not None:
                out[f"{name}.n2o_mg_m3"] = conc
            if flow is not None:
                out[f"{name}.flow_nm3_h"] = flow
            if conc is not None and flow is not None:
                out[f"{name}.n2o_kg_h"] = _combine(
                    cv.mass_rate_kg_h(conc.value, flow.value), [conc, flow],
                    [f"{name}.n2o_mg_m3", f"{name}.flow_nm3_h"])
        return out

    def _concentration(self, pc: _PointChannels, minutes: Mapping[str, Aggregates]
                       ) -> Aggregates | None:
        if pc.n2o is None or pc.n2o.name not in minutes:
            return None
        n2o = minutes[pc.n2o.name]
        value = cv.n2o_mg_m3(n2o.value, pc.n2o.unit, self.state)
        parts, names = [n2o], [pc.n2o.name]
        if pc.config.concentration_basis == "wet":
            moisture = self._moisture(pc, minutes, n2o)
            value = cv.wet_to_dry(value, cv.moisture_fraction(moisture.values))
            parts.append(_as_aggregates(moisture, n2o))
            names.append(moisture.name or "moisture_default_pct")
        return _combine(value, parts, names)

    def _flow(self, pc: _PointChannels, minutes: Mapping[str, Aggregates]) -> Aggregates | None:
        flow_ch = pc.roles.get(Role.FLOW)
        if flow_ch is None or flow_ch.name not in minutes:
            return None
        flow = minutes[flow_ch.name]
        cfg = pc.config
        value = flow.value
        parts, names = [flow], [flow_ch.name]
        if flow_ch.unit is Unit.M_S:
            value = cv.velocity_to_flow(value, cfg.duct_area_m2 or np.nan,
                                        cfg.velocity_coefficient)
        if pc.needs_state():
            temp = self._constant_or(pc, Role.TEMPERATURE, cfg.temperature_default_c, minutes,
                                     flow)
            press = self._constant_or(pc, Role.PRESSURE, cfg.pressure_default_kpa, minutes, flow)
            press_unit = pc.roles[Role.PRESSURE].unit if press.name is not None else Unit.KPA
            p_abs = cv.absolute_pressure_kpa(press.values, press_unit, cfg.pressure_kind,
                                             cfg.barometric_kpa)
            value = cv.actual_to_standard(value, temp.values, p_abs, self.state)
            for item, label in ((temp, "temperature_default_c"), (press, "pressure_default_kpa")):
                parts.append(_as_aggregates(item, flow))
                names.append(item.name or label)
        if cfg.flow_basis != "standard_dry":
            moisture = self._moisture(pc, minutes, flow)
            value = cv.wet_flow_to_dry(value, cv.moisture_fraction(moisture.values))
            parts.append(_as_aggregates(moisture, flow))
            names.append(moisture.name or "moisture_default_pct")
        return _combine(value, parts, names)

    def _moisture(self, pc: _PointChannels, minutes: Mapping[str, Aggregates],
                  like: Aggregates) -> _Input:
        return self._constant_or(pc, Role.MOISTURE, pc.config.moisture_default_pct, minutes, like)

    @staticmethod
    def _constant_or(pc: _PointChannels, role: Role, default: float | None,
                     minutes: Mapping[str, Aggregates], like: Aggregates) -> _Input:
        ch = pc.roles.get(role)
        if ch is not None and ch.name in minutes:
            agg = minutes[ch.name]
            return _Input(agg.value, agg.flag, agg.n_valid, ch.name)
        n = len(like)
        value = np.nan if default is None else default
        code = NORMAL_CODE if default is not None else CODE[Flag.B]
        return _Input(np.full(n, value), np.full(n, code, dtype=np.int8), like.expected.copy(),
                      None)


def _as_aggregates(item: _Input, like: Aggregates) -> Aggregates:
    return Aggregates(item.values, item.values, item.values, item.n_valid, like.n_present,
                      item.codes, like.counts, like.expected, like.min_valid)


def _combine(value: np.ndarray, parts: list[Aggregates], names: list[str]) -> Aggregates:
    """A derived series: invalid wherever any input is, with the input's flag and name."""
    codes = np.stack([p.flag for p in parts])
    flag = codes.min(axis=0).astype(np.int8)  # lowest code = highest precedence
    n_valid = np.stack([p.n_valid for p in parts]).min(axis=0)
    value = np.where(flag == NORMAL_CODE, value, np.nan)
    reasons: list[str | None] = []
    for i in range(len(flag)):
        if flag[i] == NORMAL_CODE:
            reasons.append(None)
            continue
        j = int(np.argmin(codes[:, i]))
        flag_j = CODES[codes[j, i]]
        cause = root_cause(parts[j].reason(i)) if parts[j].reasons is not None else (
            parts[j].causes[i] if parts[j].causes is not None else None)
        reasons.append(f"input {names[j]} is {flag_j.value} ({flag_j.meaning})"
                       + (f"{CAUSE_MARK}{cause}" if cause else ""))
    first = parts[0]
    return Aggregates(value, value.copy(), value.copy(), n_valid, first.n_present, flag,
                      first.counts, first.expected, first.min_valid, reasons=reasons)
