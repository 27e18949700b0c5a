"""The small exception tree of cemsd. Validity reasons are derived from these types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


def describe(exc: BaseException) -> str:
    """An exception as operators read it: its type (with its module unless built in, e.g.
    `termios.error`), then its message."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"
    text = str(exc)
    return f"{name}: {text}" if text else name


class CemsdError(Exception):
    """Base of every error cemsd raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file: where, and what is wrong."""

    file: str
    path: str  # dotted key path, e.g. "devices[2].channels.n2o.range"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class ConfigError(CemsdError):
    """A configuration that must not start. Carries every problem found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class DriverError(CemsdError):
    """A driver or register map cannot be used (unknown profile, bad register map)."""


class TransportError(CemsdError):
    """The bus failed to carry a request: no link, no reply or an unreadable reply."""

    kind: ClassVar[str] = "link error"  # how a reading's reason starts
    result: ClassVar[str] = "error"  # the request result as metrics count it


class DeviceTimeout(TransportError):
    """The device did not answer within its timeout (after its retries)."""

    kind = "no reply"
    result = "timeout"


class NoConnection(TransportError):
    """The connection (TCP socket or serial port) could not be opened or was lost."""

    kind = "no link"
    result = "no_link"


class BadFrame(TransportError):
    """A reply arrived but could not be used (wrong length, garbage, wrong device)."""

    kind = "unreadable reply"
    result = "bad_frame"


class ExceptionReply(CemsdError):
    """The device answered with a Modbus exception response."""

    kind: ClassVar[str] = "refused"

    NAMES: ClassVar[dict[int, str]] = {
        1: "illegal function",
        2: "illegal data address",
        3: "illegal data value",
        4: "server device failure",
        5: "acknowledge",
        6: "server device busy",
        7: "negative acknowledge",
        8: "memory parity error",
        10: "gateway path unavailable",
        11: "gateway target device failed to respond",
    }

    # Modbus Application Protocol v1.1b3 §7: a gateway answers 10 or 11 when it could not
    # reach the instrument behind it; a communication failure (B), not the instrument's (D).
    GATEWAY_CODES: ClassVar[tuple[int, ...]] = (10, 11)

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception {code} ({self.NAMES.get(code, 'unknown')})")

    @property
    def flag_letter(self) -> str:
        """B when a gateway did not reach the instrument, D when the instrument refused."""
        return "B" if self.code in self.GATEWAY_CODES else "D"


class StorageError(CemsdError):
    """The database refused a write or a read."""
