"""The registry API through real HTTP servers.

One simulated plant (an analyzer that stops answering from 02:10 to 02:40, a flow meter,
derived mass) runs six hours on the virtual clock with the API inside the daemon; the test
holds simulated time at 03:05 to query it live. Then QA/QC rows, a substitution and a
correction are inserted directly, and `cemsd serve` (a separate process) serves the same
database: range queries in plant time, channel filters, pagination, CSV, tokens, malformed
parameters, an OpenAPI-driven fuzz run, recomputing the hash chain from the API's rows
alone, and a tampered copy of the database that `cemsd verify` catches.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import math
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, update
from test_api_columns import assert_columns_match_hours
from test_cli import _plant as cli_plant
from test_cli import _scenario as cli_scenario

from cemsd import chain, signing
from cemsd.api.tokens import create_token
from cemsd.cli import main
from cemsd.config import Config
from cemsd.records import audit
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import (
    RunningDaemon,
    free_port,
    serve_process,
    tampering,
    wait_healthy,
    write_config,
    write_scenario,
    write_toml,
)

PLANT_TZ = timezone(timedelta(hours=8))
T0 = datetime(2026, 6, 1, tzinfo=PLANT_TZ).timestamp()
HOUR = 3600.0
HOURS_RUN = 6
FINALISE_AFTER_HOURS = 1


def _plant(port: int, api_port: int) -> dict:
    """test_cli's small plant (an analyzer and a flow meter with derived mass), with an API."""
    plant = {k: v for k, v in cli_plant(port, {}).items() if k != "storage"}
    return {**plant, "plant": {"id": "registry", "timezone": "Asia/Shanghai"},
            "storage": {"finalise_after_hours": FINALISE_AFTER_HOURS},
            # the test stores its own substitution of the 02:00 gap (and its correction)
            "qaqc": {**plant.get("qaqc", {}), "substitute": []},
            "api": {"port": api_port, "default_page_size": 50, "max_page_size": 200}}


def _scenario(port: int) -> dict:
    """The same plant's simulators; the analyzer stops answering from 02:10 to 02:40."""
    return {**cli_scenario(port), "events": [
        {"device": "analyzer", "kind": "no_reply", "start": "2h10m", "end": "2h40m"}]}


@dataclass
class Plant:
    config: Config
    tmp: Path
    live: dict[str, Any]
    channels: list[str]
    sealed_by_daemon: int
    inserted: dict[str, Any]
    base_url: str = ""
    token: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def db(self) -> Database:
        return Database(self.config.storage.database_url)


async def _run_and_query_live(config: Config, tmp: Path, api_port: int) -> dict[str, Any]:
    scenario = write_scenario(tmp, _scenario(int(config.buses[0].port)))
    live: dict[str, Any] = {}
    async with RunningDaemon(config, scenario, until=T0 + HOURS_RUN * HOUR) as running:
        db = Database(config.storage.database_url)
        token = create_token(db, "live", "test")
        db.close()
        clock = running.clock
        with clock.participant():  # simulated time stands still while we look
            await clock.sleep_until(T0 + 3 * HOUR + 300)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}",
                                         headers={"Authorization": f"Bearer {token}"}) as client:
                live["health"] = (await client.get("/health")).status_code
                deadline = time.monotonic() + 20
                while True:  # sealing runs in its own task: wait for it to settle
                    live["head"] = (await client.get("/v1/chain/head")).json()
                    if live["head"]["seq"] >= 16 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                live["hours"] = (await client.get(
                    "/v1/hours", params={"channel": "analyzer.n2o"})).json()
        await running.finished()
    return live


