"""The configuration file: one TOML document, validated completely before anything starts.

Loading happens in three passes, each reporting every problem it finds with the file
and the key path:

1. TOML syntax;
2. profiles: each device's register map is its profile's channels with the device's
   overrides merged over them (`drivers/profiles/*.toml`);
3. the schema (pydantic, unknown keys refused) and then the cross-checks a schema cannot
   express: references between sections, duplicates, timing rules from HJ 212.
"""

from __future__ import annotations

import math
import tomllib
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator

from cemsd import standards
from cemsd.errors import ConfigError, ConfigProblem, DriverError
from cemsd.flags import Flag
from cemsd.plausibility import PlausibilitySettings
from cemsd.settings.api import ApiConfig, api_problems
from cemsd.settings.base import (
    BOOLEAN_FOR_A_NUMBER,
    MAX_DAYS,
    Host,
    NotANumber,
    SettingsModel,
    item_key,
)
from cemsd.settings.hj212 import Hj212Platform, hj212_problems, hj212_warnings
from cemsd.settings.metrics import MetricsConfig
from cemsd.settings.mqtt import MqttConfig, mqtt_problems
from cemsd.settings.qaqc import CalibrationSettings, QaqcSettings, RemoteCalibration, ValueChecks
from cemsd.settings.reduction import ReductionSettings
from cemsd.store.location import location_problems
from cemsd.units import GAS_ROLES, ROLE_UNITS, Role, Unit
from drivers.codec import ByteOrder, DataType
from drivers.registry import load_profile

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length=64)]
PositiveSeconds = Annotated[float, Field(gt=0, le=3600)]
# Tables and arrays inside each other: a register map needs 6; deeper is not a setting.
MAX_NESTING = 12
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


class Strict(SettingsModel):
    pass


# --- Plant and storage -------------------------------------------------------------------


class Plant(Strict):
    id: Name
    name: str = ""
    timezone: str = standards.DEFAULT_TIMEZONE

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Storage(Strict):
    state_dir: Path = Path("/var/lib/cemsd")
    url: str | None = None  # SQLAlchemy URL; default: SQLite file in state_dir
    reading_retention_days: Annotated[float, Field(ge=1, le=MAX_DAYS)] = 14
    batch_seconds: Annotated[float, Field(gt=0, le=10)] = 1.0
    # Readings held in memory while the database refuses writes (about 130 bytes each:
    # 2 million is about 260 MB); past it the oldest are dropped and counted.
    max_pending_readings: Annotated[int, Field(ge=10, le=100_000_000)] = 2_000_000
    # Hours are sealed into the hash chain this long after they end (cemsd/sealing.py).
    # QA/QC may still correct an hour within a day (a failed 24-hourly calibration reaches
    # back to the last passing check); later corrections are new, separately sealed records.
    finalise_after_hours: Annotated[float, Field(ge=0, le=24 * 90)] = 48.0

    @property
    def database_url(self) -> str:
        return self.url or f"sqlite:///{self.state_dir / 'cemsd.db'}"


class Processing(Strict):
    """Averaging rules. Defaults come from the standards; only stricter values are accepted."""

    minute_min_readings: Annotated[
        int, Field(ge=int(standards.MINUTE_MIN_READINGS.value), le=3600)
    ] = int(standards.MINUTE_MIN_READINGS.value)
    minute_min_valid_fraction: Annotated[
        float, Field(ge=standards.MINUTE_MIN_VALID_FRACTION.value, le=1.0)
    ] = standards.MINUTE_MIN_VALID_FRACTION.value
    hour_min_valid_minutes: Annotated[
        int, Field(ge=int(standards.HOUR_MIN_VALID_MINUTES.value), le=60)
    ] = int(standards.HOUR_MIN_VALID_MINUTES.value)
    standard_state: Literal["SI", "HJ212"] = "SI"
    close_grace_seconds: Annotated[float, Field(ge=0, le=120)] = 5.0


