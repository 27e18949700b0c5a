"""HJ 212-2017 protocol numbers, each with the clause it comes from.

Nothing else in cemsd.hj212 writes these literals. The source is HJ 212-2017 ("Data
transmission standard for online monitoring systems of pollutant"): the package and
data-segment tables, the Flag note, the code tables and Annex A (CRC), as digested in
shared/spec/hj75-hj212.md §6-7. Where a reading of the text was needed it says so.
"""

from __future__ import annotations

from enum import IntEnum

from cemsd.standards import StandardValue

# --- Framing: the package table and the data-segment table --------------------------------

HEADER = b"##"  # package header, fixed
TRAILER = b"\r\n"  # package trailer <CR><LF>
LENGTH_DIGITS = 4  # data-segment length, decimal, zero-padded
CRC_DIGITS = 4  # CRC of the data segment, hexadecimal
MAX_SEGMENT_BYTES = 1024  # package table: data segment 0-1024 bytes
MAX_CP_CHARS = 950  # data-segment table: CP 0-950; counted over the whole "CP=&&...&&",
# as the table counts every field with its name (the stricter reading)
QN_DIGITS = 17  # data-segment table: QN=YYYYMMDDhhmmsszzz, request time to the millisecond
MAX_PW_CHARS = 6  # data-segment table: 9 characters with "PW="
MN_CHARS = 24  # data-segment table: 27 characters with "MN="
MAX_PACKET_PARTS = 9999  # data-segment table: PNUM/PNO up to 4 digits
TIME_FORMAT = "%Y%m%d%H%M%S"  # DataTime, BeginTime, EndTime, SystemTime: local (Beijing) time

# --- Flag (data-segment table note): bit0 A, bit1 D, bits 2-7 the version ---------------

FLAG_ACK = 0b1  # A: the receiver must acknowledge (9014 for uploads)
FLAG_SPLIT = 0b10  # D: the packet is one of several; PNUM and PNO present
VERSION_SHIFT = 2
VERSION_2017 = 0b000001  # 000001: HJ 212-2017; 000000: HJ/T 212-2005
VERSION_2005 = 0b000000


class St(IntEnum):
    """System codes (ST code table)."""

    AIR_SOURCE = 31  # air pollution source (flue gas)
    WATER_SOURCE = 32  # surface-water pollution source
    AIR_PROCESS = 51  # flue-gas process monitoring
    SYSTEM = 91  # system interaction: every 9011-9014 reply


class Cn(IntEnum):
    """Command codes (CN code table) that cemsd sends or answers."""

    SET_TIMEOUT_RETRIES = 1000
    GET_TIME = 1011
    SET_TIME = 1012
    TIME_SYNC_REQUEST = 1013
    GET_RTD_INTERVAL = 1061
    SET_RTD_INTERVAL = 1062
    GET_MIN_INTERVAL = 1063
    SET_MIN_INTERVAL = 1064
    SET_PASSWORD = 1072
    REALTIME_DATA = 2011
    STOP_REALTIME = 2012
    ABATEMENT_STATE = 2021
    STOP_ABATEMENT_STATE = 2022
    DAY_DATA = 2031
    DAY_RUNTIME = 2041
    MINUTE_DATA = 2051
    HOUR_DATA = 2061
    BOOT_TIME = 2081
    REQUEST_ACK = 9011
    EXECUTION_RESULT = 9012
    NOTIFICATION_ACK = 9013
    DATA_ACK = 9014


# Every command code the standard defines (CN code table): a request for one of these that
# cemsd does not carry out is refused (QnRtn 2); any other code is a CN error (QnRtn 8).
STANDARD_CNS = frozenset(
    {1000, 1011, 1012, 1013, 1061, 1062, 1063, 1064, 1072, 2011, 2012, 2021, 2022, 2031,
     2041, 2051, 2061, 2081, *range(3011, 3022), 9011, 9012, 9013, 9014}
)
REPLY_CNS = frozenset({Cn.REQUEST_ACK, Cn.EXECUTION_RESULT, Cn.NOTIFICATION_ACK, Cn.DATA_ACK})


class QnRtn(IntEnum):
    """Request answer QnRtn (CN 9011), the standard's QnRtn table."""

    READY = 1
    REJECTED = 2
    PW_ERROR = 3
    MN_ERROR = 4
    ST_ERROR = 5
    FLAG_ERROR = 6
    QN_ERROR = 7
    CN_ERROR = 8
    CRC_ERROR = 9
    UNKNOWN = 100


class ExeRtn(IntEnum):
    """Execution result ExeRtn (CN 9012), the standard's ExeRtn table."""

    SUCCESS = 1
    FAILED = 2
    BAD_CONDITIONS = 3
    TIMEOUT = 4
    BUSY = 5
    SYSTEM_FAULT = 6
    NO_DATA = 100


# --- Timing: CN 1000 (timeout and resends) and CN 1061/1062 (real-time interval) -------

ACK_TIMEOUT = StandardValue(10, "s", "HJ 212-2017 CN 1000 OverTime default (5 s on ADSL)")
ACK_RETRIES = StandardValue(3, "resends", "HJ 212-2017 CN 1000 ReCount default")
MAX_RETRIES = StandardValue(99, "resends", "HJ 212-2017 CN 1000 ReCount range 1-99")
RTD_INTERVAL_MIN = StandardValue(30, "s", "HJ 212-2017 CN 1061/1062 RtdInterval 30-3600 s")
RTD_INTERVAL_MAX = StandardValue(3600, "s", "HJ 212-2017 CN 1061/1062 RtdInterval 30-3600 s")

# --- Field names: CP items and the field-suffix table ----------------------------------

DATA_TIME = "DataTime"
BEGIN_TIME = "BeginTime"
END_TIME = "EndTime"
SYSTEM_TIME = "SystemTime"
RTD_INTERVAL = "RtdInterval"
OVER_TIME = "OverTime"
RE_COUNT = "ReCount"
POL_ID = "PolId"
QN_RTN = "QnRtn"
EXE_RTN = "ExeRtn"
RTD, MIN, AVG, MAX, COU, FLAG = "Rtd", "Min", "Avg", "Max", "Cou", "Flag"
RUN_STATE = "RS"  # SBxxx-RS: abatement-unit state (CN 2021)


class RunState(IntEnum):
    """Abatement-unit state `SBxxx-RS` (CN 2021)."""

    OFF = 0
    RUNNING = 1
    CALIBRATING = 2
    MAINTENANCE = 3
    ALARM = 4
    BLOW_BACK = 5


# Annex B.2 flue-gas codes whose unit the standard fixes: values in another stored unit
# are converted on the way out (see cemsd.hj212.messages). Cou of a00000 is m3.
# Code tables (Annex B; codes from HJ 524-2009): a pollutant or parameter code is one
# lower-case letter (a air, w water, i instrument information, ...) and five digits, e.g.
# a21026; a treatment-unit code in CN 2021 is SB and its number (SBxxx-RS). Third-party
# parsers hold codes to this form (one rejects any longer than 6 characters).
STANDARD_CODE = r"^[a-z][0-9]{5}$"
STANDARD_DEVICE_CODE = r"^SB[0-9]{1,3}$"

CODE_UNITS: dict[str, str] = {
    "a00000": "m3/s",  # flue-gas flow
    "a01011": "m/s",  # velocity
    "a01012": "degC",  # temperature
    "a01013": "kPa",  # pressure
    "a01014": "%",  # humidity
    "a19001": "%",  # O2
}
FLOW_CODE = "a00000"
