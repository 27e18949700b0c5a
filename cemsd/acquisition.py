"""Bus owners: one task per physical link polls every device on it, in turn.

- One owner per bus serialises all requests (field notes §3.1); pymodbus' client lock is
  the only lock.
- Devices are polled on a fixed grid (multiples of their poll interval), so readings of
  different channels line up and a late cycle skips slots instead of drifting.
- A device that fails (no reply, garbage, no link) flags its readings B and backs off
  exponentially up to `backoff_max`; while it backs off it costs the bus nothing, so a
  dead device costs the others at most its own timeout x attempts once per back-off step.
  Other devices never wait for it beyond that (Telegraf #11785 lesson).
- An exception reply is an answer: its channels get D (B for a gateway's 10/11: the
  instrument was not reached), the device is not backed off.
- A lost link is reopened at the next due poll, with the same back-off, without a restart.
- Each fault episode is logged when it starts and when it ends, not on every poll.
- A wall clock set back is followed at once (polls go on from the new time); set
  forward, the due polls run and the grid continues from the new time.
- Other requests for a device on the link (switching calibration valves) are queued to
  the owner and carried out before its next due poll: the owner stays the link's only
  user.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cemsd.clock import Clock, StoppableSleep
from cemsd.errors import ExceptionReply, NoConnection, TransportError
from cemsd.flags import Flag
from cemsd.plan import BusPlan, DevicePlan, ReadBlock
from cemsd.readings import Reading
from cemsd.validity import Condition, DeviceValidator
from drivers.base import Transport

log = logging.getLogger(__name__)

ReadingSink = Callable[[list[Reading]], None]
RequestObserver = Callable[[str, str, float], None]  # device, result, seconds
LinkOperation = Callable[[Transport, DevicePlan], Awaitable[Any]]
BUS_FAILED = "bus failed"  # how readings of a bus whose run failed start their reason


@dataclass
class DeviceHealth:
    """What the daemon knows about a device's link; read by status and metrics."""

    up: bool | None = None  # None before the first poll
    consecutive_failures: int = 0
    last_error: str | None = None
    last_ok: float | None = None  # clock time of the last usable reply
    down_since: float | None = None
    link_failure: bool = False  # the last failure was the link's (back off), not a refusal
    next_due: float = 0.0
    polls: int = 0
    results: dict[str, int] = field(default_factory=dict)


def next_slot(t: float, interval: float) -> float:
    """The first grid point strictly after t."""
    return (math.floor(t / interval + 1e-9) + 1) * interval


def first_slot(t: float, interval: float) -> float:
    """The first grid point at or after t."""
    return math.ceil(t / interval - 1e-9) * interval