# --- Points: where gas is measured -------------------------------------------------------


class Point(Strict):
    """A measurement location (duct) whose channels combine into mass flow."""

    description: str = ""
    concentration_basis: Literal["dry", "wet"] = "dry"
    flow_basis: Literal["actual_wet", "standard_wet", "standard_dry"] = "actual_wet"
    duct_area_m2: Annotated[float, Field(gt=0)] | None = None
    velocity_coefficient: Annotated[float, Field(gt=0)] = 1.0
    pressure_kind: Literal["gauge", "absolute"] = "gauge"
    barometric_kpa: Annotated[float, Field(gt=50, lt=120)] = standards.STANDARD_PRESSURE.value
    temperature_default_c: float | None = None
    pressure_default_kpa: float | None = None
    moisture_default_pct: Annotated[float, Field(ge=0, lt=100)] | None = None


class AbatementUnit(Strict):
    """An abatement unit (a decomposition unit, an adipic-acid line): the point where gas
    enters it, the point where it leaves, and the signals that say whether it treats gas."""

    name: Name
    description: str = ""
    inlet: Name  # a point under [points]
    outlet: Name
    running: str | None = None  # channel <device>.<key> with role abatement_running
    bypass: str | list[str] = Field(default_factory=list)  # channel(s) with role bypass_valve
    bypass_point: Name | None = None  # a point with a flow meter in this unit's bypass duct

    @property
    def bypass_channels(self) -> tuple[str, ...]:
        return (self.bypass,) if isinstance(self.bypass, str) else tuple(self.bypass)

    @property
    def points(self) -> tuple[str, str]:
        return self.inlet, self.outlet


IMPLICIT_UNIT = "main"  # the one unit of a configuration without [[units]]


# --- Buses ---------------------------------------------------------------------------------


class BusBase(Strict):
    name: Name
    timeout: Annotated[float, Field(gt=0, le=30)] = 0.5
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    request_delay: Annotated[float, Field(ge=0, le=5)] = 0.0  # pause between requests


class TcpBus(BusBase):
    transport: Literal["tcp"]
    host: Host
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    framer: Literal["socket", "rtu"] = "socket"  # "rtu": RTU frames through a TCP gateway

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


class SerialBus(BusBase):
    transport: Literal["serial"]
    port: str
    # No defaults: pymodbus defaults to 19200 8N1, and a wrong guess is silent garbage.
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]
    parity: Literal["N", "E", "O"]
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @property
    def endpoint(self) -> str:
        return self.port


Bus = Annotated[TcpBus | SerialBus, Field(discriminator="transport")]


# --- Channels and devices -------------------------------------------------------------------


class StatusMeaning(Strict):
    flag: Flag
    text: str


class Channel(Strict):
    """One register-mapped value of a device (a profile entry merged with overrides)."""

    function_code: Literal[1, 2, 3, 4] = 3
    address: Annotated[int, Field(ge=0, le=65535)]
    data_type: DataType = DataType.FLOAT32
    byte_order: ByteOrder = ByteOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    unit: Unit
    range: tuple[float, float] | None = None  # measuring range = full scale
    kind: Literal["analog", "digital", "counter", "status"] = "analog"
    role: Role | None = None
    point: Name | None = None
    description: str = ""
    # status channels: bits (bitmask word) or codes (whole value) mapped to flags
    bits: dict[Annotated[int, Field(ge=0, le=63)], StatusMeaning] = Field(default_factory=dict)
    codes: dict[int, StatusMeaning] = Field(default_factory=dict)
    applies_to: list[str] | None = None  # channel keys the status governs (default: analog)
    calibration: CalibrationSettings | None = None  # zero/span checks (QA/QC)
    checks: ValueChecks | None = None  # stuck, spike, negative checks (QA/QC, opt-in)
    plausibility: PlausibilitySettings | None = None  # analog: on by default (plausibility.py)

    @field_validator("range")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError("range must be [low, high] with low < high")
        return value

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0 or not math.isfinite(value):
            raise ValueError("scale must be a finite, non-zero number")
        return value


