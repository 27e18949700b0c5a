"""`cemsd collect`: the edge boxes' messages from the broker into the fleet database.

- One MQTT session with a fixed client id and clean session off, subscribed with QoS 1:
  while the collector is down the broker queues every plant's messages for it.
- A message is acknowledged (PUBACK) only after the transaction holding it committed, so
  a crash or a database failure loses nothing: the broker delivers the unacknowledged
  messages again on the next connection, and the inserts are idempotent. aiomqtt 2.x
  acknowledges inside paho's callback; paho's `manual_ack` defers it (`_manual_acks`).
- Messages are taken in batches (`batch_size`, or whatever came within `batch_seconds`
  until a pause of `batch_idle_seconds`), one transaction each, in the order the broker
  delivered them.
- A database or broker failure ends the connection; it is opened again with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cemsd.chain import utc_text
from cemsd.errors import StorageError
from cemsd.fleet.messages import Record, parse, subscriptions
from cemsd.fleet.settings import Collector as CollectorSettings
from cemsd.fleet.store import FleetStore, Ingested
from cemsd.fleet.witness import Alarm

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger(__name__)

QOS = 1
AUDIT_IDLE_SECONDS = 1.0  # the record audit's pause when nothing waits


class Collector:
    def __init__(self, settings: CollectorSettings, store: FleetStore,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.counts: Counter[str] = Counter()  # messages, hours, duplicates, conflicts, ...
        self.connected = False
        self.lag: dict[str, float] = {}  # plant: seconds from an hour's write to its commit
        self._stopping = asyncio.Event()
        # set while the stream is caught up (the last batch was not full): the record audit
        # waits during a back-fill, so the backlog is stored first
        self._caught_up = asyncio.Event()
        self._caught_up.set()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def run(self) -> None:
        """Until stop(): collect, and audit the records the links seal behind it."""
        audit = asyncio.create_task(self._audit_forever(), name="record-audit")
        try:
            await self._collect_forever()
        finally:
            audit.cancel()
            await asyncio.gather(audit, return_exceptions=True)

    async def _audit_forever(self) -> None:
        """The witness's record audit (witness.audit_records), behind ingest: it pauses
        while a backlog of messages arrives (full batches) and catches up after."""
        while not self._stopping.is_set():
            await self._caught_up.wait()
            try:
                checked, alarms = await asyncio.to_thread(self.store.audit_records, self.now())
            except StorageError as exc:
                log.error("witness: record audit failed", extra={"error": str(exc)})
                checked, alarms = 0, []
            self.counts.update(records_checked=checked, alarms=len(alarms))
            _log_alarms(alarms)
            if not checked:
                await self._pause(AUDIT_IDLE_SECONDS)

    async def _collect_forever(self) -> None:
        """Connect, subscribe, collect; reconnect with back-off."""
        import aiomqtt

        delay = 1.0
        while not self._stopping.is_set():
            try:
                async with self._client() as client:
                    await client.subscribe([(topic, QOS) for topic in
                                            subscriptions(self.settings.topic_root)])
                    self.connected, delay = True, 1.0
                    log.info("collector connected", extra={
                        "broker": f"{self.settings.broker.host}:{self.settings.broker.port}",
                        "client_id": self.settings.broker.client_id})
                    await self._collect(client)
                    return
            except aiomqtt.MqttError as exc:
                log.warning("collector: broker connection lost", extra={"error": str(exc)})
            except StorageError as exc:
                log.error("collector: database unavailable; messages stay with the broker",
                          extra={"error": str(exc)})
            except Exception:  # a fault of ours must not end collection for good
                log.exception("collector failed; unacknowledged messages come again")
            finally:
                self.connected = False
            await self._pause(delay)
            delay = min(delay * 2, self.settings.broker.backoff_max)

    def stop(self) -> None:
        self._stopping.set()
        self._caught_up.set()  # an audit step waiting for it ends

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _client(self) -> aiomqtt.Client:
        import aiomqtt

        broker = self.settings.broker
        client = aiomqtt.Client(broker.host, broker.port, identifier=broker.client_id,
                                username=broker.username, password=broker.password(),
                                clean_session=False, keepalive=broker.keepalive)
        _manual_acks(client)
        return client

    async def _collect(self, client: aiomqtt.Client) -> None:
        messages = aiter(client.messages)
        stopping = asyncio.ensure_future(self._stopping.wait())
        # The pending read is carried over from batch to batch, never cancelled: a read
        # cancelled just as it took a message from aiomqtt's queue would lose the message.
        pending: asyncio.Future[Any] | None = None
        try:
            while not self._stopping.is_set():
                batch, pending = await self._next_batch(client, messages, stopping, pending)
                if len(batch) < self.settings.batch_size:
                    self._caught_up.set()
                else:
                    self._caught_up.clear()
                if batch:
                    await self._store(client, batch)
        finally:
            for task in (stopping, pending):
                if task is not None:
                    task.cancel()

    async def _next_batch(self, client: aiomqtt.Client, messages: Any,
                          stopping: asyncio.Future[Any],
                          pending: asyncio.Future[Any] | None
                          ) -> tuple[list[aiomqtt.Message], asyncio.Future[Any] | None]:
        """The first message whenever it comes, then whatever follows within batch_seconds
        up to batch_size, each within batch_idle_seconds of the one before (a pause: the
        broker's in-flight window is full, or the stream is idle: commit now, not at the
        deadline); and the read still pending."""
        batch: list[aiomqtt.Message] = []
        loop = asyncio.get_running_loop()
        deadline = None
        idle = self.settings.batch_idle_seconds
        while len(batch) < self.settings.batch_size:
            timeout = None if deadline is None else \
                max(0.0, min(deadline - loop.time(), idle))
            pending = pending or asyncio.ensure_future(anext(messages))
            done, _ = await asyncio.wait({pending, stopping}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if pending not in done:
                return batch, pending
            batch.append(pending.result())
            pending = None
            batch += _take_queued(client, self.settings.batch_size - len(batch))
            deadline = deadline or loop.time() + self.settings.batch_seconds
        return batch, pending

    async def _store(self, client: aiomqtt.Client, batch: list[aiomqtt.Message]) -> None:
        raw = [(str(m.topic), _payload(m.payload)) for m in batch]
        # parsed beside the insert, off the event loop: the loop keeps reading the broker
        records, done = await asyncio.to_thread(self._parse_and_ingest, raw)
        for message in batch:  # committed: now the broker may forget them
            if message.qos > 0:
                client._client.ack(message.mid, message.qos)
        self._account(records, done)

    def _parse_and_ingest(self, raw: list[tuple[str, bytes]]) -> tuple[list[Record], Ingested]:
        records = [parse(topic, payload) for topic, payload in raw]
        return records, self.store.ingest(records, self.now())

    def _account(self, records: list[Record], done: Ingested) -> None:
        self.counts.update(messages=len(records), hours=done.hours, events=done.events,
                           duplicates=done.duplicates, links=done.links, heads=done.heads,
                           conflicts=len(done.conflicts), alarms=len(done.alarms),
                           rejected=len(done.rejected))
        now = self.clock()
        for record in records:
            row = getattr(record, "row", None)
            if row is not None:
                self.lag[record.plant] = now - row["created_at"].timestamp()  # type: ignore[union-attr]
        for rejected in done.rejected:
            log.error("collector: message refused", extra={"topic": rejected.topic,
                                                            "why": rejected.why})
        for conflict in done.conflicts:
            log.error("collector: conflicting record kept apart (the first stays)", extra={
                "plant": conflict.plant, "record": conflict.record, "key": conflict.key,
                "stored": _loggable(conflict.stored), "received": _loggable(conflict.received)})
        _log_alarms(done.alarms)


def _log_alarms(alarms: list[Alarm]) -> None:
    for alarm in alarms:
        log.error(f"witness: {alarm.problem}", extra={
            "plant": alarm.plant, "seq": alarm.seq, "detail": alarm.detail})


def _manual_acks(client: aiomqtt.Client) -> None:
    """PUBACK only once stored: paho's manual_ack, set on the client aiomqtt wraps (aiomqtt
    2.x has no parameter for it; paho's `ack(mid, qos)` is public)."""
    client._client.manual_ack_set(True)


def _take_queued(client: aiomqtt.Client, limit: int) -> list[aiomqtt.Message]:
    """Up to `limit` messages already received, without a wait (a task) per message: a
    backlog arrives at thousands a second. From aiomqtt's own queue, which its iterator
    reads (no public way to take several)."""
    queue = client._queue
    return [queue.get_nowait() for _ in range(min(limit, queue.qsize()))]


def _payload(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _loggable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: utc_text(v) if isinstance(v, datetime) else v for k, v in values.items()}