def _insert_records(db: Database) -> dict[str, Any]:
    """QA/QC rows, a substitution with a correction, and a corrected hour (audited)."""
    h = schema.hours.c
    now = T0 + HOURS_RUN * HOUR
    audit_id = audit(db, now, "li", "correction.manual", "analyzer.n2o", "span check")
    hour04 = db.fetch(select(schema.hours).where(h.channel == "analyzer.n2o",
                                                 h.ts == T0 + 4 * HOUR))[0]
    correction = {**{k: getattr(hour04, k) for k in (
        "channel", "ts", "minimum", "maximum", "n_valid", "n_expected", "flag", "unit")},
        "value": 27.0, "reason": "corrected after span check", "created_at": now,
        "revision": 1, "supersedes": hour04.id, "audit_id": audit_id}
    sub = {"channel": "inlet.n2o_kg_h", "ts": T0 + 2 * HOUR, "unit": "kg/h", "flag": "S",
           "method": "hj75.missing.before_after_mean", "period_kind": "missing",
           "period_start": T0 + 2 * HOUR, "period_hours": 1, "capture_rate": 0.95,
           "source_hours": json.dumps(["2026-05-31T17:00:00Z", "2026-05-31T19:00:00Z"]),
           "created_at": now}
    calibration = {"channel": "analyzer.n2o", "mode": "automatic", "reference": 0.0,
                   "full_scale": 50.0, "pass_limit_pct": 2.5, "control_limit_pct": 5.0,
                   "technician": "cemsd", "created_at": now, "result": "pass"}
    with db.transaction() as conn:
        conn.execute(insert(schema.hours), [correction])
        first = conn.execute(insert(schema.substitutions), [{**sub, "value": 1.5}])
        sub_id = first.inserted_primary_key[0]
        conn.execute(insert(schema.substitutions),
                     [{**sub, "value": 1.25, "revision": 1, "supersedes": sub_id,
                       "audit_id": audit_id}])
        conn.execute(insert(schema.calibrations), [
            {**calibration, "kind": "zero", "started_at": T0 + HOUR,
             "ended_at": T0 + HOUR + 600, "measured": 0.2, "drift_pct_fs": 0.4},
            {**calibration, "kind": "span", "reference": 40.0, "started_at": T0 + 4.5 * HOUR,
             "ended_at": T0 + 4.5 * HOUR + 600, "measured": 41.0, "drift_pct_fs": 2.0}])
        conn.execute(insert(schema.maintenance), [
            {"device": "flow", "channel": None, "started_at": T0 + 3 * HOUR,
             "ended_at": T0 + 3.5 * HOUR, "reason": "probe cleaning", "technician": "li",
             "created_at": now},
            {"device": None, "channel": "analyzer.n2o", "started_at": T0 + 5 * HOUR,
             "ended_at": None, "reason": "filter change", "technician": "wang",
             "created_at": now}])
        conn.execute(insert(schema.control_periods), [
            {"channel": "analyzer.n2o", "kind": "out_of_control", "started_at": T0 + 2 * HOUR,
             "ended_at": T0 + 4 * HOUR, "reason": "zero drift 6 % F.S.", "created_at": now}])
    return {"corrected_hour": hour04.id, "substitution": sub_id}


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("api")
    api_port = free_port()
    config = write_config(tmp, _plant(free_port(), api_port))
    live = asyncio.run(_run_and_query_live(config, tmp, api_port))
    db = Database(config.storage.database_url)
    channels = sorted({r.channel for r in db.fetch(select(schema.hours.c.channel))})
    sealed_by_daemon = len(db.fetch(select(schema.chain.c.seq).where(
        schema.chain.c.record_table == "hours")))
    inserted = _insert_records(db)
    chain.seal_due(db, chain.due_before(T0 + HOURS_RUN * HOUR, FINALISE_AFTER_HOURS),
                   sealed_at=T0 + HOURS_RUN * HOUR)
    db.close()
    state = Plant(config, tmp, live, channels, sealed_by_daemon, inserted)
    state.token = CliRunner().invoke(main, ["token", "create", "--config", str(config.source),
                                            "--name", "registry"]).stdout.strip()
    port = free_port()
    state.base_url = f"http://127.0.0.1:{port}"
    process = serve_process(config.source, port)
    try:
        wait_healthy(state.base_url, process)
        yield state
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def client(plant: Plant) -> Any:
    with httpx.Client(base_url=plant.base_url, headers=plant.auth, timeout=30) as c:
        yield c