class Device(Strict):
    name: Name
    bus: Name
    device_id: Annotated[int, Field(ge=0, le=255)]
    profile: str | None = None
    poll_interval: Annotated[float, Field(gt=0, le=3600)] = 2.0
    point: Name | None = None  # default point of this device's channels
    timeout: Annotated[float, Field(gt=0, le=30)] | None = None  # default: the bus's
    retries: Annotated[int, Field(ge=0, le=5)] | None = None
    max_registers: Annotated[
        int, Field(ge=1, le=int(standards.MODBUS_MAX_READ_REGISTERS.value))
    ] = int(standards.MODBUS_MAX_READ_REGISTERS.value)
    max_gap: Annotated[int, Field(ge=0, le=100)] = 0  # unused registers a block may span
    backoff_max: Annotated[float, Field(ge=1, le=3600)] = 60.0
    enabled: bool = True
    remote_calibration: RemoteCalibration | None = None  # from the profile: valve coils
    channels: dict[Name, Channel]


class Config(Strict):
    plant: Plant
    storage: Storage = Storage()
    processing: Processing = Processing()
    points: dict[Name, Point] = Field(default_factory=dict)
    units: list[AbatementUnit] = Field(default_factory=list)
    qaqc: QaqcSettings = QaqcSettings()
    reduction: ReductionSettings = ReductionSettings()
    buses: list[Bus]
    devices: list[Device]
    mqtt: MqttConfig | None = None
    metrics: MetricsConfig | None = None
    hj212: list[Hj212Platform] = Field(default_factory=list)
    api: ApiConfig | None = None
    source: Path = Path("<memory>")

    def bus(self, name: str) -> TcpBus | SerialBus:
        return next(b for b in self.buses if b.name == name)

    def channel_name(self, device: Device, key: str) -> str:
        return f"{device.name}.{key}"

    def all_channels(self) -> list[tuple[Device, str, Channel]]:
        return [(d, k, c) for d in self.devices for k, c in d.channels.items()]

    def channel_point(self, device: Device, channel: Channel) -> str | None:
        stated = channel.point or (device.point if channel.role in GAS_ROLES else None)
        return stated or self.default_point(channel.role)

    def default_point(self, role: Role | None) -> str | None:
        """Where an N2O analyzer measures when its point is not stated: the inlet or
        outlet of the plant's only abatement unit (none when there are several)."""
        if role not in (Role.N2O_INLET, Role.N2O_OUTLET):
            return None
        if len(self.units) > 1:
            return None
        if self.units:
            inlet, outlet = self.units[0].points
        else:
            inlet, outlet = self.reduction.inlet_point, self.reduction.outlet_point
        return inlet if role is Role.N2O_INLET else outlet

    def channels_by_name(self) -> dict[str, Channel]:
        return {self.channel_name(d, k): c for d, k, c in self.all_channels()}

    def abatement_units(self) -> list[AbatementUnit]:
        """The units as configured, or the one implicit unit of a configuration without
        [[units]]: points from [reduction] (inlet, outlet), every abatement_running and
        bypass_valve channel of the plant."""
        if self.units:
            return list(self.units)
        r = self.reduction
        by_role = [(name, ch.role) for name, ch in self.channels_by_name().items()]
        running = next((n for n, role in by_role if role is Role.ABATEMENT_RUNNING), None)
        return [AbatementUnit(
            name=IMPLICIT_UNIT, inlet=r.inlet_point, outlet=r.outlet_point, running=running,
            bypass=[n for n, role in by_role if role is Role.BYPASS_VALVE],
            bypass_point=r.bypass_point)]

    def unit_of_point(self, point: str) -> AbatementUnit | None:
        return next((u for u in self.abatement_units() if point in u.points), None)


