"""The parts of the reduction work, without a daemon: production and the cap, the start-up
period, bypass masses from stored minutes, the bypass monitor's debounce."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from cemsd.flags import Flag
from cemsd.plan import compile_plan
from cemsd.points import PointCalculator
from cemsd.qaqc.substitution import series_rules
from cemsd.readings import Reading
from cemsd.reduction.bypass import BypassMonitor
from cemsd.reduction.inputs import hour_inputs, startup_end
from cemsd.reduction.masses import bypass_mass
from cemsd.reduction.production import (
    ProductionError,
    from_counter,
    import_days,
    imported,
    parse_csv,
    period_production,
    prorated_cap,
)
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import write_config

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 6, 1, tzinfo=TZ).timestamp()
H = 3600.0


def _config(tmp: Path, reduction: dict | None = None, bypass_point: bool = False):
    points = {"inlet": {"flow_basis": "standard_dry"}, "outlet": {"flow_basis": "standard_dry"}}
    devices = [
        {"name": "a", "bus": "b", "device_id": 1, "profile": "n2o-analyzer-percent",
         "poll_interval": 5.0},
        {"name": "plant", "bus": "b", "device_id": 2, "profile": "plant-io", "poll_interval": 5},
    ]
    if bypass_point:
        points["duct"] = {"flow_basis": "standard_dry"}
        devices.append({"name": "fm", "bus": "b", "device_id": 3, "profile": "stack-flow-meter",
                        "poll_interval": 5.0, "point": "duct", "channels": {
                            k: {"enabled": False} for k in
                            ("velocity", "temperature", "pressure", "moisture")} | {
                            "volume_flow": {"role": "flow", "unit": "m3/h"}}})
    return write_config(tmp, {
        "plant": {"id": "p"}, "points": points,
        "reduction": reduction or {},
        "buses": [{"name": "b", "transport": "tcp", "host": "127.0.0.1", "port": 1,
                   "timeout": 0.2, "retries": 0}],
        "devices": devices,
    })


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'x.db'}")
    database.upgrade()
    yield database
    database.close()


def _rows(table, channel: str, start: float, values: list, step: float, flag: str = "N"
          ) -> list[dict]:
    return [{"channel": channel, "ts": start + i * step, "value": v, "minimum": v, "maximum": v,
             "n_valid": 60 if v is not None else 0, "n_expected": 60,
             "flag": flag if v is not None else "B", "reason": None, "unit": "x",
             "created_at": start} for i, v in enumerate(values)]


# --- production and the cap ------------------------------------------------------------------


def test_the_cap_is_prorated_by_day_across_months_and_years() -> None:
    days = [date(2027, 12, 30), date(2027, 12, 31), date(2028, 1, 1), date(2028, 1, 2)]
    assert prorated_cap(365_000.0, days) == pytest.approx(2 * 1000 + 2 * 365_000 / 366)
    october = [date(2026, 10, d) for d in range(1, 32)]
    assert prorated_cap(150_000.0, october) == pytest.approx(150_000 * 31 / 365)


def test_missing_production_days_are_named(tmp_path: Path, db: Database) -> None:
    config = _config(tmp_path)
    import_days(db, [(date(2026, 10, d), 400.0) for d in range(1, 32) if d not in (7, 19)],
                "test", T0)
    t0 = datetime(2026, 10, 1, tzinfo=TZ).timestamp()
    t1 = datetime(2026, 11, 1, tzinfo=TZ).timestamp()
    with pytest.raises(ProductionError, match="missing for 2 day"
                       r".*2026-10-07, 2026-10-19.*nothing is credited"):
        period_production(db, config, t0, t1)
    import_days(db, [(date(2026, 10, 7), 390.0), (date(2026, 10, 19), 410.0)], "late", T0)
    days = period_production(db, config, t0, t1)
    assert len(days) == 31 and sum(days.values()) == pytest.approx(29 * 400 + 800)


def test_an_import_revises_changed_days_only(db: Database) -> None:
    assert import_days(db, [(date(2026, 6, 1), 400.0), (date(2026, 6, 2), 410.0)], "a", T0) \
        == {"added": 2, "changed": 0}
    assert import_days(db, [(date(2026, 6, 1), 400.0), (date(2026, 6, 2), 415.0)], "b", T0) \
        == {"added": 0, "changed": 1}
    assert imported(db, [date(2026, 6, 1), date(2026, 6, 2)]) == {
        date(2026, 6, 1): 400.0, date(2026, 6, 2): 415.0}
    rows = db.fetch(schema.production_days.select().order_by(schema.production_days.c.id))
    assert [(r.revision, r.supersedes) for r in rows] == [(0, None), (0, None), (1, rows[1].id)]


def test_csv_problems_name_their_lines() -> None:
    text = "date,tonnes\n2026-06-01,400\n2026-06-02,abc\n2026-06-01,10\n2026-06-04,-5\n"
    with pytest.raises(ProductionError) as info:
        parse_csv(text, "p.csv")
    assert str(info.value).splitlines() == [
        "p.csv:3: cannot read '2026-06-02', 'abc'", "p.csv:4: 2026-06-01 appears twice",
        "p.csv:5: tonnes must be zero or more, not -5.0"]
    with pytest.raises(ProductionError, match="header"):
        parse_csv("day,t\n", "p.csv")


def test_production_from_the_counter(tmp_path: Path, db: Database) -> None:
    config = _config(tmp_path, {"production": "counter"})
    counter = "plant.production_counter"
    start = T0 - 2 * H  # 22:00 the day before
    values = [1000.0 + 18 * i for i in range(26)]  # 18 t/h, to 23:00 on 1 June
    db.insert_aggregates(schema.hours, _rows(schema.hours, counter, start, values, H))
    days = from_counter(db, config, [date(2026, 6, 1)])
    assert days == {date(2026, 6, 1): pytest.approx(18 * 24)}
    assert from_counter(db, config, [date(2026, 6, 2)]) == {}  # no end-of-day value yet


# --- the start-up test period -----------------------------------------------------------------


@pytest.mark.parametrize(("installed", "months", "end"), [
    ("2025-01-31", 9, "2025-10-31"), ("2025-05-31", 9, "2026-02-28"),
    ("2024-06-15", 0, "2024-06-15"), ("2023-08-31", 6, "2024-02-29")])
def test_startup_ends_after_its_months(tmp_path: Path, installed: str, months: int,
                                       end: str) -> None:
    config = _config(tmp_path, {"installation_date": installed, "startup_months": months})
    expected = datetime.combine(date.fromisoformat(end), datetime.min.time(), TZ).timestamp()
    assert startup_end(config) == expected


def test_startup_hours_are_tagged_in_the_inputs(tmp_path: Path, db: Database) -> None:
    config = _config(tmp_path, {"installation_date": "2025-09-01"})  # ends 2026-06-01 00:00
    for name in ("inlet.n2o_kg_h", "outlet.n2o_kg_h"):
        db.insert_aggregates(schema.hours, _rows(schema.hours, name, T0 - 2 * H,
                                                 [100.0] * 4, H))
    hours, _, _ = hour_inputs(db, config, T0 - 2 * H, T0 + 2 * H, T0 + 3 * H)
    assert [h.startup for h in hours] == [True, True, False, False]
    assert config.reduction.startup_months == 9


def test_more_than_nine_months_of_startup_is_refused(tmp_path: Path) -> None:
    from cemsd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"reduction\.startup_months"):
        _config(tmp_path, {"startup_months": 10})


# --- bypass masses ------------------------------------------------------------------------------


def _minutes(db: Database, channel: str, values: list, start: float = T0) -> None:
    db.insert_aggregates(schema.minutes, _rows(schema.minutes, channel, start, values, 60.0))


def test_bypass_mass_from_a_bypass_duct_meter(tmp_path: Path, db: Database) -> None:
    config = _config(tmp_path, {"bypass_point": "duct"}, bypass_point=True)
    _minutes(db, "inlet.n2o_mg_m3", [400_000.0] * 10)
    _minutes(db, "duct.flow_nm3_h", [6000.0] * 10)
    mass = bypass_mass(db, config.reduction, config.abatement_units()[0], T0 + 30,
                       T0 + 5 * 60 + 30)  # 5 minutes, ragged
    assert mass.n2o_kg == pytest.approx(400_000 * 6000 * 1e-6 * 5 / 60)
    assert mass.gas_volume_nm3 == pytest.approx(6000 * 5 / 60)
    assert mass.method == "measured_inlet_x_bypass_flow: 5 min" and mass.n2o_estimated_kg == 0


def test_bypass_mass_falls_back_to_the_inlet_then_to_the_estimate(tmp_path: Path,
                                                                  db: Database) -> None:
    config = _config(tmp_path)
    # a history of valid inlet hours: the largest is 5000 kg/h, 10 hours before
    hours = [4000.0] * 30
    hours[20] = 5000.0
    db.insert_aggregates(schema.hours, _rows(schema.hours, "inlet.n2o_kg_h", T0 - 30 * H,
                                             hours, H))
    _minutes(db, "inlet.n2o_kg_h", [4500.0] * 3 + [None] * 3)
    mass = bypass_mass(db, config.reduction, config.abatement_units()[0], T0, T0 + 6 * 60)
    assert mass.n2o_kg == pytest.approx(4500 * 3 / 60 + 5000 * 3 / 60)
    assert mass.n2o_estimated_kg == pytest.approx(5000 * 3 / 60)
    assert mass.method == ("estimated_max_hourly_inlet_720h: 3 min; measured_inlet: 3 min")


def test_the_estimate_looks_back_only_as_far_as_configured(tmp_path: Path,
                                                           db: Database) -> None:
    config = _config(tmp_path, {"bypass": {"vent_lookback_hours": 5}})
    hours = [4000.0] * 30
    hours[20] = 5000.0  # 10 hours before: outside a 5-hour look-back
    db.insert_aggregates(schema.hours, _rows(schema.hours, "inlet.n2o_kg_h", T0 - 30 * H,
                                             hours, H))
    mass = bypass_mass(db, config.reduction, config.abatement_units()[0], T0, T0 + 60)
    assert mass.n2o_estimated_kg == pytest.approx(4000 / 60)


# --- the monitor's debounce -------------------------------------------------------------------


def _monitor(tmp_path: Path, debounce: float = 60.0) -> BypassMonitor:
    config = _config(tmp_path, {"bypass": {"debounce_s": debounce}})
    monitor = BypassMonitor(config)
    monitor._channels = monitor._signal_channels(SimpleNamespace(plan=compile_plan(config)))
    return monitor


def _feed(monitor: BypassMonitor, ts: float, **values: float) -> None:
    monitor._observe([Reading(f"plant.{k}", ts, v, Flag.N) for k, v in values.items()])


def _queued(monitor: BypassMonitor) -> list[tuple[str, float, list[str]]]:
    out = []
    while not monitor._work.empty():
        action, event, detail = monitor._work.get_nowait()
        if action == "open":
            out.append((action, event.start, detail))
        else:
            out.append((action, detail, sorted(event.triggers)))
    return out


def test_debounce_ignores_blips_and_dates_events_from_their_first_reading(tmp_path: Path
                                                                          ) -> None:
    async def run() -> list:
        monitor = _monitor(tmp_path)
        normal = {"bypass_position": 0.0, "abatement_running": 1.0, "production_running": 1.0}
        for i in range(6):
            _feed(monitor, T0 + 5 * i, **normal)
        _feed(monitor, T0 + 30, **{**normal, "bypass_position": 80.0})  # 10 s blip
        _feed(monitor, T0 + 40, **normal)
        for t in range(100, 200, 5):  # opened at 100 s for good
            _feed(monitor, T0 + t, **{**normal, "bypass_position": 80.0})
        _feed(monitor, T0 + 200, **{**normal, "bypass_position": 80.0, "abatement_running": 0})
        for t in range(300, 400, 5):
            _feed(monitor, T0 + t, **normal)
        return _queued(monitor)

    assert asyncio.run(run()) == [("open", T0 + 100, ["valve"]),
                                  ("close", T0 + 300, ["abatement_stopped", "valve"])]


def test_a_stopped_unit_is_no_bypass_while_production_is_stopped(tmp_path: Path) -> None:
    async def run() -> list:
        monitor = _monitor(tmp_path, debounce=0)
        _feed(monitor, T0, bypass_position=0.0, abatement_running=0.0, production_running=0.0)
        _feed(monitor, T0 + 5, bypass_position=0.0, abatement_running=0.0,
              production_running=1.0)
        return _queued(monitor)

    assert asyncio.run(run()) == [("open", T0 + 5, ["abatement_stopped"])]


# --- which side a substituted series feeds -----------------------------------------------------


def test_the_inlet_feeds_the_baseline_and_the_outlet_project_emissions(tmp_path: Path) -> None:
    config = _config(tmp_path, {"inlet_point": "inlet", "outlet_point": "outlet"})
    plan = compile_plan(config)
    derived = PointCalculator(config, plan).derived
    names = [d.name for d in derived] + ["a.n2o"]
    rules = series_rules(config, derived, names)
    inlet_inputs = {i for d in derived if d.point == "inlet" for i in d.inputs}
    assert inlet_inputs, "the inlet point has measured inputs"
    for name in names:
        baseline = name.startswith("inlet.") or name in inlet_inputs
        assert rules[name].side == ("baseline" if baseline else "project"), name
    assert {r.baseline for r in rules.values()} == {"lowest"}
    assert {r.window for r in rules.values()} == {"trailing"}


def test_inlet_substitutes_of_the_wrong_side_are_not_used(tmp_path: Path, db: Database) -> None:
    """An HJ 75 maximum stored for the inlet (before the baseline side existed) would raise
    the baseline: the hour counts as missing instead; a lower-side one is used."""
    config = _config(tmp_path)
    inlet = "inlet.n2o_kg_h"
    db.insert_aggregates(schema.hours, _rows(schema.hours, inlet, T0, [100.0, None, None], H))
    db.insert_aggregates(schema.substitutions, [
        {"channel": inlet, "ts": T0 + i * H, "value": value, "unit": "kg/h", "flag": "S",
         "method": method, "period_kind": "missing", "period_start": T0 + H,
         "period_hours": 2, "capture_rate": 0.95, "source_hours": "[]", "created_at": T0}
        for i, value, method in ((1, 500.0, "hj75.missing.before_after_mean"),
                                 (2, 80.0, "hj75.missing.before_after_min"))])
    hours, _, _ = hour_inputs(db, config, T0, T0 + 3 * H, T0 + 3 * H)
    assert [(h.inlet_kg, h.inlet_method) for h in hours] == [
        (100.0, "measured"), (None, "missing"), (80.0, "hj75.missing.before_after_min")]
