"""Read plan: plan_blocks() merging channels into Modbus block reads, and minute_threshold()."""

from __future__ import annotations

import random

import pytest

from cemsd.config import Channel
from cemsd.plan import ChannelPlan, ReadBlock, minute_threshold, plan_blocks
from cemsd.units import Unit
from drivers.codec import DataType

F32 = DataType.FLOAT32
F64 = DataType.FLOAT64
I16 = DataType.INT16
U32 = DataType.UINT32
BOOL = DataType.BOOL
N = {I16: 1, DataType.UINT16: 1, F32: 2, U32: 2, F64: 4}  # registers per value


def ch(key: str, address: int, data_type: DataType = F32, fc: int = 3) -> ChannelPlan:
    spec = Channel(function_code=fc, address=address, data_type=data_type, unit=Unit.PPM)
    return ChannelPlan(name=f"dev.{key}", key=key, device="dev", spec=spec, point=None)


def shape(blocks: list[ReadBlock]) -> list[tuple[int, int, int, list[tuple[str, int]]]]:
    """(function code, address, count, [(channel key, offset)]) of each block."""
    return [(b.function_code, b.address, b.count, [(c.key, o) for c, o in b.items])
            for b in blocks]


# --- merging -------------------------------------------------------------------------------


def test_no_channels_no_blocks() -> None:
    assert plan_blocks((), 125) == []


def test_single_channel() -> None:
    assert shape(plan_blocks((ch("a", 40, F64),), 125)) == [(3, 40, 4, [("a", 0)])]


def test_contiguous_registers_merge_into_one_block() -> None:
    channels = (ch("a", 100), ch("b", 102), ch("c", 104, U32), ch("d", 106, I16),
                ch("e", 107, F64))
    # 100..101, 102..103, 104..105, 106, 107..110: 11 registers from 100
    assert shape(plan_blocks(channels, 125)) == [
        (3, 100, 11, [("a", 0), ("b", 2), ("c", 4), ("d", 6), ("e", 7)])
    ]


def test_order_of_the_configuration_does_not_matter() -> None:
    channels = [ch("a", 0), ch("b", 2), ch("c", 4), ch("d", 6), ch("x", 20), ch("y", 22)]
    expected = [(3, 0, 8, [("a", 0), ("b", 2), ("c", 4), ("d", 6)]),
                (3, 20, 4, [("x", 0), ("y", 2)])]
    rng = random.Random(7)
    for _ in range(10):
        rng.shuffle(channels)
        assert shape(plan_blocks(tuple(channels), 125)) == expected


def test_separate_blocks_per_function_code() -> None:
    channels = (
        ch("hold", 0, F32, fc=3),
        ch("inp", 0, F32, fc=4),
        ch("hold2", 2, I16, fc=3),
        ch("coil", 0, BOOL, fc=1),
        ch("coil2", 1, BOOL, fc=1),
        ch("di", 0, BOOL, fc=2),
        ch("inp2", 2, F32, fc=4),
    )
    assert shape(plan_blocks(channels, 125)) == [
        (1, 0, 2, [("coil", 0), ("coil2", 1)]),
        (2, 0, 1, [("di", 0)]),
        (3, 0, 3, [("hold", 0), ("hold2", 2)]),
        (4, 0, 4, [("inp", 0), ("inp2", 2)]),
    ]


# --- gaps ------------------------------------------------------------------------------------


def test_gap_splits_blocks_without_max_gap() -> None:
    # a: 0..1, b: 3..4 -- register 2 unused
    assert shape(plan_blocks((ch("a", 0), ch("b", 3)), 125)) == [
        (3, 0, 2, [("a", 0)]),
        (3, 3, 2, [("b", 0)]),
    ]


def test_gap_within_max_gap_is_read_through() -> None:
    # gap of exactly max_gap (1 register) merges; the block spans the unused register
    assert shape(plan_blocks((ch("a", 0), ch("b", 3)), 125, max_gap=1)) == [
        (3, 0, 5, [("a", 0), ("b", 3)])
    ]


def test_gap_one_larger_than_max_gap_splits() -> None:
    # a: 0..1, b: 5..6 -- gap of 3 with max_gap 2
    assert shape(plan_blocks((ch("a", 0), ch("b", 5)), 125, max_gap=2)) == [
        (3, 0, 2, [("a", 0)]),
        (3, 5, 2, [("b", 0)]),
    ]
    assert shape(plan_blocks((ch("a", 0), ch("b", 5)), 125, max_gap=3)) == [
        (3, 0, 7, [("a", 0), ("b", 5)])
    ]


