"""One structured line per event: time, level, logger, event, then key=value fields."""

from __future__ import annotations

import json
import logging
import sys
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
