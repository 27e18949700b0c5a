"""A synthetic fleet for the collector's tests and bench: plants whose hours, links and
heads are what an edge box publishes (the edge's own Topics and chain formulas build
them), sent straight to a real broker; and the collector run in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import multiprocessing
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
from sqlalchemy import func, select

from cemsd import chain
from cemsd.chainhead import head_pin
from cemsd.config import Config
from cemsd.fleet import schema as fleet_schema
from cemsd.fleet.collector import Collector
from cemsd.fleet.settings import Collector as CollectorSettings
from cemsd.fleet.store import FleetStore
from cemsd.mqtt import CHAIN_LINKS_EVENT, Topics
from cemsd.sealing import LINKS_PER_MESSAGE
from cemsd.store import schema as edge_schema
from helpers import database
from mqtt_helpers import wait_until

START = datetime(2026, 6, 1, tzinfo=UTC).timestamp()  # a month boundary: two partitions
TZ = ZoneInfo("Asia/Shanghai")
Message = tuple[str, str, bool]  # topic, payload, retain
# a central broker for the collector: many messages in flight to it (it acks after commit),
# two batches' worth as config/mosquitto/central.conf: one arrives while one is stored
BROKER = ("allow_anonymous true", "max_inflight_messages 4000")


@dataclass
class SyntheticPlant:
    """One edge box: `hours()` closes hours (their messages), `seal()` chains them (links
    and head messages), each message with the outbox id the edge would give it."""

    plant: str
    channels: int = 8
    next_id: int = 1
    rows: list[dict[str, Any]] = field(default_factory=list)  # every hour closed
    links: list[SimpleNamespace] = field(default_factory=list)
    sealed: int = 0  # rows[:sealed] are chained

    def __post_init__(self) -> None:
        self.topics = Topics(f"cemsd/{self.plant}", self.plant, TZ)

    def hours(self, first: int, count: int, value: float = 10.0) -> list[Message]:
        """Hours first..first+count-1 (hour index from START) of every channel."""
        rows = [self.hour_row(h, c, value) for h in range(first, first + count)
                for c in range(self.channels)]
        self.rows += rows
        return [self._with_id(m.topic, m.payload)
                for m in self.topics.period_messages("hour", rows)]

    def hour_row(self, hour: int, channel: int, value: float = 10.0) -> dict[str, Any]:
        ts = START + hour * 3600
        v = value + channel + (hour % 24) / 7
        return {"channel": f"dev-{channel}.n2o", "ts": ts, "value": v, "minimum": v - 1.5,
                "maximum": v + 1.25, "n_valid": 60, "n_expected": 60, "flag": "N",
                "reason": None, "unit": "mg/m3", "created_at": ts + 3600 + 2.123457,
                "revision": 0, "supersedes": None, "audit_id": None}

    def seal(self, rows: list[dict[str, Any]] | None = None) -> list[Message]:
        """Chain the hours not sealed yet (or `rows`); the links and head messages."""
        todo = self.rows[self.sealed:] if rows is None else rows
        self.sealed = len(self.rows)
        new = [self._link(row) for row in todo]
        out = [self._with_id(m.topic, m.payload) for m in (
            self.topics.event_message(CHAIN_LINKS_EVENT, {"links": [
                chain.link_document(ln) for ln in new[i:i + LINKS_PER_MESSAGE]]}, START)
            for i in range(0, len(new), LINKS_PER_MESSAGE))]
        return [*out, self.head()]

    def head(self) -> Message:
        head = self.topics.chain_head_message(head_pin(self.links[-1] if self.links else None)
                                              .as_json())
        topic, payload, _ = self._with_id(head.topic, head.payload)
        return topic, payload, True

    def rebuild_from(self, seq: int, changed: dict[str, Any]) -> list[Message]:
        """What a writer with database access does: change a sealed hour, cut the chain at
        its link and seal it again from there (the edge publishes the new links and head)."""
        index = seq - 1
        self.links = self.links[:index]
        self.rows[index] = {**self.rows[index], **changed}
        return self.seal(self.rows[index:self.sealed])

    def _link(self, row: dict[str, Any]) -> SimpleNamespace:
        record = SimpleNamespace(**{**row, "ts": _utc(row["ts"]),
                                    "created_at": _utc(row["created_at"])})
        minutes = hashlib.sha256(f"{self.plant}{row['channel']}{row['ts']}".encode()).hexdigest()
        record_hash = chain.record_hash(chain.KINDS["hours"], record, 2, minutes)
        prev = self.links[-1].chain_hash if self.links else chain.GENESIS
        link = SimpleNamespace(
            seq=len(self.links) + 1, record_table="hours", record_id=len(self.links) + 1,
            channel=row["channel"], ts=record.ts, form=2, record_hash=record_hash,
            minutes_sha256=minutes, prev_hash=prev, chain_hash=chain.link_hash(prev, record_hash),
            sealed_at=_utc(row["ts"] + 3 * 86400))
        self.links.append(link)
        return link

    def as_plant(self, messages: list[Message], plant: str) -> list[Message]:
        """The same messages as another plant publishes them (its topics, its id in each
        payload): a fleet of copies costs one plant's chain hashes (~0.3 ms an hour)."""
        prefix, mine = f"{self.topics.prefix}/", f'"plant": "{self.plant}"'
        return [(f"cemsd/{plant}/{topic.removeprefix(prefix)}",
                 payload.replace(mine, f'"plant": "{plant}"', 1), retain)
                for topic, payload, retain in messages]

    def _with_id(self, topic: str, payload: str) -> Message:
        body = {"id": self.next_id, **json.loads(payload)}
        self.next_id += 1
        return topic, json.dumps(body), False


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


