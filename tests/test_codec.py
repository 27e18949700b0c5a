"""Register codec (drivers/codec.py) against pymodbus' own encoding and known vectors.

pymodbus 3.16 converts with word order only: ABCD is word_order "big", CDAB is "little".
BADC and DCBA are those two with the bytes of every register swapped, done here in the
test, so every layout is checked against an encoder that is not ours.
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient as C

from drivers.codec import ByteOrder, DataType, decode, encode

NUMERIC = [t for t in DataType if t is not DataType.BOOL]
ORDERS = list(ByteOrder)
INTS = [DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.INT64,
        DataType.UINT64]
FLOATS = [DataType.FLOAT32, DataType.FLOAT64]

# Limits written from the type definitions, not read from the module under test.
INT_RANGE = {
    DataType.INT16: (-32768, 32767),
    DataType.UINT16: (0, 65535),
    DataType.INT32: (-2147483648, 2147483647),
    DataType.UINT32: (0, 4294967295),
    DataType.INT64: (-9223372036854775808, 9223372036854775807),
    DataType.UINT64: (0, 18446744073709551615),
}
N_REGISTERS = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
}

SAMPLES: dict[DataType, list[float]] = {
    DataType.INT16: [-32768, -12345, -2, -1, 0, 1, 255, 256, 4660, 32767],
    DataType.UINT16: [0, 1, 255, 256, 0x1234, 0xABCD, 0x8000, 65535],
    DataType.INT32: [-2147483648, -123456789, -65536, -1, 0, 1, 65535, 65536,
                     0x12345678, 2147483647],
    DataType.UINT32: [0, 1, 65535, 65536, 0x12345678, 0xDEADBEEF, 4294967295],
    DataType.INT64: [-9223372036854775808, -2**53, -1, 0, 1, 2**32, 0x123456789ABC,
                     9223372036854775807],
    DataType.UINT64: [0, 1, 2**32, 2**53, 0xDEADBEEFCAFE, 18446744073709551615],
    # float32 samples are exactly representable in 32 bits
    DataType.FLOAT32: [0.0, 1.0, -1.0, 1.5, -2.75, 123.375, 65504.0, 2.0**-20, 2.0**-149,
                       3.4028234663852886e38, -3.4028234663852886e38, math.inf, -math.inf],
    DataType.FLOAT64: [0.0, 1.0, -1.0, math.pi, -1e300, 1e-300, 5e-324,
                       1.7976931348623157e308, 123456.789, math.inf, -math.inf],
}


def swap_bytes(registers: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in registers]


def pymodbus_registers(value: float, data_type: DataType, order: ByteOrder) -> list[int]:
    """pymodbus' encoding of one value in the given layout."""
    dtype = C.DATATYPE[data_type.name]
    value = int(value) if data_type in INT_RANGE else float(value)
    word_order = "little" if order in (ByteOrder.CDAB, ByteOrder.DCBA) else "big"
    regs = list(C.convert_to_registers(value, dtype, word_order=word_order))
    if order in (ByteOrder.BADC, ByteOrder.DCBA):
        regs = swap_bytes(regs)
    return regs


def pymodbus_value(registers: list[int], data_type: DataType, order: ByteOrder) -> float:
    """pymodbus' decoding of one value's registers in the given layout."""
    if order in (ByteOrder.BADC, ByteOrder.DCBA):
        registers = swap_bytes(registers)
    word_order = "little" if order in (ByteOrder.CDAB, ByteOrder.DCBA) else "big"
    return C.convert_from_registers(registers, C.DATATYPE[data_type.name], word_order=word_order)


