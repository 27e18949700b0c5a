"""Zero and span checks (HJ 75-2017 §11 [U]).

A check of one channel:

1. refuse what cannot be right: an unknown channel, a reference outside the measuring
   range, a second check on the same analyzer while one runs;
2. flag the analyzer's gas channels C from now until the purge after the check;
3. with remote valves: switch the zero or span gas on through the bus owner, wait
   `stabilisation_s`, average `readings` readings, switch back, wait `purge_s`;
   manual mode: record the value the technician read off the analyzer's display;
4. drift = (measured - reference) / full scale x 100 and the result:
   - pass: |drift| within the pass limit (2.5 % F.S.);
   - adjust: beyond it but within the control limit (zero 5 %, span 10 % F.S.): valid
     data, the analyzer needs adjusting (automatically if configured and possible);
   - out_of_control: beyond the control limit: data are invalid (D) from this check until
     a passing one (or, with `out_of_control_back_to_last_pass`, back to the last good
     check, through superseding corrections);
   - aborted: the check could not be completed (link failure, too few readings).
   The flow monitor's zero check (method flow_zero) passes within 3 % F.S. or 0.9 m/s and
   is out of control beyond 8 % F.S. and 1.8 m/s.
5. record it, with the technician's name and note, in `calibrations` and the audit log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from cemsd import records, standards
from cemsd.errors import CemsdError, ExceptionReply, TransportError
from cemsd.flags import Flag
from cemsd.plan import ChannelPlan
from cemsd.plantstate import Window, control_window
from cemsd.qaqc.corrections import invalidate_window
from cemsd.readings import Reading
from cemsd.settings.qaqc import CalibrationSettings
from cemsd.units import Role

if TYPE_CHECKING:
    from cemsd.daemon import Daemon

log = logging.getLogger(__name__)

Kind = Literal["zero", "span"]
SAMPLE_PATH_ROLES = frozenset({Role.N2O_INLET, Role.N2O_OUTLET, Role.O2})  # one gas path
Progress = Callable[[str], Awaitable[None]]
PROGRESS_EVERY_S = 10.0  # how often a running check tells where it is (daemon time)


class CalibrationError(CemsdError):
    """A calibration request that cannot be carried out; nothing was changed."""


@dataclass(frozen=True)
class CalibrationRequest:
    channel: str
    kind: Kind
    reference: float
    technician: str
    note: str | None = None
    manual_reading: float | None = None  # manual mode: the value read off the display
    scheduled: bool = False  # an automatic check started by the schedule


@dataclass
class CheckProgress:
    """Where a running check is, for the status page (the CLI gets the same as text)."""

    channel: str
    phase: str  # stabilising | averaging | purging
    ends_at: float | None  # end of a timed phase (averaging ends with its readings)
    readings: int = 0  # averaging: arrived so far
    needed: int = 0


@dataclass(frozen=True)
class Verdict:
    result: str  # pass | adjust | out_of_control
    pass_limit_pct: float
    control_limit_pct: float


def judge(settings: CalibrationSettings, kind: Kind, drift_pct: float, difference: float
          ) -> Verdict:
    """Classify a drift against the channel's limits."""
    if settings.method == "flow_zero":
        passed = (abs(drift_pct) <= standards.FLOW_ZERO_PASS_LIMIT.value
                  or abs(difference) <= standards.FLOW_ZERO_PASS_ABSOLUTE.value)
        lost = (abs(drift_pct) > standards.FLOW_ZERO_CONTROL_LIMIT.value
                and abs(difference) > standards.FLOW_ZERO_CONTROL_ABSOLUTE.value)
        limits = (standards.FLOW_ZERO_PASS_LIMIT.value, standards.FLOW_ZERO_CONTROL_LIMIT.value)
    else:
        control = settings.zero_control_limit_pct if kind == "zero" else \
            settings.span_control_limit_pct
        passed = abs(drift_pct) <= settings.pass_limit_pct
        lost = abs(drift_pct) > control
        limits = (settings.pass_limit_pct, control)
    result = "pass" if passed else ("out_of_control" if lost else "adjust")
    return Verdict(result, *limits)