def test_offsets_inside_a_gapped_block() -> None:
    # 5 (int16), gap 2, 8..9 (float32), gap 3, 13..14 (float32), gap 4, 19..20
    channels = (ch("a", 5, I16), ch("b", 8), ch("c", 13), ch("d", 19))
    assert shape(plan_blocks(channels, 125, max_gap=3)) == [
        (3, 5, 10, [("a", 0), ("b", 3), ("c", 8)]),
        (3, 19, 2, [("d", 0)]),
    ]


def test_max_gap_never_exceeds_the_register_limit() -> None:
    # merging b across the gap would need 0..11 = 12 registers > 10
    assert shape(plan_blocks((ch("a", 0), ch("b", 10)), 10, max_gap=8)) == [
        (3, 0, 2, [("a", 0)]),
        (3, 10, 2, [("b", 0)]),
    ]
    # 0..9 is exactly 10: allowed
    assert shape(plan_blocks((ch("a", 0), ch("b", 8)), 10, max_gap=8)) == [
        (3, 0, 10, [("a", 0), ("b", 8)])
    ]


# --- limits -----------------------------------------------------------------------------------


def test_125_registers_fit_in_one_read() -> None:
    channels = tuple(ch(f"r{i}", i, I16) for i in range(125))
    blocks = plan_blocks(channels, 125)
    assert [(b.address, b.count, len(b.items)) for b in blocks] == [(0, 125, 125)]
    assert [o for _, o in blocks[0].items] == list(range(125))


def test_126th_register_starts_a_new_block() -> None:
    channels = tuple(ch(f"r{i}", 1000 + i, I16) for i in range(126))
    blocks = plan_blocks(channels, 125)
    assert [(b.function_code, b.address, b.count, len(b.items)) for b in blocks] == [
        (3, 1000, 125, 125),
        (3, 1125, 1, 1),
    ]
    assert shape(blocks)[1][3] == [("r125", 0)]


def test_a_value_is_never_split_across_blocks() -> None:
    # 62 floats fill 0..123; a float at 124 would end at 125 (126 registers): it moves whole
    channels = tuple(ch(f"f{i}", 2 * i) for i in range(63))
    blocks = plan_blocks(channels, 125)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 2)]
    assert shape(blocks)[1][3] == [("f62", 0)]


def test_max_registers_above_the_protocol_limit_is_capped_at_125() -> None:
    channels = tuple(ch(f"r{i}", i, I16) for i in range(130))
    assert [(b.address, b.count) for b in plan_blocks(channels, 200)] == [(0, 125), (125, 5)]


def test_smaller_max_registers() -> None:
    channels = tuple(ch(f"f{i}", 100 + 2 * i) for i in range(8))  # 100..115
    assert shape(plan_blocks(channels, 10)) == [
        (3, 100, 10, [("f0", 0), ("f1", 2), ("f2", 4), ("f3", 6), ("f4", 8)]),
        (3, 110, 6, [("f5", 0), ("f6", 2), ("f7", 4)]),
    ]


def test_max_registers_smaller_than_two_values() -> None:
    channels = (ch("a", 0), ch("b", 2), ch("c", 4))
    assert [(b.address, b.count) for b in plan_blocks(channels, 3)] == [(0, 2), (2, 2), (4, 2)]


def test_2000_bits_for_coils_and_discrete_inputs() -> None:
    for fc in (1, 2):
        channels = tuple(ch(f"c{i}", i, BOOL, fc=fc) for i in range(2001))
        blocks = plan_blocks(channels, 125)
        assert [(b.function_code, b.address, b.count, len(b.items)) for b in blocks] == [
            (fc, 0, 2000, 2000),
            (fc, 2000, 1, 1),
        ]
        assert [o for _, o in blocks[0].items] == list(range(2000))


def test_bit_reads_are_not_limited_to_125() -> None:
    channels = tuple(ch(f"c{i}", 10 + i, BOOL, fc=1) for i in range(300))
    assert [(b.address, b.count) for b in plan_blocks(channels, 125)] == [(10, 300)]