def same_float(a: float, b: float) -> bool:
    """Equal, with NaN equal to NaN and the sign of zero significant."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


# --- against pymodbus ---------------------------------------------------------------------


def test_pymodbus_signature_is_the_one_we_rely_on() -> None:
    # The helpers above depend on these classmethods taking word_order by keyword.
    assert C.convert_to_registers(1, C.DATATYPE.UINT32, word_order="little") == [1, 0]
    assert C.convert_to_registers(1, C.DATATYPE.UINT32, word_order="big") == [0, 1]
    assert C.convert_from_registers([1, 0], C.DATATYPE.UINT32, word_order="little") == 1


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("data_type", NUMERIC, ids=str)
def test_decode_matches_pymodbus_encoding(data_type: DataType, order: ByteOrder) -> None:
    for value in SAMPLES[data_type]:
        regs = pymodbus_registers(value, data_type, order)
        assert len(regs) == N_REGISTERS[data_type]
        got = decode(regs, data_type, order)
        assert isinstance(got, float)
        assert same_float(got, float(value)), (value, [hex(r) for r in regs], got)


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("data_type", NUMERIC, ids=str)
def test_encode_matches_pymodbus_encoding(data_type: DataType, order: ByteOrder) -> None:
    for value in SAMPLES[data_type]:
        ours = encode(value, data_type, order)
        assert ours == pymodbus_registers(value, data_type, order), value
        assert all(isinstance(r, int) and 0 <= r <= 0xFFFF for r in ours)
        # and pymodbus reads our registers back as the same value
        assert same_float(float(pymodbus_value(ours, data_type, order)), float(value))


@pytest.mark.parametrize("order", ORDERS, ids=str)
def test_float_nan_round_trips_as_nan(order: ByteOrder) -> None:
    for data_type in FLOATS:
        regs = pymodbus_registers(math.nan, data_type, order)
        assert math.isnan(decode(regs, data_type, order))
        assert math.isnan(decode(encode(math.nan, data_type, order), data_type, order))


def test_negative_zero_keeps_its_sign() -> None:
    for data_type in FLOATS:
        for order in ORDERS:
            got = decode(encode(-0.0, data_type, order), data_type, order)
            assert got == 0.0 and math.copysign(1.0, got) == -1.0


# --- known vectors ---------------------------------------------------------------------------

# (data_type, value, {order: registers}) written out by hand from the IEEE 754 and two's
# complement bit patterns: byte layouts A B C D as in the codec's docstring.
KNOWN = [
    # float32 pi = 0x40490FDB (field notes §4: [0x4049, 0x0FDB] is 3.14159 with "big")
    (DataType.FLOAT32, 3.1415927410125732, {
        "ABCD": [0x4049, 0x0FDB], "CDAB": [0x0FDB, 0x4049],
        "BADC": [0x4940, 0xDB0F], "DCBA": [0xDB0F, 0x4940]}),
    # float32 1.0 = 0x3F800000
    (DataType.FLOAT32, 1.0, {
        "ABCD": [0x3F80, 0x0000], "CDAB": [0x0000, 0x3F80],
        "BADC": [0x803F, 0x0000], "DCBA": [0x0000, 0x803F]}),
    # float32 -2.0 = 0xC0000000
    (DataType.FLOAT32, -2.0, {
        "ABCD": [0xC000, 0x0000], "CDAB": [0x0000, 0xC000],
        "BADC": [0x00C0, 0x0000], "DCBA": [0x0000, 0x00C0]}),
    # float32 +inf = 0x7F800000
    (DataType.FLOAT32, math.inf, {
        "ABCD": [0x7F80, 0x0000], "DCBA": [0x0000, 0x807F]}),
    # float64 1.0 = 0x3FF0000000000000
    (DataType.FLOAT64, 1.0, {
        "ABCD": [0x3FF0, 0, 0, 0], "CDAB": [0, 0, 0, 0x3FF0],
        "BADC": [0xF03F, 0, 0, 0], "DCBA": [0, 0, 0, 0xF03F]}),
    # float64 pi = 0x400921FB54442D18
    (DataType.FLOAT64, math.pi, {
        "ABCD": [0x4009, 0x21FB, 0x5444, 0x2D18], "CDAB": [0x2D18, 0x5444, 0x21FB, 0x4009],
        "BADC": [0x0940, 0xFB21, 0x4454, 0x182D], "DCBA": [0x182D, 0x4454, 0xFB21, 0x0940]}),
    (DataType.INT16, -1, {o: [0xFFFF] for o in ("ABCD", "CDAB", "BADC", "DCBA")}),
    (DataType.INT16, -2, {
        "ABCD": [0xFFFE], "CDAB": [0xFFFE], "BADC": [0xFEFF], "DCBA": [0xFEFF]}),
    (DataType.INT16, -32768, {"ABCD": [0x8000], "BADC": [0x0080]}),
    (DataType.INT16, 32767, {"ABCD": [0x7FFF], "DCBA": [0xFF7F]}),
    (DataType.UINT16, 0x1234, {
        "ABCD": [0x1234], "CDAB": [0x1234], "BADC": [0x3412], "DCBA": [0x3412]}),
    (DataType.UINT16, 65535, {"ABCD": [0xFFFF]}),
    (DataType.INT32, -2, {
        "ABCD": [0xFFFF, 0xFFFE], "CDAB": [0xFFFE, 0xFFFF],
        "BADC": [0xFFFF, 0xFEFF], "DCBA": [0xFEFF, 0xFFFF]}),
    (DataType.INT32, -2147483648, {"ABCD": [0x8000, 0x0000], "CDAB": [0x0000, 0x8000]}),
    (DataType.INT32, 0x12345678, {
        "ABCD": [0x1234, 0x5678], "CDAB": [0x5678, 0x1234],
        "BADC": [0x3412, 0x7856], "DCBA": [0x7856, 0x3412]}),
    (DataType.UINT32, 4294967295, {o: [0xFFFF, 0xFFFF] for o in ("ABCD", "DCBA")}),
    (DataType.UINT32, 0x00010002, {
        "ABCD": [0x0001, 0x0002], "CDAB": [0x0002, 0x0001],
        "BADC": [0x0100, 0x0200], "DCBA": [0x0200, 0x0100]}),
]


@pytest.mark.parametrize(("data_type", "value", "layouts"), KNOWN,
                         ids=[f"{t}-{v}" for t, v, _ in KNOWN])
def test_known_vectors(data_type: DataType, value: float, layouts: dict[str, list[int]]) -> None:
    for order_name, regs in layouts.items():
        order = ByteOrder(order_name)
        assert decode(regs, data_type, order) == value, order_name
        assert encode(value, data_type, order) == regs, order_name


def test_float32_pi_vector_is_pi_to_float32_precision() -> None:
    assert decode([0x4049, 0x0FDB], DataType.FLOAT32, ByteOrder.ABCD) == pytest.approx(
        math.pi, rel=1e-7)


def test_uint_and_int_read_the_same_registers_differently() -> None:
    assert decode([0xFFFF], DataType.UINT16, ByteOrder.ABCD) == 65535.0
    assert decode([0xFFFF], DataType.INT16, ByteOrder.ABCD) == -1.0
    assert decode([0x8000, 0x0000], DataType.UINT32, ByteOrder.ABCD) == 2147483648.0
    assert decode([0x8000, 0x0000], DataType.INT32, ByteOrder.ABCD) == -2147483648.0


def test_register_counts() -> None:
    for data_type, n in N_REGISTERS.items():
        assert data_type.registers == n
    assert DataType.BOOL.registers == 1


def test_bool() -> None:
    for order in ORDERS:
        assert decode([1], DataType.BOOL, order) == 1.0
        assert decode([True], DataType.BOOL, order) == 1.0
        assert decode([0], DataType.BOOL, order) == 0.0
        assert encode(1.0, DataType.BOOL, order) == [1]
        assert encode(0.0, DataType.BOOL, order) == [0]


# --- integers: rounding and clamping -----------------------------------------------------------


@pytest.mark.parametrize(("data_type", "value", "expected"), [
    (DataType.INT16, 12.4, 12),
    (DataType.INT16, 12.6, 13),
    (DataType.INT16, -12.6, -13),
    (DataType.INT16, -0.4, 0),
    (DataType.INT16, 40000, 32767),
    (DataType.INT16, -40000, -32768),
    (DataType.INT16, 32767.4, 32767),
    (DataType.INT16, 1e300, 32767),
    (DataType.INT16, -1e300, -32768),
    (DataType.UINT16, -5, 0),
    (DataType.UINT16, -0.4, 0),
    (DataType.UINT16, 70000, 65535),
    (DataType.UINT16, 65535.6, 65535),
    (DataType.INT32, 3e9, 2147483647),
    (DataType.INT32, -3e9, -2147483648),
    (DataType.INT32, 99999.7, 100000),
    (DataType.UINT32, -1, 0),
    (DataType.UINT32, 2**32, 4294967295),
    (DataType.UINT32, 1e12, 4294967295),
])
def test_encode_rounds_and_clamps_integers(data_type: DataType, value: float,
                                           expected: int) -> None:
    for order in ORDERS:
        regs = encode(value, data_type, order)
        assert regs == pymodbus_registers(expected, data_type, order), order
        assert decode(regs, data_type, order) == expected


def test_encode_nan_into_an_integer_gives_zero() -> None:
    for data_type in INTS:
        assert encode(math.nan, data_type, ByteOrder.ABCD) == [0] * N_REGISTERS[data_type]


def test_encode_infinity_into_an_integer_clamps() -> None:
    # _to_int promises "round and clamp into the integer type, as an instrument's firmware
    # would" and handles NaN; +/-inf are out of range like 1e300 and must clamp the same way
    # instead of raising OverflowError from round().
    for data_type in INTS:
        low, high = INT_RANGE[data_type]
        assert encode(math.inf, data_type, ByteOrder.ABCD) == pymodbus_registers(
            high, data_type, ByteOrder.ABCD)
        assert encode(-math.inf, data_type, ByteOrder.ABCD) == pymodbus_registers(
            low, data_type, ByteOrder.ABCD)


# --- wrong register counts ------------------------------------------------------------------


@pytest.mark.parametrize("data_type", NUMERIC, ids=str)
def test_decode_rejects_wrong_register_count(data_type: DataType) -> None:
    n = N_REGISTERS[data_type]
    for count in {0, n - 1, n + 1, 2 * n}:
        if count == n:
            continue
        with pytest.raises(ValueError, match=str(n)):
            decode([0] * count, data_type, ByteOrder.ABCD)


# --- properties -----------------------------------------------------------------------------


def _values(data_type: DataType) -> st.SearchStrategy[float]:
    if data_type in INT_RANGE:
        low, high = INT_RANGE[data_type]
        return st.integers(low, high)
    if data_type is DataType.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    return st.floats(allow_nan=False)


@pytest.mark.parametrize("data_type", NUMERIC, ids=str)
def test_property_round_trip_and_agreement_with_pymodbus(data_type: DataType) -> None:
    @settings(max_examples=120, deadline=None, database=None)
    @given(_values(data_type), st.sampled_from(ORDERS))
    def check(value: float, order: ByteOrder) -> None:
        regs = encode(value, data_type, order)
        assert len(regs) == N_REGISTERS[data_type]
        assert same_float(decode(regs, data_type, order), float(value))
        assert regs == pymodbus_registers(value, data_type, order)

    check()


@pytest.mark.parametrize("data_type", NUMERIC, ids=str)
def test_property_any_registers_decode_like_pymodbus(data_type: DataType) -> None:
    n = N_REGISTERS[data_type]

    @settings(max_examples=120, deadline=None, database=None)
    @given(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n), st.sampled_from(ORDERS))
    def check(regs: list[int], order: ByteOrder) -> None:
        got = decode(regs, data_type, order)
        assert same_float(got, float(pymodbus_value(regs, data_type, order)))
        # every non-NaN bit pattern survives decode -> encode unchanged (a value is a float:
        # 64-bit integers are exact up to 2**53)
        if not math.isnan(got) and (data_type.registers < 4 or data_type.is_float
                                    or abs(got) < 2**53):
            assert encode(got, data_type, order) == regs

    check()


def test_byte_layout_against_struct() -> None:
    # The docstring's definition, independently of pymodbus: ABCD big endian, DCBA little.
    value = 1234.5678
    big = struct.pack(">d", value)
    little = struct.pack("<d", value)
    assert encode(value, DataType.FLOAT64, ByteOrder.ABCD) == list(struct.unpack(">4H", big))
    assert encode(value, DataType.FLOAT64, ByteOrder.DCBA) == list(struct.unpack(">4H", little))
