"""The compact layout of GET /v1/hours/columns (`layout=compact`, decision 0261): the same
information as the default arrays, with the arrays that are almost constant as runs.

Standard library only, so a registry can copy this file as its decoder:
`decode(json.loads(body))` gives exactly what `json.loads` gives for the default answer of
the same request.

Per channel, `value` stays one JSON array of the hourly means (the float repr round-trips
exactly); the other arrays are runs, flat in one array (thousands of small nested lists
would cost the client's parser and garbage collector more than the items they replace):
- `flag`, `n_valid`, `revision`, `substitute_value`, `substitute_method` and `units`
  (null when the unit did not change in the span): `item, count, item, count, ...`,
  `count` hours in a row of that item;
- `start_epoch`: `first, step, count, ...`, `count` hours starting at `first`,
  `first + step`, ...;
- `seal_seq`, nested: `[first, delta, delta, ...]`, hours in a row that are sealed, the
  first at link `first`, each next one at the previous one plus its delta (links are
  given out across channels, so the steps vary); `[null, count]`: `count` hours not
  sealed.
Runs restart at each UTC day (the server keeps sealed days pre-serialised), so two
adjacent runs may carry the same item.

The hourly means are most of the client's parsing in both layouts.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

# the arrays kept as [item, count], [first, step, count] and [first, delta, ...] runs
RUNS = ("flag", "n_valid", "revision", "substitute_value", "substitute_method")
STEPS = ("start_epoch",)
DELTAS = ("seal_seq",)
LAYOUT = "compact"


def _same(a: Any, b: Any) -> bool:
    # 1 and 1.0 (and True) are equal in Python but not the same JSON item
    return type(a) is type(b) and a == b


def encode_runs(items: list[Any]) -> list[Any]:
    """[a, a, b] -> [a, 2, b, 1]."""
    runs: list[list[Any]] = []
    for item in items:
        if runs and _same(runs[-1][0], item):
            runs[-1][1] += 1
        else:
            runs.append([item, 1])
    return [x for run in runs for x in run]


def encode_steps(items: list[int | None]) -> list[Any]:
    """[5, 7, 9, None, None] -> [5, 2, 3, None, 0, 2]: integers as arithmetic runs, nulls
    as runs of nulls (an hour whose start could not be read)."""
    runs: list[list[Any]] = []
    for item in items:
        if runs and _extends(runs[-1], item):
            first, step, count = runs[-1]
            runs[-1] = [first, item - first if count == 1 and item is not None else step,
                        count + 1]
        else:
            runs.append([item, 0, 1])
    return [x for run in runs for x in run]


def _extends(run: list[Any], item: int | None) -> bool:
    first, step, count = run
    if first is None or item is None:
        return first is None and item is None
    return count == 1 or item == first + step * count


def encode_deltas(items: list[int | None]) -> list[list[Any]]:
    """[5, 7, 8, None, None, 3] -> [[5, 2, 1], [None, 2], [3]]."""
    runs: list[list[Any]] = []
    previous: int | None = None
    for item in items:
        if item is None:
            if runs and runs[-1][0] is None:
                runs[-1][1] += 1
            else:
                runs.append([None, 1])
        elif previous is None:
            runs.append([item])
        else:
            runs[-1].append(item - previous)
        previous = item
    return runs


DAY_SECONDS = 86400


def encode_channel(channel: dict[str, Any]) -> dict[str, Any]:
    """One channel of the default answer -> that channel in the compact layout, its runs
    restarting at each UTC day as the edge's kept days have them (the fleet's route builds
    its answer whole, then encodes it)."""
    days: dict[int, list[int]] = {}
    for i, start in enumerate(channel["start_epoch"]):
        days.setdefault(start // DAY_SECONDS, []).append(i)

    def by_day(name: str, encode: Any) -> list[Any]:
        items = channel[name]
        return [x for hours in days.values() for x in encode([items[i] for i in hours])]

    units = channel["units"]
    out = {"channel": channel["channel"], "unit": channel["unit"],
           "units": None if units is None else by_day("units", encode_runs)}
    for name in ("start_epoch", "value", *RUNS, "seal_seq"):
        out[name] = (by_day(name, encode_steps) if name in STEPS else
                     by_day(name, encode_deltas) if name in DELTAS else
                     by_day(name, encode_runs) if name in RUNS else channel[name])
    return out


def decode_runs(runs: list[Any]) -> list[Any]:
    items: list[Any] = []
    flat = iter(runs)
    for item, count in zip(flat, flat, strict=True):
        items += [item] * count
    return items


def decode_deltas(runs: list[list[Any]]) -> list[Any]:
    items: list[Any] = []
    for run in runs:
        items += [None] * run[1] if run[0] is None else accumulate(run)
    return items


def decode_steps(runs: list[Any]) -> list[Any]:
    items: list[Any] = []
    flat = iter(runs)
    for first, step, count in zip(flat, flat, flat, strict=True):
        items.extend([None] * count if first is None
                     else range(first, first + step * count, step) if step
                     else [first] * count)
    return items


def decode_channel(channel: dict[str, Any]) -> dict[str, Any]:
    """One channel of the compact answer -> that channel as the default answer has it."""
    units = channel["units"]
    out = {"channel": channel["channel"], "unit": channel["unit"],
           "units": None if units is None else decode_runs(units)}
    for name in ("start_epoch", "value", *RUNS, "seal_seq"):  # the default answer's order
        items = channel[name]
        out[name] = (decode_steps(items) if name in STEPS else decode_deltas(items)
                     if name in DELTAS else decode_runs(items) if name in RUNS else items)
    return out


def decode(answer: dict[str, Any]) -> dict[str, Any]:
    """The compact answer -> the default answer of the same request."""
    head = {key: value for key, value in answer.items() if key not in ("layout", "channels")}
    return {**head, "channels": [decode_channel(c) for c in answer["channels"]]}
