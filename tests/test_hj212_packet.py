"""HJ 212-2017 packets: the spec's test vectors, the strict parser, splitting, the stream
decoder, and properties (round trip; what a single changed byte does)."""

from __future__ import annotations

from dataclasses import replace
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casefiles import load
from cemsd import standards_hj212 as p
from cemsd.hj212.packet import (
    FrameDecoder,
    Packet,
    PacketError,
    QnSource,
    crc16,
    flag_value,
    format_qn,
    format_time,
    parse,
    parse_time,
    split_packets,
)

MN = "010000A8900016F000169DC0"
# shared/spec/hj75-hj212.md §7, kept as data in tests/cases/hj212/packets.toml (whose test
# checks each vector's fields, length and CRC); used here for what is built from them.
VECTORS = [case["packet"].encode() for _, case in load("hj212") if "packet" in case]
SHANGHAI = ZoneInfo("Asia/Shanghai")


def _packet(**changes: object) -> Packet:
    base = Packet(qn="20240101010000000", st=31, cn=2061, pw="123456", mn=MN, flag=5,
                  cp=((("DataTime", "20240101000000"),), (("a19001-Avg", "3.2"),)))
    return replace(base, **changes)  # type: ignore[arg-type]


# --- test vectors -----------------------------------------------------------------------------


def test_vector_1_built_from_its_fields() -> None:
    packet = Packet(qn="20160801085857223", st=32, cn=1062, pw="100000", mn=MN,
                    flag=flag_value(ack=True), cp=((("RtdInterval", "30"),),))
    assert packet.encode() == VECTORS[0]


def test_vector_4_items_and_fields() -> None:
    packet = parse(VECTORS[3])
    assert packet.cp == (
        (("DataTime", "20240101000000"),),
        (("a19001-Avg", "3.2"), ("a19001-Flag", "N")),
        (("a01011-Avg", "12.50"), ("a01011-Flag", "N")),
    )



def test_crc_compare_ignores_case_and_output_is_upper_case() -> None:
    raw = VECTORS[3].replace(b"9FC1\r\n", b"9fc1\r\n")
    assert parse(raw) == parse(VECTORS[3])
    assert parse(raw).encode().endswith(b"9FC1\r\n")


def test_length_counts_utf8_bytes_not_characters() -> None:
    packet = _packet(cp=((("i13001-Info", "氮氧化物"),),))
    raw = packet.encode()
    segment = packet.segment().encode()
    assert len(segment) == len(packet.segment()) + 4 * 2  # 4 characters, 3 bytes each
    assert int(raw[2:6]) == len(segment)
    assert raw[6 + len(segment):6 + len(segment) + 4] == b"%04X" % crc16(segment)
    assert parse(raw) == packet


# --- the parser rejects -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (VECTORS[0].replace(b"##0101", b"##0102"), "length field says"),
        (VECTORS[0].replace(b"##0101", b"#*0101"), "start with ##"),
        (VECTORS[0].replace(b"##0101", b"##01a1"), "4 decimal digits"),
        (VECTORS[0].replace(b"1C80\r\n", b"1C81\r\n"), "CRC mismatch"),
        (VECTORS[0].replace(b"1C80\r\n", b"1C8G\r\n"), "4 hex digits"),
        (VECTORS[0].replace(b"\r\n", b"\n\r"), "CR LF"),
        (VECTORS[0][:-2], "should be"),
        (VECTORS[0] + b"\r\n", "should be"),
    ],
)
def test_framing_errors_say_what_is_wrong(raw: bytes, says: str) -> None:
    with pytest.raises(PacketError, match=says):
        parse(raw)


def _framed(segment: bytes) -> bytes:
    return b"##%04d" % len(segment) + segment + b"%04X" % crc16(segment) + b"\r\n"


