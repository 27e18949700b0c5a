"""HJ 212-2017 packets and the Annex A CRC from tests/cases/hj212/."""

from __future__ import annotations

from typing import Any

import pytest

from casefiles import cases, load
from cemsd.hj212.packet import cp_text, crc16, parse

PACKETS = [case for _, case in load("hj212") if "packet" in case]
CRCS = [case for _, case in load("hj212") if "crc" in case and "packet" not in case]


@pytest.mark.parametrize("case", [c for c in cases("hj212") if "packet" in c.values[0]])
def test_packet(case: dict[str, Any]) -> None:
    raw = case["packet"].encode()
    packet = parse(raw)
    want = dict(case["expect"])
    segment = raw[6:-6]
    assert int(raw[2:6]) == len(segment) == want.pop("length")
    assert raw[-6:-2].decode().upper() == f"{crc16(segment):04X}" == want.pop("crc")
    assert cp_text(packet.cp) == want.pop("cp")
    for field, value in want.items():
        assert getattr(packet, field) == value, field
    assert packet.encode() == raw


@pytest.mark.parametrize("case", [c for c in cases("hj212") if "packet" not in c.values[0]])
def test_crc(case: dict[str, Any]) -> None:
    got = f"{crc16(case['text'].encode()):04X}"
    assert got == case["crc"]
    assert got != case["not_crc"]


def test_every_case_is_read() -> None:
    assert len(PACKETS) + len(CRCS) == len(load("hj212"))
