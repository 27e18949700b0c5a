"""Fuzzing what comes in from outside (hypothesis): any registers into the register decoder,
any bytes into the HJ 212 parser and stream decoder, any text into its time parser. The
only acceptable outcomes are a value or the module's own clean error (ValueError for the
decoder, PacketError for HJ 212) -- never another exception.

Malformed configurations are covered by tests/test_config.py (MALFORMED: 55 cases, each
asserting the file, the key path and the message of its problem).
"""

from __future__ import annotations

import math
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cemsd import standards_hj212 as p
from cemsd.hj212.packet import FrameDecoder, Packet, PacketError, crc16, parse, parse_time
from drivers.codec import ByteOrder, DataType, decode, encode

SHANGHAI = ZoneInfo("Asia/Shanghai")
FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# --- the register decoder -----------------------------------------------------------------

_REGISTER = st.integers(0, 0xFFFF)
_ANY_INT = st.one_of(_REGISTER, st.integers(-(2**70), 2**70))


@FUZZ
@given(st.sampled_from(list(DataType)), st.sampled_from(list(ByteOrder)),
       st.lists(_ANY_INT, max_size=6))
def test_decoder_gives_a_number_or_a_value_error(data_type: DataType, order: ByteOrder,
                                                 registers: list[int]) -> None:
    """Any count, any integers (a frame cut short, a register out of 16 bits)."""
    try:
        value = decode(registers, data_type, order)
    except ValueError:
        wrong_count = len(registers) != data_type.registers
        out_of_range = any(not 0 <= r <= 0xFFFF for r in registers)
        assert wrong_count or out_of_range
        return
    assert isinstance(value, float)
    assert len(registers) == data_type.registers
    assert all(0 <= r <= 0xFFFF for r in registers)


@FUZZ
@given(st.sampled_from([t for t in DataType if t is not DataType.BOOL]),
       st.sampled_from(list(ByteOrder)), st.data())
def test_any_16_bit_registers_decode_and_integers_round_trip(
    data_type: DataType, order: ByteOrder, data: st.DataObject
) -> None:
    registers = data.draw(st.lists(_REGISTER, min_size=data_type.registers,
                                   max_size=data_type.registers))
    value = decode(registers, data_type, order)
    if not data_type.is_float:
        assert value == int(value)
        # a reading is a double: a 64-bit integer beyond 2**53 is stored as its nearest
        # double, so only integers a double holds exactly come back register for register
        if abs(value) <= 2**53:
            assert encode(value, data_type, order) == registers
    elif not math.isnan(value):
        assert encode(value, data_type, order) == registers


# --- the HJ 212 parser --------------------------------------------------------------------


def _frame(segment: bytes) -> bytes:
    """A correctly framed packet around any segment: the fuzz reaches the segment parser."""
    return (p.HEADER + f"{len(segment):04d}".encode() + segment
            + f"{crc16(segment):04X}".encode() + p.TRAILER)


def _parses_cleanly(raw: bytes) -> Packet | None:
    try:
        return parse(raw)
    except PacketError:
        return None


_ODD_DIGIT = "\u0663"  # ARABIC-INDIC DIGIT THREE: a digit to int() and to \d, not to HJ 212
_VALID_SEGMENT = ("QN=20240101010000000;ST=31;CN=2061;PW=123456;MN=010000A8900016F000169DC0;"
                  "Flag=5;CP=&&DataTime=20240101000000;a19001-Avg=3.2,a19001-Flag=N&&")
_EDITS = st.lists(st.tuples(st.integers(0, len(_VALID_SEGMENT) - 1),
                            st.sampled_from(["", "0", "9", _ODD_DIGIT, ";", "=", "&", ",", "#",
                                             "\u00e9", "\x00", "12345678901234567890"])),
                  max_size=3)


def _mutate(text: str, edits: list[tuple[int, str]]) -> str:
    """Replace a few characters of a valid text: most results are nearly valid, so the fuzz
    reaches every branch of the parser, not just the first check."""
    for position, replacement in edits:
        position = min(position, len(text) - 1)
        text = text[:position] + replacement + text[position + 1:]
    return text


_SEGMENT_TEXT = _EDITS.map(lambda edits: _mutate(_VALID_SEGMENT, edits))


@FUZZ
@given(st.binary(max_size=1200))
def test_random_bytes_are_refused_cleanly(raw: bytes) -> None:
    _parses_cleanly(raw)
    _parses_cleanly(b"##" + raw)


@FUZZ
@given(st.one_of(st.binary(max_size=1100), _SEGMENT_TEXT.map(str.encode)))
def test_any_framed_segment_parses_or_is_refused_cleanly(segment: bytes) -> None:
    """Past the CRC: whatever the segment, a packet that is accepted is one cemsd would send
    itself, byte for byte (so nothing non-ASCII slips into QN, ST, CN or Flag)."""
    raw = _frame(segment)
    packet = _parses_cleanly(raw)
    if packet is not None:
        assert packet.qn.isascii()
        assert packet.encode() == raw or _only_zero_padding_differs(packet, segment)


def _only_zero_padding_differs(packet: Packet, segment: bytes) -> bool:
    """Flag=05 and Flag=5 are the same number; the parser may accept the first."""
    return segment.decode().replace(f"Flag={packet.flag:0>2}", f"Flag={packet.flag}", 1) \
        .replace(f"Flag={packet.flag:0>3}", f"Flag={packet.flag}", 1) == packet.segment()


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=300), _SEGMENT_TEXT.map(str.encode).map(_frame)),
                max_size=8), st.integers(1, 64))
def test_stream_decoder_yields_only_packets_or_errors_and_stays_bounded(
    pieces: list[bytes], chunk: int
) -> None:
    stream = b"".join(pieces)
    decoder = FrameDecoder()
    for i in range(0, len(stream), chunk):
        for item in decoder.feed(stream[i:i + chunk]):
            assert isinstance(item, Packet | PacketError)
        # never holds more than one packet that could still complete
        assert len(decoder._buffer) < 6 + p.MAX_SEGMENT_BYTES + p.CRC_DIGITS + len(p.TRAILER)


@FUZZ
@given(st.one_of(
    st.text(max_size=20),
    st.tuples(st.datetimes().map(lambda d: d.strftime("%Y%m%d%H%M%S")), st.integers(0, 13),
              st.sampled_from(["", "0", _ODD_DIGIT, "\u00b2", "x"]))
    .map(lambda args: _mutate(args[0], [(args[1], args[2])]))))
def test_protocol_time_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        t = parse_time(text, SHANGHAI)
    except PacketError:
        return
    assert isinstance(t, float) and text.isascii() and len(text) == 14
