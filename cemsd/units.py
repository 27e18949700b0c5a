"""Units that travel with the data, and which roles accept which units."""

from __future__ import annotations

from enum import StrEnum


class Unit(StrEnum):
    PERCENT_VOL = "%vol"
    PPM = "ppm"
    MG_M3 = "mg/m3"
    M_S = "m/s"
    M3_H = "m3/h"
    NM3_H = "Nm3/h"
    DEG_C = "degC"
    KPA = "kPa"
    PA = "Pa"
    PERCENT = "%"
    TONNE = "t"
    KG_H = "kg/h"
    BOOL = "bool"
    CODE = "code"  # a status word or code, stored raw
    NONE = ""


class Role(StrEnum):
    """What a channel means to the plant and to the calculations."""

    N2O_INLET = "n2o_inlet"
    N2O_OUTLET = "n2o_outlet"
    FLOW = "flow"
    TEMPERATURE = "temperature"
    PRESSURE = "pressure"
    MOISTURE = "moisture"
    O2 = "o2"
    BYPASS_VALVE = "bypass_valve"
    ABATEMENT_RUNNING = "abatement_running"
    PRODUCTION_RUNNING = "production_running"
    PRODUCTION_COUNTER = "production_counter"
    STATUS = "status"

    @property
    def is_gas_property(self) -> bool:
        """Roles whose values feed the standard-conditions and mass calculation."""
        return self in GAS_ROLES


GAS_ROLES = frozenset(
    {
        Role.N2O_INLET,
        Role.N2O_OUTLET,
        Role.FLOW,
        Role.TEMPERATURE,
        Role.PRESSURE,
        Role.MOISTURE,
        Role.O2,
    }
)

ROLE_UNITS: dict[Role, frozenset[Unit]] = {
    Role.N2O_INLET: frozenset({Unit.PERCENT_VOL, Unit.PPM, Unit.MG_M3}),
    Role.N2O_OUTLET: frozenset({Unit.PERCENT_VOL, Unit.PPM, Unit.MG_M3}),
    Role.FLOW: frozenset({Unit.M_S, Unit.M3_H, Unit.NM3_H}),
    Role.TEMPERATURE: frozenset({Unit.DEG_C}),
    Role.PRESSURE: frozenset({Unit.KPA, Unit.PA}),
    Role.MOISTURE: frozenset({Unit.PERCENT_VOL, Unit.PERCENT}),
    Role.O2: frozenset({Unit.PERCENT_VOL, Unit.PERCENT}),
    Role.BYPASS_VALVE: frozenset({Unit.BOOL, Unit.PERCENT}),
    Role.ABATEMENT_RUNNING: frozenset({Unit.BOOL}),
    Role.PRODUCTION_RUNNING: frozenset({Unit.BOOL}),
    Role.PRODUCTION_COUNTER: frozenset({Unit.TONNE}),
    Role.STATUS: frozenset({Unit.CODE}),
}
