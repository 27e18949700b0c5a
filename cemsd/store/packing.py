"""Readings packed into blocks: one database row holds many readings as columns.

A block is the readings of one writer batch (all channels) within `BLOCK_SPAN_US`,
sorted by time (ties keep their arrival order). Its row stores the first reading's time
(`start`, integer microseconds since the Unix epoch, UTC), the count and one BLOB:

    raw DEFLATE of: header (version, n, number of distinct reasons)
                    channel ids      uint16[n]   (ids of the reading_channels table)
                    time deltas      uint32[n]   microseconds from the previous reading
                    values           float64[n]  (NaN where missing)
                    flags            uint8[n]    ASCII letter, | MISSING when value is None
                    reason indexes   uint16[n]   only if the block has reasons (0: none)
                    reasons          UTF-8 JSON list of the block's distinct reasons

Multi-byte columns are stored byte-plane by byte-plane ("shuffled"), so the bytes that
barely change between readings (exponents, high bytes of ids and deltas) sit together
and compress to almost nothing: 7-11 bytes a reading on disk (docs/decisions/0220).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from cemsd.errors import StorageError

VERSION = 1
BLOCK_SPAN_US = 10_000_000  # a block covers at most 10 s: a read of [t0, t1) decodes the
#                            blocks starting from t0 - 10 s (a minute's read: 1/6 extra)
MAX_BLOCK_READINGS = 65_535
MAX_CHANNEL_ID = 65_535
MIGRATION_CHUNK = 50_000  # readings converted at a time by migration 0013 (bounded memory)
MISSING = 0x80  # flag bit: the value is None (NaN is a value of its own)
_HEADER = struct.Struct("<BII")
_LEVEL = 1  # fastest DEFLATE: the columns are shuffled, a higher level gains ~3 %
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Columns:
    """Readings as columns, in storage order."""

    channel: np.ndarray  # uint16 ids
    ts_us: np.ndarray  # int64 microseconds since the epoch
    value: np.ndarray  # float64
    flag: np.ndarray  # uint8, MISSING bit set where the value is None
    reason: list[str | None]

    def __len__(self) -> int:
        return len(self.ts_us)

    def take(self, index: np.ndarray) -> Columns:
        return Columns(self.channel[index], self.ts_us[index], self.value[index],
                       self.flag[index], [self.reason[i] for i in index.tolist()])


def empty() -> Columns:
    return Columns(np.zeros(0, np.uint16), np.zeros(0, np.int64), np.zeros(0),
                   np.zeros(0, np.uint8), [])


def concat(parts: Sequence[Columns]) -> Columns:
    if not parts:
        return empty()
    return Columns(np.concatenate([p.channel for p in parts]),
                   np.concatenate([p.ts_us for p in parts]),
                   np.concatenate([p.value for p in parts]),
                   np.concatenate([p.flag for p in parts]),
                   [r for p in parts for r in p.reason])


# --- from and to Python values -----------------------------------------------------------------


def epoch_us(ts: Any) -> int:
    """Epoch seconds or an aware datetime -> integer microseconds (UTC)."""
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise StorageError(f"naive datetime {ts.isoformat()} given for a reading time "
                               "(UTC times must be aware)")
        delta = ts - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return round(ts * 1_000_000)
    raise StorageError(f"reading time {ts!r} is neither epoch seconds nor a datetime")


def to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def flag_byte(flag: str, value: float | None) -> int:
    if not isinstance(flag, str) or len(flag) != 1 or not flag.isascii():
        raise StorageError(f"reading flag {flag!r} is not one ASCII letter")
    return ord(flag) | (MISSING if value is None else 0)


def columns_of(rows: Sequence[tuple[Any, Any, Any, Any, Any]],
               ids: dict[str, int]) -> Columns:
    """(channel, ts, value, flag, reason) tuples -> columns; `ids` maps every channel.
    Column at a time: the writer's cost per reading is a few list and array copies."""
    n = len(rows)
    channels, times, values, flags, reasons = zip(*rows, strict=True) if n else ([],) * 5
    channel = np.array([ids[c] for c in channels], np.uint16)
    try:
        value = np.array(values, np.float64)  # None -> NaN
    except (TypeError, ValueError) as exc:
        raise StorageError(f"a reading value is not a number: {exc}") from exc
    missing = np.zeros(n, bool)
    if np.isnan(value).any():
        missing = np.fromiter((v is None for v in values), bool, n)
    return Columns(channel, _times_us(times), value,
                   _flag_bytes(flags) | np.where(missing, MISSING, 0).astype(np.uint8),
                   list(reasons))


