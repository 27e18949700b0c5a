"""Reports that read at every span: the HTML report of a day, a month, a quarter and a
year of stored hours opened in headless Chromium (Debian's, as tests/test_status_page.py
drives it). Screenshots go to test-output/; the DOM must show ticks by hour, day, week
and month whose labels never overlap, every missing hour shaded (and only those), the
bypass marked and substituted hours labelled S. Then the month-to-date DRAFT and the
warnings of a configuration without installation date or cap."""

from __future__ import annotations

import itertools
import math
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert

from cemsd.reduction.html import to_html
from cemsd.reduction.production import import_days
from cemsd.reduction.report import build_report, period_name
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import reduction_plant

TZ = ZoneInfo("Asia/Shanghai")
H = 3600.0
INLET, OUTLET = "inlet.n2o_kg_h", "outlet.n2o_kg_h"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"]


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=TZ).timestamp()


# (series, first missing hour in plant time, hours): unsubstituted gaps
GAPS = [(OUTLET, "2026-06-01T05:00", 3), (INLET, "2026-06-01T14:00", 1),
        (OUTLET, "2026-06-17T00:00", 30), (OUTLET, "2026-03-10T00:00", 24),
        (INLET, "2026-11-20T08:00", 12)]
SUBSTITUTED = (OUTLET, "2026-06-01T09:00", 2)  # invalid, substituted (S)
BYPASS = ("2026-06-01T20:00", "2026-06-01T21:30")
SPANS = {  # name -> (from, to, tick unit, title)
    "day": ("2026-06-01", "2026-06-02", "hour", "2026-06-01"),
    "month": ("2026-06-01", "2026-07-01", "day", "2026-06"),
    "quarter": ("2026-04-01", "2026-07-01", "week", "2026-Q2"),
    "year": ("2026-01-01", "2027-01-01", "month", "2026"),
}


def _rows(channel: str, t0: float, n: int, invalid: set[float]) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        ts = t0 + i * H
        bad = ts in invalid
        value = None if bad else (4700 + 300 * math.sin(i / 37) if channel == INLET
                                  else 50 + 12 * math.sin(i / 11))
        rows.append({"channel": channel, "ts": ts, "value": value, "minimum": value,
                     "maximum": value, "n_valid": 0 if bad else 60, "n_expected": 60,
                     "flag": "B" if bad else "N", "reason": None, "unit": "kg/h",
                     "created_at": ts + H})
    return rows


def _hours_of(start: str, n: int) -> set[float]:
    return {at(start) + i * H for i in range(n)}


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pages")
    config, db = reduction_plant(tmp)
    t0, n = at("2026-01-01T00:00"), 365 * 24
    invalid = {s: set() for s in (INLET, OUTLET)}
    for series, start, hours in [*GAPS, SUBSTITUTED]:
        invalid[series] |= _hours_of(start, hours)
    db.insert_aggregates(schema.hours, _rows(INLET, t0, n, invalid[INLET])
                         + _rows(OUTLET, t0, n, invalid[OUTLET]))
    series, start, hours = SUBSTITUTED
    db.insert_aggregates(schema.substitutions, [{
        "channel": series, "ts": ts, "value": 55.0, "unit": "kg/h", "flag": "S",
        "method": "hj75.missing.before_after_mean", "period_kind": "missing",
        "period_start": at(start), "period_hours": hours, "capture_rate": 0.99,
        "source_hours": "[]", "created_at": ts + 2 * H} for ts in sorted(_hours_of(start,
                                                                                    hours))])
    with db.transaction() as conn:  # an event, not an aggregate (no channel, ts, revision)
        conn.execute(insert(schema.bypass_events).values(
            started_at=at(BYPASS[0]), ended_at=at(BYPASS[1]), triggers='["valve"]',
            gas_volume_nm3=0.0, n2o_kg=0.0, n2o_estimated_kg=0.0, method="",
            created_at=at(BYPASS[1])))
    import_days(db, [(date(2026, 1, 1) + timedelta(days=i), 420.0) for i in range(365)],
                "test", t0)
    reports = {}
    for span, (first, after, _, _) in SPANS.items():
        reports[span] = build_report(db, config, at(first + "T00:00"), at(after + "T00:00"),
                                     at("2027-01-02T00:00"))
    db.close()
    return reports


