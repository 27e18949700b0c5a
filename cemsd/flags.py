"""HJ 212-2017 data flags (Table 8) and the rules that combine them.

A flag travels with every value: reading, minute, hour. Only N counts as valid in an
average; every other letter says why a value does not count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

import numpy as np


class Flag(StrEnum):
    """HJ 212-2017 Table 8 data marks."""

    N = "N"  # normal
    F = "F"  # stopped (instrument or, in practice, the emission source)
    M = "M"  # maintenance
    S = "S"  # manually entered / substituted value
    D = "D"  # instrument fault
    C = "C"  # calibration
    T = "T"  # above the measuring range
    B = "B"  # communication fault between analyzer and data logger

    @property
    def meaning(self) -> str:
        return MEANINGS[self]


MEANINGS: Mapping[Flag, str] = {
    Flag.N: "normal",
    Flag.F: "stopped",
    Flag.M: "maintenance",
    Flag.S: "substituted or manually entered",
    Flag.D: "instrument fault",
    Flag.C: "calibration",
    Flag.T: "above measuring range",
    Flag.B: "communication fault",
}

# When several conditions hold for one reading, the first in this order wins:
# - F first: a stopped source makes the hour a stop hour whatever the instruments do, and
#   stop hours leave the capture rate (HJ 75-2017 §12);
# - then the declared states, which explain the faults they cause: maintenance (M),
#   calibration (C);
# - then the instrument (D: fault, out of control) before the link (B), then the value (T).
PRECEDENCE: tuple[Flag, ...] = (
    Flag.F,
    Flag.M,
    Flag.C,
    Flag.D,
    Flag.B,
    Flag.T,
    Flag.S,
    Flag.N,
)

# Compact integer codes so numpy can count flags; index into CODES to decode.
CODES: tuple[Flag, ...] = PRECEDENCE
CODE: Mapping[Flag, int] = {flag: i for i, flag in enumerate(CODES)}
NORMAL_CODE = CODE[Flag.N]


def worst(flags: Iterable[Flag]) -> Flag:
    """The flag that takes precedence among several conditions (N if there are none)."""
    return min(flags, key=CODE.__getitem__, default=Flag.N)


def dominant_abnormal(counts: Mapping[Flag, int]) -> Flag:
    """HJ 212 Annex C: an invalid aggregate carries its most frequent abnormal flag.

    Ties go to the flag with higher precedence, so the result never depends on
    dictionary order.
    """
    abnormal = {f: n for f, n in counts.items() if f is not Flag.N and n > 0}
    if not abnormal:
        return Flag.B
    return min(abnormal, key=lambda f: (-abnormal[f], CODE[f]))


def dominant_abnormal_code(counts: np.ndarray) -> int:
    """As dominant_abnormal, on a vector of counts indexed by flag code."""
    abnormal = counts.copy()
    abnormal[NORMAL_CODE] = 0
    if not abnormal.any():
        return CODE[Flag.B]
    # argmax returns the first maximum: CODES are ordered by precedence.
    return int(np.argmax(abnormal))
