"""HJ 212-2017 packets: build, split, parse, CRC, and a stream decoder.

A packet on the wire:

    ## LLLL <data segment> CCCC \\r\\n

LLLL is the data segment's length in bytes (UTF-8), four decimal digits; CCCC the
Annex A CRC of the data segment, four hex digits (written upper-case, compared without
regard to case). The data segment is

    QN=...;ST=..;CN=....;PW=...;MN=...;Flag=n;[PNUM=..;PNO=..;]CP=&&...&&

and inside CP, `;` separates items and `,` the fields of one item (`key=value`).

The parser is strict: a wrong length, CRC, field order or field format is a
PacketError saying what is wrong. Nothing is guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from zoneinfo import ZoneInfo

from cemsd import standards_hj212 as p

Field = tuple[str, str]
Group = tuple[Field, ...]  # one CP item: fields separated by ","
Cp = tuple[Group, ...]  # the CP: items separated by ";"

_CP_FORBIDDEN = re.compile(r"[;,=&\r\n]")
_HEADER_FORBIDDEN = re.compile(r"[;=&\r\n]")
_SEGMENT = re.compile(
    r"QN=(?P<qn>\d{17});ST=(?P<st>\d{2});CN=(?P<cn>\d{4});PW=(?P<pw>[^;]*);"
    r"MN=(?P<mn>[^;]*);Flag=(?P<flag>\d{1,3});"
    r"(?:PNUM=(?P<pnum>\d{1,4});PNO=(?P<pno>\d{1,4});)?"
    r"CP=&&(?P<cp>.*)&&",
    re.DOTALL | re.ASCII,  # \d is 0-9 only: int() would read other scripts' digits too
)
_WORST_PART = 9999  # PNUM/PNO digits assumed while packing parts


class PacketError(ValueError):
    """A packet that cannot be built or does not parse; the message says why."""


# --- CRC (HJ 212-2017 Annex A) ----------------------------------------------------------


def crc16(data: bytes) -> int:
    """The Annex A CRC. Not CRC-16/MODBUS: each byte is XORed into the register's
    *high* byte, which is shifted down first (the low byte is dropped), then 8 LSB-first
    shifts with 0xA001, from 0xFFFF. Only 256 register values can follow any byte."""
    register = 0xFFFF
    for byte in data:
        register = (register >> 8) ^ byte
        for _ in range(8):
            register = (register >> 1) ^ 0xA001 if register & 1 else register >> 1
    return register


# --- Packets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    qn: str
    st: int
    cn: int
    pw: str
    mn: str
    flag: int
    cp: Cp = ()
    pnum: int | None = None
    pno: int | None = None

    @property
    def ack_required(self) -> bool:
        return bool(self.flag & p.FLAG_ACK)

    @property
    def split(self) -> bool:
        return bool(self.flag & p.FLAG_SPLIT)

    @property
    def version(self) -> int:
        return self.flag >> p.VERSION_SHIFT

    def fields(self) -> dict[str, str]:
        """Every CP field by name (names are unique within one packet's CP)."""
        return {key: value for group in self.cp for key, value in group}

    def segment(self) -> str:
        parts = f";PNUM={self.pnum};PNO={self.pno}" if self.split else ""
        return (f"QN={self.qn};ST={self.st:02d};CN={self.cn:04d};PW={self.pw};MN={self.mn};"
                f"Flag={self.flag}{parts};CP=&&{cp_text(self.cp)}&&")

    def encode(self) -> bytes:
        """The packet on the wire; PacketError if a field or the size is out of bounds."""
        self._check()
        segment = self.segment().encode()
        _check_sizes(segment, self.cp)
        return (p.HEADER + b"%04d" % len(segment) + segment + b"%04X" % crc16(segment)
                + p.TRAILER)

    def _check(self) -> None:
        if not (len(self.qn) == p.QN_DIGITS and self.qn.isascii() and self.qn.isdigit()):
            raise PacketError(f"QN must be {p.QN_DIGITS} digits (YYYYMMDDhhmmsszzz): {self.qn!r}")
        if not 0 <= self.st <= 99:
            raise PacketError(f"ST must have 2 digits: {self.st}")
        if not 0 <= self.cn <= 9999:
            raise PacketError(f"CN must have 4 digits: {self.cn}")
        if len(self.pw) > p.MAX_PW_CHARS or _HEADER_FORBIDDEN.search(self.pw):
            raise PacketError(f"PW must be at most {p.MAX_PW_CHARS} characters without ;=&")
        if not 0 < len(self.mn) <= p.MN_CHARS or _HEADER_FORBIDDEN.search(self.mn):
            raise PacketError(f"MN must be 1-{p.MN_CHARS} characters without ;=&")
        if not 0 <= self.flag <= 255:
            raise PacketError(f"Flag must be 0-255: {self.flag}")
        has_parts = self.pnum is not None and self.pno is not None
        if self.split != has_parts:
            raise PacketError("PNUM and PNO go with the Flag's D bit, and only with it")
        if has_parts and not 1 <= self.pno <= self.pnum <= p.MAX_PACKET_PARTS:  # type: ignore[operator]
            raise PacketError(f"need 1 <= PNO <= PNUM <= 9999: PNO={self.pno} PNUM={self.pnum}")
        for group in self.cp:
            if not group:
                raise PacketError("a CP item needs at least one field")
            for key, value in group:
                if not key or _CP_FORBIDDEN.search(key) or _CP_FORBIDDEN.search(value):
                    raise PacketError(f"CP field {key}={value!r}: names and values may not "
                                      "contain ; , = & or line breaks")


def cp_text(cp: Cp) -> str:
    return ";".join(",".join(f"{k}={v}" for k, v in group) for group in cp)


def _check_sizes(segment: bytes, cp: Cp) -> None:
    _check_cp_size(cp_text(cp))
    if len(segment) > p.MAX_SEGMENT_BYTES:
        raise PacketError(f"data segment of {len(segment)} bytes; at most "
                          f"{p.MAX_SEGMENT_BYTES} allowed: split the CP")


def _check_cp_size(text: str) -> None:
    """UTF-8 bytes counted: never fewer than characters, so the stricter of the two."""
    cp_chars = len(text.encode()) + len("CP=&&&&")
    if cp_chars > p.MAX_CP_CHARS:
        raise PacketError(f"CP of {cp_chars} characters; at most {p.MAX_CP_CHARS} allowed")


def flag_value(ack: bool, split: bool = False, version: int = p.VERSION_2017) -> int:
    bits = (p.FLAG_SPLIT if split else 0) | (p.FLAG_ACK if ack else 0)
    return (version << p.VERSION_SHIFT) | bits


def fits(packet: Packet) -> bool:
    try:
        _check_sizes(packet.segment().encode(), packet.cp)
    except PacketError:
        return False
    return True


def split_packets(packet: Packet, lead: Group | None = None) -> list[Packet]:
    """`packet` as it is if it fits, else parts with the D bit, PNUM and PNO. Each part
    carries whole CP items and starts with `lead` (the DataTime item), so that every part
    can be read on its own. PacketError if one item cannot fit even alone."""
    if fits(packet):
        return [packet]
    groups = [g for g in packet.cp if g != lead]
    head: list[Group] = [lead] if lead else []
    template = replace(packet, flag=packet.flag | p.FLAG_SPLIT, pnum=_WORST_PART,
                       pno=_WORST_PART)
    parts: list[list[Group]] = []
    current = list(head)
    for group in groups:
        if fits(replace(template, cp=(*current, group))):
            current.append(group)
            continue
        if len(current) == len(head):
            raise PacketError(f"CP item {cp_text((group,))[:60]}... does not fit in one packet")
        parts.append(current)
        current = [*head, group]
        if not fits(replace(template, cp=tuple(current))):
            raise PacketError(f"CP item {cp_text((group,))[:60]}... does not fit in one packet")
    parts.append(current)
    return [replace(template, cp=tuple(cp), pnum=len(parts), pno=i + 1)
            for i, cp in enumerate(parts)]


# --- Parsing -------------------------------------------------------------------------------


def parse(frame: bytes) -> Packet:
    """One complete packet, header to trailer; PacketError says what is wrong."""
    if not frame.startswith(p.HEADER):
        raise PacketError(f"packet must start with ##: {frame[:10]!r}")
    digits = frame[2:6]
    if len(digits) != p.LENGTH_DIGITS or not digits.isdigit():
        raise PacketError(f"length must be 4 decimal digits: {digits!r}")
    length = int(digits)
    if length > p.MAX_SEGMENT_BYTES:
        raise PacketError(f"data segment length {length} exceeds {p.MAX_SEGMENT_BYTES}")
    expected = 6 + length + p.CRC_DIGITS + len(p.TRAILER)
    if len(frame) != expected:
        raise PacketError(f"length field says {length} bytes of data: the packet should be "
                          f"{expected} bytes, it is {len(frame)}")
    if not frame.endswith(p.TRAILER):
        raise PacketError(f"packet must end with CR LF after the CRC: {frame[-8:]!r}")
    segment = frame[6:6 + length]
    crc_text = frame[6 + length:6 + length + p.CRC_DIGITS]
    if not re.fullmatch(rb"[0-9A-Fa-f]{4}", crc_text):
        raise PacketError(f"CRC must be 4 hex digits: {crc_text!r}")
    computed = crc16(segment)
    if int(crc_text, 16) != computed:
        raise PacketError(f"CRC mismatch: packet says {crc_text.decode()}, "
                          f"data segment gives {computed:04X}")
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PacketError(f"data segment is not UTF-8: {exc}") from None
    return parse_segment(text)


def parse_segment(text: str) -> Packet:
    match = _SEGMENT.fullmatch(text)
    if match is None:
        raise PacketError("data segment must read QN=<17 digits>;ST=<2>;CN=<4>;PW=..;MN=..;"
                          f"Flag=n;[PNUM=..;PNO=..;]CP=&&...&&: {text[:80]!r}")
    pnum, pno = match["pnum"], match["pno"]
    packet = Packet(
        qn=match["qn"], st=int(match["st"]), cn=int(match["cn"]), pw=match["pw"],
        mn=match["mn"], flag=int(match["flag"]), cp=parse_cp(match["cp"]),
        pnum=int(pnum) if pnum else None, pno=int(pno) if pno else None,
    )
    packet._check()
    _check_cp_size(match["cp"])
    return packet


def parse_cp(text: str) -> Cp:
    if not text:
        return ()
    groups = []
    for item in text.split(";"):
        fields = []
        for field in item.split(","):
            key, eq, value = field.partition("=")
            if not eq or not key or "&" in field:
                raise PacketError(f"CP field must read name=value: {field!r}")
            fields.append((key, value))
        groups.append(tuple(fields))
    return tuple(groups)


class FrameDecoder:
    """Cuts a TCP byte stream into packets. A broken packet becomes a PacketError and the
    decoder looks for the next `##`, so one bad packet costs only itself."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Packet | PacketError]:
        self._buffer += data
        while True:
            start = self._buffer.find(p.HEADER)
            if start < 0:
                self._drop(max(len(self._buffer) - 1, 0))  # keep a lone trailing '#'
                return
            self._drop(start)
            if len(self._buffer) < 6:
                return
            digits = bytes(self._buffer[2:6])
            if not digits.isdigit() or int(digits) > p.MAX_SEGMENT_BYTES:
                self._drop(2)  # never wait for the rest of an impossible packet
                yield PacketError(f"length must be 4 decimal digits up to "
                                  f"{p.MAX_SEGMENT_BYTES}: {digits!r}")
                continue
            size = 6 + int(digits) + p.CRC_DIGITS + len(p.TRAILER)
            if len(self._buffer) < size:
                return
            frame = bytes(self._buffer[:size])
            try:
                packet = parse(frame)
            except PacketError as exc:
                self._drop(2)  # resynchronise on the next header
                yield exc
                continue
            self._drop(size)
            yield packet

    def _drop(self, n: int) -> None:
        del self._buffer[:n]


# --- Times (local time of the plant: Beijing time in China) --------------------------------


def format_time(t: float, tz: ZoneInfo) -> str:
    """YYYYMMDDhhmmss in the plant's zone."""
    return datetime.fromtimestamp(t, tz).strftime(p.TIME_FORMAT)


def format_qn(t_ms: int, tz: ZoneInfo) -> str:
    """YYYYMMDDhhmmsszzz in the plant's zone, from epoch milliseconds."""
    return format_time(t_ms // 1000, tz) + f"{t_ms % 1000:03d}"


def parse_time(text: str, tz: ZoneInfo) -> float:
    """A protocol time (YYYYMMDDhhmmss, plant zone) as a UTC epoch; PacketError if bad."""
    if not (len(text) == 14 and text.isascii() and text.isdigit()):
        raise PacketError(f"time must be YYYYMMDDhhmmss: {text!r}")
    try:
        return datetime.strptime(text, p.TIME_FORMAT).replace(tzinfo=tz).timestamp()
    except ValueError as exc:
        raise PacketError(f"not a valid time {text!r}: {exc}") from None


class QnSource:
    """Request codes from the clock, strictly increasing: two messages built in the same
    millisecond (a back-fill on a simulated clock) still get distinct QNs."""

    def __init__(self, now: Callable[[], float], tz: ZoneInfo) -> None:
        self._now = now
        self._tz = tz
        self._last_ms = 0

    def next(self) -> str:
        self._last_ms = max(round(self._now() * 1000), self._last_ms + 1)
        return format_qn(self._last_ms, self._tz)
