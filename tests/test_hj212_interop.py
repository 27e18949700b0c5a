"""cemsd's HJ 212 packets read by a second decoder written from the standard's text
(tests/hj212_reference.py), for the shipped example configuration: every code of the
standard's form, lengths, CRCs and values as the text defines them."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hj212_reference import Rejected, annex_a_crc, decode

from cemsd.config import load_config
from cemsd.flags import Flag
from cemsd.hj212.messages import MessageBuilder, PeriodValue
from cemsd.hj212.packet import Packet, flag_value, split_packets
from cemsd.plan import compile_plan
from cemsd.points import PointCalculator
from cemsd.readings import Reading
from helpers import REPO

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 6, 1, 8, tzinfo=TZ).timestamp()

SPEC_VECTORS = [  # spec hj75-hj212.md §7, vectors 1-4
    b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    b"Flag=5;CP=&&RtdInterval=30&&1C80\r\n",
    b"##0087QN=20160801085857223;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;"
    b"Flag=4;CP=&&&&3240\r\n",
    b"##0094QN=20160801085857223;ST=91;CN=9011;PW=123456;MN=010000A8900016F000169DC0;"
    b"Flag=4;CP=&&QnRtn=1&&1B00\r\n",
    b"##0170QN=20240101010000000;ST=31;CN=2061;PW=123456;MN=010000A8900016F000169DC0;"
    b"Flag=5;CP=&&DataTime=20240101000000;a19001-Avg=3.2,a19001-Flag=N;a01011-Avg=12.50,"
    b"a01011-Flag=N&&9FC1\r\n",
]


def test_the_reference_decoder_reads_the_standards_vectors() -> None:
    assert annex_a_crc(b"123456789") == 0x2F80
    decoded = [decode(v) for v in SPEC_VECTORS]
    assert decoded[0].value("RtdInterval") == "30" and decoded[0].header["CN"] == "1062"
    assert decoded[1].items == [] and decoded[2].value("QnRtn") == "1"
    assert decoded[3].value("a01011-Avg") == "12.50"
    assert decoded[3].codes() == {"a19001", "a01011"}


@pytest.mark.parametrize("frame", [
    SPEC_VECTORS[3].replace(b"9FC1", b"9FC2"),  # CRC
    SPEC_VECTORS[3].replace(b"##0170", b"##0171"),  # length
    SPEC_VECTORS[3].replace(b"9FC1", b"XXXX"),
    SPEC_VECTORS[3].replace(b"a19001", b"o2_pct").replace(b"9FC1", b"%04X" % annex_a_crc(
        SPEC_VECTORS[3][6:-6].replace(b"a19001", b"o2_pct"))),  # a code not of the form
])
def test_the_reference_decoder_refuses_what_the_text_forbids(frame: bytes) -> None:
    with pytest.raises(Rejected):
        decode(frame)


def test_a_custom_code_is_refused_by_a_strict_receiver() -> None:
    packet = Packet("20260601080000000", 31, 2061, "123456", "A" * 24, flag_value(True),
                    ((("DataTime", "20260601080000"),), (("n2o_out-Avg", "5"),)))
    with pytest.raises(Rejected, match="n2o_out"):
        decode(packet.encode())


@pytest.fixture(scope="module")
def example() -> tuple:
    config = load_config(REPO / "config" / "example-plant.toml")
    plan = compile_plan(config)
    units = {ch.name: ch.unit.value for ch in plan.channels}
    units |= {d.name: d.unit.value for d in PointCalculator(config, plan).derived}
    platform = config.hj212[0]
    return platform, MessageBuilder(platform, units, TZ)


def _frames(platform, cn: int, cp) -> list[bytes]:
    packet = Packet("20260601080000123", platform.st, cn, platform.pw, platform.mn,
                    flag_value(platform.ack), cp)
    return [part.encode() for part in split_packets(packet, lead=cp[0])]


def test_the_example_plants_period_uploads_decode(example: tuple) -> None:
    platform, builder = example
    values = {s: PeriodValue(s, T0, 1000.0 + i, 900.0 + i, 1100.0 + i, "N")
              for i, s in enumerate(builder.series)}
    for cn in (2051, 2061):
        frames = _frames(platform, cn, builder.period(cn, T0, T0 + 3600, values).cp)
        decoded = [decode(f) for f in frames]
        codes = set().union(*(d.codes() for d in decoded))
        assert codes == set(platform.codes.values())
        assert all(len(c) == 6 for c in codes)
        for d in decoded:
            assert d.header["CN"] == str(cn) and d.header["MN"] == platform.mn
            assert d.value("DataTime") == "20260601080000"
        n2o = platform.codes["outlet.n2o_mg_m3"]
        fields = {k: v for d in decoded for item in d.items for k, v in item.items()}
        i = builder.series.index("outlet.n2o_mg_m3")
        assert float(fields[f"{n2o}-Avg"]) == 1000.0 + i
        assert fields[f"{n2o}-Flag"] == "N"


def test_the_example_plants_realtime_and_state_uploads_decode(example: tuple) -> None:
    platform, builder = example
    latest = {s: Reading(s, T0, 12.5, Flag.N) for s in builder.series}
    realtime = builder.realtime(latest)
    assert realtime is not None
    for frame in _frames(platform, 2011, realtime.cp):
        assert all(len(c) == 6 for c in decode(frame).codes())
    on = Reading("plant.abatement", T0, 1.0, Flag.N)
    state = builder.state([(platform.abatement_code, on, 0.5),
                           (platform.bypass_code, on, platform.bypass_open_above)])
    assert state is not None
    [decoded] = [decode(f) for f in _frames(platform, 2021, state.cp)]
    assert decoded.value(f"{platform.abatement_code}-RS") == "1"