@pytest.mark.parametrize(
    ("segment", "says"),
    [
        (b"ST=32;QN=20160801085857223;CN=1062;PW=1;MN=A;Flag=5;CP=&&&&", "must read"),
        (b"QN=2016080108585722;ST=32;CN=1062;PW=1;MN=A;Flag=5;CP=&&&&", "must read"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=A;Flag=5;CP=&&a=1", "must read"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=A;Flag=5;PNUM=2;PNO=1;CP=&&&&",
         "D bit"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=A;Flag=7;CP=&&&&", "D bit"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=A;Flag=7;PNUM=2;PNO=3;CP=&&&&",
         "PNO <= PNUM"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=A;Flag=300;CP=&&&&", "0-255"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1234567;MN=A;Flag=5;CP=&&&&", "PW"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=" + b"A" * 25 + b";Flag=5;CP=&&&&",
         "MN"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=A;Flag=5;CP=&&a=1;;b=2&&", "name=value"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=A;Flag=5;CP=&&a&&", "name=value"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=A;Flag=5;CP=&&a=\xff&&", "UTF-8"),
        (b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=A;Flag=5;CP=&&a=" + b"1" * 942 + b"&&",
         "CP of 951"),
    ],
)
def test_segment_errors_say_what_is_wrong(segment: bytes, says: str) -> None:
    with pytest.raises(PacketError, match=says):
        parse(_framed(segment))


def test_cp_of_exactly_950_characters_passes() -> None:
    segment = b"QN=20160801085857223;ST=32;CN=1062;PW=1;MN=A;Flag=5;CP=&&a=" + b"1" * 941 + b"&&"
    assert len(parse(_framed(segment)).fields()["a"]) == 941


def test_builder_refuses_what_the_parser_would_refuse() -> None:
    with pytest.raises(PacketError, match="QN"):
        _packet(qn="2024").encode()
    with pytest.raises(PacketError, match="may not contain"):
        _packet(cp=((("a", "1;2"),),)).encode()
    with pytest.raises(PacketError, match="CP of"):
        _packet(cp=((("a", "1" * 944),),)).encode()
    with pytest.raises(PacketError, match="PNUM and PNO"):
        _packet(flag=7).encode()


# --- splitting --------------------------------------------------------------------------------


def _many_items(n: int) -> tuple:
    return tuple(
        ((f"a{i:05d}-Min", "1234.567"), (f"a{i:05d}-Avg", "2345.678"),
         (f"a{i:05d}-Max", "3456.789"), (f"a{i:05d}-Flag", "N"))
        for i in range(n))


def test_long_cp_is_split_into_parts_that_each_fit_and_start_with_datatime() -> None:
    lead = (("DataTime", "20240101000000"),)
    items = _many_items(40)
    packet = _packet(cp=(lead, *items))
    parts = split_packets(packet, lead)
    assert len(parts) >= 3
    for number, part in enumerate(parts, start=1):
        raw = part.encode()
        assert len(raw) - 12 <= p.MAX_SEGMENT_BYTES
        assert len(b"CP=&&" + raw.split(b"CP=&&", 1)[1][:-6]) <= p.MAX_CP_CHARS
        back = parse(raw)
        assert back.split and back.ack_required and (back.pnum, back.pno) == (len(parts), number)
        assert back.qn == packet.qn and back.cp[0] == lead
    assert [item for part in parts for item in part.cp[1:]] == list(items)


def test_a_packet_that_fits_is_not_split() -> None:
    packet = _packet()
    assert split_packets(packet, packet.cp[0]) == [packet]


def test_an_item_too_long_for_any_packet_is_an_error() -> None:
    lead = (("DataTime", "20240101000000"),)
    huge = tuple((f"a{i:05d}-Avg", "1") for i in range(120))
    with pytest.raises(PacketError, match="does not fit"):
        split_packets(_packet(cp=(lead, huge)), lead)


# --- the stream decoder -----------------------------------------------------------------------


def test_decoder_finds_packets_across_chunks_and_skips_a_broken_one() -> None:
    broken = VECTORS[1].replace(b"3240", b"3241")
    stream = b"noise" + VECTORS[0] + broken + VECTORS[2] + VECTORS[3]
    decoder = FrameDecoder()
    out = []
    for i in range(0, len(stream), 7):
        out.extend(decoder.feed(stream[i:i + 7]))
    packets = [x for x in out if isinstance(x, Packet)]
    errors = [x for x in out if isinstance(x, PacketError)]
    assert packets == [parse(VECTORS[0]), parse(VECTORS[2]), parse(VECTORS[3])]
    assert len(errors) == 1 and "CRC mismatch" in str(errors[0])


def test_decoder_does_not_wait_for_an_impossible_length() -> None:
    decoder = FrameDecoder()
    out = list(decoder.feed(b"##9999" + VECTORS[2]))
    assert isinstance(out[0], PacketError) and out[1:] == [parse(VECTORS[2])]


def test_decoder_waits_for_the_rest_of_a_packet() -> None:
    decoder = FrameDecoder()
    assert list(decoder.feed(VECTORS[0][:50])) == []
    assert list(decoder.feed(VECTORS[0][50:])) == [parse(VECTORS[0])]


# --- times ------------------------------------------------------------------------------------


def test_times_are_plant_local() -> None:
    t = 1704042000.0  # 2023-12-31T17:00:00Z = 2024-01-01T01:00:00+08:00
    assert format_time(t, SHANGHAI) == "20240101010000"
    assert format_qn(int(t * 1000) + 7, SHANGHAI) == "20240101010000007"
    assert parse_time("20240101010000", SHANGHAI) == t
    with pytest.raises(PacketError):
        parse_time("20241301010000", SHANGHAI)


def test_qn_is_unique_even_within_one_millisecond() -> None:
    source = QnSource(lambda: 1704042000.0, SHANGHAI)
    qns = [source.next() for _ in range(1500)]
    assert len(set(qns)) == 1500 and qns == sorted(qns)
    assert qns[0] == "20240101010000000" and qns[1] == "20240101010000001"


# --- properties -------------------------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_characters=";,=&\r\n", blacklist_categories=("Cs",)),
                max_size=12)