async def publish(port: int, messages: list[Message], client_id: str) -> None:
    """QoS 1, in order, many in flight (as the edge's sender does); returns once the broker
    acknowledged every message. paho itself, in a thread: aiomqtt's await per message
    costs ~1 ms, which a fleet's month of hours does not afford."""
    await asyncio.to_thread(_publish, port, messages, client_id)


async def publish_fleet(port: int, sent: dict[str, list[Message]]) -> None:
    """Every plant's messages (by client id) at once, each plant its own client, from
    another process: its MQTT work does not share this process's interpreter lock with
    the collector (the edge boxes are other machines)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, _publish_all, port, sent)


def _publish_all(port: int, sent: dict[str, list[Message]]) -> None:
    with ThreadPoolExecutor(len(sent)) as threads:
        for done in [threads.submit(_publish, port, messages, client_id)
                     for client_id, messages in sent.items()]:
            done.result()


def _publish(port: int, messages: list[Message], client_id: str) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        sent = [client.publish(topic, payload, qos=1, retain=retain)
                for topic, payload, retain in messages]
        for info in sent:
            info.wait_for_publish(60)
            if not info.is_published():
                raise TimeoutError(f"{client_id}: message {info.mid} not acknowledged")
    finally:
        client.disconnect()
        client.loop_stop()


def collector_settings(pg_url: str, port: int, **extra: Any) -> CollectorSettings:
    return CollectorSettings.model_validate({
        "database_url": pg_url, "timezone": "Asia/Shanghai",
        "broker": {"host": "127.0.0.1", "port": port, "client_id": "test-collector"},
        **extra})


@contextlib.asynccontextmanager
async def running_collector(settings: CollectorSettings) -> AsyncIterator[Collector]:
    """The collector on this loop until the block ends; subscribed when the block starts."""
    store = FleetStore(settings.database_url)
    await asyncio.to_thread(store.upgrade)
    collector = Collector(settings, store)
    task = asyncio.create_task(collector.run())
    try:
        await wait_until(lambda: collector.connected, 15, "collector subscribed")
        yield collector
    finally:
        collector.stop()
        await asyncio.wait_for(task, 15)
        store.close()


async def until_counted(collector: Collector, kind: str, at_least: int,
                        timeout: float = 20.0) -> None:
    try:
        await wait_until(lambda: collector.counts[kind] >= at_least, timeout, kind)
    except TimeoutError:
        raise AssertionError(f"{kind}: {collector.counts[kind]} of {at_least} within "
                             f"{timeout} s ({dict(collector.counts)})") from None


def count(store: FleetStore, table, **where: str) -> int:  # type: ignore[no-untyped-def]
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    return int(store.db.fetch(query)[0][0])


def edge_events_sent(config: Config, kinds: tuple[str, ...]) -> int:
    """The events of these kinds the edge's outbox sent."""
    edge = database(config)
    try:
        o = edge_schema.mqtt_outbox.c
        return sum(int(edge.fetch(select(func.count()).where(
            o.topic.like(f"%/events/{kind}"), o.sent_at.isnot(None)))[0][0]) for kind in kinds)
    finally:
        edge.close()


def central_events(store: FleetStore, kinds: tuple[str, ...]) -> int:
    """The events of these kinds the collector stored."""
    c = fleet_schema.events.c
    return int(store.db.fetch(select(func.count()).where(c.kind.in_(kinds)))[0][0])
