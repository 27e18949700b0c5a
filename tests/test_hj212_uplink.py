"""The HJ 212 uplink against a receiving platform in the test (tests/hj212_platform.py),
with the daemon on a virtual clock and simulated instruments on real sockets.

The platform validates CRC and framing of every packet with its own code; each test
fails on any invalid packet. Shown here:
- withheld acknowledgements make the logger resend (same QN), then reconnect; a dropped
  connection makes it reconnect; afterwards every minute, hour and day of the run has
  arrived, in order, and hourly values equal the stored hours;
- two platforms at once, one a black hole: the other receives every minute on time;
- a restart sends everything since the last acknowledged period (durable cursor);
- the platform's requests (history, time, timeout settings, refusals) are answered.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from hj212_platform import Platform

from cemsd.cli import main
from cemsd.clock import VirtualClock
from cemsd.hj212.store import load_cursors
from cemsd.hj212.uplink import PlatformUplink
from cemsd.store import schema
from helpers import RunningDaemon, database, free_port, write_config, write_scenario

START = "2026-06-01T22:00:00+08:00"  # two hours before midnight: a day closes in the run
TZ = ZoneInfo("Asia/Shanghai")
MN = "010000A8900016F000169DC0"
PW = "123456"
CODES = {
    "outlet.n2o_mg_m3": "a99001",  # N2O: no code in HJ 212-2017, agreed with the platform
    "outlet.n2o_kg_h": "a99003",
    "outlet.flow_nm3_h": "a00000",
    "outlet-analyzer.n2o": "a99004",
    "outlet-flow.velocity": "a01011",
    "outlet-flow.temperature": "a01012",
    "outlet-flow.pressure": "a01013",
    "outlet-flow.moisture": "a01014",
    "outlet-flow.volume_flow": "a99005",
    "plant.bypass_position": "a99006",
    "plant.production_counter": "a99007",
    "plant.abatement_running": "a99008",
    "plant.production_running": "a99009",
    "plant.bypass_open": "a99010",
}
BYPASS = ("30m", "40m")  # 22:30-22:40 the bypass valve is open


def _scenario(port: int) -> dict[str, Any]:
    return {
        "start": START,
        "seed": 5,
        "buses": [{"name": "field", "transport": "tcp", "port": port}],
        "devices": [
            {"name": "outlet-analyzer", "bus": "field", "device_id": 1,
             "profile": "n2o-analyzer-ppm",
             "signals": {"n2o": {"base": 1800.0, "amplitude": 150.0, "noise": 5.0}}},
            {"name": "outlet-flow", "bus": "field", "device_id": 2,
             "profile": "stack-flow-meter",
             "signals": {"velocity": {"base": 10.4, "noise": 0.05},
                         "temperature": {"base": 120.0}, "pressure": {"base": 0.5},
                         "moisture": {"base": 8.0}, "volume_flow": {"base": 18000.0}}},
            {"name": "plant", "bus": "field", "device_id": 3, "profile": "plant-io",
             "signals": {"abatement_running": {"base": 1}, "production_running": {"base": 1},
                         "production_counter": {"base": 100.0, "ramp_per_hour": 18.0}}},
        ],
        "events": [
            {"device": "plant", "kind": "set", "channel": "bypass_position", "value": 100.0,
             "start": BYPASS[0], "end": BYPASS[1]},
            {"device": "plant", "kind": "set", "channel": "bypass_open", "value": 1,
             "start": BYPASS[0], "end": BYPASS[1]},
        ],
    }


def _platform(name: str, port: int, **extra: Any) -> dict[str, Any]:
    table = {"name": name, "host": "127.0.0.1", "port": port, "mn": MN, "pw": PW,
             "timeout_s": 0.3, "retries": 2, "reconnect_min_s": 0.05, "reconnect_max_s": 0.4,
             "uploads": [2011, 2021, 2031, 2051, 2061], "codes": CODES, **extra}
    if 2021 in table["uploads"]:
        table.update(abatement_code="SB1", bypass_code="SB2")
    return table


def _config(sim_port: int, platforms: list[dict[str, Any]]) -> dict[str, Any]:
    def device(name: str, device_id: int, profile: str, **more: Any) -> dict[str, Any]:
        return {"name": name, "bus": "field", "device_id": device_id, "profile": profile,
                "poll_interval": 5.0, **more}

    return {
        "plant": {"id": "hj212-test", "timezone": "Asia/Shanghai"},
        "points": {"outlet": {"duct_area_m2": 0.5}},
        "buses": [{"name": "field", "transport": "tcp", "host": "127.0.0.1", "port": sim_port,
                   "timeout": 0.3, "retries": 1}],
        "devices": [
            device("outlet-analyzer", 1, "n2o-analyzer-ppm"),
            device("outlet-flow", 2, "stack-flow-meter", point="outlet"),
            device("plant", 3, "plant-io"),
        ],
        "hj212": platforms,
    }


def _setup(tmp: Path, platforms: list[dict[str, Any]]) -> tuple[Any, Any]:
    sim_port = free_port()
    scenario = write_scenario(tmp, _scenario(sim_port))
    config = write_config(tmp, _config(sim_port, platforms))
    return scenario, config


def _label(t: float) -> str:
    return datetime.fromtimestamp(t, TZ).strftime("%Y%m%d%H%M%S")


def _stored(config: Any, table: Any) -> list[Any]:
    db = database(config)
    try:
        return db.aggregates_between(table, 0, 4e9)
    finally:
        db.close()


def _in_order(platform: Platform, cn: int) -> None:
    """Each upload's DataTime is never earlier than the one before: the logger sends a
    period only after the one before it was acknowledged, and resends from there."""
    times = [r.data_time for r in platform.uploads(cn)]
    assert times == sorted(times), f"CN {cn} out of order"


def _number_close(text: str, expected: float) -> bool:
    return math.isclose(float(text), expected, rel_tol=1e-5, abs_tol=1e-6)


async def _hold(rd: RunningDaemon, done: Any, timeout: float = 30.0) -> None:
    """Hold simulated time still (the test joins the clock's participants) until done()
    - the uplink's wall-clock timeouts would otherwise see hours of data fly past."""
    with rd.clock.participant():
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "condition not met in time"
            await asyncio.sleep(0.02)


def _uplink(rd: RunningDaemon, index: int = 0) -> Any:
    return [c for c in rd.daemon.components if isinstance(c, PlatformUplink)][index]


def _sent_through(rd: RunningDaemon, t: float, index: int = 0) -> Any:
    """The minutes up to t have been acknowledged."""
    return lambda: _uplink(rd, index).cursors[2051] >= t


# --- withheld acknowledgements, a dropped connection, back-fill ------------------------------


@pytest.fixture(scope="module")
def outage_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("hj212-outage")
    platform = Platform(MN, PW)

    async def run() -> dict[str, Any]:
        port = await platform.start()
        scenario, config = _setup(tmp, [_platform("provincial", port)])
        epoch = scenario.epoch
        marks: dict[str, int] = {}
        try:
            async with RunningDaemon(config, scenario, until=epoch + 2 * 3600 + 300) as rd:
                await rd.clock.sleep_until(epoch + 20 * 60)
                await _hold(rd, _sent_through(rd, epoch + 20 * 60))
                platform.withhold = 2  # two messages: each sent 1 + 2 times, then the link drops
                await rd.clock.sleep_until(epoch + 25 * 60)
                await _hold(rd, lambda: platform.withhold == 0)
                await _hold(rd, _sent_through(rd, epoch + 25 * 60))
                await rd.clock.sleep_until(epoch + 35 * 60)  # the bypass is open
                await _hold(rd, lambda: any(r.data_time >= _label(epoch + 34 * 60)
                                            for r in platform.uploads(2021)))
                marks["connections_before_drop"] = platform.connections
                platform.drop_next = True
                await rd.clock.sleep_until(epoch + 55 * 60)
                await _hold(rd, _sent_through(rd, epoch + 55 * 60))
                await rd.clock.sleep_until(epoch + 2 * 3600 + 270)
                await _hold(rd, _sent_through(rd, epoch + 2 * 3600 + 240))
                await rd.finished()
                stats = _uplink(rd).stats
        finally:
            await platform.stop()
        return {"platform": platform, "config": config, "epoch": epoch, "stats": stats,
                "marks": marks}

    return asyncio.run(run())


def test_every_packet_received_is_valid(outage_run: dict[str, Any]) -> None:
    platform: Platform = outage_run["platform"]
    assert platform.received, "nothing arrived"
    assert platform.invalid == []


def test_withheld_acks_cause_resends_then_reconnects(outage_run: dict[str, Any]) -> None:
    platform: Platform = outage_run["platform"]
    stats = outage_run["stats"]
    repeats = Counter(r.qn for r in platform.received if r.flag & 1 and r.pno in (None, 1))
    resent = sum(n - 1 for n in repeats.values())
    assert resent >= 2 * 2  # two rounds of 2 resends each with the same QN
    assert stats.retransmissions == resent
    # 2 connections lost to missing acks, one dropped by the platform, each reopened
    assert outage_run["marks"]["connections_before_drop"] >= 3
    assert platform.connections >= outage_run["marks"]["connections_before_drop"] + 1


def test_every_minute_and_hour_arrives_in_order(outage_run: dict[str, Any]) -> None:
    platform: Platform = outage_run["platform"]
    epoch = outage_run["epoch"]
    minutes = sorted({r.ts.timestamp() for r in _stored(outage_run["config"], schema.minutes)})
    hours = sorted({r.ts.timestamp() for r in _stored(outage_run["config"], schema.hours)})
    assert minutes == [epoch + 60 * i for i in range(len(minutes))] and len(minutes) >= 125
    assert set(platform.messages(2051)) == {_label(t) for t in minutes}
    assert set(platform.messages(2061)) == {_label(t) for t in hours} == {
        "20260601220000", "20260601230000"}
    for cn in (2051, 2061, 2031):
        _in_order(platform, cn)


def test_hourly_values_equal_the_stored_hours(outage_run: dict[str, Any]) -> None:
    platform: Platform = outage_run["platform"]
    messages = platform.messages(2061)
    rows = [r for r in _stored(outage_run["config"], schema.hours) if r.channel in CODES]
    assert len(rows) == 2 * len(CODES)
    checked = 0
    for row in rows:
        fields = messages[_label(row.ts.timestamp())]
        code = CODES[row.channel]
        factor = 1 / 3600 if code == "a00000" else 1.0  # m3/h stored, m3/s sent
        assert fields[f"{code}-Flag"] == row.flag
        assert _number_close(fields[f"{code}-Avg"], row.value * factor), row.channel
        assert _number_close(fields[f"{code}-Min"], row.minimum * factor)
        assert _number_close(fields[f"{code}-Max"], row.maximum * factor)
        checked += 1
    kg = {r.ts.timestamp(): r.value for r in rows if r.channel == "outlet.n2o_kg_h"}
    for t, value in kg.items():  # an hour's N2O total is its mean kg/h x 1 h
        assert _number_close(messages[_label(t)]["a99001-Cou"], value)
    assert checked == 2 * len(CODES)


def test_long_messages_are_split_and_stay_within_limits(outage_run: dict[str, Any]) -> None:
    platform: Platform = outage_run["platform"]
    parts = [r for r in platform.uploads(2061) if r.pnum]
    assert parts and max(r.pnum or 0 for r in parts) >= 2
    for r in platform.received:
        segment = r.raw[6:-6]
        assert len(segment) <= 1024
        assert len(segment.split(b"CP=", 1)[1]) <= 950
    message = platform.messages(2061)["20260601220000"]
    assert {k.split("-")[0] for k in message if k != "DataTime"} == set(CODES.values())


def test_day_from_stored_hours_needs_twenty_valid_ones(outage_run: dict[str, Any]) -> None:
    platform: Platform = outage_run["platform"]
    days = platform.messages(2031)
    assert list(days) == ["20260601000000"]
    day = days["20260601000000"]
    hours = [r for r in _stored(outage_run["config"], schema.hours)
             if r.channel == "outlet.n2o_mg_m3"]
    assert [h.flag for h in hours] == ["N", "N"]
    assert day["a99001-Flag"] == "B"  # 2 of 24 hours: 22 never stored, counted as B
    assert _number_close(day["a99001-Avg"], sum(h.value for h in hours) / 2)


def test_realtime_and_abatement_state(outage_run: dict[str, Any]) -> None:
    platform: Platform = outage_run["platform"]
    epoch = outage_run["epoch"]
    realtime = platform.uploads(2011)
    assert len(realtime) >= 60  # every minute while the link was up
    fields = realtime[-1].fields
    assert fields["a99004-Flag"] == "N" and 1000 < float(fields["a99004-Rtd"]) < 2500
    assert "a99001-Rtd" not in fields  # derived series exist per minute only
    states = {r.data_time: r.fields for r in platform.uploads(2021)}
    open_from, open_to = _label(epoch + 30 * 60), _label(epoch + 40 * 60)
    inside = [f for t, f in states.items() if open_from < t < open_to]
    outside = [f for t, f in states.items() if not open_from <= t <= open_to]
    assert inside and outside
    assert all(f["SB2-RS"] == "1" for f in inside)
    assert all(f["SB2-RS"] == "0" for f in outside)
    assert all(f["SB1-RS"] == "1" for f in states.values())


# --- two platforms, one of them a black hole -----------------------------------------------


def test_a_dead_platform_costs_the_other_nothing(tmp_path: Path) -> None:
    """The dead platform accepts connections and never acknowledges: with CN 1000's
    defaults each of its messages holds its link for 4 x 10 s. Every ten simulated
    minutes the clock is held until the good platform has everything: it never waits
    longer than a fraction of one of the dead platform's timeouts."""
    good, dead = Platform(MN, PW), Platform(MN, PW, acking=False)
    waits: list[float] = []

    async def run() -> None:
        good_port, dead_port = await good.start(), await dead.start()
        scenario, config = _setup(tmp_path, [
            _platform("good", good_port, uploads=[2051, 2061]),
            _platform("dead", dead_port, uploads=[2051, 2061], timeout_s=10.0, retries=3),
        ])
        epoch = scenario.epoch
        try:
            async with RunningDaemon(config, scenario, until=epoch + 3600 + 60) as rd:
                for t in range(600, 3601, 600):
                    await rd.clock.sleep_until(epoch + t)
                    began = time.monotonic()
                    await _hold(rd, _sent_through(rd, epoch + t), timeout=5.0)
                    waits.append(time.monotonic() - began)
                await rd.finished()
        finally:
            await good.stop()
            await dead.stop()

    asyncio.run(run())
    assert good.invalid == [] and dead.invalid == []
    assert len(waits) == 6 and max(waits) < 5.0
    assert len(good.messages(2051)) >= 60 and len(good.messages(2061)) == 1
    assert {r.data_time for r in dead.uploads(2051)} == {"20260601220000"}  # stuck there


# --- restart: the cursor is durable ---------------------------------------------------------


def test_restart_sends_everything_since_the_last_acknowledged_period(tmp_path: Path) -> None:
    platform = Platform(MN, PW)

    async def run() -> tuple[Any, float]:
        port = free_port()  # nothing listens here during the first run
        scenario, config = _setup(tmp_path, [_platform("provincial", port,
                                                       uploads=[2051, 2061])])
        epoch = scenario.epoch
        async with RunningDaemon(config, scenario, until=epoch + 1800) as rd:
            await rd.finished()
        platform_port = await platform.start()
        scenario, config = _setup(tmp_path, [_platform("provincial", platform_port,
                                                       uploads=[2051, 2061])])
        try:
            clock = VirtualClock(epoch + 1800)
            async with RunningDaemon(config, scenario, until=epoch + 3900, clock=clock) as rd:
                await rd.clock.sleep_until(epoch + 3870)
                await _hold(rd, _sent_through(rd, epoch + 3840))
                await rd.finished()
        finally:
            await platform.stop()
        return config, epoch

    config, epoch = asyncio.run(run())
    assert platform.invalid == []
    minutes = sorted({r.ts.timestamp() for r in _stored(config, schema.minutes)})
    assert minutes[0] == epoch and minutes[-1] == epoch + 3840  # 22:00 .. 23:04
    assert set(platform.messages(2051)) == {_label(t) for t in minutes}
    assert set(platform.messages(2061)) == {_label(epoch)}
    _in_order(platform, 2051)
    db = database(config)
    try:
        cursors = load_cursors(db, "provincial")
    finally:
        db.close()
    assert cursors == {2051: minutes[-1] + 60, 2061: epoch + 3600}
    shown = CliRunner().invoke(main, ["hj212-cursors", "--config", str(config.source)])
    assert shown.exit_code == 0, shown.output
    last = datetime.fromtimestamp(minutes[-1] + 60, TZ).strftime("%H:%M")
    assert shown.output == (f"provincial: 2051 until 2026-06-01T{last}+08:00, "
                            "2061 until 2026-06-01T23:00+08:00\n")


# --- requests from the platform --------------------------------------------------------------


@pytest.fixture(scope="module")
def requests_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("hj212-requests")
    platform = Platform(MN, PW)

    async def run() -> dict[str, Any]:
        port = await platform.start()
        scenario, config = _setup(tmp, [_platform("provincial", port, uploads=[2051])])
        epoch = scenario.epoch
        qn: dict[str, str] = {}
        try:
            async with RunningDaemon(config, scenario, until=epoch + 1500) as rd:
                await rd.clock.sleep_until(epoch + 1200)
                await _hold(rd, lambda: platform.connections > 0)
                asked_at = rd.clock.now()
                qn["minutes"] = await platform.request(
                    2051, f"BeginTime={_label(epoch)};EndTime={_label(epoch + 240)}")
                qn["empty"] = await platform.request(
                    2061, "BeginTime=20200101000000;EndTime=20200101235959")
                qn["time"] = await platform.request(1011, "PolId=a99001")
                qn["timeout"] = await platform.request(1000, "OverTime=5;ReCount=3")
                qn["bad_time"] = await platform.request(2051, "BeginTime=2026;EndTime=x")
                qn["unknown"] = await platform.request(1234)
                qn["unsupported"] = await platform.request(3011, "PolId=a99001")
                qn["wrong_pw"] = await platform.request(2051, pw="999999")
                qn["wrong_mn"] = await platform.request(2051, mn="X" * 24)
                await _hold(rd, lambda: all(platform.answers(q) for q in qn.values())
                            and platform.answers(qn["minutes"])[-1].cn == 9012)
                await rd.finished()
                uplink = _uplink(rd)
        finally:
            await platform.stop()
        return {"platform": platform, "qn": qn, "epoch": epoch, "asked_at": asked_at,
                "config": config, "uplink": uplink}

    return asyncio.run(run())


def _replies(run: dict[str, Any], name: str) -> list[tuple[int, dict[str, str]]]:
    platform: Platform = run["platform"]
    return [(r.cn, r.fields) for r in platform.answers(run["qn"][name])]


def test_history_request_gets_9011_the_data_and_9012(requests_run: dict[str, Any]) -> None:
    assert requests_run["platform"].invalid == []
    replies = _replies(requests_run, "minutes")
    assert replies[0] == (9011, {"QnRtn": "1"})
    assert replies[-1] == (9012, {"ExeRtn": "1"})
    answered = requests_run["platform"].answers(requests_run["qn"]["minutes"])
    data: dict[str, dict[str, str]] = {}
    parts: dict[str, list[tuple[int | None, int | None]]] = {}
    for r in answered[1:-1]:  # each minute in parts, every part with its DataTime
        assert r.cn == 2051 and r.data_time
        data.setdefault(r.data_time, {}).update(r.fields)
        parts.setdefault(r.data_time, []).append((r.pno, r.pnum))
    for numbers in parts.values():
        assert numbers == [(i + 1, len(numbers)) for i in range(len(numbers))]
    epoch = requests_run["epoch"]
    assert list(data) == [_label(epoch + 60 * i) for i in range(5)]
    stored = {r.ts.timestamp(): r for r in _stored(requests_run["config"], schema.minutes)
              if r.channel == "outlet.n2o_mg_m3"}
    for i, fields in enumerate(data.values()):
        assert _number_close(fields["a99001-Avg"], stored[epoch + 60 * i].value)
        assert {k.split("-")[0] for k in fields if k != "DataTime"} == set(CODES.values())
    assert all(r.flag & 1 == 0 for r in answered)  # answers ask for no acknowledgement
    assert all(r.st == 91 for r in answered if r.cn in (9011, 9012))


def test_history_request_without_data_ends_with_exertn_100(
        requests_run: dict[str, Any]) -> None:
    assert _replies(requests_run, "empty") == [(9011, {"QnRtn": "1"}), (9012, {"ExeRtn": "100"})]


def test_time_request_gets_the_logger_time(requests_run: dict[str, Any]) -> None:
    replies = _replies(requests_run, "time")
    assert [cn for cn, _ in replies] == [9011, 1011, 9012]
    answer = replies[1][1]
    assert answer["PolId"] == "a99001"
    sent = datetime.strptime(answer["SystemTime"], "%Y%m%d%H%M%S").replace(tzinfo=TZ)
    assert abs(sent.timestamp() - requests_run["asked_at"]) < 120  # simulated time moves on


def test_cn_1000_sets_timeout_and_resends(requests_run: dict[str, Any]) -> None:
    assert _replies(requests_run, "timeout") == [(9011, {"QnRtn": "1"}),
                                                 (9012, {"ExeRtn": "1"})]
    uplink = requests_run["uplink"]
    assert (uplink.timeout_s, uplink.retries) == (5.0, 3)


@pytest.mark.parametrize(("name", "qn_rtn"), [
    ("bad_time", "2"), ("unknown", "8"), ("unsupported", "2"), ("wrong_pw", "3"),
    ("wrong_mn", "4")])
def test_requests_refused_with_the_reason(requests_run: dict[str, Any], name: str,
                                          qn_rtn: str) -> None:
    assert _replies(requests_run, name) == [(9011, {"QnRtn": qn_rtn})]