def expected_gaps(report: dict[str, Any], series: str) -> list[tuple[str, int]]:
    """(first hour label, hours) of each missing run of the series within the report."""
    labels = [h["hour"] for h in report["hours"]]
    missing = {datetime.fromtimestamp(ts, TZ).isoformat(timespec="minutes")
               for s, start, n in GAPS if s == series for ts in _hours_of(start, n)}
    runs: list[tuple[str, int]] = []
    for i, label in enumerate(labels):
        if label in missing:
            if runs and i > 0 and labels[i - 1] in missing:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((label, 1))
    return runs


READ_PANELS = """svg => [...svg.querySelectorAll('g.panel')].map(g => ({
  series: g.dataset.series,
  labels: [...g.querySelectorAll('text.tick-label')].map(t => {
    const b = t.getBoundingClientRect(); return {text: t.textContent, left: b.left,
      right: b.right, width: b.width}; }),
  missing: [...g.querySelectorAll('rect.missing')].map(r => {
    const b = r.getBoundingClientRect(); return {from: r.dataset.from,
      hours: Number(r.dataset.hours), width: b.width, height: b.height,
      fill: getComputedStyle(r).fill, opacity: Number(r.getAttribute('fill-opacity'))}; }),
  bypass: g.querySelectorAll('rect.bypass').length,
  s_labels: g.querySelectorAll('text.subst-label').length,
}))"""


async def test_the_report_reads_at_every_span(year: dict[str, Any], output_dir: Path,
                                              chromium: str) -> None:
    from playwright.async_api import async_playwright

    seen: dict[str, Any] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            for span, report in year.items():
                path = output_dir / f"report-{span}.html"
                path.write_text(to_html(report), encoding="utf-8")
                await page.goto(path.as_uri())
                svg = await page.query_selector("svg.chart")
                assert svg is not None, span
                seen[span] = {"unit": await svg.get_attribute("data-unit"),
                              "title": await page.text_content("h1"),
                              "panels": await svg.evaluate(READ_PANELS),
                              "s_rows": await page.eval_on_selector_all(
                                  "table.hours td", "tds => tds.filter(td => "
                                  "td.textContent.startsWith('S (')).length"),
                              "legend": await page.text_content("div.legend")}
                await svg.screenshot(path=str(output_dir / f"report-{span}-chart.png"))
                await page.screenshot(path=str(output_dir / f"report-{span}.png"))
        finally:
            await browser.close()

    for span, (_, _, unit, name) in SPANS.items():
        got = seen[span]
        assert got["unit"] == unit, span
        assert got["title"].endswith(f", {name}"), (span, got["title"])
        for panel in got["panels"]:
            labels = sorted(panel["labels"], key=lambda b: b["left"])
            assert len(labels) >= 4, (span, panel["series"], labels)
            for a, b in itertools.pairwise(labels):
                assert a["right"] <= b["left"], (span, panel["series"], a, b)
            # every missing run shaded, visibly, and nothing else
            series = INLET if panel["series"] == "inlet_kg" else OUTLET
            shaded = [(m["from"], m["hours"]) for m in panel["missing"]]
            assert shaded == expected_gaps(year[span], series), (span, series)
            for m in panel["missing"]:
                assert m["width"] >= 1.4 and m["height"] > 100 and m["opacity"] > 0.3
    assert seen["day"]["panels"][1]["missing"][0]["width"] > 90  # 3 of 24 hours
    assert seen["day"]["panels"][1]["s_labels"] == 1 and seen["day"]["s_rows"] == 2
    assert seen["day"]["panels"][0]["s_labels"] == 0
    assert all(seen[s]["panels"][1]["bypass"] == 1 for s in SPANS)
    assert "hj75.missing.before_after_mean" in seen["month"]["legend"]
    assert "communication fault" in seen["year"]["legend"]
    day = [h for h in year["day"]["hours"] if h["hour"] == "2026-06-01T09:00+08:00"]
    assert day[0]["outlet_flag"] == "B" and day[0]["outlet_method"].startswith("hj75.")


