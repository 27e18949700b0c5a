"""The fleet API's copies of the edge's routes (issue 16): a real edge daemon on a virtual
clock publishes to a real mosquitto, the collector stores into a real PostgreSQL, and for
the same rows each `/v1/plants/{plant}/...` route answers what the plant's own route
answers (JSON, CSV, pages); another plant's token gets 404; bad parameters a clear 400/422.

Three hours of the adipic acid line: inlet-flow in maintenance 00:10-00:20, a manual zero
check of the inlet analyzer out of control at 00:30 (a control period opens) and one within
limits at 00:45 (it closes), the outlet analyzer silent 01:00-01:40 (the hour is
substituted), the bypass valve open 02:05-02:20."""

from __future__ import annotations

import asyncio
import json
import logging
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from reduction_line import reduction_line
from sqlalchemy import select

from cemsd.api.app import create_app as edge_app
from cemsd.api.tokens import create_token as edge_token
from cemsd.config import Config
from cemsd.control import request_async
from cemsd.fleet.api import create_app as fleet_app
from cemsd.fleet.edge_tables import MAINTENANCE, RebuiltRows, rebuilt_rows
from cemsd.fleet.messages import parse
from cemsd.fleet.settings import load_collector
from cemsd.fleet.store import FleetStore
from cemsd.fleet.tokens import create_token
from cemsd.settings.api import ApiConfig
from cemsd.store import schema
from fleet_helpers import (
    BROKER,
    TZ,
    central_events,
    collector_settings,
    edge_events_sent,
    running_collector,
    until_counted,
)
from helpers import RunningDaemon, database, write_toml
from mqtt_helpers import Mosquitto, wait_until

pytestmark = pytest.mark.postgres

LISTS = ("calibrations", "maintenance", "control-periods", "substitutions", "bypass-events")
KINDS = ("channels", "calibration", "maintenance", "control_period", "substitution", "bypass")


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fleet-routes")
    pg_url = postgres if isinstance(postgres, str) else postgres.create_database("fleet_routes")
    broker = Mosquitto(tmp / "broker", extra=BROKER)
    broker.start()
    config, scenario = reduction_line(tmp, [
        {"device": "outlet-analyzer", "kind": "no_reply", "start": "1h", "end": "1h40m"},
        {"device": "plant", "kind": "set", "channel": "bypass_position", "value": 100.0,
         "start": "2h5m", "end": "2h20m"}],
        storage={"state_dir": str(tmp / "state"), "finalise_after_hours": 0},
        mqtt={"host": "127.0.0.1", "port": broker.port, "backoff_initial": 0.05,
              "backoff_max": 0.5, "batch_size": 200})
    try:
        asyncio.run(_run_line(config, scenario, pg_url, broker.port))
    finally:
        broker.stop()
    yield {"config": config, "pg_url": pg_url, "tmp": tmp}


async def _run_line(config: Config, scenario: Any, pg_url: str, port: int) -> None:
    t0, sock = scenario.epoch, config.storage.state_dir / "cemsd.sock"
    zero = {"op": "calibrate", "channel": "inlet-analyzer.n2o", "kind": "zero",
            "reference": 0.0, "technician": "Li Wei"}
    async with running_collector(collector_settings(pg_url, port)) as collector:
        async with RunningDaemon(config, scenario, until=t0 + 3 * 3600 + 60) as run:
            with run.clock.participant():
                await run.clock.sleep_until(t0 + 600)
                for op, at in (("maintenance.start", 1200), ("maintenance.stop", 1800)):
                    await request_async(sock, {"op": op, "device": "inlet-flow",
                                               "reason": "flow probe cleaning",
                                               "technician": "Li Wei"})
                    await run.clock.sleep_until(t0 + at)
                await request_async(sock, {**zero, "manual_reading": 12.0})
                await run.clock.sleep_until(t0 + 2700)
                await request_async(sock, {**zero, "manual_reading": 0.1})
            await run.finished()
        sent = edge_events_sent(config, KINDS)
        store = FleetStore(pg_url)
        try:
            await wait_until(lambda: central_events(store, KINDS) == sent, 30, "events")
        finally:
            store.close()
        await until_counted(collector, "heads", 1)