# --- Loading ----------------------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read, merge profiles, validate and cross-check. Raises ConfigError with every problem."""
    path = Path(path)
    raw = read_toml(path)
    problems: list[ConfigProblem] = []
    _merge_profiles(raw, str(path), problems)
    _resolve_paths(raw, path.parent)
    try:
        config = Config.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, str(path), raw))
        raise ConfigError(problems) from None
    if problems:  # profiles missing: cross-checks would only repeat it
        raise ConfigError(problems)
    problems.extend(cross_check(config))
    if problems:
        raise ConfigError(problems)
    return config


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError names the file (unreadable, syntax, nesting)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"not UTF-8 text: {exc}")]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"TOML syntax: {exc}")]) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError([ConfigProblem(str(path), "", "TOML nested too deeply")]) from None
    key = _too_deep(raw, MAX_NESTING)
    if key is not None:
        raise ConfigError([ConfigProblem(str(path), key, f"nested deeper than {MAX_NESTING} "
                                         "levels: no setting is")]) from None
    return raw


def _too_deep(node: Any, levels: int, where: str = "") -> str | None:
    """The key path where `node` nests deeper than `levels` tables or arrays, if it does
    (the schema's recursion would otherwise end in a RecursionError)."""
    children = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        path = format_loc([*([where] if where else []), key])
        if isinstance(child, dict | list):
            if levels == 0:
                return path
            found = _too_deep(child, levels - 1, path)
            if found is not None:
                return found
    return None


def _merge_profiles(raw: dict[str, Any], file: str, problems: list[ConfigProblem]) -> None:
    """Replace each device's channel overrides with the profile's channels merged with them."""
    devices = raw.get("devices")
    if not isinstance(devices, list):
        return
    for i, device in enumerate(devices):
        if not isinstance(device, dict) or "profile" not in device:
            continue
        overrides = device.get("channels", {})
        if not isinstance(overrides, dict):
            continue  # the schema pass reports the type
        try:
            profile = load_profile(str(device["profile"]))
        except DriverError as exc:
            problems.append(ConfigProblem(file, f"devices[{item_key(devices, i)}].profile",
                                          str(exc)))
            device.setdefault("channels", {})  # the profile error says it all
            continue
        merged = {key: dict(spec) for key, spec in profile.channels.items()}
        disabled: set[str] = set()
        for key, spec in overrides.items():
            if not isinstance(spec, dict):
                merged[key] = spec
                continue
            spec = dict(spec)
            if spec.pop("enabled", True) is False:
                merged.pop(key, None)
                disabled.add(key)
                continue
            merged[key] = {**merged.get(key, {}), **spec}
        for spec in merged.values():  # a disabled channel leaves the status it was governed by
            if isinstance(spec, dict) and isinstance(spec.get("applies_to"), list):
                spec["applies_to"] = [k for k in spec["applies_to"] if k not in disabled]
        device["channels"] = merged
        if profile.remote_calibration:
            device.setdefault("remote_calibration", dict(profile.remote_calibration))


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative paths in the file are relative to the file's own folder."""
    storage = raw.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("state_dir"), str):
        storage["state_dir"] = str((base / storage["state_dir"]).resolve())
    for bus in raw.get("buses", []) if isinstance(raw.get("buses"), list) else []:
        if isinstance(bus, dict) and bus.get("transport") == "serial":
            port = bus.get("port")
            if isinstance(port, str) and not port.startswith("/") and "/" in port:
                bus["port"] = str((base / port).resolve())


