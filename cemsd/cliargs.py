"""Command-line arguments checked where they are read: a clean usage error, never a
traceback (click parameter types shared by every command, the simulators' too)."""

from __future__ import annotations

import math
from datetime import datetime

import click

from cemsd.periods import parse_offset


class Moment(click.ParamType):
    """An ISO 8601 time, checked here; returned as given, since a time without an offset is
    plant time and the plant's zone is known only once the configuration is read."""

    name = "ISO-TIME"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        try:
            datetime.fromisoformat(value).timestamp()
        except (ValueError, OverflowError, OSError):
            self.fail(f"{value!r} is not a time such as 2026-01-05T08:00+08:00", param, ctx)
        return value


class Until(click.ParamType):
    """A moment, or +DURATION after the start (checked here, added to the start later)."""

    name = "ISO-TIME|+DURATION"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if not value.startswith("+"):
            MOMENT.convert(value, param, ctx)
            return value
        try:
            seconds = parse_offset(value[1:])
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not 0 < seconds <= MAX_RUN_SECONDS:
            self.fail(f"{value!r}: a duration above 0 and at most {MAX_RUN_YEARS} years "
                      "(e.g. +24h)", param, ctx)
        return value


class Positive(click.ParamType):
    """A positive, finite number up to `most`; with `max_word`, also 'max' (as infinity),
    as a simulated clock's speed takes."""

    def __init__(self, what: str, most: float = math.inf, max_word: bool = False) -> None:
        self.what, self.most, self.max_word = what, most, max_word
        self.name = f"{what.upper()}|max" if max_word else what.upper()

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, float):
            return value
        if self.max_word and value == "max":
            return math.inf
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and 0 < number <= self.most):
            also = " or 'max'" if self.max_word else ""
            self.fail(f"{value!r} is not a positive {self.what} (at most {self.most:g}){also}",
                      param, ctx)
        return number


MOMENT, UNTIL = Moment(), Until()
SPEED = Positive("factor", 1e9, max_word=True)
MAX_RUN_YEARS = 100
MAX_RUN_SECONDS = MAX_RUN_YEARS * 366 * 86400
