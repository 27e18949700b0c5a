"""GET /v1/hours/columns against `cemsd serve` over SQLite and PostgreSQL.

Hours are filled through the store code (two channels, two days, invalid hours, a NaN, a
corrected hour, a substitution with its correction, the first 31 hours sealed); the
columnar answer must say, hour by hour, what /v1/hours says, and each seal number must
name that very hour in /v1/chain/links. test_api.py compares the two over a real daemon's
hours with `assert_columns_match_hours`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pydantic_core
import pytest
from sqlalchemy import insert, select
from test_sealed_days import reference

from cemsd import chain
from cemsd.api.columns_compact import decode, encode_channel
from cemsd.api.tokens import create_token
from cemsd.records import audit
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import free_port, hour_row, serve_process, wait_healthy, write_toml

PLANT_TZ = timezone(timedelta(hours=8))
T0 = datetime(2026, 3, 1, tzinfo=PLANT_TZ).timestamp()
HOUR = 3600.0
HOURS = 48
SEALED_THROUGH = 31  # hours 0..31 sealed: the UTC day 2026-03-01 (hours 8..31) whole
SPAN = {"from": "2026-03-01", "to": "2026-03-03"}  # plant time: the 48 hours
CHANNELS = {"a.n2o": "ppm", "b.flow": "m3/h"}
UNIT_CHANGE = ("b.flow", 40, "Nm3/h")  # from this hour on the channel's hours say Nm3/h
CORRECTED = ("a.n2o", 5, 55.5)
SUBSTITUTED = {("a.n2o", 7): 2.0, ("b.flow", 14): 3.0}  # current substitute values
METHOD = "hj75.missing.before_after_mean"


def _value(channel: str, hour: int) -> float | None:
    if hour % 7 == 0:
        return None  # an invalid hour without a value
    if (channel, hour) == ("b.flow", 9):
        return math.nan  # not a JSON number: served as null
    return (100.0 if channel == "a.n2o" else 2000.0) + hour * 0.37


def _unit(channel: str, hour: int) -> str:
    name, first, unit = UNIT_CHANGE
    return unit if channel == name and hour >= first else CHANNELS[channel]


def _fill(db: Database) -> None:
    db.upsert_channels([{"name": name, "device": name.split(".")[0], "key": name.split(".")[1],
                         "unit": unit, "kind": "analog"} for name, unit in CHANNELS.items()])
    created = T0 + HOURS * HOUR
    db.insert_aggregates(schema.hours, [
        hour_row(name, T0 + h * HOUR, _value(name, h), _unit(name, h), created, h % 7 != 0)
        for name in CHANNELS for h in range(HOURS)])
    h = schema.hours.c
    channel, hour, value = CORRECTED
    original = db.fetch(select(schema.hours).where(h.channel == channel,
                                                   h.ts == T0 + hour * HOUR))[0]
    sub = {"unit": "ppm", "flag": "S", "method": METHOD, "period_kind": "missing",
           "period_hours": 1, "capture_rate": 0.9, "source_hours": "[]", "created_at": created}
    audit_id = audit(db, created, "li", "correction.manual", channel, "corrected")
    with db.transaction() as conn:
        conn.execute(insert(schema.hours), [{
            **{k: getattr(original, k) for k in ("channel", "ts", "minimum", "maximum",
                                                 "n_valid", "n_expected", "flag", "unit")},
            "value": value, "reason": "corrected", "created_at": created, "revision": 1,
            "supersedes": original.id, "audit_id": audit_id}])
        for (name, hour), current in SUBSTITUTED.items():
            at = T0 + hour * HOUR
            first = conn.execute(insert(schema.substitutions), [
                {**sub, "channel": name, "ts": at, "period_start": at, "value": current - 1}])
            conn.execute(insert(schema.substitutions), [
                {**sub, "channel": name, "ts": at, "period_start": at, "value": current,
                 "revision": 1, "supersedes": first.inserted_primary_key[0],
                 "audit_id": audit_id}])
    chain.seal_due(db, T0 + SEALED_THROUGH * HOUR, sealed_at=created)


@dataclass
class Served:
    base_url: str
    auth: dict[str, str]


@pytest.fixture
def served(db: Database, tmp_path: Path) -> Iterator[Served]:
    _fill(db)
    token = create_token(db, "registry", "test")
    url = db.engine.url.render_as_string(hide_password=False)
    config = write_toml(tmp_path / "cemsd.toml", {
        "plant": {"id": "columns", "timezone": "Asia/Shanghai"},
        "storage": {"state_dir": str(tmp_path / "state"), "url": url},
        "buses": [], "devices": [], "api": {"default_page_size": 20, "max_page_size": 40}})
    port = free_port()
    process = serve_process(config, port)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, process)
        yield Served(base_url, {"Authorization": f"Bearer {token}"})
    finally:
        process.terminate()
        process.wait(timeout=20)


def walk(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paged list."""
    items: list[dict[str, Any]] = []
    while True:
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        if body["next_cursor"] is None:
            return items
        params["cursor"] = body["next_cursor"]


