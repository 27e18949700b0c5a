"""A second HJ 212-2017 decoder, written from the standard's text (the package table, the
data-segment table, the CP rules and Annex A's CRC; spec hj75-hj212.md §6-7), sharing
nothing with cemsd/hj212/packet.py, so the tests can hold cemsd's packets to the text
rather than to cemsd's own reading of it. It is strict where third-party parsers are:
pollutant codes are one letter and five digits, treatment units SB and a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Annex B: a code and one of these field suffixes (-Rtd ... -RS state of a unit)
SUFFIXES = {"Rtd", "Min", "Avg", "Max", "ZsRtd", "ZsMin", "ZsAvg", "ZsMax", "Cou", "Flag",
            "EFlag", "SampleTime", "Info", "SN", "RS", "RT"}
POLLUTANT = re.compile(r"[a-z]\d{5}")
UNIT = re.compile(r"SB\d{1,3}")
PLAIN_KEYS = {"DataTime", "QnRtn", "ExeRtn", "RtdInterval", "MinInterval", "SystemTime",
              "PolId", "BeginTime", "EndTime", "OverTime", "ReCount"}


class Rejected(ValueError):
    """What a strict receiver would refuse, and why."""


def annex_a_crc(data: bytes) -> int:
    """Annex A: start at 0xFFFF; per byte, the high byte of the register XOR the byte;
    then eight shifts right, XOR 0xA001 whenever a 1 falls out."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ byte
        for _ in range(8):
            out = crc & 1
            crc >>= 1
            if out:
                crc ^= 0xA001
    return crc


@dataclass
class Decoded:
    header: dict[str, str]  # QN ST CN PW MN Flag [PNUM PNO]
    items: list[dict[str, str]]  # CP items, field name -> value

    def value(self, name: str) -> str:
        found = [item[name] for item in self.items if name in item]
        if len(found) != 1:
            raise KeyError(f"{name}: {len(found)} fields")
        return found[0]

    def codes(self) -> set[str]:
        return {k.split("-")[0] for item in self.items for k in item if "-" in k}


def decode(frame: bytes) -> Decoded:
    """One packet: ## + 4-digit byte length + data segment + 4 hex digits CRC + CR LF."""
    if not frame.startswith(b"##") or not frame.endswith(b"\r\n"):
        raise Rejected("package header ## or trailer CRLF missing")
    body = frame[2:-2]
    if len(body) < 8 or not body[:4].isdigit():
        raise Rejected("no 4-digit data-segment length")
    length = int(body[:4])
    segment, crc = body[4:-4], body[-4:]
    if len(segment) != length:
        raise Rejected(f"length {length} but the data segment has {len(segment)} bytes")
    if length > 1024:
        raise Rejected("data segment over 1024 bytes")
    if crc.decode("ascii", "replace").upper() != f"{annex_a_crc(segment):04X}":
        raise Rejected(f"CRC {crc!r} != {annex_a_crc(segment):04X}")
    text = segment.decode("utf-8")
    head, sep, rest = text.partition("CP=&&")
    if not sep or not rest.endswith("&&"):
        raise Rejected("no CP=&&...&&")
    header = dict(field.split("=", 1) for field in head.rstrip(";").split(";"))
    for key, pattern in (("QN", r"\d{17}"), ("ST", r"\d{2}"), ("CN", r"\d{4}"),
                         ("PW", r"[0-9A-Za-z]{1,6}"), ("MN", r"[0-9A-Za-z]{1,24}"),
                         ("Flag", r"\d{1,3}")):
        if not re.fullmatch(pattern, header.get(key, "")):
            raise Rejected(f"header field {key}={header.get(key)!r}")
    cp = rest[:-2]
    if len("CP=&&" + cp + "&&") > 950:
        raise Rejected("CP over 950 characters")
    items = [dict(_field(f) for f in item.split(",")) for item in cp.split(";")] if cp else []
    return Decoded(header, items)


def _field(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise Rejected(f"CP field without '=': {text!r}")
    if name not in PLAIN_KEYS:
        code, dash, suffix = name.partition("-")
        if not dash or suffix not in SUFFIXES:
            raise Rejected(f"CP field name {name!r}: not <code>-<suffix>")
        wanted = UNIT if suffix in ("RS", "RT") else POLLUTANT
        if not wanted.fullmatch(code):
            raise Rejected(f"code {code!r} is not of the standard's form")
    return name, value