@pytest.fixture
async def clients(line: dict[str, Any]) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    """The plant's own API on its database, and the fleet API (a token for plant `aa`,
    one for another plant) on the collector's."""
    edge = database(line["config"])
    store = FleetStore(line["pg_url"])
    name = uuid.uuid4().hex[:8]
    own = edge_token(edge, name, "test")
    ours = create_token(store.db, f"aa-{name}", ["aa"])
    theirs = create_token(store.db, f"other-{name}", ["other"])
    apps = (edge_app(edge, ApiConfig(), TZ, config=line["config"]),
            fleet_app(store, ApiConfig(), TZ, plant_configs={"aa": line["config"].source}))
    made = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                              headers={"Authorization": f"Bearer {token}"})
            for app, token in ((apps[0], own), (apps[1], ours), (apps[1], theirs))]
    try:
        yield tuple(made)
    finally:
        for client in made:
            await client.aclose()
        edge.close()
        store.close()


async def test_the_line_published_every_kind_of_row(line: dict[str, Any]) -> None:
    """The scenario did what the comparisons below rely on: none of them compares empty
    lists."""
    edge = database(line["config"])
    try:
        counted = {name: len(edge.fetch(select(table))) for name, table in (
            ("calibrations", schema.calibrations), ("maintenance", schema.maintenance),
            ("control-periods", schema.control_periods),
            ("substitutions", schema.substitutions), ("bypass-events", schema.bypass_events))}
        closed = edge.fetch(select(schema.control_periods.c.closed_by))
    finally:
        edge.close()
    assert counted == {"calibrations": 2, "maintenance": 1, "control-periods": 1,
                       "substitutions": 1, "bypass-events": 1}, counted
    assert [row.closed_by for row in closed] == [2]  # the passing check closed it


@pytest.mark.parametrize("name", LISTS)
async def test_each_list_answers_what_the_plant_answers(clients: tuple[httpx.AsyncClient, ...],
                                                        name: str) -> None:
    own, ours, _ = clients
    for params in ({}, {"format": "csv"}, {"from": "2026-06-01T00:30", "to": "2026-06-01T02:10"},
                   {"channel": "inlet-flow.volume_flow"}, {"channel": "inlet-analyzer.n2o"}):
        edge = await own.get(f"/v1/{name}", params=params)
        central = await ours.get(f"/v1/plants/aa/{name}", params=params)
        assert edge.status_code == central.status_code == 200, (params, central.text)
        assert central.headers["content-type"] == edge.headers["content-type"]
        assert central.content == edge.content, params


async def test_pages_walk_as_the_plant_pages_walk(clients: tuple[httpx.AsyncClient, ...]
                                                  ) -> None:
    own, ours, _ = clients
    pages = [await _walk(own, "/v1/calibrations"), await _walk(ours, "/v1/plants/aa/calibrations")]
    assert len(pages[0]) == 2 and pages[0] == pages[1]


async def _walk(client: httpx.AsyncClient, path: str) -> list[Any]:
    """Every page of one row, following next_cursor."""
    walked, cursor = [], None
    while True:
        answer = (await client.get(path, params={"limit": 1, **(
            {"cursor": cursor} if cursor else {})})).json()
        walked.append(answer["items"])
        cursor = answer["next_cursor"]
        if cursor is None:
            return walked


async def test_channels_and_the_chain_head(clients: tuple[httpx.AsyncClient, ...],
                                           line: dict[str, Any]) -> None:
    own, ours, _ = clients
    edge_channels = (await own.get("/v1/channels")).json()
    assert len(edge_channels["items"]) > 10
    assert (await ours.get("/v1/plants/aa/channels")).json() == edge_channels
    head = (await ours.get("/v1/plants/aa/chain/head")).json()
    # the last pass, at stop, seals after the output stopped: the centre has the one before
    [link] = (await own.get("/v1/chain/links", params={"limit": 1, "cursor": _after(
        head["seq"] - 1)})).json()["items"]
    assert head["seq"] > 10 and head["chain_hash"] == link["chain_hash"]
    assert (head["record_table"], head["record_id"], head["channel"], head["start_utc"]) == \
        (link["record_table"], link["record_id"], link["channel"], link["ts"])
    assert head["start_local"] == link["ts_local"] and head["sealed_at"] == link["sealed_at"]


def _after(seq: int) -> str:
    from cemsd.api.listing import encode_cursor

    return encode_cursor([seq])


