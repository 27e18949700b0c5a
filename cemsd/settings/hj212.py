"""The `[[hj212]]` configuration: one table per receiving platform.

    [[hj212]]
    name = "provincial"
    host = "203.0.113.10"
    port = 9000
    mn = "010000A8900016F000169DC0"   # assigned by the platform, 24 characters
    pw = "123456"
    uploads = [2011, 2051, 2061, 2031, 2021]
    abatement_code = "SB1"            # 2021: SB1-RS from the abatement_running channel
    [hj212.codes]                     # series -> pollutant code (agreed with the platform)
    "outlet.n2o_mg_m3" = "a99001"     # HJ 212-2017 has no N2O code: no default
    "outlet.flow_nm3_h" = "a00000"

Codes must have the standard's form (a letter and five digits; SB and a number for a
treatment unit) unless the platform agreed others: `custom_codes = true`, which
`cemsd check-config` warns about (decision 0172). Timeout and resends default to CN
1000's 10 s x 3.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from cemsd import standards_hj212 as p
from cemsd.errors import ConfigProblem
from cemsd.settings.base import Host, SettingsModel, item_key
from cemsd.units import Role

if TYPE_CHECKING:
    from cemsd.config import Config

# A pollutant or device code: letters, digits, underscore (no field separators, no '-',
# which starts the field suffix: a21026-Avg).
Code = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,20}$")]
Upload = Literal[2011, 2021, 2031, 2051, 2061]
MAX_SECONDS = 3600.0  # cemsd's bound on timeouts and back-off (not from the standard)
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
DEFAULT_UPLOADS: tuple[Upload, ...] = (2011, 2051, 2061, 2031)

# stored unit -> HJ 212 unit: the factor values are multiplied by on the way out
UNIT_FACTORS: dict[tuple[str, str], float] = {
    ("m3/h", "m3/s"): 1 / 3600,
    ("Nm3/h", "m3/s"): 1 / 3600,
    ("Pa", "kPa"): 1e-3,
    ("%vol", "%"): 1.0,
}


class Hj212Platform(SettingsModel):
    """One receiving platform (upper computer) and what it gets."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length=64)]
    host: Host
    port: Annotated[int, Field(ge=1, le=65535)]
    mn: Annotated[str, Field(pattern=rf"^[0-9A-Za-z]{{{p.MN_CHARS}}}$")]
    pw: Annotated[str, Field(pattern=rf"^[0-9A-Za-z]{{1,{p.MAX_PW_CHARS}}}$")]
    st: Annotated[int, Field(ge=10, le=99)] = int(p.St.AIR_SOURCE)
    ack: bool = True  # Flag bit A: the platform answers every upload with 9014
    timeout_s: Seconds = float(p.ACK_TIMEOUT.value)
    retries: Annotated[int, Field(ge=1, le=int(p.MAX_RETRIES.value))] = int(p.ACK_RETRIES.value)
    rtd_interval_s: Annotated[
        float, Field(ge=p.RTD_INTERVAL_MIN.value, le=p.RTD_INTERVAL_MAX.value)
    ] = 60.0
    reconnect_min_s: Seconds = 1.0
    reconnect_max_s: Seconds = 60.0
    uploads: list[Upload] = Field(default_factory=lambda: list(DEFAULT_UPLOADS))
    codes: dict[str, Code] = Field(default_factory=dict)
    abatement_code: Code | None = None  # SBxxx: its -RS from the abatement_running channel
    bypass_code: Code | None = None  # the bypass as a device state: -RS 1 open, 0 closed
    bypass_open_above: float = 0.0  # a bypass_valve value above this counts as open
    custom_codes: bool = False  # the platform agreed codes not of the standard's form
    # the abatement unit ([[units]]) this platform watches: 2021 from its signals, codes
    # only from its points; none: the plant (2021 needs a unit when there are several)
    unit: str | None = None
    enabled: bool = True

    def nonstandard_codes(self) -> list[tuple[str, str]]:
        """(key path below the platform, code) of every code not of the standard's form."""
        out = [(f'codes."{series}"', code) for series, code in self.codes.items()
               if not re.match(p.STANDARD_CODE, code)]
        out += [(key, code) for key in ("abatement_code", "bypass_code")
                if (code := getattr(self, key)) is not None
                and not re.match(p.STANDARD_DEVICE_CODE, code)]
        return out


def hj212_problems(config: Config, check_references: bool = True) -> list[ConfigProblem]:
    """What the schema cannot say: names, series and channels the platforms refer to."""
    file = str(config.source)
    problems: list[ConfigProblem] = []

    def problem(path: str, message: str) -> None:
        problems.append(ConfigProblem(file, path, message))

    first: dict[str, int] = {}
    for i, platform in enumerate(config.hj212):
        if platform.name in first:
            problem(f"hj212[{i}].name", f"duplicate platform name {platform.name!r}: "
                                        f"already used by hj212[{first[platform.name]}]")
        first.setdefault(platform.name, i)
    units, roles = _catalog(config) if check_references and config.hj212 else (None, set())
    for i, platform in enumerate(config.hj212):
        path = f"hj212[{item_key(config.hj212, i)}]"
        _check_platform(platform, path, units, roles, problem)
        if units is not None:
            _check_unit(config, platform, path, problem)
    return problems


