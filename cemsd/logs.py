"""One structured line per event: time, level, logger, event, then key=value fields."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        stamp = ts.replace("+00:00", "Z")
        line = f"{stamp} {record.levelname:<7} {record.name} {record.getMessage()}"
        for key, value in fields.items():
            line += f" {key}={_render(value)}"
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


def _render(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or "=" in text or not text) else text


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pymodbus logs every failed request with a frame dump; bus owners log episodes instead
    for chatty in ("pymodbus", "pymodbus.logging"):
        logging.getLogger(chatty).setLevel(logging.CRITICAL)


class Episode:
    """A fault that lasts (a database refusing, a peer unreachable): logged once when it
    starts and once when it ends, with how long it lasted; repeats in between go to DEBUG.
    Uses the monotonic clock: an episode's length is wall time, whatever the daemon's
    clock."""

    def __init__(self, logger: logging.Logger, message: str, level: int = logging.ERROR) -> None:
        self.logger = logger
        self.message = message
        self.level = level
        self.since: float | None = None
        self.repeats = 0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, **fields: object) -> None:
        if self.since is None:
            self.since, self.repeats = time.monotonic(), 0
            self.logger.log(self.level, self.message, extra=fields)
        else:
            self.repeats += 1
            self.logger.debug(self.message, extra={**fields, "repeat": self.repeats})

    def recovered(self, message: str, **fields: object) -> None:
        if self.since is not None:
            lasted = round(time.monotonic() - self.since, 1)
            self.logger.info(message, extra={**fields, "after_s": lasted,
                                             "repeats": self.repeats})
            self.since = None