def pydantic_problems(exc: ValidationError, file: str,
                      raw: dict[str, Any] | None = None) -> list[ConfigProblem]:
    """Schema errors as problems with the key path a person finds in the file; items of a
    list are named by their name when they have one (`buses[rs485-flow].port`)."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        # discriminated unions put the tag into the location: buses[0].tcp.port
        if len(loc) > 2 and loc[0] == "buses" and loc[2] in ("tcp", "serial"):
            del loc[2]
        problems.append(ConfigProblem(file, format_loc(_named(loc, raw)), _message(error)))
    return problems


def _named(loc: list[Any], raw: Any) -> list[Any]:
    """The location with list positions replaced by the items' names where known."""
    named: list[Any] = []
    node = raw
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            named.append([item_key(node, part)])
            node = node[part]
            continue
        named.append(part)
        node = node.get(part) if isinstance(node, dict) else None
    return named


def format_loc(loc: list[Any]) -> str:
    """`devices[0].channels.n2o`; a part given as [key] is an item key: `buses[flow]`."""
    out = ""
    for part in loc:
        if isinstance(part, list):
            out += f"[{part[0]}]"
        else:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error: dict[str, Any]) -> str:
    if isinstance(error.get("input"), NotANumber):
        return BOOLEAN_FOR_A_NUMBER
    if error["type"] == "extra_forbidden":
        return "unknown key (check the spelling)"
    if error["type"] == "missing":
        if error["loc"] and isinstance(error["loc"][-1], int):
            return "too few values in this list"
        return "required key is missing"
    msg = error["msg"]
    return msg.removeprefix("Value error, ")


# --- Cross-checks ------------------------------------------------------------------------------


def cross_check(config: Config) -> list[ConfigProblem]:
    """What a schema cannot say: references, duplicates and timing rules."""
    file = str(config.source)
    problems: list[ConfigProblem] = []

    def problem(path: str, message: str) -> None:
        problems.append(ConfigProblem(file, path, message))

    _check_unique(config.buses, "buses", "name", problem)
    _check_unique(config.devices, "devices", "name", problem)
    _check_unique(config.buses, "buses", "endpoint", problem, "port")
    for key, message in location_problems(config.storage, config.qaqc.control_socket):
        problem(key, message)
    problems.extend(listener_problems(config))
    bus_names = {b.name for b in config.buses}
    for i, device in enumerate(config.devices):
        path = device_path(config, i)
        if device.bus not in bus_names:
            problem(f"{path}.bus", f"no bus named {device.bus!r} (buses: {sorted(bus_names)})")
        if device.name in config.points:
            problem(f"{path}.name", "a device may not share its name with a point")
        if device.point is not None and device.point not in config.points:
            problem(f"{path}.point", f"no point named {device.point!r} under [points]")
        _check_device(config, device, path, problem)
    seen_ids: dict[tuple[str, int], int] = {}
    for i, device in enumerate(config.devices):
        key = (device.bus, device.device_id)
        if key in seen_ids:
            problem(
                f"{device_path(config, i)}.device_id",
                f"device id {device.device_id} is already used on bus {device.bus!r} "
                f"by {device_path(config, seen_ids[key])}",
            )
        seen_ids.setdefault(key, i)
    _check_roles(config, problem)
    _check_units(config, problem)
    problems.extend(mqtt_problems(config))
    problems += api_problems(config)
    if not problems:  # the plan needs consistent references
        from cemsd.plan import compile_plan
        from cemsd.points import point_problems

        for path, message in point_problems(config, compile_plan(config)):
            problem(path, message)
    problems.extend(hj212_problems(config, check_references=not problems))
    return problems


def config_warnings(config: Config) -> list[ConfigProblem]:
    """What a valid configuration may still get wrong: printed by check-config (and the
    reduction's on every report), never refused."""
    from cemsd.settings.reduction import reduction_warnings

    file = str(config.source)
    return [*hj212_warnings(config),
            *(ConfigProblem(file, f"reduction.{key}", message)
              for key, message in reduction_warnings(config.reduction.installation_date,
                                                     config.reduction.production_cap_t_per_year))]


def device_path(config: Config, index: int) -> str:
    """`devices[inlet-analyzer]`: how problems name a device."""
    return f"devices[{item_key(config.devices, index)}]"