class BusOwner:
    def __init__(
        self,
        plan: BusPlan,
        transport: Transport,
        clock: Clock,
        sink: ReadingSink,
        observer: RequestObserver | None = None,
        validators: dict[str, DeviceValidator] | None = None,
    ) -> None:
        self.plan = plan
        self.transport = transport
        self.clock = clock
        self.sink = sink
        self.observer = observer
        self.validators = validators or {d.name: DeviceValidator(d) for d in plan.devices}
        self.health = {d.name: DeviceHealth() for d in plan.devices}
        self.watermark = -math.inf  # every reading before this time has been delivered
        self.watermark_changed = asyncio.Event()
        self.last_cycle_wall = time.monotonic()  # heartbeat for supervision
        self._sleep = StoppableSleep(clock)
        self._queued: deque[tuple[DevicePlan, LinkOperation, asyncio.Future[Any]]] = deque()

    @property
    def name(self) -> str:
        return self.plan.name

    def device(self, name: str) -> DevicePlan | None:
        return next((d for d in self.plan.devices if d.name == name), None)

    async def execute(self, device: str, operation: LinkOperation) -> Any:
        """Run `operation(transport, device)` on this link before the next due poll."""
        plan = self.device(device)
        if plan is None:
            raise KeyError(f"no device {device!r} on bus {self.name!r}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((plan, operation, future))
        self._sleep.poke()  # now, not at the next due poll
        return await future

    async def write_coil(self, device: str, address: int, value: bool) -> None:
        async def switch(transport: Transport, plan: DevicePlan) -> None:
            if not transport.connected:
                await transport.open(plan.timeout)
            await transport.write_coil(plan.device_id, address, value, plan.timeout,
                                       plan.retries)

        await self.execute(device, switch)

    async def _run_queued(self) -> None:
        while self._queued:
            plan, operation, future = self._queued.popleft()
            if future.done():
                continue
            try:
                future.set_result(await operation(self.transport, plan))
            except Exception as exc:  # handed to the caller, who says what failed
                future.set_exception(exc)

    def request_stop(self) -> None:
        """Finish the poll in progress, then return."""
        self._sleep.request_stop()

    async def run(self) -> None:
        """Poll every device on its grid until request_stop()."""
        now = self.clock.now()
        for device in self.plan.devices:
            self.health[device.name].next_due = first_slot(now, device.poll_interval)
        await self._on_grid(self._poll_due)

    async def stand_in(self, cause: str, until: float) -> bool:
        """While the supervisor waits to restart a failed run: every due slot before
        `until` gets readings flagged B naming the cause, and the watermark moves on, so
        the closer neither waits for this bus nor stores its minutes without a reason.
        False when a stop was requested meanwhile."""
        async def fail_due() -> None:
            now = self.clock.now()
            for device in self.plan.devices:
                health = self.health[device.name]
                if health.next_due <= now + 1e-9:
                    failures: dict[str, Condition] = {}
                    for block in device.blocks:
                        _fail(failures, block, Flag.B, f"{BUS_FAILED}: {cause}")
                    self.sink(self.validators[device.name].readings(health.next_due, {},
                                                                    failures))
                    health.next_due = next_slot(max(health.next_due, now),
                                                device.poll_interval)

        return await self._on_grid(fail_due, until, refuse_queued=f"{BUS_FAILED}: {cause}")

    def failed(self, cause: str) -> None:
        """The run failed (the supervisor's net): every device is down with the cause."""
        now = self.clock.now()
        for device in self.plan.devices:
            self._down(device, now, f"{BUS_FAILED}: {cause}", link_failure=True)

    async def _on_grid(self, work: Callable[[], Awaitable[None]], until: float = math.inf,
                       refuse_queued: str | None = None) -> bool:
        """Sleep to each due slot and do `work` there, until `until` (True) or a stop
        (False). The watermark goes to infinity only on a stop: after a failure the
        supervisor's stand-in carries it on."""
        self._sleep.bind()
        steps: list[Callable[[float], None]] | None = getattr(self.clock, "step_listeners", None)
        if steps is not None:
            steps.append(self._clock_stepped)
        try:
            with self.clock.participant():
                while self.plan.devices:
                    due = min(min(h.next_due for h in self.health.values()), until)
                    self._set_watermark(due)
                    if not await self._sleep.sleep_until(due):
                        return False
                    if refuse_queued is None:
                        await self._run_queued()
                    else:
                        self._refuse_queued(refuse_queued)
                    if self.clock.now() < due:
                        continue  # woken for queued work
                    if due >= until:
                        return True
                    await work()
                    self.last_cycle_wall = time.monotonic()
                return True
        finally:
            if steps is not None:
                steps.remove(self._clock_stepped)
            if self._sleep.stopping or not self.plan.devices:  # nothing more will come
                self._set_watermark(math.inf)
            self._refuse_queued(f"bus {self.name} stopped")
            await self.transport.close()

    def _refuse_queued(self, why: str) -> None:
        while self._queued:
            _, _, future = self._queued.popleft()
            if not future.done():
                future.set_exception(RuntimeError(why))

    def _clock_stepped(self, seconds: float) -> None:
        """A wall clock set back leaves every due poll in its future: poll on from now, on
        the grid (the closer ignores a slot polled twice). Set forward, due polls are just
        late and the grid goes on from now by itself."""
        if seconds >= 0:
            return
        now = self.clock.now()
        for device in self.plan.devices:
            self.health[device.name].next_due = first_slot(now, device.poll_interval)
        self._sleep.poke()

    async def _poll_due(self) -> None:
        now = self.clock.now()
        due = [d for d in self.plan.devices if self.health[d.name].next_due <= now + 1e-9]
        due.sort(key=lambda d: (self.health[d.name].next_due, d.device_id))
        for device in due:
            if self._sleep.stopping:
                return
            slot = self.health[device.name].next_due
            await self.poll(device)
            self._schedule(device, slot)

    def _set_watermark(self, t: float) -> None:
        if t != self.watermark:
            self.watermark = t
            self.watermark_changed.set()
            self.watermark_changed = asyncio.Event()

    # --- one poll ----------------------------------------------------------------------

    async def poll(self, device: DevicePlan) -> list[Reading]:
        """Read every block of one device and deliver its flagged readings."""
        ts = self.clock.now()
        started = time.perf_counter()
        values: dict[str, float] = {}
        failures: dict[str, Condition] = {}
        link_error: TransportError | None = None
        refusal: ExceptionReply | None = None
        try:
            if not self.transport.connected:
                await self.transport.open(device.timeout)
            for i, block in enumerate(device.blocks):
                try:
                    registers = await self.transport.read(
                        device.device_id, block.function_code, block.address, block.count,
                        device.timeout, device.retries,
                    )
                except ExceptionReply as exc:
                    refusal = exc
                    _fail(failures, block, Flag(exc.flag_letter), f"{block.describe()}: {exc}")
                    continue
                _decode_block(block, registers, values)
                if self.plan.bus.request_delay and i + 1 < len(device.blocks):
                    await asyncio.sleep(self.plan.bus.request_delay)
        except TransportError as exc:
            link_error = exc
            for block in device.blocks:
                _fail(failures, block, Flag.B, _reason(exc))
        readings = self.validators[device.name].readings(ts, values, failures)
        self.sink(readings)
        result = _result_name(link_error, refusal, bool(values))
        self._record(device, ts, result, link_error or refusal, usable=bool(values))
        if self.observer is not None:
            self.observer(device.name, result, time.perf_counter() - started)
        if link_error is not None and not self._sleep.stopping:  # stopping: nothing follows
            cost = device.timeout if isinstance(link_error, NoConnection) else \
                device.failed_request_cost
            await self.clock.charge(cost)
        if self.plan.bus.request_delay:
            await asyncio.sleep(self.plan.bus.request_delay)
        return readings

    def _record(
        self,
        device: DevicePlan,
        ts: float,
        result: str,
        error: TransportError | ExceptionReply | None,
        usable: bool,
    ) -> None:
        health = self.health[device.name]
        health.polls += 1
        health.results[result] = health.results.get(result, 0) + 1
        if usable and not isinstance(error, TransportError):
            if health.up is False:
                log.info(
                    "device up",
                    extra={"device": device.name, "bus": self.name,
                           "down_for_s": round(ts - (health.down_since or ts), 1),
                           "failed_polls": health.consecutive_failures},
                )
            health.up, health.consecutive_failures, health.down_since = True, 0, None
            health.last_ok = ts
            health.last_error = _reason(error) if error else None
            return
        self._down(device, ts, _reason(error) if error else "no usable value",
                   link_failure=isinstance(error, TransportError))

    def _down(self, device: DevicePlan, ts: float, reason: str, link_failure: bool) -> None:
        health = self.health[device.name]
        health.consecutive_failures += 1
        health.link_failure = link_failure
        health.last_error = reason
        if health.up is not False:
            log.warning("device down", extra={"device": device.name, "bus": self.name,
                                              "reason": reason})
            health.up, health.down_since = False, ts

    def _schedule(self, device: DevicePlan, slot: float) -> None:
        health = self.health[device.name]
        now = self.clock.now()
        earliest = max(slot, now)
        failures = health.consecutive_failures
        if failures >= 2 and health.link_failure:
            backoff = min(device.backoff_max, device.poll_interval * 2 ** (failures - 1))
            earliest = now + backoff
        health.next_due = next_slot(earliest, device.poll_interval)


def _fail(failures: dict[str, Condition], block: ReadBlock, flag: Flag, reason: str) -> None:
    for channel, _ in block.items:
        failures.setdefault(channel.key, (flag, reason))


def _decode_block(block: ReadBlock, registers: list[int], values: dict[str, float]) -> None:
    for key, start, end, decode, scale, offset in block.decoding:
        values[key] = decode(registers[start:end]) * scale + offset


def _reason(error: TransportError | ExceptionReply) -> str:
    return f"{error.kind}: {error}"


def _result_name(link: TransportError | None, refusal: ExceptionReply | None, usable: bool) -> str:
    if link is not None:
        return link.result
    if refusal is not None:
        return "partial" if usable else "refused"
    return "ok"
