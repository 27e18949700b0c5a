"""HJ 212-2017 uplink: one daemon component per receiving platform.

Each platform gets its own TCP client, cursors and tasks, so a platform that is down
or slow costs the others nothing. The data logger is the TCP client; the platform
answers uploads and sends its requests on the same connection.

- Uploads: minute (2051), hour (2061) and day (2031) data are sent from the database,
  oldest first, from the platform's durable cursor (cemsd.hj212.store). The closer's
  period events only say "something new is stored". With the A bit set, each message
  waits for a 9014 echoing its QN; after `timeout_s` it is sent again (same QN), up to
  `retries` times (CN 1000: 10 s x 3); then the link counts as down: the connection
  is closed, reopened with exponential back-off, and everything from the cursor on is
  sent again (back-fill). The cursor moves only when a message is acknowledged.
- Real-time data (2011) and the abatement state (2021) are sampled every
  `rtd_interval_s` of the daemon's clock while the link is up; they are never
  back-filled (the platform asks for history with 2051/2061/2031 instead).
- Requests from the platform: history (2051/2061/2031 with BeginTime/EndTime) gets
  9011 QnRtn=1, the data (with the request's QN, no ack requested), then 9012 ExeRtn=1
  (100 when there is no data); 1011 gets the logger's time, 1061 the real-time
  interval, 1000 sets timeout and resends for this connection's life. Another code of
  the standard is refused (QnRtn 2), an unknown code is a CN error (QnRtn 8), a wrong
  PW or MN gets QnRtn 3 or 4. Packets that fail CRC or framing are dropped and counted.

The uplink is not a clock participant: its timeouts and back-off are wall time, and it
waits for simulated time only to sample real-time values. It never holds up acquisition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cemsd import standards_hj212 as p
from cemsd.config import Config
from cemsd.errors import StorageError
from cemsd.flags import Flag
from cemsd.hj212.messages import MessageBuilder, Upload, day_bounds
from cemsd.hj212.packet import (
    FrameDecoder,
    Group,
    Packet,
    PacketError,
    QnSource,
    flag_value,
    format_time,
    parse_time,
    split_packets,
)
from cemsd.hj212.store import PeriodSource, load_cursors, save_cursor
from cemsd.periods import hour_floor, local_label, minute_floor
from cemsd.readings import Reading
from cemsd.settings.hj212 import MAX_SECONDS, Hj212Platform

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)

PERIOD_CNS = (p.Cn.MINUTE_DATA, p.Cn.HOUR_DATA, p.Cn.DAY_DATA)
HISTORY_CNS = frozenset(PERIOD_CNS)
BACKLOG_BATCH = 60  # periods read from the database at a time, per CN
DRAIN_SECONDS = 5.0  # on stop, time given to send what is stored (the daemon allows 10)
READ_CHUNK = 65536
ABATEMENT_RUNNING_ABOVE = 0.5  # the abatement_running channel is a bool: 1 = running


class LinkDown(Exception):
    """The connection to the platform is unusable; the supervisor reconnects."""


@dataclass
class LinkStats:
    connects: int = 0
    uploads: int = 0  # messages delivered (acknowledged, or written without the A bit)
    packets: int = 0  # packets written: parts, resends and replies included
    retransmissions: int = 0  # messages sent again after an acknowledgement timeout
    requests: int = 0  # requests received from the platform
    invalid_received: int = 0  # packets from the platform dropped for CRC or framing


@dataclass(frozen=True)
class UplinkState:
    platform: str
    endpoint: str
    connected: bool
    backlog: int  # stored periods (minutes, hours, days uploaded) not yet acknowledged
    oldest_unacknowledged: float | None  # start of the oldest of them
    last_acknowledged: float | None  # daemon time of the last acknowledgement
    last_error: str | None

    def labels(self, tz: Any) -> dict[str, Any]:
        """For people: times as plant-time labels."""
        def label(t: float | None) -> str | None:
            return None if t is None else local_label(t, tz)
        return {"platform": self.platform, "endpoint": self.endpoint,
                "connected": self.connected, "backlog": self.backlog,
                "oldest_unacknowledged": label(self.oldest_unacknowledged),
                "last_acknowledged": label(self.last_acknowledged),
                "last_error": self.last_error}


class Connection:
    """One TCP connection: writes packets, routes what the platform sends back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_request: Callable[[Connection, Packet], Awaitable[None]],
                 stats: LinkStats) -> None:
        self.reader = reader
        self.writer = writer
        self.stats = stats
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._on_request = on_request
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._read_task = asyncio.create_task(self._read(), name="hj212-read")

    def write(self, packets: Iterable[Packet]) -> None:
        """All packets at once: no other packet can come between the parts."""
        if self.closed.is_set():
            raise LinkDown(self.close_reason)
        data = [packet.encode() for packet in packets]
        self.writer.write(b"".join(data))
        self.stats.packets += len(data)

    async def drain(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.writer.drain(), timeout)
        except TimeoutError:
            raise LinkDown(f"the platform takes no data for {timeout:g} s") from None
        except OSError as exc:
            raise LinkDown(f"write failed: {exc}") from None

    def expect_ack(self, qn: str) -> asyncio.Future[None]:
        """Register before sending, so that an early 9014 is not missed."""
        if qn not in self._acks:
            self._acks[qn] = asyncio.get_running_loop().create_future()
        return self._acks[qn]

    async def acknowledged(self, qn: str, timeout: float) -> bool:
        """True once a 9014 for qn arrives, False after `timeout` seconds."""
        future = self.expect_ack(qn)
        closed = asyncio.create_task(self.closed.wait())
        try:
            await asyncio.wait({future, closed}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if future.done():
            self._acks.pop(qn, None)
            return True
        if self.closed.is_set():
            raise LinkDown(self.close_reason)
        return False

    async def _read(self) -> None:
        decoder = FrameDecoder()
        try:
            while data := await self.reader.read(READ_CHUNK):
                for item in decoder.feed(data):
                    self._dispatch(item)
            self._close("the platform closed the connection")
        except OSError as exc:
            self._close(f"read failed: {exc}")

    def _dispatch(self, item: Packet | PacketError) -> None:
        if isinstance(item, PacketError):
            self.stats.invalid_received += 1
            log.warning("dropped an invalid packet from the platform", extra={"error": str(item)})
            return
        if item.cn == p.Cn.DATA_ACK:
            future = self._acks.get(item.qn)
            if future is not None and not future.done():
                future.set_result(None)
        elif item.cn not in p.REPLY_CNS:
            task = asyncio.create_task(self._on_request(self, item), name=f"hj212-{item.cn}")
            self._tasks.add(task)
            task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("answering a platform request failed", exc_info=task.exception())

    def _close(self, reason: str) -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()

    async def close(self) -> None:
        self._close("closed by cemsd")
        for task in (self._read_task, *self._tasks):
            task.cancel()
        await asyncio.gather(self._read_task, *self._tasks, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


class PlatformUplink:
    """The daemon component for one `[[hj212]]` platform."""

    def __init__(self, config: Config, platform: Hj212Platform) -> None:
        self.platform = platform
        self.name = f"hj212:{platform.name}"
        self.tz = config.plant.tz
        self.timeout_s = platform.timeout_s  # CN 1000 may change these two
        self.retries = platform.retries
        self.stats = LinkStats()
        self.connection: Connection | None = None
        self.cursors: dict[int, float] = {}
        self._period_cns = [cn for cn in PERIOD_CNS if cn in platform.uploads]
        self._backlog: dict[int, deque[Upload]] = {cn: deque() for cn in self._period_cns}
        self._realtime: list[Upload] = []
        self._dirty = True  # the database may hold periods not yet in the backlog
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._stopping = False
        self._down_since: float | None = None
        self._progress = False  # something was delivered on the current connection
        self.last_ack_at: float | None = None  # daemon time of the last acknowledged period
        self.last_error: str | None = None  # why the link is down (while it is)
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, daemon: Daemon) -> None:
        assert daemon.store is not None and daemon.closer is not None
        self.daemon = daemon
        self.store = daemon.store
        self.clock = daemon.clock
        units = {name: meta.unit for name, meta in daemon.closer.series.items()}
        self.builder = MessageBuilder(self.platform, units, self.tz)
        self.source = PeriodSource(self.store, self.builder, self.tz)
        self.qn = QnSource(self.clock.now, self.tz)
        self._state_channels = self._find_state_channels(daemon)
        self.cursors = await self._load_cursors()
        daemon.period_listeners.append(self._on_period)
        self._tasks.append(daemon.supervisor.spawn(self.name, self._supervise))
        if {p.Cn.REALTIME_DATA, p.Cn.ABATEMENT_STATE} & set(self.platform.uploads):
            self._tasks.append(daemon.supervisor.spawn(f"{self.name}:rtd",
                                                       self._sample_realtime))

    async def stop(self) -> None:
        """Give a working link a few seconds to send what is stored, then close."""
        self._stopping = True
        self._realtime.clear()
        if self.connection is not None and self._progress:
            self._dirty = True
            self._idle.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), DRAIN_SECONDS)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.connection is not None:
            await self.connection.close()

    async def _load_cursors(self) -> dict[int, float]:
        """Stored cursors; a platform seen for the first time starts with the periods
        that begin now (it can ask for older ones with a history request)."""
        stored = await self.store.call(load_cursors, self.store.db, self.platform.name)
        now = self.clock.now()
        first = {p.Cn.MINUTE_DATA: minute_floor(now), p.Cn.HOUR_DATA: hour_floor(now, self.tz),
                 p.Cn.DAY_DATA: day_bounds(now, self.tz)[0]}
        cursors = {}
        for cn in self._period_cns:
            if cn not in stored:
                await self.store.call(save_cursor, self.store.db, self.platform.name, cn,
                                      first[cn])
            cursors[cn] = stored.get(cn, first[cn])
        return cursors

    def _find_state_channels(self, daemon: Daemon) -> list[tuple[str, tuple[str, ...], float]]:
        """(device code, its channels, value above which the state is 1) for CN 2021, from
        the platform's abatement unit (the plant's only one when it names none)."""
        units = daemon.config.abatement_units()
        unit = next((u for u in units if u.name == self.platform.unit), units[0])
        states = []
        if self.platform.abatement_code and unit.running:
            states.append((self.platform.abatement_code, (unit.running,),
                           ABATEMENT_RUNNING_ABOVE))
        if self.platform.bypass_code and unit.bypass_channels:
            states.append((self.platform.bypass_code, unit.bypass_channels,
                           self.platform.bypass_open_above))
        return states

    async def _on_period(self, kind: str, rows: list[dict[str, Any]]) -> None:
        self._dirty = True
        self._idle.clear()
        self._wake.set()

    # --- what operators see (metrics, status page, `cemsd status`) -----------------------

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.closed.is_set()

    async def uplink_state(self) -> UplinkState:
        """Connection, backlog (stored periods not yet acknowledged) and its oldest start;
        reads the database through the store."""
        backlog, oldest = 0, None
        for cn in self._period_cns if hasattr(self, "source") else ():  # not started yet
            count, first = await self.source.pending(cn, self.cursors[cn])
            backlog += count
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        return UplinkState(self.platform.name, f"{self.platform.host}:{self.platform.port}",
                           self.connected, backlog, oldest, self.last_ack_at, self.last_error)

    # --- the connection ------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Connect, serve until the link fails, wait (doubling), connect again."""
        backoff = self.platform.reconnect_min_s
        while not self._stopping:
            self._progress = False
            try:
                await self._connect_and_serve()
            except LinkDown as exc:
                self._fault(str(exc))
            except (OSError, TimeoutError) as exc:
                self._fault(f"cannot connect to {self.platform.host}:{self.platform.port}: "
                            f"{exc or type(exc).__name__}")
            except StorageError as exc:
                self._fault(f"database: {exc}")
            except Exception as exc:  # a bug must not end the uplink for good
                log.exception("HJ 212 uplink failed", extra={"platform": self.platform.name})
                self._fault(repr(exc))
            self._realtime.clear()  # real-time values are never back-filled
            if self._progress:
                backoff = self.platform.reconnect_min_s
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.platform.reconnect_max_s)

    async def _connect_and_serve(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.platform.host, self.platform.port), self.timeout_s)
        connection = Connection(reader, writer, self._answer, self.stats)
        self.connection = connection
        self.stats.connects += 1
        log.info("HJ 212 connected", extra={"platform": self.platform.name,
                                            "endpoint": f"{self.platform.host}:"
                                                        f"{self.platform.port}"})
        try:
            await self._serve(connection)
        finally:
            self.connection = None
            await connection.close()

    def _fault(self, reason: str) -> None:
        self.last_error = reason
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()
            log.warning("HJ 212 link down", extra={"platform": self.platform.name,
                                                   "reason": reason})
        else:
            log.debug("HJ 212 link still down", extra={"platform": self.platform.name,
                                                       "reason": reason})

    def _link_up(self) -> None:
        self._progress = True
        self.last_error = None
        if self._down_since is not None:
            log.info("HJ 212 link up", extra={
                "platform": self.platform.name,
                "after_s": round(asyncio.get_running_loop().time() - self._down_since, 1)})
            self._down_since = None

    async def _serve(self, connection: Connection) -> None:
        while True:
            upload = await self._next_upload(connection)
            try:
                await self._deliver(connection, upload)
            except PacketError as exc:  # cannot happen with validated codes; never stall
                log.error("HJ 212 message cannot be built, skipped",
                          extra={"platform": self.platform.name, "cn": upload.cn,
                                 "error": str(exc)})
            self._link_up()
            if upload.cn in self._backlog:
                await self._acknowledged(upload)

    async def _acknowledged(self, upload: Upload) -> None:
        backlog = self._backlog[upload.cn]
        backlog.popleft()
        self.cursors[upload.cn] = upload.end
        self.last_ack_at = self.clock.now()
        await self.store.call(save_cursor, self.store.db, self.platform.name, upload.cn,
                              upload.end)
        if not backlog:
            self._dirty = True  # there may be more stored than one batch

    async def _next_upload(self, connection: Connection) -> Upload:
        while True:
            self._wake.clear()
            if connection.closed.is_set():
                raise LinkDown(connection.close_reason)
            if self._realtime:
                return self._realtime.pop(0)
            if self._dirty:
                self._dirty = False
                await self._refill()
            heads = [queue[0] for queue in self._backlog.values() if queue]
            if heads:  # oldest first; of equal ends the shorter period (minute, hour, day)
                return min(heads, key=lambda u: (u.end, u.end - u.start))
            self._idle.set()
            closed = asyncio.create_task(connection.closed.wait())
            woken = asyncio.create_task(self._wake.wait())
            try:
                await asyncio.wait({closed, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                woken.cancel()

    async def _refill(self) -> None:
        for cn, queue in self._backlog.items():
            if not queue:
                queue.extend(await self.source.after(cn, self.cursors[cn], BACKLOG_BATCH))

    async def _deliver(self, connection: Connection, upload: Upload) -> None:
        qn = self.qn.next()
        packet = Packet(qn=qn, st=self.platform.st, cn=upload.cn, pw=self.platform.pw,
                        mn=self.platform.mn, flag=flag_value(self.platform.ack), cp=upload.cp)
        packets = split_packets(packet, lead=upload.lead)
        attempts = 1 + self.retries if self.platform.ack else 1
        for attempt in range(attempts):
            if attempt:
                self.stats.retransmissions += 1
            if self.platform.ack:
                connection.expect_ack(qn)
            connection.write(packets)
            await connection.drain(self.timeout_s)
            if not self.platform.ack or await connection.acknowledged(qn, self.timeout_s):
                self.stats.uploads += 1
                return
            log.debug("HJ 212 acknowledgement missing", extra={
                "platform": self.platform.name, "qn": qn, "attempt": attempt + 1})
        raise LinkDown(f"no acknowledgement (9014) of CN {upload.cn} "
                       f"{format_time(upload.start, self.tz)} (QN {qn}) after {attempts} "
                       f"sends {self.timeout_s:g} s apart")

    # --- real-time values ------------------------------------------------------------------

    async def _sample_realtime(self) -> None:
        interval = self.platform.rtd_interval_s
        due = math.floor(self.clock.now() / interval) * interval + interval
        while True:
            await self.clock.sleep_until(due)
            if self.connection is not None and not self._stopping:
                self._realtime = self._realtime_uploads()
                self._wake.set()
            due = math.floor(self.clock.now() / interval) * interval + interval

    def _realtime_uploads(self) -> list[Upload]:
        assert self.daemon.pipeline is not None
        latest = self.daemon.pipeline.latest
        uploads = []
        if p.Cn.REALTIME_DATA in self.platform.uploads:
            uploads.append(self.builder.realtime(latest))
        if p.Cn.ABATEMENT_STATE in self.platform.uploads:
            states: list[tuple[str, Reading | None, float]] = [
                (code, _most_open([latest.get(c) for c in channels]), above)
                for code, channels, above in self._state_channels]
            uploads.append(self.builder.state(states))
        return [u for u in uploads if u is not None]

    # --- requests from the platform ---------------------------------------------------------

    async def _answer(self, connection: Connection, request: Packet) -> None:
        self.stats.requests += 1
        log.info("HJ 212 request", extra={"platform": self.platform.name, "cn": request.cn,
                                          "qn": request.qn})
        try:
            refusal = self._refusal(request)
            if refusal is not None:
                self._reply(connection, request, p.Cn.REQUEST_ACK, p.QN_RTN, refusal)
            elif request.cn in HISTORY_CNS:
                await self._answer_history(connection, request)
            elif request.cn == p.Cn.SET_TIMEOUT_RETRIES:
                self._set_timeout(connection, request)
            elif request.cn == p.Cn.GET_TIME:
                pol_id = request.fields().get(p.POL_ID)
                time_now = (p.SYSTEM_TIME, format_time(self.clock.now(), self.tz))
                self._execute(connection, request,
                              ((p.POL_ID, pol_id), time_now) if pol_id else (time_now,))
            else:  # GET_RTD_INTERVAL
                self._execute(connection, request,
                              ((p.RTD_INTERVAL, f"{self.platform.rtd_interval_s:g}"),))
            await connection.drain(self.timeout_s)
        except LinkDown as exc:
            log.info("HJ 212 request not answered: link down", extra={
                "platform": self.platform.name, "cn": request.cn, "reason": str(exc)})

    def _refusal(self, request: Packet) -> p.QnRtn | None:
        if request.pw != self.platform.pw:
            return p.QnRtn.PW_ERROR
        if request.mn != self.platform.mn:
            return p.QnRtn.MN_ERROR
        if request.st not in (self.platform.st, p.St.SYSTEM):
            return p.QnRtn.ST_ERROR
        supported = HISTORY_CNS | {p.Cn.SET_TIMEOUT_RETRIES, p.Cn.GET_TIME,
                                   p.Cn.GET_RTD_INTERVAL}
        if request.cn not in supported:
            return p.QnRtn.REJECTED if request.cn in p.STANDARD_CNS else p.QnRtn.CN_ERROR
        return None

    async def _answer_history(self, connection: Connection, request: Packet) -> None:
        fields = request.fields()
        try:
            t0 = parse_time(fields.get(p.BEGIN_TIME, ""), self.tz)
            t1 = parse_time(fields.get(p.END_TIME, ""), self.tz)
        except PacketError as exc:
            log.warning("HJ 212 history request refused", extra={"error": str(exc)})
            self._reply(connection, request, p.Cn.REQUEST_ACK, p.QN_RTN, p.QnRtn.REJECTED)
            return
        self._reply(connection, request, p.Cn.REQUEST_ACK, p.QN_RTN, p.QnRtn.READY)
        try:
            uploads = await self.source.between(request.cn, t0, t1)
        except StorageError as exc:
            log.error("HJ 212 history request failed", extra={"error": str(exc)})
            self._reply(connection, request, p.Cn.EXECUTION_RESULT, p.EXE_RTN, p.ExeRtn.FAILED)
            return
        for upload in uploads:
            connection.write(self._data_packets(request, upload.cp, upload.lead))
            await connection.drain(self.timeout_s)
        result = p.ExeRtn.SUCCESS if uploads else p.ExeRtn.NO_DATA
        self._reply(connection, request, p.Cn.EXECUTION_RESULT, p.EXE_RTN, result)

    def _set_timeout(self, connection: Connection, request: Packet) -> None:
        fields = request.fields()
        try:
            timeout, retries = float(fields[p.OVER_TIME]), int(fields[p.RE_COUNT])
        except (KeyError, ValueError):
            timeout, retries = math.nan, -1
        if not (0 < timeout <= MAX_SECONDS and 1 <= retries <= p.MAX_RETRIES.value):
            self._reply(connection, request, p.Cn.REQUEST_ACK, p.QN_RTN, p.QnRtn.REJECTED)
            return
        self._reply(connection, request, p.Cn.REQUEST_ACK, p.QN_RTN, p.QnRtn.READY)
        self.timeout_s, self.retries = timeout, retries
        log.info("HJ 212 timeout and resends set by the platform", extra={
            "platform": self.platform.name, "timeout_s": timeout, "retries": retries})
        self._reply(connection, request, p.Cn.EXECUTION_RESULT, p.EXE_RTN, p.ExeRtn.SUCCESS)

    def _execute(self, connection: Connection, request: Packet, answer: Group) -> None:
        """9011, the answer (a packet with the request's CN and QN), 9012."""
        self._reply(connection, request, p.Cn.REQUEST_ACK, p.QN_RTN, p.QnRtn.READY)
        connection.write(self._data_packets(request, (answer,)))
        self._reply(connection, request, p.Cn.EXECUTION_RESULT, p.EXE_RTN, p.ExeRtn.SUCCESS)

    def _data_packets(self, request: Packet, cp: tuple[Group, ...],
                      lead: Group | None = None) -> list[Packet]:
        packet = Packet(qn=request.qn, st=self.platform.st, cn=request.cn, pw=self.platform.pw,
                        mn=self.platform.mn, flag=flag_value(ack=False), cp=cp)
        return split_packets(packet, lead)

    def _reply(self, connection: Connection, request: Packet, cn: int, key: str,
               code: int) -> None:
        connection.write([Packet(qn=request.qn, st=p.St.SYSTEM, cn=cn, pw=self.platform.pw,
                                 mn=self.platform.mn, flag=flag_value(ack=False),
                                 cp=(((key, str(int(code))),),))])


def _most_open(readings: list[Reading | None]) -> Reading | None:
    """Of a unit's signals for one state (several bypass valves), the valid one with the
    highest value: one open valve is a bypass."""
    valid = [r for r in readings if r is not None and r.flag is Flag.N and r.value is not None]
    return max(valid, key=lambda r: r.value or 0.0) if valid else None