async def test_another_plants_token_sees_none_of_it(clients: tuple[httpx.AsyncClient, ...]
                                                    ) -> None:
    _, _, theirs = clients
    for name in (*LISTS, "channels", "chain/head", "minutes", "reports?period=2026-06"):
        answer = await theirs.get(f"/v1/plants/aa/{name}")
        assert answer.status_code == 404 and "no plant 'aa'" in answer.text, name


async def test_bad_parameters_are_refused_clearly(clients: tuple[httpx.AsyncClient, ...]
                                                  ) -> None:
    _, ours, _ = clients
    answer = await ours.get("/v1/plants/aa/calibrations", params={"from": "yesterday"})
    assert answer.status_code == 400 and "`from`" in answer.json()["detail"]
    answer = await ours.get("/v1/plants/aa/maintenance", params={"cursor": "not-ours"})
    assert answer.status_code == 400 and "cursor" in answer.json()["detail"]
    assert (await ours.get("/v1/plants/aa/bypass-events",
                           params={"limit": 0})).status_code == 422
    assert (await ours.get("/v1/plants/aa/reports",
                           params={"period": "June"})).status_code == 422
    answer = await ours.get("/v1/plants/aa/reports", params={"from": "2026-06-01",
                                                              "to": "2028-06-01"})
    assert answer.status_code == 400 and "max_report_days" in answer.json()["detail"]
    answer = await ours.get("/v1/plants/aa/minutes")
    assert answer.status_code == 404 and "keeps no minutes to list" in answer.json()["detail"]


async def test_a_month_the_edge_refuses_is_refused_with_its_message(
        clients: tuple[httpx.AsyncClient, ...]) -> None:
    """No production imported: the edge's 409, word for word; the closed bypass event is
    no reason any more (a day with one is reported: tests/test_fleet_report.py)."""
    own, ours, _ = clients
    month = {"period": "2026-06"}
    edge, fleet = (await own.get("/v1/reports", params=month),
                   await ours.get("/v1/plants/aa/reports", params=month))
    assert (edge.status_code, fleet.status_code) == (409, 409)
    assert fleet.json() == edge.json() and "production is missing" in fleet.text


async def test_a_report_with_a_bypass_event_still_open_is_a_409_naming_it(
        pg_url: str, tmp_path: Path) -> None:
    """What the central report still refuses: an event open at the edge (its mass grows
    with each minute)."""
    config, scenario = reduction_line(tmp_path, [])
    data = tomllib.loads(config.source.read_text())
    path = write_toml(tmp_path / "cc.toml", {**data, "plant": {**data["plant"], "id": "cc"}})
    store = FleetStore(pg_url)
    try:
        store.upgrade()
        at = scenario.epoch + 3600
        opened = {"id": 1, "plant": "cc", "kind": "bypass", "at": "2026-05-31T17:00:00Z",
                  "data": {"active": True, "id": 4, "unit": "main", "started_at": at}}
        store.ingest([parse("cemsd/cc/events/bypass", json.dumps(opened).encode())],
                     datetime.fromtimestamp(at, UTC))
        app = fleet_app(store, ApiConfig(), TZ, plant_configs={"cc": path})
        token = create_token(store.db, f"cc-{uuid.uuid4().hex[:8]}", ["cc"])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            answer = await client.get("/v1/plants/cc/reports", params={"period": "2026-06"})
    finally:
        store.close()
    assert answer.status_code == 409
    assert "bypass event 4" in answer.json()["detail"] and "still open" in answer.text


async def test_keys_and_reports_take_the_plants_configuration(
        clients: tuple[httpx.AsyncClient, ...], line: dict[str, Any]) -> None:
    """From [collector.plants]: the key in its state_dir (here the box's own folder, so
    the box's key); a plant without one, or with another plant's file, a clear 503."""
    own, ours, _ = clients
    assert (await ours.get("/v1/plants/aa/keys")).json() == (await own.get("/v1/keys")).json()
    store = FleetStore(line["pg_url"])
    token = create_token(store.db, f"bb-{uuid.uuid4().hex[:8]}", ["aa", "bb"])
    app = fleet_app(store, ApiConfig(), TZ, plant_configs={"bb": line["config"].source})
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            for plant, why in (("aa", "[collector.plants]"), ("bb", "not 'bb'")):
                for route in ("keys", "reports?period=2026-06"):
                    answer = await client.get(f"/v1/plants/{plant}/{route}")
                    assert answer.status_code == 503 and why in answer.json()["detail"]
    finally:
        store.close()


