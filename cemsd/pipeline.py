"""Where readings go after validity: the store's batch, the live view, live listeners, and
the closer's copy of what was handed to the store (`HandedReadings`)."""

from __future__ import annotations

import bisect
import logging
import math
import operator
from collections.abc import Callable

from cemsd.readings import Reading
from cemsd.store.writer import Store

log = logging.getLogger(__name__)
LiveListener = Callable[[list[Reading]], None]


class HandedReadings:
    """Every reading handed to the store's queue, in that order, until the closer has
    closed its minute. The closer aggregates a minute from here instead of reading it back,
    but only after flushing the store, so it still closes only what is stored (0240)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # as the store's queue: a long storage fault costs bounded memory
        self.lost_through = -math.inf  # the newest reading forgotten unclosed
        self._readings: list[Reading] = []

    def __len__(self) -> int:
        return len(self._readings)

    def extend(self, readings: list[Reading]) -> None:
        self._readings.extend(readings)
        overflow = len(self._readings) - self.limit
        if overflow > 0:
            lost, self._readings = self._readings[:overflow], self._readings[overflow:]
            self.lost_through = max(self.lost_through, max(r.ts for r in lost))

    def before(self, t: float) -> list[Reading]:
        """The readings before t, sorted by time; equal times keep the order handed over
        (the order the store writes them in)."""
        return sorted((r for r in self._readings if r.ts < t), key=_TIME)

    def discard_before(self, t: float) -> None:
        """Forget the readings before t (their minutes are closed)."""
        self._readings = [r for r in self._readings if r.ts >= t]


# a reading's time, without a Python call per reading (it sorts a minute's readings)
_TIME: Callable[[Reading], float] = operator.attrgetter("ts")


def between(readings: list[Reading], t0: float, t1: float) -> list[Reading]:
    """The readings in [t0, t1) of a list sorted by time."""
    lo = bisect.bisect_left(readings, t0, key=_TIME)
    hi = bisect.bisect_left(readings, t1, lo, key=_TIME)
    return readings[lo:hi]


class Pipeline:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.latest: dict[str, Reading] = {}
        self.live_listeners: list[LiveListener] = []
        self.handed = HandedReadings(store.max_pending)

    def ingest(self, readings: list[Reading]) -> None:
        self.store.add_readings(readings)
        self.handed.extend(readings)
        for reading in readings:
            self.latest[reading.channel] = reading
        for listener in self.live_listeners:
            try:
                listener(readings)
            except Exception:  # a live output must never stop acquisition
                log.exception("live listener failed")
