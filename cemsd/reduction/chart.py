"""The report's SVG chart of hourly inlet and outlet N2O mass, readable from a day to a
year: ticks by hour, day, week or month with labels thinned so they never overlap, missing
hours shaded, bypass hours marked, substituted hours drawn and labelled S."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import datetime
from html import escape
from typing import Any

WIDTH, PANEL, GAP, LEFT, RIGHT = 960, 170, 56, 70, 20
PLOT = WIDTH - LEFT - RIGHT
CHAR_PX, LABEL_GAP = 6.5, 8  # 10 px labels: an estimate of a character's width, and room
SUBSTITUTE_LABEL_PX = 12  # S labels closer than this to the previous one are left out

# span (hours, at most) -> tick unit
UNITS = ((48, "hour"), (24 * 62, "day"), (24 * 140, "week"), (10**9, "month"))
FORMATS = {"hour": "%H:%M", "day": "%m-%d", "week": "%m-%d", "month": "%Y-%m"}


def tick_unit(n_hours: int) -> str:
    return next(unit for limit, unit in UNITS if n_hours <= limit)


def _starts_unit(t: datetime, unit: str) -> bool:
    if unit == "hour":
        return True
    midnight = t.hour == 0
    if unit == "day":
        return midnight
    if unit == "week":
        return midnight and t.weekday() == 0
    return midnight and t.day == 1


def ticks(hours: list[dict[str, Any]]) -> tuple[str, list[tuple[int, str, bool]]]:
    """The unit and (hour index, label, labelled) of each tick: every unit boundary gets a
    tick; labels go on every k-th so that neighbours keep LABEL_GAP apart."""
    n = len(hours)
    unit = tick_unit(n)
    starts = [datetime.fromisoformat(h["hour"]) for h in hours]
    found = [(i, t.strftime(FORMATS[unit])) for i, t in enumerate(starts)
             if _starts_unit(t, unit)]
    if len(found) < 2:
        return unit, [(i, text, True) for i, text in found]
    spacing = min(b[0] - a[0] for a, b in itertools.pairwise(found)) * PLOT / n
    width = max(len(text) for _, text in found) * CHAR_PX + LABEL_GAP
    every = max(1, int(-(-width // spacing)))
    return unit, [(i, text, k % every == 0) for k, (i, text) in enumerate(found)]


def runs(flags: list[bool]) -> Iterator[tuple[int, int]]:
    """(first index, length) of each run of True."""
    start = None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            yield start, i - start
            start = None


def substituted(method: str) -> bool:
    return method not in ("measured", "missing")


def svg_chart(hours: list[dict[str, Any]]) -> str:
    n = len(hours)
    if not n:
        return ""

    def x(i: float) -> float:
        return LEFT + PLOT * i / n

    unit, marks = ticks(hours)
    parts = []
    for k, (key, method, label) in enumerate((
            ("inlet_kg", "inlet_method", "inlet N2O, kg/h (feeds the baseline)"),
            ("outlet_kg", "outlet_method", "outlet N2O, kg/h (project emissions)"))):
        top = 24 + k * (PANEL + GAP)
        parts += _panel(hours, key, method, label, top, x, marks)
    parts.append(_legend(24 + 2 * (PANEL + GAP) - 16))
    height = 24 + 2 * (PANEL + GAP)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-unit="{unit}" '
            f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
            f'aria-label="hourly inlet and outlet N2O mass">{"".join(parts)}</svg>')


def _panel(hours: list[dict[str, Any]], key: str, method: str, label: str, top: float,
           x: Callable[[float], float], marks: list[tuple[int, str, bool]]) -> list[str]:
    n = len(hours)
    values = [h[key] for h in hours]
    peak = max((v for v in values if v is not None), default=1.0) or 1.0
    bottom = top + PANEL
    out = [f'<g class="panel" data-series="{key}">',
           f'<text x="4" y="{top - 8}" font-size="12">{escape(label)} (max {peak:,.1f})</text>']
    for first, length in runs([bool(h["bypass_kg"] or h["vent_kg"]) for h in hours]):
        ids = sorted({e for h in hours[first:first + length] for e in h["bypass_events"]})
        out.append(f'<rect class="bypass" x="{x(first):.2f}" y="{top}" '
                   f'width="{max(x(first + length) - x(first), 1.5):.2f}" height="{PANEL}" '
                   f'fill="#f4b6b6" data-from="{escape(hours[first]["hour"])}" '
                   f'data-hours="{length}"><title>bypass or venting, event(s) '
                   f'{", ".join(map(str, ids))}</title></rect>')
    for first, length in runs([v is None for v in values]):
        out.append(f'<rect class="missing" x="{x(first):.2f}" y="{top}" '
                   f'width="{max(x(first + length) - x(first), 1.5):.2f}" height="{PANEL}" '
                   f'fill="#bbb" fill-opacity="0.55" data-from="{escape(hours[first]["hour"])}"'
                   f' data-hours="{length}"><title>missing: {length} h from '
                   f'{escape(hours[first]["hour"])}</title></rect>')
    out.append(f'<rect x="{x(0)}" y="{top}" width="{PLOT}" height="{PANEL}" fill="none" '
               'stroke="#999"/>')
    out.append(f'<text x="{x(0) - 4}" y="{top + 10}" font-size="10" text-anchor="end">'
               f'{peak:,.0f}</text><text x="{x(0) - 4}" y="{bottom}" font-size="10" '
               'text-anchor="end">0</text>')
    for i, text, labelled in marks:
        out.append(f'<line class="tick" x1="{x(i):.2f}" y1="{bottom}" x2="{x(i):.2f}" '
                   f'y2="{bottom + (5 if labelled else 3)}" stroke="#999"/>')
        if labelled:
            out.append(f'<text class="tick-label" x="{x(i):.2f}" y="{bottom + 15}" '
                       f'font-size="10" text-anchor="middle">{escape(text)}</text>')

    def y(v: float) -> float:
        return bottom - PANEL * v / peak

    for segment in _segments(values):
        points = " ".join(f"{x(i + 0.5):.2f},{y(values[i]):.1f}" for i in segment)
        out.append(f'<polyline fill="none" stroke="#1f5fa8" stroke-width="1.1" '
                   f'points="{points}"/>')
    last_label = -1e9
    for first, length in runs([substituted(h[method]) and h[key] is not None for h in hours]):
        for i in range(first, first + length):
            out.append(f'<circle class="substituted" cx="{x(i + 0.5):.2f}" '
                       f'cy="{y(values[i]):.1f}" r="{2.5 if n <= 800 else 1.6}" '
                       f'fill="#d08a00"><title>{escape(hours[i]["hour"])} S: '
                       f'{escape(hours[i][method])}</title></circle>')
        centre = x(first + length / 2)
        if centre - last_label >= SUBSTITUTE_LABEL_PX:
            out.append(f'<text class="subst-label" x="{centre:.2f}" '
                       f'y="{max(top + 10, y(values[first]) - 6):.1f}" font-size="10" '
                       'font-weight="bold" fill="#a86a00" text-anchor="middle">S</text>')
            last_label = centre
    out.append("</g>")
    return out


def _segments(values: list[float | None]) -> Iterator[list[int]]:
    """Indices of each run of hours with a value: a missing hour breaks the line."""
    for first, length in runs([v is not None for v in values]):
        yield list(range(first, first + length))


def _legend(y: float) -> str:
    items = [("#1f5fa8", "line", "hourly mass (measured or substituted)"),
             ("#d08a00", "dot", "S substituted hour"),
             ("#bbb", "box", "missing hour (no value)"),
             ("#f4b6b6", "box", "bypass or venting")]
    out, x = [f'<g class="legend" transform="translate({LEFT},{y})">'], 0.0
    for colour, shape, text in items:
        if shape == "line":
            out.append(f'<line x1="{x}" y1="-4" x2="{x + 14}" y2="-4" stroke="{colour}" '
                       'stroke-width="2"/>')
        elif shape == "dot":
            out.append(f'<circle cx="{x + 7}" cy="-4" r="3" fill="{colour}"/>')
        else:
            out.append(f'<rect x="{x}" y="-10" width="14" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 18}" y="0" font-size="11">{escape(text)}</text>')
        x += 18 + len(text) * 6.2 + 18
    out.append("</g>")
    return "".join(out)
