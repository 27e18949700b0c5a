"""MQTT output: minute values, hourly records and events, store-and-forward through the
database, on one topic scheme (docs/MQTT.md).

- Closed periods and events become rows of the outbox (cemsd/outbox.py) in the same
  moment they are known; the broker being down changes nothing upstream.
- One sender task owns the connection. aiomqtt does not reconnect by itself, so the
  `async with Client` block sits in a loop with exponential back-off (wall clock).
- On every successful connect the retained status "online" goes out first, then the
  outbox drains in id order. The broker publishes the retained last will "offline" when
  the connection dies without a goodbye; a clean stop publishes "offline" itself.
- A row is marked sent only after its PUBACK. A connection lost between publish and
  PUBACK means the row goes out again: QoS 1, at least once; the id in every payload lets
  a consumer drop the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cemsd import __version__
from cemsd.chain import utc_text
from cemsd.errors import StorageError
from cemsd.outbox import Outbox, OutboxMessage, PendingMessage
from cemsd.periods import HOUR, MINUTE, local_label, utc_label
from cemsd.settings.mqtt import MqttConfig, resolve_path, topic_prefix
from cemsd.store import schema

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    import aiomqtt

    from cemsd.closer import Rows
    from cemsd.config import Config
    from cemsd.daemon import Daemon
    from cemsd.store.database import Database
    from cemsd.store.writer import Store

log = logging.getLogger(__name__)

QOS = 1  # at least once: the outbox id makes duplicates detectable
# Stopping stays within the daemon's 10 s deadline per component: drain, then goodbye.
DRAIN_ON_STOP_SECONDS = 5.0
GOODBYE_SECONDS = 2.0
_TOPIC_LEVEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
PERIOD_SECONDS = {"minute": MINUTE, "hour": HOUR}
REFUSED_CREDENTIALS = frozenset({4, 5, 0x86, 0x87})


def read_password(settings: MqttConfig, config: Config) -> str | None:
    if settings.password is not None:
        return settings.password.get_secret_value()
    if settings.password_env is not None:
        return os.environ[settings.password_env]
    if settings.password_file is not None:
        return resolve_path(settings.password_file, config).read_text(encoding="utf-8").strip()
    return None


# --- the topic scheme and payloads (docs/MQTT.md) --------------------------------------------

CHAIN_HEAD_EVENT = "chain.head"  # cemsd/sealing.py publishes it after each sealing pass
CHAIN_LINKS_EVENT = "chain.links"  # the links a sealing pass added, just before its head


class Topics:
    def __init__(self, prefix: str, plant_id: str, tz: ZoneInfo) -> None:
        self.prefix = prefix
        self.plant_id = plant_id
        self.tz = tz
        self.status = f"{prefix}/status"

    def period_messages(self, kind: str, rows: Rows) -> list[OutboxMessage]:
        """One message per channel and period: `<prefix>/<minute|hour>/<channel>`."""
        return [OutboxMessage(f"{self.prefix}/{kind}/{row['channel']}",
                              _json(self._period_body(kind, row)),
                              period=kind, period_start=row["ts"])
                for row in rows]

    def _period_body(self, kind: str, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "plant": self.plant_id,
            "channel": row["channel"],
            "period": kind,
            "start": utc_label(row["ts"]),
            "end": utc_label(row["ts"] + PERIOD_SECONDS[kind]),
            "local_start": local_label(row["ts"], self.tz),
            "value": row["value"],
            "minimum": row["minimum"],
            "maximum": row["maximum"],
            "unit": row["unit"],
            "flag": row["flag"],
            "valid": row["flag"] == "N",
            "n_valid": row["n_valid"],
            "n_expected": row["n_expected"],
            "reason": row["reason"],
            "created_at": utc_label(row["created_at"]),
            # what a central witness needs to recompute the record's seal (cemsd/fleet/):
            # the revision fields and the write time as the database keeps it (microseconds)
            "revision": row.get("revision", 0),
            "supersedes": row.get("supersedes"),
            "audit_id": row.get("audit_id"),
            "written_at": utc_text(_utc(row["created_at"])),
        }

    def event_message(self, kind: str, payload: dict[str, Any], now: float) -> OutboxMessage:
        """`<prefix>/events/<kind>`; a kind that is not a safe topic level is escaped."""
        level = _TOPIC_LEVEL_UNSAFE.sub("_", kind) or "_"
        return OutboxMessage(f"{self.prefix}/events/{level}", _json({
            "plant": self.plant_id, "kind": kind, "at": utc_label(now), "data": payload}))

    def chain_head_message(self, head: dict[str, Any]) -> OutboxMessage:
        """`<prefix>/chain/head`, retained: the newest chain head {seq, hash, time}, kept by
        the broker where a database writer cannot reach back (docs/TAMPER-EVIDENCE.md)."""
        return OutboxMessage(f"{self.prefix}/chain/head", _json({"plant": self.plant_id, **head}),
                             retain=True)

    def status_payload(self, state: str, now: float | None = None, reason: str = "") -> str:
        body: dict[str, Any] = {"state": state, "plant": self.plant_id}
        if state == "online":
            body["version"] = __version__
        if reason:
            body["reason"] = reason
        if now is not None:
            body["at"] = utc_label(now)
        return _json(body)


PRODUCTION_EVENT = "production"  # days imported by `cemsd production import`


def queue_event(config: Config, db: Database, kind: str, payload: dict[str, Any], now: float
                ) -> None:
    """An event known to a command, not the daemon: into the outbox, which the daemon's
    sender drains when it runs (nothing without [mqtt])."""
    if config.mqtt is None:
        return
    plant = config.plant
    topics = Topics(topic_prefix(config.mqtt, plant.id), plant.id, plant.tz)
    Outbox(db).append([topics.event_message(kind, payload, now)], now)


def _utc(moment: float | datetime) -> datetime:
    """A period's write time as the UTC column stores it (microseconds, epoch rounding)."""
    if isinstance(moment, datetime):
        return moment.astimezone(UTC)
    return datetime.fromtimestamp(moment, UTC)


