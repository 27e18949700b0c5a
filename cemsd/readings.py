"""The unit of data between pipeline stages: a value with its flag, never one without."""

from __future__ import annotations

from dataclasses import dataclass

from cemsd.flags import Flag


@dataclass(slots=True)
class Reading:
    """One instantaneous value of one channel, as polled."""

    channel: str
    ts: float  # UTC epoch seconds at which the request was issued
    value: float | None  # None when nothing usable was received
    flag: Flag
    reason: str | None = None  # why the flag is not N: which check, which bit, which error

    @property
    def valid(self) -> bool:
        return self.flag is Flag.N