_FIELD = st.tuples(_TEXT.filter(bool), _TEXT)
_CP = st.lists(st.lists(_FIELD, min_size=1, max_size=4).map(tuple), max_size=6).map(tuple)
_PACKETS = st.builds(
    Packet,
    qn=st.from_regex(r"\A[0-9]{17}\Z"),
    st=st.integers(0, 99),
    cn=st.integers(0, 9999),
    pw=st.from_regex(r"\A[0-9A-Za-z]{0,6}\Z"),
    mn=st.from_regex(r"\A[0-9A-Za-z]{1,24}\Z"),
    flag=st.integers(0, 255).filter(lambda f: not f & p.FLAG_SPLIT),
    cp=_CP,
)


@settings(max_examples=300, deadline=None)  # no timing assertion on a loaded machine
@given(_PACKETS)
def test_parse_of_build_round_trips(packet: Packet) -> None:
    assert parse(packet.encode()) == packet


@settings(max_examples=300, deadline=None)  # no timing assertion on a loaded machine
@given(_PACKETS, st.data())
def test_any_single_changed_byte_is_rejected_or_only_changes_crc_case(
    packet: Packet, data: st.DataObject
) -> None:
    """True of the Annex A CRC: after each byte the register's high byte takes 256
    distinct values for the 256 possible inputs, so one changed data byte always
    changes the CRC. The one change that passes is the case of a CRC hex letter."""
    raw = bytearray(packet.encode())
    i = data.draw(st.integers(0, len(raw) - 1), label="position")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]), label="byte")
    old = raw[i]
    raw[i] = new
    crc_field = len(raw) - 6 <= i < len(raw) - 2
    try:
        back = parse(bytes(raw))
    except PacketError:
        return
    assert crc_field and chr(old).lower() == chr(new).lower()
    assert back == packet


def test_the_annex_a_crc_takes_only_256_values() -> None:
    """Its weakness, stated as a fact: any input of one byte or more ends in one of 256
    register values, so a random multi-byte corruption passes one time in 256."""
    values = {crc16(bytes([a, b])) for a in range(256) for b in range(256)}
    assert len(values) == 256