def _check_unique(items: list[Any], section: str, attribute: str, problem: Any,
                  key: str | None = None) -> None:
    """Duplicates of an attribute: named by position, as their names may be what repeats."""
    values = [getattr(item, attribute) for item in items]
    key = key or attribute
    for value, count in Counter(values).items():
        if count > 1:
            first = values.index(value)
            index = values.index(value, first + 1)
            problem(f"{section}[{item_key(items, index)}].{key}", f"duplicate {key} {value!r}: "
                    f"already used by {section}[{item_key(items, first)}]")


def _check_device(config: Config, device: Device, path: str, problem: Any) -> None:
    if not device.channels:
        problem(f"{path}.channels", "a device needs at least one channel")
    bus = next((b for b in config.buses if b.name == device.bus), None)
    if bus is not None:
        timeout = device.timeout or bus.timeout
        retries = bus.retries if device.retries is None else device.retries
        if timeout * (retries + 1) >= device.poll_interval:
            problem(
                f"{path}.timeout",
                f"timeout x (retries + 1) = {timeout * (retries + 1):g} s must be shorter "
                f"than poll_interval {device.poll_interval:g} s, or one silent device "
                "stalls its bus for a whole cycle",
            )
    for key, channel in device.channels.items():
        _check_channel(config, device, key, channel, f"{path}.channels.{key}", problem)
    _check_registers(device, path, problem)
    if any(c.role in GAS_ROLES and c.kind == "analog" for c in device.channels.values()):
        _check_sampling(config, device, path, problem)


def _check_registers(device: Device, path: str, problem: Any) -> None:
    """Each channel's registers lie in the 16-bit address space, and no two channels of a
    device read the same one: a copied address decodes another value without a word."""
    last_address = int(standards.MODBUS_MAX_ADDRESS.value)
    taken: dict[tuple[int, int], str] = {}  # (function code, address) -> channel key
    for key, ch in device.channels.items():
        last = ch.address + ch.data_type.registers - 1
        where = f"{path}.channels.{key}.address"
        if last > last_address:
            problem(where, f"{ch.data_type} at {ch.address} spans to {last}; Modbus addresses "
                           f"end at {last_address} ({standards.MODBUS_MAX_ADDRESS.source})")
            continue
        for address in range(ch.address, last + 1):
            other = taken.setdefault((ch.function_code, address), key)
            if other != key:
                problem(where, f"register {address} (function code {ch.function_code}) is "
                               f"also read by channel {other!r} of this device")
                break


def listener_problems(config: Config) -> list[ConfigProblem]:
    """Every socket the daemon listens on has a port of its own, and no connection the
    daemon makes goes to one of them (it would poll or upload to itself)."""
    file = str(config.source)
    listeners: dict[int, str] = {}
    problems: list[ConfigProblem] = []
    ports = [("api.port", config.api.port if config.api else None),
             ("metrics.port", config.metrics.port if config.metrics else None)]
    for key, port in ports:
        if not port:  # not configured, or 0: any free port
            continue
        if port in listeners:
            problems.append(ConfigProblem(file, key, f"port {port} is already taken by "
                                                     f"{listeners[port]}"))
        listeners.setdefault(port, key)
    targets = [(f"buses[{item_key(config.buses, i)}].port", b.host, b.port)
               for i, b in enumerate(config.buses) if isinstance(b, TcpBus)]
    targets += [(f"hj212[{item_key(config.hj212, i)}].port", p.host, p.port)
                for i, p in enumerate(config.hj212)]
    for key, host, port in targets:
        if port in listeners and host in LOOPBACK_NAMES:
            problems.append(ConfigProblem(file, key, f"{host}:{port} is this daemon's own "
                                                     f"{listeners[port]}"))
    return problems


