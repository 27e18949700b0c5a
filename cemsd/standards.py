"""Every number taken from a standard or protocol, named, with the clause it comes from.

Nothing else in cemsd writes these literals: configuration defaults, validity rules,
conversions and reports all read them from here. Items marked [U] were not checked
against the primary text (see ../shared/spec/README.md); each is a documented,
configurable default, never a silent constant.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StandardValue:
    """A number from a standard, with its unit and the clause it comes from."""

    value: float
    unit: str
    source: str

    def __float__(self) -> float:
        return float(self.value)


# --- Standard state and gas properties -------------------------------------------------

STANDARD_TEMPERATURE = StandardValue(
    273.15, "K", "SI standard state; HJ 212-2017 Annex D writes 273 (0.055 % apart)"
)
STANDARD_TEMPERATURE_HJ212 = StandardValue(
    273.0, "K", "HJ 212-2017 Annex D formula (alternative, selectable)"
)
STANDARD_PRESSURE = StandardValue(101.325, "kPa", "HJ 212-2017 Annex D (101325 Pa)")
ZERO_CELSIUS = StandardValue(273.15, "K", "SI: 0 degC in kelvin")
MOLAR_VOLUME = StandardValue(
    22.414, "L/mol", "ideal gas at 273.15 K, 101.325 kPa; HJ 212 Annex D writes 22.4"
)
MOLAR_VOLUME_HJ212 = StandardValue(22.4, "L/mol", "HJ 212-2017 Annex D formula (alternative)")
N2O_MOLAR_MASS = StandardValue(44.013, "g/mol", "IUPAC atomic weights")
PPM_PER_PERCENT_VOL = StandardValue(10_000.0, "ppm/%vol", "definition")

# --- Acquisition and averaging (HJ 212-2017 Annex C/D, HJ 75/76-2017) -------------------

MAX_SAMPLE_INTERVAL = StandardValue(
    5.0, "s", "HJ 212-2017 Annex D; HJ 76-2017 Annex B: at least one reading every 5 s"
)
MINUTE_MIN_READINGS = StandardValue(
    12, "readings", "HJ 212-2017 Annex D: a minute value needs n >= 12 readings"
)
MINUTE_MIN_VALID_FRACTION = StandardValue(
    0.75, "fraction", "HJ 212-2017 Annex C: N when >= 75 % of the sub-values are normal"
)
HOUR_MIN_VALID_MINUTES = StandardValue(
    45, "min", "HJ 212-2017 Annex D; HJ 75-2017: a valid hour has >= 45 valid minutes"
)
DAY_MIN_VALID_HOURS = StandardValue(20, "h", "HJ 212-2017 Annex D; HJ 76-2017 [S]")
MONTH_MIN_VALID_DAYS = StandardValue(25, "d", "HJ 76-2017 [S] (23 in February)")
FEBRUARY_MIN_VALID_DAYS = StandardValue(23, "d", "HJ 76-2017 [S]")

# --- Modbus (Modbus Application Protocol v1.1b3) ----------------------------------------

MODBUS_MAX_READ_REGISTERS = StandardValue(125, "registers", "Modbus spec: FC03/FC04 quantity")
MODBUS_MAX_READ_BITS = StandardValue(2000, "bits", "Modbus spec: FC01/FC02 quantity")
MODBUS_MAX_ADDRESS = StandardValue(65535, "address",
                                   "Modbus spec: 16-bit data addresses 0-65535")

# --- Physical limits of plausible values (cemsd/plausibility.py) ------------------------

ABSOLUTE_ZERO_CELSIUS = StandardValue(-273.15, "degC", "SI: no temperature is below 0 K")
WHOLE_FRACTION = StandardValue(
    100.0, "%", "definition: a volume fraction (or a position in %) cannot exceed the whole"
)
PPM_WHOLE = StandardValue(1_000_000.0, "ppm", "definition: 100 %vol = 10^6 ppm")

# --- Defaults -------------------------------------------------------------------------

DEFAULT_TIMEZONE = "Asia/Shanghai"  # China Standard Time: hours follow the plant's clock

# --- Calibration and QA (HJ 75-2017 §11 [U]; spec hj75-hj212.md §2) ---------------------

CAL_PASS_LIMIT = StandardValue(2.5, "% F.S.", "HJ 75-2017 §11 [U]: zero and span drift pass")
CAL_ZERO_CONTROL_LIMIT = StandardValue(
    5.0, "% F.S.", "HJ 75-2017 §11 [U]: zero drift beyond is out of control"
)
CAL_SPAN_CONTROL_LIMIT = StandardValue(
    10.0, "% F.S.", "HJ 75-2017 §11 [U]: span drift beyond is out of control"
)
FLOW_ZERO_PASS_LIMIT = StandardValue(3.0, "% F.S.", "HJ 75-2017 §11 [U]: flow zero check pass")
FLOW_ZERO_PASS_ABSOLUTE = StandardValue(0.9, "m/s", "HJ 75-2017 §11 [U]: flow zero check pass")
FLOW_ZERO_CONTROL_LIMIT = StandardValue(
    8.0, "% F.S.", "HJ 75-2017 §11 [U]: flow zero out of control (and beyond 1.8 m/s)"
)
FLOW_ZERO_CONTROL_ABSOLUTE = StandardValue(
    1.8, "m/s", "HJ 75-2017 §11 [U]: flow zero out of control (and beyond 8 % F.S.)"
)
CAL_INTERVAL_AUTOMATIC = StandardValue(24.0, "h", "HJ 75-2017 §11 [U]: automatic calibration")
CAL_INTERVAL_MANUAL_EXTRACTIVE = StandardValue(
    168.0, "h", "HJ 75-2017 §11 [U]: manual calibration, extractive gas CEMS (7 days)"
)
CAL_INTERVAL_MANUAL_INSITU = StandardValue(
    360.0, "h", "HJ 75-2017 §11 [U]: manual calibration, in-situ gas CEMS (15 days)"
)
FLOW_ZERO_INTERVAL_MANUAL = StandardValue(
    720.0, "h", "HJ 75-2017 §11 [U]: manual flow zero check (30 days)"
)

# --- Substitution of invalid hours (HJ 75-2017 §12 [U]; spec hj75-hj212.md §4) ------------

CAPTURE_RATE_HIGH = StandardValue(
    0.90, "fraction", "HJ 75-2017 §12 [U]: quarter valid-hour rate of the first tier"
)
CAPTURE_RATE_LOW = StandardValue(
    0.75, "fraction", "HJ 75-2017 §12 [U]: below this rate no substitution rule is given"
)
CAPTURE_RATE_WINDOW = StandardValue(
    2160, "operating h", "HJ 75-2017 §12 [U]: a quarter's hours (90 d x 24 h), taken as the "
    "trailing window ending with the gap (interpretation, decision 0171)"
)
SHORT_PERIOD_HOURS = StandardValue(24, "h", "HJ 75-2017 §12 [U]: short vs long periods")
LOOKBACK_OUT_OF_CONTROL_SHORT = StandardValue(
    180, "valid h", "HJ 75-2017 §12 [U]: max over the 180 valid hours before the last calibration"
)
LOOKBACK_LONG = StandardValue(720, "valid h", "HJ 75-2017 §12 [U]: max over the 720 valid hours")
LOOKBACK_LOW_TIER = StandardValue(
    2160, "valid h", "HJ 75-2017 §12 [U]: max over the 2160 valid hours (75-90 % tier)"
)

# --- Emission reductions (quantification.md §1; CAR China AAPP workgroup slides) ---------

GWP_N2O_AR5 = StandardValue(265.0, "t CO2e/t N2O", "IPCC AR5 (default; printed on every report)")
GWP_N2O_AR6 = StandardValue(273.0, "t CO2e/t N2O", "IPCC AR6 (alternative)")
GWP_N2O_AR4 = StandardValue(298.0, "t CO2e/t N2O", "IPCC AR4; CAR US AAPP (alternative)")
BASELINE_DESTRUCTION = StandardValue(
    0.90, "fraction", "CAR China AAPP workgroup slides: 90 % baseline abatement efficiency [U]"
)
STARTUP_MAX_MONTHS = StandardValue(
    9, "months", "CAR China AAPP workgroup slides: initial start-up test at most 9 months"
)
ALTERNATIVE_SHARE_LIMIT = StandardValue(
    0.25, "fraction", "CAR China AAPP workgroup slides: estimated/substituted N2O <= 25 % "
    "of project emissions (proposed, TBD)"
)
N2O_PER_AA_STOICHIOMETRIC = StandardValue(
    0.3012, "t N2O/t AA", "44.013/146.14: one N2O per adipic acid molecule (stoichiometric max)"
)
N2O_PER_AA_IPCC_DEFAULT = StandardValue(0.300, "t N2O/t AA", "IPCC 2006 default factor")