def _items(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _local(hour: int) -> str:
    return datetime.fromtimestamp(T0 + hour * HOUR, PLANT_TZ).isoformat(timespec="minutes")


def _utc(hour: int) -> str:
    return datetime.fromtimestamp(T0 + hour * HOUR, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- inside the daemon --------------------------------------------------------------------------


def test_the_daemon_serves_the_api_and_seals_hours_as_they_become_final(plant: Plant) -> None:
    live = plant.live
    assert live["health"] == 200
    per_hour = len(plant.channels)
    # at 03:05 hours 00-02 are closed and 00-01 ended at least an hour ago; the audit
    # entries (config.load, token.create) are sealed too
    assert live["head"]["seq"] == 2 * per_hour + 2
    rows = live["hours"]["items"]
    assert [r["start_local"] for r in rows] == [_local(0), _local(1), _local(2)]
    assert [r["seal"] is not None for r in rows] == [True, True, False]
    assert rows[2]["flag"] == "B"
    # on stopping at 06:00 it sealed through hour 04 (05 ended less than an hour before)
    assert plant.sealed_by_daemon == (HOURS_RUN - FINALISE_AFTER_HOURS) * per_hour


# --- access -------------------------------------------------------------------------------------


def test_health_needs_no_token(plant: Plant) -> None:
    response = httpx.get(f"{plant.base_url}/health")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


def test_every_endpoint_but_health_needs_a_valid_token(plant: Plant, client: httpx.Client
                                                       ) -> None:
    document = client.get("/v1/openapi.json").json()
    paths = [p for p in document["paths"] if p != "/health"] + ["/v1/openapi.json"]
    assert len(paths) >= 9
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer not-a-token"},
                        {"Authorization": f"Basic {plant.token}"}):
            response = httpx.get(f"{plant.base_url}{path}", headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_token_gets_403(plant: Plant) -> None:
    source = str(plant.config.source)
    token = CliRunner().invoke(main, ["token", "create", "--config", source,
                                      "--name", "partner"]).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{plant.base_url}/v1/channels", headers=headers).status_code == 200
    revoked = CliRunner().invoke(main, ["token", "revoke", "--config", source,
                                        "--name", "partner"])
    assert revoked.exit_code == 0
    response = httpx.get(f"{plant.base_url}/v1/channels", headers=headers)
    assert response.status_code == 403
    assert "revoked" in response.json()["detail"]
    assert httpx.get(f"{plant.base_url}/v1/channels", headers=plant.auth).status_code == 200


def test_the_openapi_document_is_served(client: httpx.Client) -> None:
    document = client.get("/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/hours", "/v1/minutes", "/v1/calibrations", "/v1/maintenance",
            "/v1/control-periods", "/v1/chain/head", "/v1/chain/links"} <= set(document["paths"])
    schemes = document["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    assert all("post" not in ops and "put" not in ops and "delete" not in ops
               for ops in document["paths"].values())
    assert client.post("/v1/hours").status_code == 405  # read-only
    assert client.delete("/v1/chain/head").status_code == 405


# --- what the registry reads --------------------------------------------------------------------


def test_hours_in_plant_time_or_with_an_offset(plant: Plant, client: httpx.Client) -> None:
    naive = _items(client, "/v1/hours", channel="analyzer.n2o",
                   **{"from": "2026-06-01T02:00", "to": "2026-06-01T04:00"})
    offset = _items(client, "/v1/hours", channel="analyzer.n2o",
                    **{"from": "2026-05-31T18:00:00+00:00", "to": "2026-05-31T20:00Z"})
    assert naive == offset
    assert [r["start_local"] for r in naive] == [_local(2), _local(3)]
    assert [r["start_utc"] for r in naive] == [_utc(2), _utc(3)]
    fault, after = naive
    assert fault["flag"] == "B" and fault["n_valid"] < 45 and fault["n_expected"] == 60
    assert "no reply" in fault["reason"]
    assert (after["flag"], after["n_valid"], after["unit"]) == ("N", 60, "%vol")
    assert after["value"] == pytest.approx(24.0 + 3.5, rel=5e-3)  # ramp 1 %/h, mid-hour
    day = _items(client, "/v1/hours", channel="analyzer.n2o",
                 **{"from": "2026-06-01", "to": "2026-06-02"})
    assert [r["start_local"] for r in day] == [_local(h) for h in range(HOURS_RUN)]


def test_channel_filter(plant: Plant, client: httpx.Client) -> None:
    wanted = ["flow.velocity", "inlet.n2o_kg_h"]
    rows = _items(client, "/v1/hours", channel=wanted, limit=200)
    assert sorted({r["channel"] for r in rows}) == wanted
    assert len(rows) == 2 * HOURS_RUN
    unknown = client.get("/v1/hours", params={"channel": "nonsense.n2o"})
    assert unknown.status_code == 400 and "nonsense.n2o" in unknown.json()["detail"]
    channels = client.get("/v1/channels").json()["items"]
    assert {c["name"] for c in channels} >= set(plant.channels)


def _walk(client: httpx.Client, path: str, limit: int, **params: Any) -> tuple[list, int]:
    rows, pages, cursor = [], 0, None
    while True:
        response = client.get(path, params={**params, "limit": limit,
                                            **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        rows += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            assert "X-Next-Cursor" not in response.headers
            return rows, pages
        assert len(page["items"]) == limit
        assert response.headers["X-Next-Cursor"] == cursor
        assert 'rel="next"' in response.headers["Link"]


def _sqlite_ids(plant: Plant, query: str) -> list[int]:
    path = Path(plant.config.storage.state_dir) / "cemsd.db"
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute(query)]


def test_pages_walk_every_row_exactly_once(plant: Plant, client: httpx.Client) -> None:
    every = _sqlite_ids(plant, "SELECT id FROM hours ORDER BY ts, channel, revision")
    rows, pages = _walk(client, "/v1/hours", 4, revisions="all")
    assert [r["id"] for r in rows] == every
    assert pages == math.ceil(len(every) / 4)
    current = _sqlite_ids(plant, "SELECT id FROM hours h WHERE NOT EXISTS (SELECT 1 FROM hours "
                                 "n WHERE n.channel = h.channel AND n.ts = h.ts AND "
                                 "n.revision > h.revision) ORDER BY ts, channel")
    rows, _ = _walk(client, "/v1/hours", 7)
    assert [r["id"] for r in rows] == current
    minutes, _ = _walk(client, "/v1/minutes", 200, channel="analyzer.n2o")
    assert len(minutes) == HOURS_RUN * 60
    assert len({m["id"] for m in minutes}) == len(minutes)


def test_csv_has_the_same_rows_as_json(client: httpx.Client) -> None:
    params = {"from": "2026-06-01T01:00", "to": "2026-06-01T05:00", "limit": 200}
    rows = _items(client, "/v1/hours", **params)
    response = client.get("/v1/hours", params={**params, "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["id"]) for r in table] == [r["id"] for r in rows]
    for line, row in zip(table, rows, strict=True):
        assert float(line["value"]) == row["value"]  # full precision
        assert (line["flag"], line["start_local"]) == (row["flag"], row["start_local"])
        assert line["seal_record_hash"] == (row["seal"] or {}).get("record_hash", "")
    substituted = [line for line in table if line["substitute_value"]]
    assert [(s["channel"], s["start_local"]) for s in substituted] == [("inlet.n2o_kg_h",
                                                                        _local(2))]
    assert json.loads(substituted[0]["substitute_source_hours"]) == [
        "2026-05-31T17:00:00Z", "2026-05-31T19:00:00Z"]


def test_a_substituted_hour_carries_its_current_substitute(client: httpx.Client) -> None:
    rows = _items(client, "/v1/hours", channel="inlet.n2o_kg_h")
    substituted = {r["start_local"]: r["substitute"] for r in rows if r["substitute"]}
    assert list(substituted) == [_local(2)]
    sub = substituted[_local(2)]
    assert (sub["value"], sub["revision"], sub["flag"]) == (1.25, 1, "S")
    assert (sub["method"], sub["period_kind"], sub["period_hours"]) == (
        "hj75.missing.before_after_mean", "missing", 1)
    assert sub["capture_rate"] == 0.95 and sub["period_start_utc"] == _utc(2)
    assert sub["seal"] is not None  # the hour is final, so its substitution was sealed
    every = _items(client, "/v1/substitutions")
    assert [(s["revision"], s["value"]) for s in every] == [(0, 1.5), (1, 1.25)]


def test_a_corrected_hour_shows_its_highest_revision(plant: Plant, client: httpx.Client
                                                     ) -> None:
    window = {"channel": "analyzer.n2o", "from": "2026-06-01T04:00", "to": "2026-06-01T05:00"}
    (current,) = _items(client, "/v1/hours", **window)
    assert (current["revision"], current["value"]) == (1, 27.0)
    assert current["supersedes"] == plant.inserted["corrected_hour"]
    both = _items(client, "/v1/hours", revisions="all", **window)
    assert [r["revision"] for r in both] == [0, 1]


def test_the_columnar_year_pull_says_what_the_hour_rows_say(plant: Plant, client: httpx.Client
                                                            ) -> None:
    """The daemon's own hours (a fault hour, the correction, the substitution, sealed and
    unsealed hours) through /v1/hours/columns and /v1/hours."""
    answer = assert_columns_match_hours(client, {"from": "2026-06-01", "to": "2026-06-02"})
    assert [c["channel"] for c in answer["channels"]] == plant.channels
    analyzer = next(c for c in answer["channels"] if c["channel"] == "analyzer.n2o")
    assert analyzer["start_epoch"] == [int(T0 + h * HOUR) for h in range(HOURS_RUN)]
    assert analyzer["flag"][2] == "B" and analyzer["revision"][4] == 1
    assert analyzer["value"][4] == 27.0
    assert all(seq is not None for seq in analyzer["seal_seq"][:HOURS_RUN - 1])


def test_qaqc_records_by_overlap_and_channel(client: httpx.Client) -> None:
    calibrations = _items(client, "/v1/calibrations", **{"from": "2026-06-01T04:00"})
    assert [(c["kind"], c["started_at_local"]) for c in calibrations] == [
        ("span", "2026-06-01T04:30+08:00")]
    assert calibrations[0]["drift_pct_fs"] == 2.0
    assert calibrations[0]["started_at"] == "2026-05-31T20:30:00Z"
    by_device = _items(client, "/v1/maintenance", channel="flow.velocity")
    assert [m["reason"] for m in by_device] == ["probe cleaning"]
    by_channel = _items(client, "/v1/maintenance", channel="analyzer.n2o")
    assert [(m["reason"], m["ended_at"]) for m in by_channel] == [("filter change", None)]
    later = _items(client, "/v1/maintenance", **{"from": "2026-06-01T04:00"})
    assert [m["reason"] for m in later] == ["filter change"]  # open-ended, still going
    overlapping = _items(client, "/v1/control-periods",
                         **{"from": "2026-06-01T03:00", "to": "2026-06-01T03:10"})
    assert [p["kind"] for p in overlapping] == ["out_of_control"]
    assert _items(client, "/v1/control-periods", **{"from": "2026-06-01T04:00"}) == []


# --- the hash chain from the registry's side ----------------------------------------------------


def _canonical(value: Any) -> str:
    """docs/TAMPER-EVIDENCE.md form 1, written from the document."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".17g")  # C printf %.17g
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    return "{" + ",".join(f"{json.dumps(k)}:{_canonical(value[k])}"
                          for k in sorted(value)) + "}"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


HOUR_FIELDS = ("channel", "value", "minimum", "maximum", "n_valid", "n_expected", "flag",
               "reason", "unit", "revision", "supersedes", "audit_id", "created_at")
SUB_FIELDS = ("channel", "ts", "value", "unit", "flag", "method", "period_kind",
              "period_start", "period_hours", "capture_rate", "source_hours", "revision",
              "supersedes", "audit_id", "created_at")


def _minute_digests(client: httpx.Client, hours: list[dict[str, Any]]) -> dict[int, str]:
    """Form 2: each hour's digest of the minutes under it written no later than itself."""
    minutes, _ = _walk(client, "/v1/minutes", 200, revisions="all")
    under: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in minutes:
        start = _at(m["start_utc"]).replace(minute=0, second=0)
        under.setdefault((m["channel"], start.strftime("%Y-%m-%dT%H:%M:%SZ")), []).append(m)
    digests = {}
    for hour in hours:
        mine = sorted((m for m in under.get((hour["channel"], hour["start_utc"]), [])
                       if _at(m["created_at"]) <= _at(hour["created_at"])),
                      key=lambda m: (m["start_utc"], m["revision"], m["id"]))
        docs = [{"form": 2, "table": "minutes", "ts": m["start_utc"],
                 **{k: m[k] for k in HOUR_FIELDS}} for m in mine]
        digests[hour["id"]] = _sha(_canonical(docs))
    return digests


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_registry_can_recompute_the_chain_from_the_api(plant: Plant, client: httpx.Client
                                                         ) -> None:
    hours, _ = _walk(client, "/v1/hours", 200, revisions="all")
    subs = _items(client, "/v1/substitutions")
    links, _ = _walk(client, "/v1/chain/links", 50)
    digests = _minute_digests(client, hours)
    recomputed = {}
    for row in hours:
        doc = {"form": 2, "table": "hours", "ts": row["start_utc"],
               "minutes_sha256": digests[row["id"]], **{k: row[k] for k in HOUR_FIELDS}}
        recomputed[("hours", row["id"])] = _sha(_canonical(doc))
        if row["seal"] is not None:
            assert row["seal"]["record_hash"] == recomputed[("hours", row["id"])]
    for sub in subs:
        doc = {"form": 2, "table": "substitutions", **{k: sub[k] for k in SUB_FIELDS}}
        recomputed[("substitutions", sub["id"])] = _sha(_canonical(doc))
    previous = "0" * 64
    for seq, link in enumerate(links, start=1):
        assert link["seq"] == seq and link["prev_hash"] == previous
        if link["record_table"] != "audit_log":  # not served: checked by `cemsd verify`
            assert link["record_hash"] == recomputed[(link["record_table"], link["record_id"])]
        assert link["chain_hash"] == _sha(previous + link["record_hash"])
        previous = link["chain_hash"]
    assert [ln["record_table"] for ln in links].count("audit_log") == 3
    # the daemon's hours and audit entries (config.load, token.create), the correction, its
    # audit entry and both substitution revisions
    expected = plant.sealed_by_daemon + 2 + 1 + 1 + 2
    assert len(links) == expected
    head = client.get("/v1/chain/head").json()
    assert (head["seq"], head["chain_hash"]) == (expected, previous)


# --- bad input ----------------------------------------------------------------------------------


BAD_REQUESTS = [
    ("/v1/hours", {"from": "yesterday"}),
    ("/v1/hours", {"to": "2026-13-01"}),
    ("/v1/hours", {"from": "2026-06-02", "to": "2026-06-01"}),
    ("/v1/hours", {"limit": "0"}),
    ("/v1/hours", {"limit": "-3"}),
    ("/v1/hours", {"limit": "many"}),
    ("/v1/hours", {"limit": str(10**30)}),
    ("/v1/hours", {"cursor": "%%%not base64"}),
    ("/v1/hours", {"cursor": "bm90IGpzb24"}),  # "not json"
    ("/v1/hours", {"cursor": "WzEsMiwzXQ"}),  # [1,2,3]: wrong types
    ("/v1/hours", {"cursor": "WzFlMzAwLCJhIiwwXQ"}),  # [1e300,"a",0]: out of range
    ("/v1/hours", {"cursor": "x" * 600}),
    ("/v1/hours", {"format": "xml"}),
    ("/v1/hours", {"revisions": "some"}),
    ("/v1/hours", {"channel": ""}),
    ("/v1/minutes", {"from": "2026-06-01T25:00"}),
    ("/v1/calibrations", {"cursor": "WyJhIiwxXQ"}),  # ["a",1]
    ("/v1/chain/links", {"cursor": "WzEuNV0"}),  # [1.5]
    ("/v1/maintenance", {"to": "\u0000"}),
]


@pytest.mark.parametrize(("path", "params"), BAD_REQUESTS)
def test_malformed_parameters_get_a_4xx_never_a_5xx(client: httpx.Client, path: str,
                                                     params: dict[str, str]) -> None:
    response = client.get(path, params=params)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]


def test_far_times_are_clamped_not_refused(client: httpx.Client) -> None:
    everything = _items(client, "/v1/hours", limit=200)
    assert _items(client, "/v1/hours", limit=200,
                  **{"from": "0001-01-01T00:00", "to": "9999-12-31T23:59:59+14:00"}) == everything
    assert _items(client, "/v1/hours", **{"from": "9999-12-31T23:59:59-12:00"}) == []


# Report spans a registry (or a fuzzer) may ask for that the API must refuse with a 400
# naming the limit: the first two were 500s (year 0 in production.days_of), the next
# one cost 2.8 s of CPU.
BAD_REPORT_SPANS = [
    ({"period": "0001-01"}, "2000-01-01"),
    ({"period": "0000-01"}, "2000-01-01"),
    ({"period": "9999-12"}, "2200-01-01"),
    ({"from": "0001-01-01", "to": "9999-12-31"}, "2000-01-01"),
    ({"from": "2026-01-01", "to": "2027-01-03"}, "at most 366 days per report"),
    ({"from": "2000-01-01", "to": "2199-12-31"}, "max_report_days"),
    ({"from": "1999-12-31", "to": "2000-01-02"}, "2000-01-01"),
    ({"from": "2026-06-02", "to": "2026-06-01"}, "after"),
    ({"from": "2026-02-30", "to": "2026-03-01"}, "use dates"),
    ({"period": "2026-13"}, "use a month"),
    ({"from": "2026-06-01"}, "give period"),
]


@pytest.mark.parametrize(("params", "named"), BAD_REPORT_SPANS)
def test_report_spans_outside_the_limits_get_a_400_naming_the_limit(
        client: httpx.Client, params: dict[str, str], named: str) -> None:
    response = client.get("/v1/reports", params=params)
    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]


def test_the_report_command_refuses_the_same_dates_without_a_traceback(plant: Plant) -> None:
    result = CliRunner().invoke(main, ["report", "--config", str(plant.config.source),
                                       "--period", "0001-01"])
    assert result.exit_code == 2, result.output
    assert "reports cover days from 2000-01-01" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_large_answers_are_streamed(plant: Plant, client: httpx.Client) -> None:
    """Chunked, with no length known in advance: the server never built the whole answer."""
    span = {"from": _local(0), "to": _local(HOURS_RUN)}
    for path, params in (("/v1/hours/columns", span),
                         ("/v1/hours", {"format": "csv", "limit": 200})):
        with client.stream("GET", path, params=params) as response:
            assert response.status_code == 200
            assert response.headers.get("transfer-encoding") == "chunked", path
            assert "content-length" not in response.headers
            body = b"".join(response.iter_bytes())
        assert body  # and whole: the columns are checked against the hours elsewhere
    columns = client.get("/v1/hours/columns", params=span).json()
    assert [c["channel"] for c in columns["channels"]] == plant.channels


# Status codes FastAPI answers itself for a parameter its schema refuses.
VALIDATION = "422"


def _documented(document: dict[str, Any], path: str) -> set[str]:
    return set(document["paths"][path]["get"]["responses"])


def test_the_openapi_document_lists_every_status_code_of_each_operation(
        client: httpx.Client) -> None:
    document = client.get("/v1/openapi.json").json()
    for path in document["paths"]:
        codes = _documented(document, path)
        if path == "/health":
            assert codes >= {"200", "503"}
            continue
        assert codes >= {"200", "401", "403", "503"}, path  # token, revoked, database
        parameters = document["paths"][path]["get"].get("parameters", [])
        if parameters:
            assert VALIDATION in codes, path
        if any(p["name"] in ("from", "cursor", "period") for p in parameters):
            assert "400" in codes, path
    assert "409" in _documented(document, "/v1/reports")
    for heavy in ("/v1/reports", "/v1/hours/columns"):
        assert "Retry-After" in document["paths"][heavy]["get"]["responses"]["503"][
            "description"]


def test_fuzzing_from_the_openapi_document_finds_no_server_error(plant: Plant) -> None:
    """Every query parameter of every operation, valid and broken: never a 5xx, and every
    status a route really answers is one its operation documents."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{plant.base_url}/v1/openapi.json",
                                           headers=plant.auth)
    calls: list[tuple[str, int]] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        # negative cases break a parameter's schema: only for operations that have some
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.query else [])
        for mode in modes:
            _fuzz(plant, operation, mode, calls)()
    assert len(calls) >= 10 * len(operations)
    assert any(status == 200 for _, status in calls)
    assert any(400 <= status < 500 for _, status in calls)
    assert {"/v1/reports", "/v1/hours/columns"} <= {path for path, _ in calls}


HEAVY_OPERATIONS = ("/v1/reports", "/v1/hours/columns")  # they compute more: more cases


def _fuzz(plant: Plant, operation: Any, mode: Any, calls: list[tuple[str, int]]) -> Any:
    from hypothesis import HealthCheck, Phase, given, settings

    documented = set(operation.definition.raw["responses"])

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=60 if operation.path in HEAVY_OPERATIONS else 20, deadline=None,
              database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        response = case.call(base_url=plant.base_url, headers=plant.auth, timeout=30)
        calls.append((case.path, response.status_code))
        assert response.status_code < 500, (case.path, case.query, response.text)
        assert str(response.status_code) in documented, (case.path, case.query, response.text)

    return call


# --- tamper evidence on the real data -----------------------------------------------------------


def test_changing_one_stored_value_makes_verify_name_the_hour(plant: Plant, tmp_path: Path
                                                               ) -> None:
    source = Path(plant.config.storage.state_dir) / "cemsd.db"
    copy = tmp_path / "state" / "cemsd.db"
    copy.parent.mkdir()
    with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    raw = json.loads(json.dumps(_plant(1, 2)))
    config = write_config(tmp_path, raw)
    args = ["verify", "--config", str(config.source)]
    assert CliRunner().invoke(main, args).exit_code == 0
    db = Database(config.storage.database_url)
    h = schema.hours.c
    with tampering(db) as conn:
        changed = conn.execute(update(schema.hours)
                               .where(h.channel == "flow.velocity", h.ts == T0 + 3 * HOUR)
                               .values(value=h.value * 1.0001))
    assert changed.rowcount == 1
    db.close()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert f"hour {_local(3)} flow.velocity" in result.output
    assert "record changed" in result.output
    assert "1 finding(s)" in result.output


# --- TLS ----------------------------------------------------------------------------------------


def test_tls_with_built_in_certificate_settings(plant: Plant, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: `make test` installs it")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    raw = {**_plant(1, free_port()), "storage": {"state_dir": plant.config.storage.state_dir}}
    raw["api"] = {**raw["api"], "tls_certfile": str(cert), "tls_keyfile": str(key)}
    path = write_toml(tmp_path / "tls.toml", json.loads(json.dumps(raw, default=str)))
    port = free_port()
    process = serve_process(path, port)
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        wait_healthy(f"https://127.0.0.1:{port}", process, verify=trust)
        response = httpx.get(f"https://127.0.0.1:{port}/v1/chain/head", headers=plant.auth,
                             verify=trust)
        assert response.status_code == 200 and response.json()["seq"] > 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    half = {**_plant(1, 2), "api": {"tls_certfile": str(tmp_path / "missing.pem")}}
    result = CliRunner().invoke(main, ["check-config", str(write_toml(tmp_path / "a.toml", {
        **half, "storage": {"state_dir": str(tmp_path)}}))])
    assert result.exit_code == 1
    assert "tls_certfile and tls_keyfile go together" in result.output
    both = {**_plant(1, 2), "api": {"tls_certfile": str(tmp_path / "missing.pem"),
                                    "tls_keyfile": str(tmp_path / "missing.key")}}
    result = CliRunner().invoke(main, ["check-config", str(write_toml(tmp_path / "b.toml", {
        **both, "storage": {"state_dir": str(tmp_path)}}))])
    assert result.exit_code == 1
    assert "api.tls_certfile: no readable file" in result.output
    assert "api.tls_keyfile: no readable file" in result.output


# --- PostgreSQL ---------------------------------------------------------------------------------


def test_the_same_api_and_chain_over_postgresql(plant: Plant, client: httpx.Client, pg_url: str,
                                                tmp_path: Path) -> None:
    """The plant's records copied into PostgreSQL: verify passes (every double survived) and
    `cemsd serve` gives the same rows, pages and seals."""
    source, target = plant.db(), Database(pg_url)
    target.upgrade()
    for table in (schema.channels, schema.minutes, schema.hours, schema.substitutions,
                  schema.audit_log, schema.chain, schema.api_tokens):
        rows = [dict(row._mapping) for row in source.fetch(select(table))]
        with target.transaction() as conn:
            conn.execute(insert(table), rows)
    source.close()
    target.close()
    raw = {**_plant(1, 2), "storage": {"url": pg_url, "state_dir": str(tmp_path)}}
    path = write_toml(tmp_path / "pg.toml", raw)
    verified = CliRunner().invoke(main, ["verify", "--config", str(path)])
    assert verified.exit_code == 0, verified.output
    want, _ = _walk(client, "/v1/hours", 9, revisions="all")
    port = free_port()
    process = serve_process(path, port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=plant.auth) as pg:
            got, _ = _walk(pg, "/v1/hours", 9, revisions="all")
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert len({r["id"] for r in got}) == len(got) == len(want)
    # the same hours in the same (start, channel, revision) order; channel order may follow
    # the server's collation, so compare within each hour
    assert sorted(got, key=lambda r: r["id"]) == sorted(want, key=lambda r: r["id"])
    assert [r["start_utc"] for r in got] == [r["start_utc"] for r in want]


# --- the API must not take acquisition down -------------------------------------------------------


def test_a_taken_port_leaves_acquisition_and_sealing_running(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    from helpers import run_virtual

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        raw = _plant(free_port(), squatter.getsockname()[1])
        raw["storage"]["finalise_after_hours"] = 0
        config = write_config(tmp_path, raw)
        scenario = write_scenario(tmp_path, _scenario(int(config.buses[0].port)))
        with caplog.at_level("ERROR", logger="cemsd.supervisor"):
            daemon = asyncio.run(run_virtual(config, scenario, T0 + 2 * HOUR + 60))
    # one of the supervisor's tasks: logged at ERROR with the cause, shown as restarting
    failed = [r for r in caplog.records if r.getMessage() == "task failed, restarting"
              and r.task == "api"]
    assert failed and "cannot listen on 127.0.0.1:" in failed[0].error
    api = daemon.supervisor.report()["api"]
    assert not api["up"] and "cannot listen" in api["last_error"]
    db = Database(config.storage.database_url)
    hours = db.fetch(select(schema.hours.c.ts).distinct())
    links = db.fetch(select(schema.chain.c.ts).distinct())
    db.close()
    assert len(hours) == 2  # 00:00 and 01:00 closed
    assert len(links) == 2  # and sealed: finalise_after_hours = 0


def test_the_bundle_signing_key_is_published(plant: Plant, client: httpx.Client) -> None:
    answer = client.get("/v1/keys")
    assert answer.status_code == 200
    key = signing.load_or_create(plant.config.storage.state_dir).public_key()
    assert answer.json() == {"bundle_signing": signing.public_info(key)}
    assert answer.json()["bundle_signing"]["fingerprint"].startswith("SHA256:")
    assert httpx.get(f"{plant.base_url}/v1/keys").status_code == 401