def _epoch(utc_text: str) -> int:
    moment = datetime.strptime(utc_text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(moment.timestamp())


def assert_columns_match_hours(client: httpx.Client, span: dict[str, str]) -> dict[str, Any]:
    """The columnar answer says what /v1/hours says, hour by hour, each seal number names
    that hour in /v1/chain/links, and the compact layout decodes to it. Returns the
    columnar answer."""
    response = client.get("/v1/hours/columns", params=span)
    assert response.status_code == 200, response.text
    answer = response.json()
    rows = walk(client, "/v1/hours", limit=40, **span)
    links = {link["seq"]: link for link in walk(client, "/v1/chain/links", limit=40)}
    assert answer["timezone"] == "Asia/Shanghai"
    names = [c["channel"] for c in answer["channels"]]
    assert names == sorted({row["channel"] for row in rows})
    for columns in answer["channels"]:
        mine = sorted((r for r in rows if r["channel"] == columns["channel"]),
                      key=lambda r: r["start_utc"])
        arrays = {key: value for key, value in columns.items() if isinstance(value, list)}
        assert {len(a) for a in arrays.values()} == {len(mine)}
        assert columns["unit"] == mine[-1]["unit"]
        units = columns["units"] or [columns["unit"]] * len(mine)
        assert units == [row["unit"] for row in mine]
        for i, row in enumerate(mine):
            sub, seal = row["substitute"], row["seal"]
            assert columns["start_epoch"][i] == _epoch(row["start_utc"])
            assert columns["value"][i] == row["value"]
            assert columns["flag"][i] == row["flag"]
            assert columns["n_valid"][i] == row["n_valid"]
            assert columns["revision"][i] == row["revision"]
            assert columns["substitute_value"][i] == (sub and sub["value"])
            assert columns["substitute_method"][i] == (sub and sub["method"])
            assert columns["seal_seq"][i] == (seal and seal["seq"])
            if seal is not None:
                link = links[seal["seq"]]
                assert (link["record_table"], link["record_id"]) == ("hours", row["id"])
                assert link["record_hash"] == seal["record_hash"]
    compact = client.get("/v1/hours/columns", params={**span, "layout": "compact"})
    assert decode(compact.json()) == answer  # the compact layout says the same
    return answer


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base_url, headers=served.auth, timeout=30) as c:
        yield c


def test_columns_say_what_the_hour_rows_say(client: httpx.Client) -> None:
    answer = assert_columns_match_hours(client, SPAN)
    assert (answer["from_epoch"], answer["to_epoch"]) == (T0, T0 + HOURS * HOUR)
    by_name = {c["channel"]: c for c in answer["channels"]}
    assert list(by_name) == list(CHANNELS)
    for name in CHANNELS:
        columns = by_name[name]
        units = [_unit(name, h) for h in range(HOURS)]
        assert columns["unit"] == units[-1]
        assert columns["units"] == (units if len(set(units)) > 1 else None)
        assert columns["start_epoch"] == [int(T0 + h * HOUR) for h in range(HOURS)]
        expected = [_value(name, h) for h in range(HOURS)]
        if name == CORRECTED[0]:
            expected[CORRECTED[1]] = CORRECTED[2]
        assert columns["value"] == [None if v is None or math.isnan(v) else v for v in expected]
        assert columns["revision"] == [int((name, h) == CORRECTED[:2]) for h in range(HOURS)]
        assert columns["flag"] == ["B" if h % 7 == 0 else "N" for h in range(HOURS)]
        assert columns["n_valid"] == [20 if h % 7 == 0 else 60 for h in range(HOURS)]
        assert columns["substitute_value"] == [SUBSTITUTED.get((name, h)) for h in range(HOURS)]
        assert columns["substitute_method"] == [
            METHOD if (name, h) in SUBSTITUTED else None for h in range(HOURS)]
        sealed = [s is not None for s in columns["seal_seq"]]
        assert sealed == [h <= SEALED_THROUGH for h in range(HOURS)]