def _check_channel(
    config: Config, device: Device, key: str, ch: Channel, path: str, problem: Any
) -> None:
    is_bit_fc = ch.function_code in (1, 2)
    if is_bit_fc != (ch.data_type is DataType.BOOL):
        problem(
            f"{path}.data_type",
            "function codes 1 and 2 (coils, discrete inputs) take data_type 'bool'; "
            "3 and 4 (registers) take a numeric type",
        )
    if ch.data_type.registers > device.max_registers:
        problem(f"{path}.data_type", f"{ch.data_type} does not fit max_registers")
    if ch.kind == "status":
        if not (ch.bits or ch.codes):
            problem(f"{path}.bits", "a status channel needs 'bits' or 'codes' mapped to flags")
        for target in ch.applies_to or []:
            if target not in device.channels:
                problem(f"{path}.applies_to", f"no channel {target!r} on this device")
    elif ch.bits or ch.codes:
        problem(f"{path}.kind", "'bits' and 'codes' belong to kind = 'status'")
    if ch.role is not None and ch.unit not in ROLE_UNITS[ch.role]:
        allowed = ", ".join(sorted(u.value or "''" for u in ROLE_UNITS[ch.role]))
        problem(f"{path}.unit", f"unit {ch.unit.value!r} does not fit role {ch.role}: {allowed}")
    point = config.channel_point(device, ch)
    _check_n2o_point(config, ch, point, path, problem)
    if ch.role in GAS_ROLES:
        if point is None:
            problem(f"{path}.point", f"role {ch.role} needs a point (set it here or on the device)")
        elif point not in config.points:
            problem(f"{path}.point", f"no point named {point!r} under [points]")
    if ch.kind == "analog" and ch.range is None and ch.role in GAS_ROLES:
        problem(f"{path}.range", "a measured gas value needs its measuring range (full scale)")
    if ch.calibration is not None:
        _check_calibration(device, ch, f"{path}.calibration", problem)


def _check_n2o_point(config: Config, ch: Channel, point: str | None, path: str,
                     problem: Any) -> None:
    """An inlet analyzer measures at a unit's inlet point, an outlet analyzer at an outlet."""
    if ch.role not in (Role.N2O_INLET, Role.N2O_OUTLET) or point is None:
        return
    side = 0 if ch.role is Role.N2O_INLET else 1
    allowed = [u.points[side] for u in config.abatement_units()]
    if point not in allowed:
        where = "inlet" if side == 0 else "outlet"
        problem(f"{path}.point", f"role {ch.role} measures at an abatement unit's {where} "
                                 f"({', '.join(map(repr, allowed))}), not {point!r}")


def _check_calibration(device: Device, ch: Channel, path: str, problem: Any) -> None:
    cal = ch.calibration
    assert cal is not None
    if ch.range is None:
        problem(f"{path}", "calibration drift is in % of full scale: the channel needs a range")
        return
    low, high = ch.range
    for name in ("zero_reference", "span_reference"):
        value = getattr(cal, name)
        if value is not None and not low <= value <= high:
            problem(f"{path}.{name}", f"{value:g} is outside the measuring range "
                            f"[{low:g}, {high:g}]")
    remote = device.remote_calibration
    if cal.mode == "automatic":
        if remote is None:
            problem(f"{path}.mode", "automatic calibration needs an analyzer with remote "
                                    "calibration valves (remote_calibration in its profile)")
        if cal.zero_at is None and cal.span_at is None:
            problem(f"{path}.zero_at", "automatic calibration needs zero_at and/or span_at")
    elif cal.zero_at is not None or cal.span_at is not None:
        problem(f"{path}.mode", "zero_at/span_at schedule automatic checks: set mode = 'automatic'")
    if cal.span_at is not None:
        if cal.span_reference is None:
            problem(f"{path}.span_reference", "a scheduled span check needs the span gas value")
        if remote is not None and remote.span_valve_coil is None:
            problem(f"{path}.span_at", "this analyzer has no span gas valve")
    if cal.method == "flow_zero" and ch.role is not Role.FLOW:
        problem(f"{path}.method", "flow_zero is the zero check of a flow channel")