@pytest.mark.parametrize(("first", "after", "name"), [
    ("2026-06-01", "2026-07-01", "2026-06"), ("2026-06-01", "2026-06-02", "2026-06-01"),
    ("2026-04-01", "2026-07-01", "2026-Q2"), ("2026-01-01", "2027-01-01", "2026"),
    ("2026-06-03", "2026-06-10", "2026-06-03 to 2026-06-09"),
    ("2026-05-01", "2026-07-01", "2026-05-01 to 2026-06-30"),
])
def test_the_period_is_named_as_people_name_it(first: str, after: str, name: str) -> None:
    assert period_name(at(first + "T00:00"), at(after + "T00:00"), TZ) == name


def _small_plant(tmp: Path, reduction: dict[str, Any]) -> tuple[Any, Database]:
    config, db = reduction_plant(tmp, reduction, "aa2")
    t0 = at("2026-06-01T00:00")
    db.insert_aggregates(schema.hours, _rows(INLET, t0, 30 * 24, set())
                         + _rows(OUTLET, t0, 30 * 24, set()))
    return config, db


def test_incomplete_production_gives_a_month_to_date_draft(tmp_path: Path) -> None:
    config, db = _small_plant(tmp_path, {"installation_date": "2025-01-01",
                                         "production_cap_t_per_year": 160000})
    import_days(db, [(date(2026, 6, d), 400.0) for d in (*range(1, 11), 12)], "t", 0)
    report = build_report(db, config, at("2026-06-01T00:00"), at("2026-07-01T00:00"), 2e9)
    db.close()
    period, result = report["period"], report["result"]
    assert period["draft"] and period["name"] == "2026-06"
    assert (period["from"], period["to"], period["hours"]) == (
        "2026-06-01T00:00+08:00", "2026-06-11T00:00+08:00", 240)
    assert report["production"]["total_t"] == 4000.0
    assert not result["creditable"] and result["credited_co2e_t"] == 0
    assert result["reasons"][0].startswith("DRAFT: production is known only to 2026-06-10")
    assert result["er_t"] > 0  # computed and shown
    page = to_html(report)
    assert "(DRAFT)</h1>" in page and 'class="draft"' in page and "Not creditable" in page


def test_a_period_without_production_on_its_first_day_is_still_refused(tmp_path: Path
                                                                      ) -> None:
    from cemsd.reduction.production import ProductionError

    config, db = _small_plant(tmp_path, {})
    import_days(db, [(date(2026, 6, 2), 400.0)], "t", 0)
    with pytest.raises(ProductionError, match="2026-06-01"):
        build_report(db, config, at("2026-06-01T00:00"), at("2026-07-01T00:00"), 2e9)
    db.close()


def test_every_report_lacking_installation_date_or_cap_warns(tmp_path: Path) -> None:
    config, db = _small_plant(tmp_path, {})
    import_days(db, [(date(2026, 6, 1), 400.0)], "t", 0)
    report = build_report(db, config, at("2026-06-01T00:00"), at("2026-06-02T00:00"), 2e9)
    db.close()
    warnings = report["result"]["warnings"]
    assert any(w.startswith("[reduction] installation_date not set") for w in warnings)
    assert any(w.startswith("[reduction] production_cap_t_per_year not set")
               for w in warnings)
    assert "installation_date not set" in to_html(report)


def test_the_example_configuration_has_a_reduction_section() -> None:
    from cemsd.config import config_warnings, load_config
    from helpers import REPO

    config = load_config(REPO / "config" / "example-plant.toml")
    assert config.reduction.installation_date is not None
    assert config.reduction.production_cap_t_per_year is not None
    assert config_warnings(config) == []
