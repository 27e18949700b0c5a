"""The fleet collector with a real mosquitto and a real PostgreSQL: records arrive complete
and once, a differing re-send is a conflict, the witness raises a rebuilt or cut chain, a
plant offline for a week back-fills without gap or duplicate, tokens see their plants."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from cemsd.api.columns_compact import decode
from cemsd.fleet import schema
from cemsd.fleet.api import create_app
from cemsd.fleet.messages import parse
from cemsd.fleet.store import FleetStore
from cemsd.fleet.tokens import EVERY_PLANT, create_token, revoke_token
from cemsd.qaqc.substitution import substitution_document
from cemsd.settings.api import ApiConfig
from cemsd.store import schema as edge_schema
from fleet_helpers import (
    BROKER,
    START,
    SyntheticPlant,
    collector_settings,
    count,
    publish,
    running_collector,
    until_counted,
)
from helpers import (
    RunningDaemon,
    analyzer_and_flow_plant,
    database,
    free_port,
    listening,
    wait_for,
    write_config,
    write_scenario,
)
from mqtt_helpers import Mosquitto

pytestmark = pytest.mark.postgres


async def test_records_arrive_once_and_a_differing_resend_is_a_conflict(
        broker: Mosquitto, pg_url: str) -> None:
    plants = [SyntheticPlant(f"plant-{i}") for i in range(2)]
    sent = [p.hours(0, 48) + p.seal() for p in plants]
    async with running_collector(collector_settings(pg_url, broker.port)) as collector:
        for plant, messages in zip(plants, sent, strict=True):
            await publish(broker.port, messages, plant.plant)
        await until_counted(collector, "hours", 2 * 8 * 48)
        await until_counted(collector, "heads", 2)
        for plant, messages in zip(plants, sent, strict=True):  # the same again: nothing new
            await publish(broker.port, messages, plant.plant)
        await until_counted(collector, "duplicates", 2 * 8 * 48)
        changed = plants[0].hour_row(5, 3, value=99.0)
        topic, payload, _ = plants[0].topics.period_messages("hour", [changed])[0].topic, \
            plants[0].topics.period_messages("hour", [changed])[0].payload, False
        await publish(broker.port, [(topic, payload, False)] * 2, "resender")
        await until_counted(collector, "conflicts", 1)
        # a malformed message is refused (logged, counted) and does not block the rest
        bad_links = json.dumps({"plant": "plant-0", "kind": "chain.links",
                                "at": "2026-06-01T00:00:00Z", "data": {"links": [{"seq": 1}]}})
        await publish(broker.port, [("cemsd/plant-0/hour/x", "{not json", False),
                                    ("cemsd/plant-0/hour/x", '{"plant": "plant-0"}', False),
                                    ("cemsd/plant-0/events/chain.links", bad_links, False)],
                      "garbage")
        await until_counted(collector, "rejected", 3)
        await until_counted(collector, "messages", sum(map(len, sent)) * 2 + 5)
        await until_counted(collector, "records_checked", 2 * 8 * 48)
    store = FleetStore(pg_url)
    try:
        assert count(store, schema.hours) == 2 * 8 * 48
        assert count(store, schema.conflicts) == 1  # the second identical re-send: same one
        kept = store.db.fetch(select(schema.hours.c.value).where(
            schema.hours.c.plant == "plant-0", schema.hours.c.channel == "dev-3.n2o",
            schema.hours.c.ts == plants[0].rows[5 * 8 + 3]["ts"]))
        assert kept[0].value == plants[0].rows[5 * 8 + 3]["value"] != 99.0
        assert count(store, schema.alarms) == 0
        assert {h.verdict for h in store.db.fetch(select(schema.heads))} == {"extends"}
        assert count(store, schema.links, checked="record") == 2 * 8 * 48
    finally:
        store.close()


async def test_the_witness_raises_a_rebuilt_and_a_shortened_chain(
        broker: Mosquitto, pg_url: str) -> None:
    honest, rebuilt, cut = (SyntheticPlant(name, channels=2)
                            for name in ("honest", "rebuilt", "cut"))
    async with running_collector(collector_settings(pg_url, broker.port)) as collector:
        for plant in (honest, rebuilt, cut):
            await publish(broker.port, plant.hours(0, 24) + plant.seal(), plant.plant)
        await until_counted(collector, "heads", 3)
        assert collector.counts["alarms"] == 0
        # someone with database access changes a sealed hour and re-seals from its link on
        await publish(broker.port, rebuilt.rebuild_from(10, {"value": 1.0}), "rebuilt")
        # another cuts the chain's tail: the next head is shorter than the last one
        cut.links = cut.links[:40]
        await publish(broker.port, [cut.head()], "cut")
        for plant in (honest,):  # life goes on at the honest plant
            await publish(broker.port, plant.hours(24, 2) + plant.seal(), plant.plant)
        await until_counted(collector, "heads", 6)
        await until_counted(collector, "alarms", 2)
    store = FleetStore(pg_url)
    try:
        alarms = {(a.plant, a.problem, a.seq) for a in store.db.fetch(select(schema.alarms))}
        assert ("rebuilt", "chain rewritten", 10) in alarms
        assert ("cut", "chain shortened", 40) in alarms
        assert not [a for a in alarms if a[0] == "honest"]
        verdicts = {(h.plant, h.seq): h.verdict for h in store.db.fetch(select(schema.heads))}
        assert verdicts[("rebuilt", 48)] == "rewritten"
        assert verdicts[("honest", 52)] == "extends"
        assert verdicts[("cut", 40)] == "shortened"
        # the first link received stays: the witness's copy is never overwritten
        kept = store.db.fetch(select(schema.links.c.chain_hash).where(
            schema.links.c.plant == "rebuilt", schema.links.c.seq == 10))
        assert kept[0].chain_hash != rebuilt.links[9].chain_hash
    finally:
        store.close()


async def test_a_sealed_hour_that_differs_from_the_one_received_is_raised(
        broker: Mosquitto, pg_url: str) -> None:
    plant = SyntheticPlant("quiet-edit", channels=1)
    hours = plant.hours(0, 6)
    plant.rows[3] = {**plant.rows[3], "value": 5.5}  # changed after publishing, then sealed
    async with running_collector(collector_settings(pg_url, broker.port)) as collector:
        await publish(broker.port, hours + plant.seal(), plant.plant)
        await until_counted(collector, "alarms", 1)
    store = FleetStore(pg_url)
    try:
        [alarm] = store.db.fetch(select(schema.alarms))
        assert (alarm.problem, alarm.seq) == ("sealed record differs", 4)
    finally:
        store.close()


async def test_a_week_offline_back_fills_in_order_without_gap_or_duplicate(
        broker: Mosquitto, pg_url: str) -> None:
    plant = SyntheticPlant("remote", channels=4)
    settings = collector_settings(pg_url, broker.port)
    async with running_collector(settings) as collector:
        await publish(broker.port, plant.hours(0, 24) + plant.seal(), plant.plant)
        await until_counted(collector, "heads", 1)
    # the collector is down meanwhile too: its persistent session keeps everything queued
    week = plant.hours(24, 7 * 24) + plant.seal()
    await publish(broker.port, week, plant.plant)
    await publish(broker.port, week[-200:], plant.plant)  # a batch sent twice (lost PUBACKs)
    async with running_collector(settings) as collector:
        await until_counted(collector, "messages", len(week) + 200)
    store = FleetStore(pg_url)
    try:
        assert count(store, schema.hours) == 4 * 8 * 24
        assert store.gaps("remote") == []
        [progress] = store.progress(datetime.now(UTC))
        assert (progress["hours_received"], progress["hours_missing"]) == (8 * 24, 0)
        assert progress["last_hour"] == "2026-06-08T23:00:00Z"
        assert count(store, schema.alarms) == 0 and count(store, schema.conflicts) == 0
    finally:
        store.close()


async def test_gaps_and_lag_per_plant(broker: Mosquitto, pg_url: str) -> None:
    plant = SyntheticPlant("patchy", channels=1)
    async with running_collector(collector_settings(pg_url, broker.port)) as collector:
        await publish(broker.port, plant.hours(0, 10) + plant.hours(20, 5), plant.plant)
        await until_counted(collector, "hours", 15)
    store = FleetStore(pg_url)
    try:
        assert [(a.hour, b.hour) for a, b in store.gaps("patchy")] == [(10, 20)]
        now = datetime(2026, 6, 2, 3, tzinfo=UTC)
        [progress] = store.progress(now)
        assert progress["hours_missing"] == 10
        assert progress["lag_seconds"] == 2 * 3600  # the newest hour ended at 01:00
    finally:
        store.close()


def ingest(store: FleetStore, messages: list[tuple[str, str, bool]]) -> None:
    store.ingest([parse(topic, payload.encode()) for topic, payload, _ in messages],
                 datetime.now(UTC))


async def test_a_token_sees_only_its_plants(pg_url: str) -> None:
    store = FleetStore(pg_url)
    store.upgrade()
    try:
        for name in ("north", "south", "east"):
            plant = SyntheticPlant(name, channels=2)
            ingest(store, plant.hours(0, 3) + plant.seal())
        north = create_token(store.db, "registry-north", ["north"])
        every = create_token(store.db, "programme", [EVERY_PLANT])
        app = create_app(store, ApiConfig(), ZoneInfo("Asia/Shanghai"))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://fleet")

        async def get(path: str, token: str | None, **params: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return await client.get(path, headers=headers, params=params)

        async def status(path: str, token: str | None) -> int:
            return (await get(path, token)).status_code

        assert [p["plant"] for p in (await get("/v1/plants", north)).json()] == ["north"]
        assert [p["plant"] for p in (await get("/v1/plants", every)).json()] == [
            "east", "north", "south"]
        hours = (await get("/v1/plants/north/hours", north)).json()["items"]
        assert len(hours) == 6 and {h["plant"] for h in hours} == {"north"}
        assert hours[0]["ts_local"] == "2026-06-01T08:00+08:00"
        assert await status("/v1/plants/south/hours", north) == 404
        assert await status("/v1/plants/south/chain/heads", north) == 404
        assert await status("/v1/plants/south/hours", every) == 200
        assert await status("/v1/plants/north/hours", None) == 401
        assert await status("/v1/plants/north/hours", "forged") == 401
        csv = (await get("/v1/plants/north/hours", north, format="csv", channel="dev-1.n2o",
                         **{"from": "2026-06-01T09:00"})).text.splitlines()
        assert csv[0].startswith("plant,channel,ts,") and len(csv) == 1 + 2
        heads = (await get("/v1/plants/north/chain/heads", north)).json()["items"]
        assert [(h["seq"], h["verdict"]) for h in heads] == [(6, "extends")]
        revoke_token(store.db, "registry-north")
        assert await status("/v1/plants", north) == 403
        metrics = (await client.get("/metrics")).text
        assert 'cemsd_fleet_plant_hours{plant="north"} 3.0' in metrics
        assert 'cemsd_fleet_witness_alarms{plant="north"} 0.0' in metrics
        await client.aclose()
    finally:
        store.close()


def bridge_lines(central_port: int) -> tuple[str, ...]:
    """The shipped edge bridge (config/mosquitto/edge-bridge.conf) aimed at `central_port`."""
    shipped = (Path(__file__).parent.parent / "config/mosquitto/edge-bridge.conf").read_text()
    lines = [line for line in shipped.splitlines() if line and not line.startswith("#")]
    return tuple(f"address 127.0.0.1:{central_port}" if line.startswith("address ") else line
                 for line in lines)


async def test_the_collector_receives_through_an_edge_to_centre_bridge(
        tmp_path: Path, pg_url: str) -> None:
    central = Mosquitto(tmp_path / "central", extra=BROKER)
    central.start()
    edge = Mosquitto(tmp_path / "edge", extra=("allow_anonymous true",
                                               *bridge_lines(central.port)))
    edge.start()
    plant = SyntheticPlant("bridged", channels=2)
    try:
        async with running_collector(collector_settings(pg_url, central.port)) as collector:
            await publish(edge.port, plant.hours(0, 6) + plant.seal(), "cemsd-bridged")
            await until_counted(collector, "heads", 1)
            central.stop()  # the centre goes away; the box goes on publishing to its broker
            await publish(edge.port, plant.hours(6, 18) + plant.seal(), "cemsd-bridged")
            central.start()  # the bridge reconnects, its queue drains, the collector too
            await until_counted(collector, "hours", 2 * 24, timeout=60)
            await until_counted(collector, "links", 2 * 24)
        store = FleetStore(pg_url)
        try:
            assert count(store, schema.hours) == 2 * 24 and store.gaps("bridged") == []
            assert count(store, schema.alarms) == 0
        finally:
            store.close()
    finally:
        edge.stop()
        central.stop()


async def test_a_real_edge_box_arrives_equal_and_its_chain_recomputes(
        broker: Mosquitto, pg_url: str, tmp_path: Path) -> None:
    """A daemon on a virtual clock publishing to the broker: the central hours equal the
    edge's hours field by field, and every link of its real chain (hours in form 2 with the
    minutes' digest, audit entries) extends the last; every hour's seal recomputes."""
    port = free_port()
    config = write_config(tmp_path, analyzer_and_flow_plant(
        "edge-box", port, storage={"state_dir": str(tmp_path / "state"),
                                   "finalise_after_hours": 0},
        mqtt={"host": "127.0.0.1", "port": broker.port, "backoff_initial": 0.05,
              "backoff_max": 0.5, "batch_size": 200}))
    scenario = write_scenario(tmp_path, {
        "start": "2026-06-01T00:00:00+08:00",
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [
            {"name": "analyzer", "bus": "bus", "device_id": 1, "profile": "n2o-analyzer-percent",
             "signals": {"n2o": {"base": 24.0, "ramp_per_hour": 1.0, "noise": 0.1}}},
            {"name": "flow", "bus": "bus", "device_id": 2, "profile": "stack-flow-meter",
             "signals": {"velocity": {"base": 3.0, "noise": 0.02}}}]})
    async with running_collector(collector_settings(pg_url, broker.port)) as collector:
        async with RunningDaemon(config, scenario, until=scenario.epoch + 3 * 3600 + 60) as run:
            await run.finished()
        edge = database(config)
        hours = edge.fetch(select(edge_schema.hours).order_by(edge_schema.hours.c.ts,
                                                               edge_schema.hours.c.channel))
        o = edge_schema.mqtt_outbox.c
        sent = [json.loads(r.payload)["data"]["links"] for r in edge.fetch(
            select(o.payload).where(o.topic.like("%/events/chain.links"), o.sent_at.isnot(None)))]
        # the last pass, at stop, seals after the output stopped: its links wait in the outbox
        links = edge.fetch(select(edge_schema.chain).order_by(edge_schema.chain.c.seq)
                           .limit(sum(map(len, sent))))
        heads = edge.fetch(select(o.id).where(o.topic.like("%/chain/head"),
                                              o.sent_at.isnot(None)))
        edge.close()
        await until_counted(collector, "hours", len(hours))
        await until_counted(collector, "links", len(links))
        await until_counted(collector, "heads", len(heads))
        await until_counted(collector, "records_checked",
                            sum(1 for ln in links if ln.record_table == "hours"))
    store = FleetStore(pg_url)
    try:
        central = store.db.fetch(select(schema.hours).order_by(schema.hours.c.ts,
                                                               schema.hours.c.channel))
        fields = ("channel", "ts", "revision", "value", "minimum", "maximum", "n_valid",
                  "n_expected", "flag", "reason", "unit", "created_at", "supersedes",
                  "audit_id")
        assert len(hours) >= 3 * 4
        assert [tuple(getattr(h, f) for f in fields) for h in central] == \
            [tuple(getattr(h, f) for f in fields) for h in hours]
        assert count(store, schema.alarms) == 0
        assert len(links) > 10 and [(ln.seq, ln.chain_hash) for ln in store.db.fetch(
            select(schema.links).order_by(schema.links.c.seq))] == \
            [(ln.seq, ln.chain_hash) for ln in links]
        assert count(store, schema.links, checked="record") == \
            sum(1 for ln in links if ln.record_table == "hours")
        stored_heads = store.db.fetch(select(schema.heads))
        assert {h.verdict for h in stored_heads} == {"extends"}
        assert max(h.seq for h in stored_heads) > 10
    finally:
        store.close()


def test_collect_refuses_a_bad_configuration_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text('[collector]\ndatabase_url = "sqlite:///x.db"\nbatch_size = true\n'
                      '[collector.broker]\nport = 70000\nclientid = "typo"\n')
    done = subprocess.run([sys.executable, "-m", "cemsd", "collect", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    for key in ("collector.database_url", "collector.batch_size", "collector.broker.port",
                "collector.broker.clientid"):
        assert f"{config}: {key}" in done.stderr
    assert "nothing was started" in done.stderr


def test_cemsd_collect_serves_the_fleet_api(broker: Mosquitto, pg_url: str,
                                            tmp_path: Path) -> None:
    api_port = free_port()
    config = tmp_path / "collector.toml"
    config.write_text(f'[collector]\ndatabase_url = "{pg_url}"\n'
                      f'[collector.broker]\nport = {broker.port}\nclient_id = "cli-collector"\n'
                      f'[collector.api]\nport = {api_port}\n')
    cemsd = [sys.executable, "-m", "cemsd"]
    token = subprocess.run([*cemsd, "fleet-token", "create", "--config", str(config),
                            "--name", "registry", "--plant", "cli-plant"],
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    process = subprocess.Popen([*cemsd, "collect", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: listening(api_port), 30)
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}",
                          headers={"Authorization": f"Bearer {token}"}) as client:
            wait_for(lambda: "cemsd_fleet_broker_connected 1.0" in client.get("/metrics").text,
                     30, 0.1)  # subscribed: from now on the broker keeps what comes
            plant = SyntheticPlant("cli-plant", channels=1)
            asyncio.run(publish(broker.port, plant.hours(0, 4) + plant.seal(), "cli-plant"))

            def hours() -> int:
                answer = client.get("/v1/plants/cli-plant/hours")
                return len(answer.json()["items"]) if answer.status_code == 200 else -1

            wait_for(lambda: hours() == 4, 20, 0.1)
            [progress] = client.get("/v1/plants").json()
            assert (progress["plant"], progress["hours_missing"]) == ("cli-plant", 0)
            assert client.get("/v1/plants/other/hours").status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors


async def test_hour_columns_of_a_plant_with_a_correction_and_a_substitute(pg_url: str) -> None:
    """The edge's column answer from the fleet database: current revisions, the substitute
    the plant published, each hour's link in the witness's copy of the chain."""
    store = FleetStore(pg_url)
    store.upgrade()
    try:
        plant = SyntheticPlant("cols", channels=2)
        ingest(store, plant.hours(0, 4) + plant.seal())
        corrected = {**plant.hour_row(2, 0), "revision": 1, "value": 99.5, "audit_id": 3}
        substitute = {"channel": "dev-1.n2o", "ts": START + 3 * 3600, "value": 7.25,
                      "unit": "mg/m3", "flag": "S", "method": "hj75.missing.before_after_mean",
                      "period_kind": "missing", "period_start": START + 3 * 3600,
                      "period_hours": 1, "capture_rate": 0.95, "source_hours": "[]",
                      "created_at": START + 5 * 3600}
        event = plant.topics.event_message("substitution", {
            "rows": [substitution_document(substitute)]}, START + 5 * 3600)
        ingest(store, [plant._with_id(m.topic, m.payload) for m in
                       plant.topics.period_messages("hour", [corrected])]
               + [plant._with_id(event.topic, event.payload)])
        token = create_token(store.db, "registry", ["cols"])
        app = create_app(store, ApiConfig(), ZoneInfo("Asia/Shanghai"))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://fleet",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            span = {"from": "2026-06-01T08:00", "to": "2026-06-01T12:00"}  # UTC 00:00-04:00
            answer = (await client.get("/v1/plants/cols/hours/columns", params=span)).json()
            compact = (await client.get("/v1/plants/cols/hours/columns",
                                        params={**span, "layout": "compact"})).json()
            assert (await client.get("/v1/plants/cols/hours/columns")).status_code == 400
            assert (await client.get("/v1/plants/other/hours/columns",
                                     params=span)).status_code == 404
    finally:
        store.close()
    assert (answer["from_epoch"], answer["to_epoch"]) == (START, START + 4 * 3600)
    dev0, dev1 = answer["channels"]
    assert [dev0["channel"], dev1["channel"]] == ["dev-0.n2o", "dev-1.n2o"]
    assert dev0["start_epoch"] == [int(START) + h * 3600 for h in range(4)]
    assert dev0["revision"] == [0, 0, 1, 0]
    assert dev0["value"] == [plant.hour_row(0, 0)["value"], plant.hour_row(1, 0)["value"],
                             99.5, plant.hour_row(3, 0)["value"]]
    assert dev1["substitute_value"] == [None, None, None, 7.25]
    assert dev1["substitute_method"][3] == "hj75.missing.before_after_mean"
    # the links seal hour by hour, channel by channel: seq = hour x 2 + channel + 1
    assert dev0["seal_seq"] == [1, 3, 5, 7] and dev1["seal_seq"] == [2, 4, 6, 8]
    assert dev0["unit"] == "mg/m3" and dev0["units"] is None
    assert compact["layout"] == "compact" and decode(compact) == answer
    assert compact["channels"][0]["flag"] == ["N", 4]