def _check_sampling(config: Config, device: Device, path: str, problem: Any) -> None:
    """Gas values must be sampled often enough for valid minutes (HJ 212 Annex D)."""
    limit = standards.MAX_SAMPLE_INTERVAL
    if device.poll_interval > limit.value:
        problem(
            f"{path}.poll_interval",
            f"{device.poll_interval:g} s is longer than {limit.value:g} s ({limit.source})",
        )
    expected = 60.0 / device.poll_interval
    if expected < config.processing.minute_min_readings:
        problem(
            f"{path}.poll_interval",
            f"gives {expected:g} readings a minute; a valid minute needs "
            f"{config.processing.minute_min_readings} ({standards.MINUTE_MIN_READINGS.source})",
        )


def _check_roles(config: Config, problem: Any) -> None:
    """At most one channel per (point, role), and unit needs of each point."""
    where: dict[tuple[str | None, Role], str] = {}
    skipped = {Role.STATUS, *(UNIT_SIGNAL_ROLES.values() if config.units else ())}
    for i, device in enumerate(config.devices):
        for key, ch in device.channels.items():
            if ch.role is None or ch.role in skipped:  # unit signals: _check_units
                continue
            point = config.channel_point(device, ch)
            slot = (point, ch.role)
            path = f"{device_path(config, i)}.channels.{key}.role"
            if slot in where:
                at = f" at point {point!r}" if point else ""
                problem(path, f"role {ch.role}{at} is already taken by {where[slot]}")
            where.setdefault(slot, config.channel_name(device, key))
            velocity = ch.role is Role.FLOW and ch.unit is Unit.M_S
            if velocity and point in config.points and config.points[point].duct_area_m2 is None:
                problem(
                    f"points.{point}.duct_area_m2",
                    f"flow {config.channel_name(device, key)} is a velocity (m/s); "
                    "the point needs duct_area_m2",
                )


UNIT_SIGNAL_ROLES = {"running": Role.ABATEMENT_RUNNING, "bypass": Role.BYPASS_VALVE}


def _check_units(config: Config, problem: Any) -> None:
    """[[units]]: points and signals exist, have the right roles and belong to one unit."""
    if not config.units:
        return
    _check_unique(config.units, "units", "name", problem)
    r = config.reduction
    for key in ("inlet_point", "outlet_point", "bypass_point"):
        if key in r.model_fields_set:
            problem(f"reduction.{key}", "with [[units]] each unit names its points: "
                                        f"remove {key} here")
    channels = config.channels_by_name()
    owner: dict[str, str] = {}  # point or signal channel -> units[i]
    for i, unit in enumerate(config.units):
        path = f"units[{i}]"
        for key in ("inlet", "outlet", "bypass_point"):
            point = getattr(unit, key)
            if point is None:
                continue
            if point not in config.points:
                problem(f"{path}.{key}", f"no point named {point!r} under [points]")
            elif point in owner:
                problem(f"{path}.{key}", f"point {point!r} already belongs to {owner[point]}")
            owner.setdefault(point, path)
        signals = [("running", unit.running)] if unit.running else []
        signals += [("bypass", name) for name in unit.bypass_channels]
        for key, name in signals:
            role = UNIT_SIGNAL_ROLES[key]
            ch = channels.get(name)
            if ch is None:
                problem(f"{path}.{key}", f"no channel {name!r} (channels are <device>.<key>)")
            elif ch.role is not role:
                problem(f"{path}.{key}", f"channel {name!r} needs role {role.value!r}")
            elif name in owner:
                problem(f"{path}.{key}", f"channel {name!r} already belongs to {owner[name]}")
            owner.setdefault(name, path)
    for name, ch in channels.items():
        if ch.role in UNIT_SIGNAL_ROLES.values() and name not in owner:
            problem("units", f"channel {name!r} (role {ch.role}) belongs to no unit: name it "
                             "as a unit's running or bypass signal")
