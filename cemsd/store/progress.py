"""How far a long schema migration has come, told to whoever waits on it.

Migration 0013 converts every stored reading (~75,000 a second): weeks of 1 s readings
take longer than systemd's start timeout. A migration reports its steps with `report`;
`Database.upgrade` hands them to its caller's hook. The daemon keeps the latest step in
its `Progress`, which the watchdog turns into `EXTEND_TIMEOUT_USEC` while steps keep
coming (decision 0038), so a migration that hangs is still stopped by the timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

ProgressHook = Callable[[str], None]


def report(message: str) -> None:
    """From inside a migration: one step done (e.g. '250,000 readings converted')."""
    from alembic import op

    config = op.get_context().config
    hook = config.attributes.get("progress") if config is not None else None
    if hook is not None:
        hook(message)


class Progress:
    """The latest step of a start-up's long work; `step` may be called from any thread,
    listeners run on the event loop they listened from."""

    def __init__(self) -> None:
        self.message: str | None = None
        self.steps = 0
        self.at: float | None = None  # monotonic time of the latest step
        self._listeners: list[tuple[asyncio.AbstractEventLoop, ProgressHook]] = []

    def listen(self, callback: ProgressHook) -> None:
        self._listeners.append((asyncio.get_running_loop(), callback))

    def step(self, message: str) -> None:
        self.message, self.at = message, time.monotonic()
        self.steps += 1
        for loop, callback in self._listeners:
            if not loop.is_closed():
                loop.call_soon_threadsafe(callback, message)


class Throttled:
    """A hook that passes a step on at most every `seconds` (the first always): for a log
    or a terminal, which need not see 700 steps of a long conversion."""

    def __init__(self, hook: ProgressHook, seconds: float) -> None:
        self.hook = hook
        self.seconds = seconds
        self._last = -float("inf")

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._last = now
            self.hook(message)
