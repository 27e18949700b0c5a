"""What HJ 212 uploads carry: numbers, units, totals, days from hours, real-time values
and the abatement state. Expected values are worked out by hand here."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from cemsd.flags import Flag
from cemsd.hj212.messages import MessageBuilder, PeriodValue, day_bounds, day_value, number
from cemsd.readings import Reading
from cemsd.settings.hj212 import Hj212Platform

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=TZ).timestamp()
UNITS = {
    "outlet.n2o_mg_m3": "mg/m3",
    "outlet.n2o_kg_h": "kg/h",
    "outlet.flow_nm3_h": "Nm3/h",
    "flow.pressure": "Pa",
    "flow.temperature": "degC",
    "analyzer.n2o": "ppm",
}


def _builder(codes: dict[str, str]) -> MessageBuilder:
    platform = Hj212Platform(name="p", host="h", port=1, mn="A" * 24, pw="1", codes=codes)
    return MessageBuilder(platform, UNITS, TZ)


def _row(channel: str, value: float | None, flag: str = "N", ts: float = T0,
         low: float | None = None, high: float | None = None) -> PeriodValue:
    return PeriodValue(channel, ts, value, low, high, flag)


@pytest.mark.parametrize(("x", "text"), [
    (1800.0, "1800"), (0.000123456, "0.000123"), (-2.5, "-2.5"), (1234567.89, "1234568"),
    (0.0, "0"), (12.5, "12.5"), (4.9999999, "5"), (-0.0000001, "0")])
def test_numbers_are_plain_decimals_with_six_significant_digits(x: float, text: str) -> None:
    assert number(x) == text


def test_a_number_must_be_finite() -> None:
    with pytest.raises(ValueError):
        number(float("inf"))


def test_hour_upload_items_units_and_totals() -> None:
    builder = _builder({"outlet.n2o_mg_m3": "n2o", "outlet.flow_nm3_h": "a00000",
                        "flow.pressure": "a01013", "flow.temperature": "a01012"})
    values = {
        "outlet.n2o_mg_m3": _row("outlet.n2o_mg_m3", 3500.0, low=3400.0, high=3600.0),
        "outlet.n2o_kg_h": _row("outlet.n2o_kg_h", 42.0),
        "outlet.flow_nm3_h": _row("outlet.flow_nm3_h", 12000.0, low=11880.0, high=12240.0),
        "flow.pressure": _row("flow.pressure", 500.0, "T", low=450.0, high=550.0),
        "flow.temperature": _row("flow.temperature", None, "B"),
    }
    upload = builder.period(2061, T0, T0 + 3600, values)
    assert upload.cp[0] == (("DataTime", "20260601080000"),)
    items = {group[0][0].split("-")[0]: dict(group) for group in upload.cp[1:]}
    assert items["n2o"] == {"n2o-Cou": "42", "n2o-Min": "3400", "n2o-Avg": "3500",
                            "n2o-Max": "3600", "n2o-Flag": "N"}  # kg: 42 kg/h x 1 h
    assert items["a00000"] == {"a00000-Cou": "12000", "a00000-Min": "3.3",
                               "a00000-Avg": "3.33333", "a00000-Max": "3.4",
                               "a00000-Flag": "N"}  # m3/s; the total in m3
    assert items["a01013"] == {"a01013-Min": "0.45", "a01013-Avg": "0.5", "a01013-Max": "0.55",
                               "a01013-Flag": "T"}  # kPa from Pa, no total
    assert items["a01012"] == {"a01012-Flag": "B"}  # nothing valid: the flag alone
    assert (upload.cn, upload.start, upload.end) == (2061, T0, T0 + 3600)


def test_minute_totals_are_a_sixtieth_of_the_hourly_rate() -> None:
    builder = _builder({"outlet.flow_nm3_h": "a00000"})
    upload = builder.period(2051, T0, T0 + 60,
                            {"outlet.flow_nm3_h": _row("outlet.flow_nm3_h", 12000.0)})
    assert dict(upload.cp[1])["a00000-Cou"] == "200"


def test_series_the_uploads_read() -> None:
    builder = _builder({"outlet.n2o_mg_m3": "n2o", "analyzer.n2o": "ppm"})
    assert builder.series == ["analyzer.n2o", "outlet.n2o_kg_h", "outlet.n2o_mg_m3"]


def _hours(valid: int, abnormal: dict[str, int]) -> list[PeriodValue]:
    rows = [_row("s", 10.0 + i, "N", T0 + 3600 * i) for i in range(valid)]
    for flag, n in abnormal.items():
        rows += [_row("s", 99.0, flag, T0 + 3600 * (len(rows))) for _ in range(n)]
    return rows


def test_a_day_with_twenty_valid_hours_is_valid() -> None:
    day = day_value(_hours(20, {"C": 4}), T0, 24)
    assert day.flag == "N"
    assert day.value == pytest.approx(sum(10.0 + i for i in range(20)) / 20)
    assert (day.minimum, day.maximum) == (10.0, 29.0)


def test_a_day_with_nineteen_valid_hours_takes_the_dominant_flag() -> None:
    assert day_value(_hours(19, {"C": 5}), T0, 24).flag == "C"
    assert day_value(_hours(19, {"C": 2}), T0, 24).flag == "B"  # 3 hours never stored
    assert day_value(_hours(19, {"C": 2}), T0, 24).value == pytest.approx(19.0)


def test_day_upload_from_hours() -> None:
    builder = _builder({"outlet.n2o_kg_h": "n2o_kgh"})
    hours = [_row("outlet.n2o_kg_h", 40.0 + (i % 2), "N", T0 + 3600 * i) for i in range(24)]
    upload = builder.day(T0, T0 + 86400, hours)
    assert upload.cn == 2031
    assert dict(upload.cp[1]) == {"n2o_kgh-Cou": "972", "n2o_kgh-Min": "40",
                                  "n2o_kgh-Avg": "40.5", "n2o_kgh-Max": "41",
                                  "n2o_kgh-Flag": "N"}  # 40.5 kg/h x 24 h


def test_plant_days_follow_local_midnight_and_dst() -> None:
    start, end = day_bounds(T0, TZ)
    assert datetime.fromtimestamp(start, TZ).isoformat() == "2026-06-01T00:00:00+08:00"
    assert end - start == 86400
    berlin = ZoneInfo("Europe/Berlin")
    spring = datetime(2026, 3, 29, 12, 0, tzinfo=berlin).timestamp()
    start, end = day_bounds(spring, berlin)
    assert end - start == 23 * 3600


def test_realtime_values_of_channels_only() -> None:
    builder = _builder({"analyzer.n2o": "ppm", "outlet.n2o_mg_m3": "n2o",
                        "flow.pressure": "a01013"})
    latest = {
        "analyzer.n2o": Reading("analyzer.n2o", T0 + 12.4, 1790.5, Flag.N),
        "flow.pressure": Reading("flow.pressure", T0 + 10.0, None, Flag.B, "no reply"),
    }
    upload = builder.realtime(latest)
    assert upload is not None and upload.cn == 2011
    assert upload.cp == ((("DataTime", "20260601080012"),),
                         (("ppm-Rtd", "1790.5"), ("ppm-Flag", "N")),
                         (("a01013-Flag", "B"),))
    assert builder.realtime({}) is None


def test_abatement_and_bypass_state() -> None:
    builder = _builder({"analyzer.n2o": "ppm"})
    running = Reading("plant.run", T0, 1.0, Flag.N)
    stopped = Reading("plant.run", T0, 0.0, Flag.N)
    bypass_open = Reading("plant.bypass", T0 + 1, 35.0, Flag.N)
    unknown = Reading("plant.bypass", T0 + 2, None, Flag.B, "no reply")
    upload = builder.state([("SB1", running, 0.5), ("SB2", bypass_open, 0.0)])
    assert upload is not None and upload.cn == 2021
    assert upload.cp == ((("DataTime", "20260601080001"),), (("SB1-RS", "1"),),
                         (("SB2-RS", "1"),))
    upload = builder.state([("SB1", stopped, 0.5), ("SB2", unknown, 0.0)])
    assert upload is not None and upload.cp[1:] == ((("SB1-RS", "0"),),)
    assert builder.state([("SB2", unknown, 0.0), ("SB1", None, 0.5)]) is None