def test_plant_configurations_are_read_beside_the_collectors_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "collector.toml"
    config.write_text('[collector]\ndatabase_url = "postgresql+psycopg://db/fleet"\n'
                      '[collector.plants]\naa = "plants/aa.toml"\nbb = "/srv/bb.toml"\n')
    assert load_collector(config).plants == {"aa": tmp_path / "etc" / "plants" / "aa.toml",
                                             "bb": Path("/srv/bb.toml")}


def test_an_event_that_cannot_be_read_is_left_out_and_logged(
        pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = FleetStore(pg_url)
    store.upgrade()
    window = {"id": 3, "device": "analyzer", "channel": None, "started_at": 1780272000.0,
              "ended_at": None, "reason": "filter", "technician": "Li Wei",
              "created_at": 1780272000.0, "planned_end_at": None}
    events = [(1, "maintenance", window), (2, "maintenance", [window]),
              (3, "maintenance", {**window, "id": 4, "started_at": "soon"}),
              (4, "maintenance", {"id": 3, "ended_at": 1780275600.0})]
    try:
        store.ingest([parse(f"cemsd/bad/events/{kind}", json.dumps({
            "id": n, "plant": "bad", "kind": kind, "at": "2026-06-01T00:00:00Z",
            "data": data}).encode()) for n, kind, data in events], datetime.now(UTC))
        with caplog.at_level(logging.WARNING, logger="cemsd.fleet.edge_tables"):
            [row] = rebuilt_rows(store, "bad", MAINTENANCE)
    finally:
        store.close()
    assert (row.id, row.started_at.timestamp(), row.ended_at.timestamp()) == \
        (3, 1780272000.0, 1780275600.0)  # the close completed the window
    assert row.technician == "Li Wei" and row.planned_end_at is None
    assert [(r.message_id, r.kind) for r in caplog.records] == [(2, "maintenance"),
                                                                 (3, "maintenance")]
    assert "'soon'" in caplog.records[1].error


def test_every_route_of_the_edge_has_its_twin_with_the_plant_in_the_path(
        line: dict[str, Any]) -> None:
    edge = database(line["config"])
    store = FleetStore(line["pg_url"])
    try:
        edge_paths = edge_app(edge, ApiConfig(), TZ).openapi()["paths"]
        fleet_paths = fleet_app(store, ApiConfig(), TZ).openapi()["paths"]
    finally:
        edge.close()
        store.close()
    routes = [p.removeprefix("/v1/") for p in edge_paths if p.startswith("/v1/")]
    assert len(routes) >= 13
    assert [r for r in routes if f"/v1/plants/{{plant}}/{r}" not in fleet_paths] == []


def test_kept_rows_are_rebuilt_once_an_event_of_their_kind_comes(pg_url: str) -> None:
    store = FleetStore(pg_url)
    store.upgrade()
    window = {"id": 1, "device": "analyzer", "started_at": 1780272000.0, "reason": "filter",
              "technician": "Li Wei", "created_at": 1780272000.0}

    def receive(n: int, kind: str, data: dict[str, Any]) -> None:
        store.ingest([parse(f"cemsd/kept/events/{kind}", json.dumps({
            "id": n, "plant": "kept", "kind": kind, "at": "2026-06-01T00:00:00Z",
            "data": data}).encode())], datetime.now(UTC))

    try:
        kept = RebuiltRows(store)
        receive(1, "maintenance", window)
        [opened] = kept.rows("kept", MAINTENANCE)
        assert kept.rows("kept", MAINTENANCE)[0] is opened  # nothing new: the same rows
        receive(2, "calibration", {"id": 1, "channel": "analyzer.n2o"})  # another kind
        assert kept.rows("kept", MAINTENANCE)[0] is opened
        receive(3, "maintenance", {"id": 1, "ended_at": 1780275600.0})
        [closed] = kept.rows("kept", MAINTENANCE)
    finally:
        store.close()
    assert opened.ended_at is None and closed.ended_at.timestamp() == 1780275600.0
