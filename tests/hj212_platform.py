"""A receiving platform for the tests: an asyncio TCP server on 127.0.0.1.

It checks every packet it receives with its own code - a table-driven CRC and its own
framing rules, nothing from cemsd.hj212 - and records each one, valid or not. It
acknowledges uploads that ask for it (9014 echoing the QN), and on request withholds a
number of acknowledgements, drops the connection at the next packet, or never answers
at all (a black hole). It can also send requests (history, time, ...) to the logger.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

ACK_BIT, SPLIT_BIT, VERSION_2017 = 1, 2, 1


def _table() -> list[int]:
    table = []
    for index in range(256):
        register = index
        for _ in range(8):
            register = (register >> 1) ^ 0xA001 if register & 1 else register >> 1
        table.append(register)
    return table


_TABLE = _table()
_FRAME = re.compile(rb"##(\d{4})(.*)([0-9A-F]{4})\r\n", re.DOTALL)
_SEGMENT = re.compile(
    r"QN=(\d{17});ST=(\d{2});CN=(\d{4});PW=([^;]{0,6});MN=([^;]{24});Flag=(\d{1,3});"
    r"(?:PNUM=(\d{1,4});PNO=(\d{1,4});)?(CP=&&(.*)&&)", re.DOTALL)


def crc(data: bytes) -> int:
    """HJ 212-2017 Annex A, table-driven: register = T[(register >> 8) ^ byte]."""
    register = 0xFFFF
    for byte in data:
        register = _TABLE[(register >> 8) ^ byte]
    return register


def frame(segment: str) -> bytes:
    data = segment.encode()
    return b"##%04d" % len(data) + data + b"%04X" % crc(data) + b"\r\n"


@dataclass
class Received:
    wall: float  # time.monotonic() at arrival
    connection: int
    raw: bytes
    qn: str
    st: int
    cn: int
    flag: int
    pnum: int | None
    pno: int | None
    items: list[dict[str, str]]  # CP items, each its fields

    @property
    def fields(self) -> dict[str, str]:
        return {k: v for item in self.items for k, v in item.items()}

    @property
    def data_time(self) -> str | None:
        return self.fields.get("DataTime")


@dataclass
class Platform:
    mn: str
    pw: str
    acking: bool = True
    withhold: int = 0  # messages (QNs) still to leave unacknowledged, resends included
    drop_next: bool = False  # close the connection when the next packet arrives
    received: list[Received] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    connections: int = 0
    requests: set[str] = field(default_factory=set)  # QNs of the requests we sent
    withheld: set[str] = field(default_factory=set)  # QNs never acknowledged

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._writer: asyncio.StreamWriter | None = None
        self._qn = 0
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._server.close()
        if self._writer is not None:
            self._writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writer = writer
        try:
            while line := await reader.readuntil(b"\r\n"):
                if self.drop_next:
                    self.drop_next = False
                    self._check(line, number)
                    break
                packet = self._check(line, number)
                if packet is not None and packet.flag & ACK_BIT:
                    self._acknowledge(packet, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _acknowledge(self, packet: Received, writer: asyncio.StreamWriter) -> None:
        if not self.acking or packet.qn in self.withheld:
            return
        if self.withhold > 0:
            self.withhold -= 1
            self.withheld.add(packet.qn)
            return
        writer.write(frame(f"QN={packet.qn};ST=91;CN=9014;PW={self.pw};MN={self.mn};"
                           "Flag=4;CP=&&&&"))

    def _check(self, line: bytes, connection: int) -> Received | None:
        """Validate one packet completely; a problem goes to `invalid`, never passes."""
        problem = _problem(line, self.mn, self.pw)
        if problem:
            self.invalid.append(f"{problem}: {line[:120]!r}")
            return None
        match = _FRAME.fullmatch(line)
        assert match is not None
        seg = _SEGMENT.fullmatch(match[2].decode())
        assert seg is not None
        items = [dict(f.split("=", 1) for f in item.split(",")) for item in seg[10].split(";")
                 ] if seg[10] else []
        packet = Received(time.monotonic(), connection, line, seg[1], int(seg[2]), int(seg[3]),
                          int(seg[6]), int(seg[7]) if seg[7] else None,
                          int(seg[8]) if seg[8] else None, items)
        self.received.append(packet)
        return packet

    async def request(self, cn: int, cp: str = "", pw: str | None = None,
                      mn: str | None = None, st: int = 31) -> str:
        """Send a request to the connected logger; returns its QN."""
        assert self._writer is not None, "no logger connected"
        self._qn += 1
        qn = f"20990101000000{self._qn:03d}"
        self.requests.add(qn)
        self._writer.write(frame(f"QN={qn};ST={st};CN={cn};PW={pw or self.pw};"
                                 f"MN={mn or self.mn};Flag=5;CP=&&{cp}&&"))
        await self._writer.drain()
        return qn

    # --- views ----------------------------------------------------------------------------

    def uploads(self, cn: int) -> list[Received]:
        """Packets the logger sent on its own (not answers to our requests)."""
        return [r for r in self.received if r.cn == cn and r.qn not in self.requests]

    def answers(self, qn: str) -> list[Received]:
        return [r for r in self.received if r.qn == qn]

    def messages(self, cn: int) -> dict[str, dict[str, str]]:
        """DataTime -> fields of the message (parts joined), first transmission of each."""
        out: dict[str, dict[str, str]] = {}
        seen_qn: dict[str, str] = {}
        for r in self.uploads(cn):
            assert r.data_time is not None
            if seen_qn.setdefault(r.data_time, r.qn) == r.qn:
                out.setdefault(r.data_time, {}).update(r.fields)
        return out


def _problem(line: bytes, mn: str, pw: str) -> str | None:
    match = _FRAME.fullmatch(line)
    if match is None:
        return "framing: not ##LLLL...CCCC<CR><LF> with an upper-case hex CRC"
    length, segment, crc_text = int(match[1]), match[2], match[3]
    if length != len(segment):
        return f"length field {length} but the data segment has {len(segment)} bytes"
    if length > 1024:
        return f"data segment of {length} bytes exceeds 1024"
    if int(crc_text, 16) != crc(segment):
        return f"CRC {crc_text.decode()} but the data segment gives {crc(segment):04X}"
    try:
        text = segment.decode()
    except UnicodeDecodeError:
        return "data segment not UTF-8"
    seg = _SEGMENT.fullmatch(text)
    if seg is None:
        return "data segment fields missing or out of order"
    if seg[4] != pw or seg[5] != mn:
        return f"PW/MN {seg[4]}/{seg[5]} are not the configured ones"
    flag = int(seg[6])
    if flag >> 2 != VERSION_2017:
        return f"Flag {flag}: version bits are not 000001 (HJ 212-2017)"
    if bool(flag & SPLIT_BIT) != (seg[7] is not None):
        return f"Flag {flag}: D bit and PNUM/PNO disagree"
    if seg[7] is not None and not 1 <= int(seg[8]) <= int(seg[7]):
        return "PNO outside 1..PNUM"
    if len(seg[9]) > 950:
        return f"CP of {len(seg[9])} characters exceeds 950"
    cp = seg[10]
    if cp and any("=" not in f for item in cp.split(";") for f in item.split(",")):
        return "CP field without name=value"
    return None


OPS_MN = "010000A8900016F000169DC0"
OPS_PW = "123456"


def ops_uplink(name: str, port: int) -> dict[str, Any]:
    """An `[[hj212]]` table for the ops plant (tests/ops_helpers.py): minutes and hours of
    the live analyzer and the inlet's N2O mass, short timeouts."""
    return {"name": name, "host": "127.0.0.1", "port": port, "mn": OPS_MN, "pw": OPS_PW,
            "timeout_s": 0.3, "retries": 1, "reconnect_min_s": 0.05, "reconnect_max_s": 0.4,
            "uploads": [2051, 2061],
            "codes": {"analyzer.n2o": "a99001", "inlet.n2o_kg_h": "a99002"}}