def test_a_channel_filter_and_an_empty_span(client: httpx.Client) -> None:
    response = client.get("/v1/hours/columns", params={**SPAN, "channel": "b.flow"})
    assert [c["channel"] for c in response.json()["channels"]] == ["b.flow"]
    empty = client.get("/v1/hours/columns", params={"from": "2027-01-01", "to": "2027-02-01"})
    assert empty.status_code == 200 and empty.json()["channels"] == []


def test_a_kept_sealed_day_gives_the_same_bytes(client: httpx.Client, db: Database) -> None:
    cold = client.get("/v1/hours/columns", params=SPAN)
    k = schema.hour_column_days.c
    march_1 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())
    assert set(db.fetch(select(k.channel, k.day))) == {(name, march_1) for name in CHANNELS}
    warm = assert_columns_match_hours(client, SPAN)  # with the kept day: what /v1/hours says
    t1 = T0 + HOURS * HOUR
    head = {"timezone": "Asia/Shanghai", "from_epoch": T0, "to_epoch": t1}
    expected = (pydantic_core.to_json(head)[:-1] + b',"channels":[' + b",".join(
        reference(db, T0, t1, name) for name in sorted(CHANNELS)) + b"]}")
    assert cold.content == expected
    assert client.get("/v1/hours/columns", params=SPAN).content == expected
    assert warm == json.loads(expected)


def test_the_token_is_required(served: Served) -> None:
    url = f"{served.base_url}/v1/hours/columns"
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = httpx.get(url, params=SPAN, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


BAD_SPANS = [
    ({"from": "2026-01-01", "to": "2027-01-03"}, "at most 366 days"),
    ({"from": "2026-01-01T00:00Z", "to": "2027-01-02T00:00:01Z"}, "at most 366 days"),
    ({"from": "2026-01-01"}, "`from` and `to` are required"),
    ({"to": "2026-01-01"}, "`from` and `to` are required"),
    ({}, "`from` and `to` are required"),
    ({"from": "2026-02-01", "to": "2026-01-01"}, "`from` is after `to`"),
    ({"from": "yesterday", "to": "2026-01-01"}, "`from`"),
    ({**SPAN, "channel": "no.such"}, "unknown channel(s) no.such"),
]


def test_a_span_over_the_limit_or_unreadable_is_a_clear_400(client: httpx.Client) -> None:
    for params, says in BAD_SPANS:
        response = client.get("/v1/hours/columns", params=params)
        assert response.status_code == 400, (params, response.text)
        assert says in response.json()["detail"], params


def test_a_whole_leap_year_is_within_the_limit(client: httpx.Client) -> None:
    response = client.get("/v1/hours/columns",
                          params={"from": "2028-01-01T00:00Z", "to": "2029-01-01T00:00Z"})
    assert response.status_code == 200, response.text
    answer = json.loads(response.content)
    assert answer["to_epoch"] - answer["from_epoch"] == 366 * 86400


def test_the_compact_layout_decodes_to_the_default_answer_and_a_bad_one_is_a_422(
        client: httpx.Client) -> None:
    """Cold (built from the rows, keeping the sealed day) and warm (from the kept day), with
    a corrected hour, substitutions, a unit change, an unsealed tail and UTC day boundaries
    (absent hours: tests/test_sealed_days.py)."""
    for params in ({"from": "2026-03-01T05:00", "to": "2026-03-02T11:00"},
                   {**SPAN, "channel": "b.flow"}, SPAN):
        for _ in range(2):
            default = client.get("/v1/hours/columns", params=params)
            compact = client.get("/v1/hours/columns", params={**params, "layout": "compact"})
            assert compact.status_code == 200, compact.text
            answer = compact.json()
            assert answer["layout"] == "compact"
            assert decode(answer) == default.json()
            # what the fleet's route encodes from a whole answer is the edge's compact layout
            assert [encode_channel(c) for c in default.json()["channels"]] == answer["channels"]
            assert len(compact.content) < len(default.content)
    flow = next(c for c in answer["channels"] if c["channel"] == "b.flow")
    assert flow["units"] is not None and len(flow["start_epoch"]) == 3 * 3  # runs per UTC day
    # an unknown layout is a clear error (same server: one fewer to start)
    response = client.get("/v1/hours/columns", params={**SPAN, "layout": "binary"})
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["query", "layout"] and "'compact'" in error["msg"]