class Calibrator:
    """Runs checks inside the daemon; one at a time per analyzer."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.config = daemon.config
        self.channels = {c.name: c for c in daemon.plan.channels}
        self.busy: dict[str, str] = {}  # device -> channel being checked
        self.progress: dict[str, CheckProgress] = {}  # device -> where its check is

    # --- checking a request -----------------------------------------------------------------

    def prepare(self, request: CalibrationRequest) -> tuple[ChannelPlan, CalibrationSettings]:
        channel = self.channels.get(request.channel)
        if channel is None:
            known = ", ".join(sorted(c for c, p in self.channels.items() if p.spec.range))
            raise CalibrationError(f"unknown channel {request.channel!r} (channels: {known})")
        if channel.spec.kind != "analog" or channel.spec.range is None:
            raise CalibrationError(f"{channel.name} is not a measured value with a range")
        low, high = channel.spec.range
        if not low <= request.reference <= high:
            raise CalibrationError(
                f"reference {request.reference:g} {channel.unit} is outside the measuring "
                f"range [{low:g}, {high:g}] of {channel.name}")
        if channel.device in self.busy:
            raise CalibrationError(
                f"a calibration of {self.busy[channel.device]} is running on {channel.device}")
        settings = channel.spec.calibration or CalibrationSettings()
        if request.manual_reading is None and self._remote(channel) is None:
            raise CalibrationError(
                f"{channel.device} has no remote calibration valves: record a manual check "
                "(--manual --reading VALUE)")
        if request.kind == "span" and request.manual_reading is None and \
                self._remote(channel).span_valve_coil is None:  # type: ignore[union-attr]
            raise CalibrationError(f"{channel.device} has no span gas valve")
        if not self.technician_ok(request.technician):
            raise CalibrationError("say who calibrates (--technician NAME)")
        return channel, settings

    @staticmethod
    def technician_ok(name: str) -> bool:
        return bool(name and name.strip())

    def _remote(self, channel: ChannelPlan) -> Any:
        device = next(d for d in self.config.devices if d.name == channel.device)
        return device.remote_calibration

    # --- running it ---------------------------------------------------------------------------

    async def run(self, request: CalibrationRequest, progress: Progress | None = None
                  ) -> dict[str, Any]:
        channel, settings = self.prepare(request)
        say = progress or _quiet
        self.busy[channel.device] = channel.name
        try:
            clock = self.daemon.clock
            if request.manual_reading is not None:
                measured, n, error = request.manual_reading, None, None
                started = ended = clock.now()
                mode = "manual"
            else:
                mode = "automatic" if request.scheduled else "remote"
                started, measured, n, error = await self._measure(channel, settings,
                                                                  request.kind, say)
                ended = clock.now() + settings.purge_s  # the check ends when the purge does
            # The result is known once the valve closes. Time holds still while it is
            # recorded, so the control period it opens starts exactly where the check ends
            # (on a simulated clock, too) and no reading slips between the two.
            with clock.participant():
                row = await self._record(request, channel, settings, mode, started, ended,
                                         measured, n, error, say)
            if ended > clock.now():
                await say("back on sample")
                await self._countdown(channel, "purging", ended, say)
            return row
        finally:
            self.busy.pop(channel.device, None)
            self.progress.pop(channel.device, None)

    async def _measure(self, channel: ChannelPlan, settings: CalibrationSettings, kind: Kind,
                       say: Progress) -> tuple[float, float | None, int, str | None]:
        """Gas on, stabilise, average, gas off. The C flag lasts to the end of the purge."""
        clock, state = self.daemon.clock, self.daemon.plant_state
        assert state is not None
        remote = self._remote(channel)
        coil = remote.zero_valve_coil if kind == "zero" else remote.span_valve_coil
        owner = next(o for o in self.daemon.owners if o.device(channel.device) is not None)
        started = clock.now()
        key = f"calibration:{channel.device}"
        affected = self._affected(channel)
        state.open_window(Window(key, affected, started, None, Flag.C,
                                 f"{kind} check of {channel.name} in progress"))
        measured, n, error = None, 0, None
        try:
            await owner.write_coil(channel.device, coil, True)
            await say(f"{kind} gas on")
            await self._countdown(channel, "stabilising",
                                  clock.now() + settings.stabilisation_s, say)
            values = await self._collect(channel, settings, say)
            n = len(values)
            if n < settings.readings:
                error = f"only {n} of {settings.readings} readings arrived"
            else:
                measured = sum(values) / n
                await say(f"averaged {n} readings: {measured:g} {channel.unit}")
        except (TransportError, ExceptionReply, RuntimeError) as exc:
            error = f"valve switching failed: {exc}"
        finally:
            await self._valve_off(owner, channel, coil)
            state.close_window(key, clock.now() + settings.purge_s)
        return started, measured, n, error

    async def _valve_off(self, owner: Any, channel: ChannelPlan, coil: int) -> None:
        try:
            await owner.write_coil(channel.device, coil, False)
        except (TransportError, ExceptionReply, RuntimeError) as exc:
            log.error("calibration valve may still be open",
                      extra={"device": channel.device, "coil": coil, "error": str(exc)})

    def _affected(self, channel: ChannelPlan) -> frozenset[str]:
        """Channels that read the calibration gas (or the closed probe) with this one."""
        path = {Role.FLOW} if channel.role is Role.FLOW else SAMPLE_PATH_ROLES
        return frozenset(c.name for c in self.daemon.plan.channels
                         if c.device == channel.device and c.spec.kind == "analog"
                         and c.role in path) | {channel.name}

    # --- progress: what the technician sees while a check runs ----------------------------------

    def checks(self) -> list[dict[str, Any]]:
        """Running checks for the status page and `cemsd status`."""
        now = self.daemon.clock.now()
        return [{"channel": p.channel, "phase": p.phase, "readings": p.readings,
                 "needed": p.needed, "current": self.current(self.channels[p.channel]),
                 "seconds_left": None if p.ends_at is None else max(0.0, p.ends_at - now)}
                for p in self.progress.values()]

    async def _countdown(self, channel: ChannelPlan, phase: str, until: float,
                         say: Progress) -> None:
        """Wait until `until`, telling the phase, the seconds left and the current reading
        every PROGRESS_EVERY_S."""
        clock = self.daemon.clock
        self.progress[channel.device] = CheckProgress(channel.name, phase, until)
        while (left := until - clock.now()) > 0:
            await say(f"{phase}: {left:.0f} s left, {self.current(channel)}")
            await clock.sleep_until(min(until, clock.now() + PROGRESS_EVERY_S))

    def current(self, channel: ChannelPlan) -> str:
        """The channel's latest reading, as the technician would read it off the display."""
        assert self.daemon.pipeline is not None
        reading = self.daemon.pipeline.latest.get(channel.name)
        if reading is None or reading.value is None:
            return f"{channel.name} no reading yet"
        return f"{channel.name} = {reading.value:.6g} {channel.unit} ({reading.flag.value})"

    async def _collect(self, channel: ChannelPlan, settings: CalibrationSettings,
                       say: Progress) -> list[float]:
        """The next `readings` values of the channel, or what arrived before a deadline."""
        assert self.daemon.pipeline is not None
        device = next(d for d in self.daemon.plan.devices if d.name == channel.device)
        values: list[float] = []
        enough = asyncio.Event()

        def listen(readings: list[Reading]) -> None:
            for r in readings:
                if r.channel == channel.name and r.value is not None and r.flag is Flag.C:
                    values.append(r.value)
            if len(values) >= settings.readings:
                enough.set()

        listeners = self.daemon.pipeline.live_listeners
        listeners.append(listen)
        clock = self.daemon.clock
        deadline = clock.now() + device.poll_interval * settings.readings * 3 + 60
        progress = CheckProgress(channel.name, "averaging", None, 0, settings.readings)
        self.progress[channel.device] = progress
        try:
            while not enough.is_set() and clock.now() < deadline:
                await say(f"averaging: {len(values)} of {settings.readings} readings, "
                          f"{self.current(channel)}")
                step = min(deadline, clock.now() + PROGRESS_EVERY_S)
                timer = asyncio.ensure_future(clock.sleep_until(step))
                waiter = asyncio.ensure_future(enough.wait())
                try:
                    await asyncio.wait({timer, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (timer, waiter):
                        task.cancel()
                progress.readings = min(len(values), settings.readings)
        finally:
            listeners.remove(listen)
        return values[: settings.readings]

    # --- the record -----------------------------------------------------------------------------

    async def _record(self, request: CalibrationRequest, channel: ChannelPlan,
                      settings: CalibrationSettings, mode: str, started: float, ended: float,
                      measured: float | None, n: int | None, error: str | None,
                      say: Progress) -> dict[str, Any]:
        assert channel.spec.range is not None
        full_scale = channel.spec.range[1] - channel.spec.range[0]
        drift = verdict = None
        if measured is not None:
            drift = (measured - request.reference) / full_scale * 100.0
            verdict = judge(settings, request.kind, drift, measured - request.reference)
        result = verdict.result if verdict else "aborted"
        if verdict and verdict.result == "adjust" and settings.adjust_automatically and \
                mode != "manual":
            await self._adjust(channel, say)
        row = {
            "channel": channel.name, "kind": request.kind, "mode": mode,
            "started_at": started, "ended_at": ended, "reference": request.reference,
            "measured": measured, "full_scale": full_scale, "drift_pct_fs": drift,
            "result": result,
            "pass_limit_pct": verdict.pass_limit_pct if verdict else settings.pass_limit_pct,
            "control_limit_pct": verdict.control_limit_pct if verdict else
            (settings.zero_control_limit_pct if request.kind == "zero"
             else settings.span_control_limit_pct),
            "n_readings": n, "stabilisation_s": None if mode == "manual" else
            settings.stabilisation_s,
            "technician": request.technician.strip(),
            "note": "; ".join(x for x in (request.note, error) if x) or None,
            "created_at": self.daemon.clock.now(),
        }
        store = self.daemon.store
        assert store is not None
        row["id"] = await store.call(records.insert_calibration, store.db, row)
        await store.call(records.audit, store.db, row["created_at"], row["technician"],
                         f"calibration.{mode}", channel.name, request.note, None, row)
        await self._control(channel, settings, row)
        await say(_summary(row, channel))
        await self.daemon.publish_event("calibration", row)
        # out of control or aborted: data are invalid or the check is missing, which
        # `journalctl -p warning` must show
        level = logging.INFO if result in ("pass", "adjust") else logging.WARNING
        log.log(level, f"calibration {result}", extra={
            "channel": channel.name, "kind": request.kind, "result": result,
            "drift_pct_fs": drift, "pass_limit_pct": row["pass_limit_pct"],
            "control_limit_pct": row["control_limit_pct"], "technician": row["technician"]})
        return row

    async def _adjust(self, channel: ChannelPlan, say: Progress) -> None:
        remote = self._remote(channel)
        if remote is None or remote.adjust_coil is None:
            return
        owner = next(o for o in self.daemon.owners if o.device(channel.device) is not None)
        try:
            await owner.write_coil(channel.device, remote.adjust_coil, True)
            await owner.write_coil(channel.device, remote.adjust_coil, False)
            await say("adjustment applied by the analyzer")
        except (TransportError, ExceptionReply, RuntimeError) as exc:
            await say(f"adjustment failed: {exc}")

    async def _control(self, channel: ChannelPlan, settings: CalibrationSettings,
                       row: dict[str, Any]) -> None:
        """Open or close control periods and move the calibration clock."""
        store, state = self.daemon.store, self.daemon.plant_state
        assert store is not None and state is not None
        db, at = store.db, row["ended_at"]
        if row["result"] == "out_of_control":
            await self._out_of_control(channel, row)
        closed: list[int] = []
        if row["result"] == "pass":
            closed += await store.call(records.close_out_of_control, db, channel.name,
                                       row["kind"], at, row["id"])
            for period in closed:
                state.close_window(f"control:{period}", at)
        if row["result"] in records.GOOD_RESULTS:
            closed += await store.call(records.close_control_periods, db, channel.name,
                                       ("calibration_overdue",), at, row["id"])
            state.calibration_due[channel.name] = (at + settings.interval,
                                                   "last check within limits")
        await publish_control_periods(self.daemon, closed)

    async def _out_of_control(self, channel: ChannelPlan, row: dict[str, Any]) -> None:
        store, state = self.daemon.store, self.daemon.plant_state
        assert store is not None and state is not None
        if await store.call(records.open_out_of_control, store.db, channel.name, row["kind"]):
            return  # already out of control since an earlier failed check of this kind
        reason = (f"out of control since {row['kind']} check #{row['id']} "
                  f"({row['drift_pct_fs']:+.2f} % F.S. beyond ±{row['control_limit_pct']:g} %)")
        period = {"channel": channel.name, "kind": "out_of_control", "started_at":
                  row["ended_at"], "ended_at": None, "opened_by": row["id"], "closed_by": None,
                  "reason": reason, "created_at": row["created_at"]}
        period["id"] = await store.call(records.insert_control_period, store.db, period)
        state.open_window(control_window(SimpleNamespace(**period)))
        opened = [period["id"]]
        if self.config.qaqc.out_of_control_back_to_last_pass:
            good = await store.call(records.last_good_calibrations, store.db)
            since = good.get(channel.name)
            if since is not None and since < row["started_at"]:
                back = f"{reason}; back to the last good check"
                # the back-dated hours are out of control too (stricter substitution)
                opened.append(await store.call(records.insert_control_period, store.db, {
                    **period, "id": None, "started_at": since, "ended_at": row["started_at"],
                    "closed_by": row["id"], "reason": back}))
                await invalidate_window(self.daemon, channel, since, row["started_at"], back)
        await publish_control_periods(self.daemon, opened)


CONTROL_PERIOD_EVENT = "control_period"


async def publish_control_periods(daemon: Daemon, ids: list[int]) -> None:
    """Control periods opened or closed, as stored, to the outputs: a central copy keeps
    them for the bundle's QA/QC evidence (cemsd/fleet/reports.py, docs/decisions/0213)."""
    store = daemon.store
    if not ids or store is None:
        return
    rows = await store.call(records.control_periods_by_id, store.db, ids)
    await daemon.publish_event(CONTROL_PERIOD_EVENT, {
        "rows": [records.row_document(row) for row in rows]})


def _summary(row: dict[str, Any], channel: ChannelPlan) -> str:
    if row["measured"] is None:
        return f"{row['kind']} check of {channel.name} aborted: {row['note']}"
    return (f"{row['kind']} check #{row['id']} of {channel.name}: reference "
            f"{row['reference']:g}, measured {row['measured']:g} {channel.unit}, drift "
            f"{row['drift_pct_fs']:+.2f} % F.S. (pass within ±{row['pass_limit_pct']:g}, "
            f"out of control beyond ±{row['control_limit_pct']:g}) -> {row['result']}")


async def _quiet(message: str) -> None:
    return None