def hj212_warnings(config: Config) -> list[ConfigProblem]:
    """Codes a platform agreed outside the standard's form (custom_codes = true): allowed,
    but other receivers and third-party parsers may refuse them."""
    file = str(config.source)
    return [ConfigProblem(file, f"hj212[{item_key(config.hj212, i)}].{key}",
                          f"code {code!r} is not of HJ 212's form (a letter and five digits, "
                          "e.g. a21026; SB and a number for a unit): allowed by custom_codes, "
                          "but other platforms and parsers may reject it")
            for i, platform in enumerate(config.hj212) if platform.custom_codes
            for key, code in platform.nonstandard_codes()]


def _check_unit(config: Config, platform: Hj212Platform, path: str,
                problem: Callable[[str, str], None]) -> None:
    """A platform of one abatement unit: the unit exists and the codes name its series."""
    abatement = {u.name: u for u in config.abatement_units()}
    if platform.unit is None:
        if len(abatement) > 1 and (platform.abatement_code or platform.bypass_code):
            problem(f"{path}.unit", "the plant has several abatement units: name the one "
                                    f"whose state 2021 reports ({', '.join(abatement)})")
        return
    unit = abatement.get(platform.unit)
    if unit is None:
        problem(f"{path}.unit", f"no abatement unit {platform.unit!r} "
                                f"(units: {', '.join(abatement)})")
        return
    if platform.abatement_code and not unit.running:
        problem(f"{path}.abatement_code", f"unit {unit.name!r} has no running signal")
    if platform.bypass_code and not unit.bypass_channels:
        problem(f"{path}.bypass_code", f"unit {unit.name!r} has no bypass signal")
    others = {p for u in abatement.values() if u is not unit
              for p in (*u.points, u.bypass_point) if p}
    for series in platform.codes:
        point = series.split(".", 1)[0]
        if point in others:
            problem(f'{path}.codes."{series}"', f"{point!r} is another unit's point; this "
                                                f"platform reports unit {unit.name!r}")


def _check_platform(platform: Hj212Platform, path: str, units: dict[str, str] | None,
                    roles: set[Role], problem: Callable[[str, str], None]) -> None:
    if not platform.custom_codes:
        for key, code in platform.nonstandard_codes():
            problem(f"{path}.{key}", f"code {code!r} is not of HJ 212's form (a letter and five "
                                     "digits, e.g. a21026; SB and a number for a unit); if the "
                                     "platform agreed it, set custom_codes = true")
    if platform.reconnect_min_s > platform.reconnect_max_s:
        problem(f"{path}.reconnect_min_s", "must not exceed reconnect_max_s")
    if len(set(platform.uploads)) != len(platform.uploads):
        problem(f"{path}.uploads", "a CN is listed twice")
    data_uploads = {2011, 2031, 2051, 2061} & set(platform.uploads)
    if data_uploads and not platform.codes:
        problem(f"{path}.codes", "map at least one series to a pollutant code "
                                 f"(uploads {sorted(data_uploads)} carry values)")
    for code, count in Counter(platform.codes.values()).items():
        if count > 1:
            problem(f"{path}.codes", f"code {code!r} is given to {count} series")
    state = 2021 in platform.uploads
    if state and not (platform.abatement_code or platform.bypass_code):
        problem(f"{path}.uploads", "2021 needs abatement_code or bypass_code")
    for key, role in (("abatement_code", Role.ABATEMENT_RUNNING),
                      ("bypass_code", Role.BYPASS_VALVE)):
        if getattr(platform, key) is None:
            continue
        if not state:
            problem(f"{path}.{key}", "is sent with CN 2021: add 2021 to uploads")
        if units is not None and role not in roles:
            problem(f"{path}.{key}", f"needs a channel with role {role.value!r}")
    if units is None:
        return
    for series, code in platform.codes.items():
        where = f'{path}.codes."{series}"'
        if series not in units:
            problem(where, f"no channel or derived series {series!r} "
                           "(channels are <device>.<key>, derived <point>.n2o_mg_m3 ...)")
            continue
        wanted = p.CODE_UNITS.get(code)
        unit = units[series]
        if wanted is not None and unit != wanted and (unit, wanted) not in UNIT_FACTORS:
            problem(where, f"code {code} is sent in {wanted}; {series} is in {unit!r}")


def _catalog(config: Config) -> tuple[dict[str, str], set[Role]]:
    """Every series stored in minutes and hours (channels and derived) with its unit, and
    the roles the polled channels have."""
    from cemsd.plan import compile_plan
    from cemsd.points import PointCalculator

    plan = compile_plan(config)
    units = {ch.name: ch.unit.value for ch in plan.channels}
    units.update({d.name: d.unit.value for d in PointCalculator(config, plan).derived})
    return units, {ch.role for ch in plan.channels if ch.role is not None}


def unit_factor(unit: str, code: str) -> float:
    """Multiplier from the stored unit to the unit HJ 212 fixes for `code` (1 if none)."""
    wanted = p.CODE_UNITS.get(code)
    if wanted is None or wanted == unit:
        return 1.0
    return UNIT_FACTORS[(unit, wanted)]