def _json(body: dict[str, Any]) -> str:
    """Strict JSON. An event payload with a datetime or a Path is written as text, a NaN
    as null: a value JSON cannot carry must not lose the message."""
    try:
        return json.dumps(body, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        return _json(_without_nan(body))


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(v) for v in value]
    return value


def with_message_id(message: PendingMessage) -> str:
    """The stored payload with the outbox id first, so a consumer can drop duplicates."""
    return _json({"id": message.id, **json.loads(message.payload)})


# --- the component --------------------------------------------------------------------------


class MqttPublisher:
    """Component: outbox rows from closed periods and events; one sender task."""

    name = "mqtt"

    def __init__(self, config: Config, settings: MqttConfig) -> None:
        self.config = config
        self.settings = settings
        self.topics = Topics(topic_prefix(settings, config.plant.id), config.plant.id,
                             config.plant.tz)
        self.connected = False
        self.refused: str | None = None  # the broker's refusal of our credentials, if any
        self.acknowledged = 0  # messages the broker acknowledged in this run
        self.connections = 0
        self._stopping = False
        self._head: dict[str, Any] | None = None  # the newest chain head this run published
        self._stop_deadline = float("inf")
        self._wakeup = asyncio.Event()
        self._stopped = asyncio.Event()
        self._acked: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._daemon: Daemon | None = None
        self._password: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, daemon: Daemon) -> None:
        assert daemon.store is not None
        self._daemon = daemon
        self.outbox = Outbox(daemon.store.db)
        self._password = read_password(self.settings, self.config)
        daemon.period_listeners.append(self.on_period)
        daemon.event_listeners.append(self.on_event)
        await self._add_missing_periods()
        backlog = await self.store.call(self.outbox.unsent_count)
        log.info("mqtt output", extra={"broker": f"{self.settings.host}:"
                                                  f"{self.settings.broker_port}",
                                        "topics": self.topics.prefix, "unsent": backlog})
        self._task = daemon.supervisor.spawn("mqtt", self._run)

    async def stop(self) -> None:
        """Drain what the broker can take within DRAIN_ON_STOP_SECONDS, say offline, close."""
        self._stopping = True
        self._stop_deadline = asyncio.get_running_loop().time() + DRAIN_ON_STOP_SECONDS
        self._wakeup.set()
        self._stopped.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task),
                                   DRAIN_ON_STOP_SECONDS + GOODBYE_SECONDS + 0.5)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._mark_acked()
        unsent = await self.store.call(self.outbox.unsent_count)
        log.info("mqtt output stopped", extra={"acknowledged": self.acknowledged,
                                               "unsent": unsent})

    async def _add_missing_periods(self) -> None:
        """A crash between storing a period and appending its messages (two transactions)
        leaves stored periods without messages: add them, oldest first. Only after a
        period message exists: enabling MQTT on an old database sends no history."""
        for kind, table in (("minute", schema.minutes), ("hour", schema.hours)):
            last = await self.store.call(self.outbox.last_period_start, kind)
            if last is None:
                continue
            rows = await self.store.call(self.outbox.periods_after, table, last)
            if rows:
                log.warning("mqtt: adding messages of periods stored before a crash",
                            extra={"period": kind, "rows": len(rows)})
                await self._append(self.topics.period_messages(kind, rows))

    @property
    def store(self) -> Store:
        assert self._daemon is not None and self._daemon.store is not None
        return self._daemon.store

    def _now(self) -> float:
        assert self._daemon is not None
        return self._daemon.clock.now()

    # --- producing: closed periods and events become outbox rows ------------------------------

    async def on_period(self, kind: str, rows: Rows) -> None:
        await self._append(self.topics.period_messages(kind, rows))
        if kind == "hour":
            cutoff = self._now() - self.settings.retention_days * 86400
            pruned = await self.store.call(self.outbox.prune_sent, cutoff)
            if pruned:
                log.debug("pruned sent mqtt messages", extra={"rows": pruned})

    async def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == CHAIN_HEAD_EVENT:
            self._head = payload
            await self._append([self.topics.chain_head_message(payload)])
            return
        await self._append([self.topics.event_message(kind, payload, self._now())])

    async def _append(self, messages: Sequence[OutboxMessage]) -> None:
        await self.store.call(self.outbox.append, messages, self._now())
        self._wakeup.set()

    # --- sending: one connection at a time, back-off between attempts -------------------------

    async def _run(self) -> None:
        # Imported here, not at the top: cemsd.config imports this module for [mqtt], and a
        # daemon without an MQTT output should not load the client (memory, start-up time).
        import aiomqtt

        delay = self.settings.backoff_initial
        lost_since: float | None = None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                async with self._client() as client:
                    self.connections += 1
                    log.info("mqtt connected", extra={
                        "broker": self.settings.host, "connection": self.connections,
                        "down_for_s": round(loop.time() - lost_since, 1) if lost_since else 0})
                    lost_since, delay = None, self.settings.backoff_initial
                    self.refused = None
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                if _refused_credentials(exc):
                    self.refused, lost_since = str(exc), lost_since or loop.time()
                    delay = self.settings.refused_backoff
                    log.error("mqtt broker refused the credentials; retrying in "
                              f"{delay:g} s", extra={"broker": self.settings.host,
                                                     "username": self.settings.username,
                                                     "error": str(exc)})
                elif lost_since is None:
                    lost_since = loop.time()
                    log.warning("mqtt connection lost" if self.connected else
                                "mqtt broker unreachable", extra={"error": str(exc)})
            except StorageError as exc:  # the outbox cannot be read: reconnect after a pause
                lost_since = lost_since or loop.time()
                log.error("mqtt outbox unavailable", extra={"error": str(exc)})
            except Exception:  # a fault of ours must not end the output for good
                lost_since = lost_since or loop.time()
                log.exception("mqtt output failed, retrying")
            finally:
                self.connected = False
                with contextlib.suppress(StorageError):  # kept; recorded on the next try
                    await self._mark_acked()
            if self._stopping:
                break
            await self._pause(delay)
            if self.refused is None:
                delay = min(delay * 2, self.settings.backoff_max)

    def _client(self) -> aiomqtt.Client:
        import aiomqtt

        s = self.settings
        tls = None
        if s.tls is not None:
            files = {k: str(resolve_path(p, self.config)) if p else None
                     for k, p in (("ca_certs", s.tls.ca_file), ("certfile", s.tls.cert_file),
                                  ("keyfile", s.tls.key_file))}
            tls = aiomqtt.TLSParameters(**files)
        client = aiomqtt.Client(
            s.host, s.broker_port,
            username=s.username, password=self._password,
            identifier=s.client_id or f"cemsd-{self.config.plant.id}",
            will=aiomqtt.Will(self.topics.status,
                              self.topics.status_payload("offline", reason="connection lost"),
                              qos=QOS, retain=True),
            clean_session=True,  # the outbox, not the session, carries what is unsent
            keepalive=s.keepalive, timeout=s.connect_timeout,
            tls_params=tls, tls_insecure=s.tls.insecure if s.tls else None,
        )
        client.pending_calls_threshold = s.batch_size + 1  # a whole batch is in flight
        return client

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Online first, then the outbox until stopped or the connection is lost."""
        await client.publish(self.topics.status, self.topics.status_payload("online",
                             self._now()), qos=QOS, retain=True,
                             timeout=self.settings.publish_timeout)
        await self._publish_head(client)
        self.connected = True
        lost = asyncio.create_task(_until_disconnected(client))
        drain = asyncio.create_task(self._drain(client))
        try:
            await asyncio.wait({lost, drain}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (lost, drain):
                task.cancel()
            await asyncio.gather(lost, drain, return_exceptions=True)
        if not drain.cancelled() and drain.exception() is None:  # stopping: say goodbye
            await self._publish_head(client)
            await client.publish(self.topics.status, self.topics.status_payload(
                "offline", self._now(), reason="stopped"), qos=QOS, retain=True,
                timeout=min(self.settings.publish_timeout, GOODBYE_SECONDS))
            return
        for task in (drain, lost):
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _publish_head(self, client: aiomqtt.Client) -> None:
        """The newest chain head, retained, straight after "online" and before "offline":
        a newcomer sees it even while a backlog of periods (which carries it too, in order)
        is still on its way."""
        if self._head is None:
            return
        message = self.topics.chain_head_message(self._head)
        await client.publish(message.topic, message.payload, qos=QOS, retain=True,
                             timeout=min(self.settings.publish_timeout, GOODBYE_SECONDS))

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish unsent rows in id order; return once stopping and empty (or late)."""
        loop = asyncio.get_running_loop()
        while not (self._stopping and loop.time() >= self._stop_deadline):
            self._wakeup.clear()
            batch = await self.store.call(self.outbox.next_batch, self.settings.batch_size)
            if not batch:
                if self._stopping:
                    return
                await self._wakeup.wait()
                continue
            await self._publish_batch(client, batch)
            await self._mark_acked()

    async def _publish_batch(self, client: aiomqtt.Client, batch: list[PendingMessage]) -> None:
        """Hand the whole batch to the client in order (paho keeps the order and its own
        in-flight window) and collect the PUBACKs in the same order: only an acknowledged
        prefix is ever marked sent, so a resent row cannot overtake a later one."""
        timeout = self.settings.publish_timeout
        publishes = [
            asyncio.ensure_future(client.publish(m.topic, with_message_id(m), qos=m.qos,
                                                 retain=m.retain, timeout=timeout))
            for m in batch
        ]
        try:
            for message, publish in zip(batch, publishes, strict=True):
                await publish
                self._acked.append(message.id)
        finally:
            for publish in publishes:
                publish.cancel()
            await asyncio.gather(*publishes, return_exceptions=True)

    async def _mark_acked(self) -> None:
        if not self._acked:
            return
        ids, self._acked = self._acked, []
        try:
            await self.store.call(self.outbox.mark_sent, ids, self._now())
        except StorageError:
            self._acked = ids + self._acked  # sent, but not recorded yet: try again later
            raise
        self.acknowledged += len(ids)

    async def _pause(self, seconds: float) -> None:
        """Back-off in wall time; returns early when the daemon stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)


def _refused_credentials(exc: Exception) -> bool:
    """CONNACK 'bad user name or password' or 'not authorized' (MQTT 3.1.1 codes 4 and 5,
    MQTT 5 reason codes 0x86 and 0x87): nothing a reconnect alone will change."""
    rc = getattr(exc, "rc", None)
    return getattr(rc, "value", rc) in REFUSED_CREDENTIALS


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Raises MqttError when the connection is lost (nothing is subscribed, so no message
    ever arrives: aiomqtt's message iterator is its public way of noticing a disconnect)."""
    async for _ in client.messages:
        pass