def test_register_limit_still_applies_next_to_bit_reads() -> None:
    channels = (*(ch(f"c{i}", i, BOOL, fc=2) for i in range(200)),
                *(ch(f"r{i}", i, I16, fc=4) for i in range(200)))
    blocks = plan_blocks(channels, 125)
    assert [(b.function_code, b.address, b.count) for b in blocks] == [
        (2, 0, 200),
        (4, 0, 125),
        (4, 125, 75),
    ]


# --- overlapping channels -------------------------------------------------------------------


def test_overlapping_channels_share_registers() -> None:
    # raw float at 10..11, its high word as uint16 at 10, its low word as int16 at 11
    channels = (ch("float", 10, F32), ch("low", 11, I16), ch("high", 10, DataType.UINT16))
    blocks = plan_blocks(channels, 125)
    assert len(blocks) == 1
    block = blocks[0]
    assert (block.function_code, block.address, block.count) == (3, 10, 2)
    assert sorted((c.key, o) for c, o in block.items) == [("float", 0), ("high", 0), ("low", 1)]


def test_a_channel_inside_a_longer_one_does_not_shorten_the_block() -> None:
    # float64 20..23 contains int16 21; float32 24..25 is contiguous with the float64's end
    channels = (ch("wide", 20, F64), ch("inner", 21, I16), ch("next", 24, F32))
    assert shape(plan_blocks(channels, 125)) == [
        (3, 20, 6, [("wide", 0), ("inner", 1), ("next", 4)])
    ]


def test_overlap_at_the_register_limit() -> None:
    # limit 4: float64 0..3 plus int16 at 3 still spans 4; an int16 at 4 does not fit
    channels = (ch("wide", 0, F64), ch("inner", 3, I16), ch("after", 4, I16))
    assert shape(plan_blocks(channels, 4)) == [
        (3, 0, 4, [("wide", 0), ("inner", 3)]),
        (3, 4, 1, [("after", 0)]),
    ]


def test_every_channel_lies_inside_its_block() -> None:
    rng = random.Random(1)
    types = [I16, DataType.UINT16, F32, U32, F64]
    for trial in range(30):
        channels = tuple(ch(f"k{i}", rng.randrange(0, 400), rng.choice(types))
                         for i in range(rng.randrange(1, 60)))
        max_registers = rng.choice([4, 10, 60, 125])
        max_gap = rng.choice([0, 1, 5])
        blocks = plan_blocks(channels, max_registers, max_gap)
        seen = [c.key for b in blocks for c, _ in b.items]
        assert sorted(seen) == sorted(c.key for c in channels), trial
        for b in blocks:
            assert 1 <= b.count <= max_registers
            for c, offset in b.items:
                assert offset == c.spec.address - b.address
                assert offset >= 0
                assert offset + N[c.spec.data_type] <= b.count


def test_describe() -> None:
    (block,) = plan_blocks((ch("a", 7), ch("b", 9)), 125)
    assert block.describe() == "fc3 @7 x4"


# --- minute threshold -------------------------------------------------------------------------


@pytest.mark.parametrize(("expected", "needed"), [
    (60, 45),   # 1 s polling: 75 % of 60
    (30, 23),   # 2 s: 22.5 rounds up
    (20, 15),   # 3 s
    (16, 12),   # 75 % of 16 is exactly 12
    (15, 12),   # 4 s: 11.25 -> 12, and the floor of 12 readings
    (12, 12),   # 5 s: 75 % is 9, but a minute needs 12 readings
    (24, 18),
    (61, 46),   # 45.75 rounds up
    (120, 90),
])
def test_minute_threshold_hj212(expected: int, needed: int) -> None:
    assert minute_threshold(expected, 12, 0.75) == needed


def test_minute_threshold_stricter_settings() -> None:
    assert minute_threshold(60, 50, 0.75) == 50
    assert minute_threshold(60, 12, 1.0) == 60
    assert minute_threshold(60, 12, 0.9) == 54


def test_minute_threshold_is_not_pushed_up_by_float_error() -> None:
    # 0.55 * 100 is 55.00000000000001 in binary floating point; the threshold is 55
    assert minute_threshold(100, 1, 0.55) == 55
    # and a real fraction just above an integer still rounds up
    assert minute_threshold(100, 1, 0.551) == 56
