"""Modbus register codec: data types (int16 ... int64, float32, float64) and byte/word orders.

Byte order names describe where the bytes of a big-endian value A B C D land:

    ABCD  registers [AB][CD]   big endian (Modbus default)
    CDAB  registers [CD][AB]   words swapped ("little-endian word order")
    BADC  registers [BA][DC]   bytes swapped inside each word
    DCBA  registers [DC][BA]   little endian

For 64-bit values the same two swaps apply to four words. For 16-bit values only the
byte swap matters. pymodbus' convert_from_registers handles word order only (field notes
§4), so the codec is ours and tests check it against pymodbus' encoding.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from enum import StrEnum


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT64 = "float64"
    BOOL = "bool"  # a coil or discrete input (function codes 1 and 2)

    @property
    def registers(self) -> int:
        """How many 16-bit registers (or bits, for BOOL) one value takes."""
        return _REGISTERS[self]

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)


_REGISTERS = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
    DataType.BOOL: 1,
}
_STRUCT = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.FLOAT32: ">f",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
    DataType.FLOAT64: ">d",
}


class ByteOrder(StrEnum):
    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"

    @property
    def word_swap(self) -> bool:
        return self in (ByteOrder.CDAB, ByteOrder.DCBA)

    @property
    def byte_swap(self) -> bool:
        return self in (ByteOrder.BADC, ByteOrder.DCBA)


def decode(registers: Sequence[int], data_type: DataType, order: ByteOrder) -> float:
    """Decode the registers of one value. Floats may come back NaN or infinite.

    Anything that is not `data_type.registers` 16-bit words raises ValueError."""
    return decoder(data_type, order)(registers)


@functools.cache
def decoder(data_type: DataType, order: ByteOrder) -> Callable[[Sequence[int]], float]:
    """decode() for one type and order, its structs built once (it runs for every value
    polled). Bytes swapped inside each word are the words packed little endian."""
    n = data_type.registers
    words = struct.Struct(f"{'<' if order.byte_swap else '>'}{n}H")
    value = struct.Struct(_STRUCT.get(data_type, ">H"))
    reverse = order.word_swap

    def run(registers: Sequence[int]) -> float:
        if len(registers) != n:
            raise ValueError(f"{data_type} needs {n} registers, got {len(registers)}")
        try:
            raw = words.pack(*(reversed(registers) if reverse else registers))
        except struct.error:
            raise ValueError(f"registers must be 16-bit words 0-65535: {list(registers)}"
                             ) from None
        if data_type is DataType.BOOL:
            return 1.0 if registers[0] else 0.0
        return float(value.unpack(raw)[0])

    return run


def encode(value: float, data_type: DataType, order: ByteOrder) -> list[int]:
    """Encode one value into registers (the inverse of decode; used by simulators)."""
    return encoder(data_type, order)(value)


@functools.cache
def encoder(data_type: DataType, order: ByteOrder) -> Callable[[float], list[int]]:
    """encode() for one type and order, its structs built once."""
    if data_type is DataType.BOOL:
        return lambda value: [1 if value else 0]
    number = struct.Struct(_STRUCT[data_type])
    words = struct.Struct(f"{'<' if order.byte_swap else '>'}{data_type.registers}H")
    reverse = order.word_swap
    is_float = data_type.is_float

    def run(value: float) -> list[int]:
        if not is_float:
            raw = number.pack(_to_int(value, data_type))
        else:
            try:
                raw = number.pack(value)
            except OverflowError:  # too large for float32: the instrument would show infinity
                raw = number.pack(math.copysign(math.inf, value))
        unpacked = list(words.unpack(raw))
        if reverse:
            unpacked.reverse()
        return unpacked

    return run


_INT_LIMITS = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


def _to_int(value: float, data_type: DataType) -> int:
    """Round and clamp into the integer type, as an instrument's firmware would."""
    low, high = _INT_LIMITS[data_type]
    if isinstance(value, int) or (math.isfinite(value) and value.is_integer()):
        return max(low, min(high, int(value)))  # exact, also past 2**52 (64-bit counters)
    if math.isnan(value):
        return 0
    if math.isinf(value):
        return high if value > 0 else low
    half_up = int(math.copysign(math.floor(abs(value) + 0.5), value))  # not banker's rounding
    return max(low, min(high, half_up))
