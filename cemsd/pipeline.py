"""Where readings go after validity: the store's batch, the live view, live listeners."""

from __future__ import annotations

import logging
from collections.abc import Callable

from cemsd.readings import Reading
from cemsd.store.writer import Store

log = logging.getLogger(__name__)
LiveListener = Callable[[list[Reading]], None]


class Pipeline:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.latest: dict[str, Reading] = {}
        self.live_listeners: list[LiveListener] = []

    def ingest(self, readings: list[Reading]) -> None:
        self.store.add_readings(readings)
        for reading in readings:
            self.latest[reading.channel] = reading
        for listener in self.live_listeners:
            try:
                listener(readings)
            except Exception:  # a live output must never stop acquisition
                log.exception("live listener failed")