def _times_us(times: Sequence[Any]) -> np.ndarray:
    if not all(type(t) is float for t in times):  # datetimes, ints: one by one
        return np.array([epoch_us(t) for t in times], np.int64)
    seconds = np.array(times, np.float64)  # the writer's epoch seconds
    if not np.isfinite(seconds).all():
        raise StorageError(f"reading time {seconds[~np.isfinite(seconds)][0]} is not a time")
    return np.round(seconds * 1_000_000).astype(np.int64)


def _flag_bytes(flags: Sequence[Any]) -> np.ndarray:
    code = {flag: flag_byte(flag, 0.0) for flag in set(flags)}
    return np.array([code[f] for f in flags], np.uint8)


def rows(cols: Columns, names: dict[int, str],
         make: Callable[[Iterable[Any]], Any] = tuple) -> list[Any]:
    """Columns -> (channel, ts, value, flag, reason) rows made by `make`."""
    # from float seconds: exact to the microsecond (a double carries 16 digits)
    times = [datetime.fromtimestamp(t, UTC) for t in (cols.ts_us / 1e6).tolist()]
    return [make((names[c], ts, None if f & MISSING else v, chr(f & ~MISSING), reason))
            for c, ts, v, f, reason in zip(cols.channel.tolist(), times, cols.value.tolist(),
                                           cols.flag.tolist(), cols.reason, strict=True)]


# --- blocks --------------------------------------------------------------------------------------


def blocks(cols: Columns) -> Iterator[tuple[int, Columns]]:
    """Split readings into blocks (start_us, columns): sorted by time, stable, each within
    BLOCK_SPAN_US of its start and at most MAX_BLOCK_READINGS long."""
    order = np.argsort(cols.ts_us, kind="stable")
    ts = cols.ts_us[order]
    i = 0
    while i < len(ts):
        end = int(np.searchsorted(ts, ts[i] + BLOCK_SPAN_US, side="left"))
        end = min(max(end, i + 1), i + MAX_BLOCK_READINGS)
        yield int(ts[i]), cols.take(order[i:end])
        i = end


def _shuffle(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a.view(np.uint8).reshape(len(a), a.itemsize).T).tobytes()


def _unshuffle(raw: memoryview, n: int, dtype: Any) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    planes = np.frombuffer(raw, np.uint8, n * size).reshape(size, n)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(n)


def pack(cols: Columns) -> bytes:
    """Columns sorted by time (as `blocks` yields them) -> the block's BLOB."""
    n = len(cols)
    deltas = np.diff(cols.ts_us, prepend=cols.ts_us[:1]).astype(np.uint32)
    distinct = sorted({r for r in cols.reason if r is not None})
    parts = [_HEADER.pack(VERSION, n, len(distinct)), _shuffle(cols.channel.astype("<u2")),
             _shuffle(deltas.astype("<u4")), _shuffle(cols.value.astype("<f8")),
             cols.flag.tobytes()]
    if distinct:
        index = {r: i + 1 for i, r in enumerate(distinct)}
        codes = np.fromiter((0 if r is None else index[r] for r in cols.reason), "<u2", n)
        parts += [_shuffle(codes), json.dumps(distinct).encode()]
    return zlib.compress(b"".join(parts), _LEVEL, wbits=-15)


def unpack(blob: bytes, start_us: int) -> Columns:
    raw = memoryview(zlib.decompress(blob, wbits=-15))
    version, n, n_reasons = _HEADER.unpack_from(raw)
    if version != VERSION:
        raise StorageError(f"reading block at {to_datetime(start_us).isoformat()} has "
                           f"format {version}; this cemsd reads format {VERSION}")
    at = _HEADER.size
    channel = _unshuffle(raw[at:], n, "<u2")
    at += 2 * n
    ts_us = start_us + np.cumsum(_unshuffle(raw[at:], n, "<u4"), dtype=np.int64)
    at += 4 * n
    value = _unshuffle(raw[at:], n, "<f8")
    at += 8 * n
    flag = np.frombuffer(raw[at:], np.uint8, n).copy()
    at += n
    reason: list[str | None] = [None] * n
    if n_reasons:
        codes = _unshuffle(raw[at:], n, "<u2")
        distinct = [None, *json.loads(bytes(raw[at + 2 * n:]))]
        reason = [distinct[c] for c in codes.tolist()]
    return Columns(channel, ts_us, value, flag, reason)
