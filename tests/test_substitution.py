"""HJ 75-2017 §12 substitution of invalid hours: how look-backs start, how periods are
found, the capture rate; then the database side on SQLite and PostgreSQL (planned, stored
once, measured hours untouched, the share report). The vectors of each branch of the table,
on both sides, are cases in tests/cases/substitution/.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from cemsd import records
from cemsd.periods import utc_label
from cemsd.qaqc.substitution import (
    BASELINE,
    Rules,
    capture_rate,
    find_periods,
    plan_substitutions,
    quarter_start,
    share_report,
    substitute,
    substitution_rows,
    trailing_capture_rate,
)
from cemsd.store import schema
from cemsd.store.database import Database
from substitution_series import T0, Build, H

TZ = ZoneInfo("Asia/Shanghai")
Q2 = datetime(2026, 4, 1, tzinfo=TZ).timestamp()  # 2026-03-31T16:00Z
CHANNEL = "outlet.n2o_kg_h"
INPUT = "outlet-analyzer.n2o"
UNIT = "kg/h"


# --- the table's branches, on both sides, are cases in tests/cases/substitution/ ---------------
# (tests/test_cases_substitution.py); what follows is how look-backs start and periods form.


def test_short_out_of_control_looks_back_from_the_failing_check() -> None:
    """Hours measured between the failing check and the period's start (larger, 500) and
    the 181st valid hour before the check (999) stay out."""
    b = Build()
    b.valid(999.0)
    window = b.block(180, {180: 50.0, 3: 40.0}, gaps_at=(90,))
    check = b.t
    b.valid(500.0, 500.0)
    period_hours = b.invalid(3, "D", ooc=True)
    b.valid(10.0)
    *_, (period, ended) = find_periods(b.hours, {period_hours[0]: check})
    assert ended and period.hours == tuple(period_hours)
    assert period.kind == "out_of_control" and period.found_at == check
    subs = substitute(period, b.hours, 0.95)
    assert subs is not None
    assert [(s.ts, s.value) for s in subs] == [(t, 50.0) for t in period_hours]
    assert {s.source_hours for s in subs} == {tuple(window)}


def test_out_of_control_without_a_failing_check_looks_back_from_its_start() -> None:
    """Calibration overdue: no check found it, so the 180 hours end where the period
    starts."""
    b = Build()
    b.valid(999.0)
    window = b.block(180, {180: 44.0})
    period_hours = b.invalid(2, "D", ooc=True)
    b.valid(1.0)
    [(period, _)] = find_periods(b.hours)
    assert period.found_at is None
    subs = substitute(period, b.hours, 0.95)
    assert subs is not None
    assert [(s.ts, s.value) for s in subs] == [(t, 44.0) for t in period_hours]
    assert {s.source_hours for s in subs} == {tuple(window)}


# --- a young system: fewer look-back hours than the rule names ----------------------------------


# --- periods ------------------------------------------------------------------------------------


def test_invalid_hours_of_different_flags_form_one_period() -> None:
    b = Build()
    b.valid(1.0)
    hours = [b.add(2.0, "D"), b.add(2.0, "M"), b.add(2.0, "C"), b.add(None, "N"),
             b.add(float("nan"), "N"), b.add(2.0, "B"), b.add(2.0, "T")]
    b.valid(1.0)
    [(period, ended)] = find_periods(b.hours)
    assert (period.kind, period.hours, ended) == ("missing", tuple(hours), True)
    assert (period.start, period.end) == (hours[0], hours[-1] + H)


def test_kinds_split_a_period() -> None:
    b = Build()
    b.valid(1.0)
    missing = b.invalid(2, "D")
    ooc = b.invalid(3, "D", ooc=True)
    missing_again = b.invalid(1, "M")
    b.valid(1.0)
    found = find_periods(b.hours, {ooc[0]: ooc[0] - 1800})
    assert [(p.kind, p.hours, p.found_at, ended) for p, ended in found] == [
        ("missing", tuple(missing), None, True),
        ("out_of_control", tuple(ooc), ooc[0] - 1800, True),
        ("missing", tuple(missing_again), None, True),
    ]


def test_a_stop_hour_ends_a_period_and_is_in_none() -> None:
    b = Build()
    b.valid(1.0)
    first = b.invalid(2, "D")
    b.stop(2)
    second = b.invalid(1, "D")
    b.valid(1.0)
    found = find_periods(b.hours)
    assert [(p.hours, ended) for p, ended in found] == [(tuple(first), True),
                                                         (tuple(second), True)]


def test_a_period_still_open_at_the_end_has_not_ended() -> None:
    b = Build()
    b.valid(1.0)
    closed = b.invalid(1, "D")
    b.valid(1.0)
    still_open = b.invalid(3, "B")
    found = find_periods(b.hours)
    assert [(p.hours, ended) for p, ended in found] == [(tuple(closed), True),
                                                         (tuple(still_open), False)]
    assert find_periods(Build().hours) == []


def test_no_period_in_valid_and_stop_hours() -> None:
    b = Build()
    b.valid(1.0, 2.0)
    b.stop(3)
    b.valid(3.0)
    assert find_periods(b.hours) == []


# --- the capture rate -------------------------------------------------------------------------


def test_capture_rate_excludes_stop_hours_and_counts_only_its_window() -> None:
    b = Build()
    b.valid(1.0, 1.0, 1.0)  # 0..2
    b.stop(2)  # 3, 4
    b.invalid(3, "D")  # 5..7
    b.valid(1.0, 1.0)  # 8, 9
    assert capture_rate(b.hours, T0, T0 + 10 * H) == pytest.approx(5 / 8)
    assert capture_rate(b.hours, T0 + 2 * H, T0 + 8 * H) == pytest.approx(1 / 4)
    assert capture_rate(b.hours, T0 + 3 * H, T0 + 5 * H) is None  # all stopped


def test_trailing_capture_rate_counts_the_last_operating_hours() -> None:
    b = Build()
    b.valid(1.0, 1.0, 1.0, 1.0, 1.0)  # 0..4
    b.stop(3)  # 5..7
    b.invalid(2, "D")  # 8, 9
    end = b.t
    assert trailing_capture_rate(b.hours, end, 4) == pytest.approx(2 / 4)
    assert trailing_capture_rate(b.hours, end, 7) == pytest.approx(5 / 7)
    assert trailing_capture_rate(b.hours, end, 100) == pytest.approx(5 / 7)
    assert trailing_capture_rate(b.hours, T0 + 9 * H, 2) == pytest.approx(1 / 2)
    assert trailing_capture_rate(b.hours, T0, 4) is None


def test_quarter_start_is_the_plant_local_calendar_quarter() -> None:
    def at(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    # 2026-03-31T17:00Z is 01:00 on 1 April in Shanghai: the second quarter
    assert quarter_start(at("2026-03-31T17:00:00+00:00"), TZ) == Q2
    assert at("2026-03-31T16:00:00+00:00") == Q2
    assert quarter_start(Q2, TZ) == Q2
    assert quarter_start(Q2 - 1, TZ) == at("2026-01-01T00:00:00+08:00")
    assert quarter_start(at("2026-06-30T23:59:59+08:00"), TZ) == Q2
    assert quarter_start(at("2026-12-31T12:00:00+08:00"), TZ) == at("2026-10-01T00:00:00+08:00")
    assert quarter_start(at("2026-08-15T00:00:00+08:00"), ZoneInfo("UTC")) == \
        at("2026-07-01T00:00:00+00:00")


# --- the database side ---------------------------------------------------------------------------



def store_hours(db: Database, start: float, layout: list[tuple[float | None, str]]) -> None:
    db.insert_aggregates(schema.hours, [{
        "channel": CHANNEL, "ts": start + i * H, "value": value, "minimum": value,
        "maximum": value, "n_valid": 60 if flag == "N" else 0, "n_expected": 60, "flag": flag,
        "reason": None, "unit": UNIT, "created_at": start + (i + 1) * H,
    } for i, (value, flag) in enumerate(layout)])


def all_hours(db: Database) -> list[tuple]:
    rows = db.aggregates_between(schema.hours, 0, 4e9, current=False)
    return [tuple(r) for r in rows]


def stored(db: Database) -> list:
    s = schema.substitutions.c
    return db._fetch(select(schema.substitutions).order_by(s.ts, s.revision))


def run_plan(db: Database, now: float, rules: Rules | None = None) -> tuple[list, list]:
    subs, unruled = plan_substitutions(db, CHANNEL, [INPUT], now, TZ, rules or Rules())
    db.insert_aggregates(schema.substitutions, substitution_rows(CHANNEL, UNIT, subs, now))
    return subs, unruled


def labels(hours: list[int], start: float = Q2) -> list[str]:
    return [utc_label(start + i * H) for i in hours]


def scenario_a() -> list[tuple[float | None, str]]:
    """Hours from the start of 2026Q2 (index = hours since it):
    0..199 measured, 100..101 stopped; 17 is 999, 18 is 50, the rest 10
    200 calibration (the failing span check of the input starts here), 201..202 fault: out
    of control until 203:00 -- 203..210 measured (210 is 16) -- 211..212 maintenance --
    213 measured 30 -- 214..215 no data (still open at 216:00)."""
    layout: list[tuple[float | None, str]] = []
    for i in range(200):
        value = {17: 999.0, 18: 50.0}.get(i, 10.0)
        layout.append((None, "F") if i in (100, 101) else (value, "N"))
    layout += [(12.0, "C"), (3.0, "D"), (3.0, "D")]
    layout += [(10.0, "N")] * 7 + [(16.0, "N")]
    layout += [(4.0, "M"), (4.0, "M"), (30.0, "N"), (None, "D"), (None, "D")]
    assert len(layout) == 216
    return layout


def failing_check(db: Database) -> int:
    check = records.insert_calibration(db, {
        "channel": INPUT, "kind": "span", "mode": "manual", "started_at": Q2 + 200 * H,
        "ended_at": Q2 + 200 * H + 900, "reference": 50.0, "measured": 58.0,
        "full_scale": 100.0, "drift_pct_fs": 8.0, "result": "out_of_control",
        "pass_limit_pct": 2.5, "control_limit_pct": 5.0, "n_readings": 10,
        "stabilisation_s": 120.0, "technician": "li", "note": None,
        "created_at": Q2 + 200 * H + 900})
    records.insert_control_period(db, {
        "channel": INPUT, "kind": "out_of_control", "started_at": Q2 + 200 * H + 900,
        "ended_at": Q2 + 203 * H, "opened_by": check, "closed_by": None,
        "reason": "span drift 8 % F.S.", "created_at": Q2 + 200 * H + 900})
    return check


def test_substitutions_are_planned_stored_once_and_leave_measured_hours(db: Database) -> None:
    store_hours(db, Q2, scenario_a())
    failing_check(db)
    measured = all_hours(db)

    subs, unruled = run_plan(db, Q2 + 216 * H)
    assert unruled == []
    rows = stored(db)
    # out of control 200..202: max of the 180 valid hours before the check at 200:00 --
    # hours 18..199 without the stop hours 100, 101 -- is 50 (17, the 181st, is 999)
    window = [i for i in range(18, 200) if i not in (100, 101)]
    assert len(window) == 180
    # missing 211..212 (<= 24 h): mean of hour 210 (16) and hour 213 (30)
    expected = [(i, 50.0, "hj75.out_of_control.max_180h_before_check", "out_of_control",
                 200, 3, 198 / 201, labels(window)) for i in (200, 201, 202)]
    expected += [(i, 23.0, "hj75.missing.before_after_mean", "missing", 211, 2, 206 / 211,
                  labels([210, 213])) for i in (211, 212)]
    assert len(subs) == 5
    assert [(round((r.ts.timestamp() - Q2) / H), r.value, r.method, r.period_kind,
             round((r.period_start.timestamp() - Q2) / H), r.period_hours,
             pytest.approx(r.capture_rate), json.loads(r.source_hours)) for r in rows] == expected
    assert {(r.flag, r.unit, r.channel, r.revision, r.supersedes) for r in rows} == {
        ("S", UNIT, CHANNEL, 0, None)}

    # at 216:00 the open period 214..215 is not planned; share of [Q2, Q2 + 216 h)
    report = share_report(db, CHANNEL, Q2, Q2 + 216 * H)
    assert (report["hours"], report["stop_hours"], report["operating_hours"],
            report["valid_hours"], report["substituted_hours"],
            report["unsubstituted_hours"]) == (216, 2, 214, 207, 5, 2)

    assert run_plan(db, Q2 + 216 * H) == ([], [])  # again: nothing new
    assert len(stored(db)) == 5
    assert all_hours(db) == measured

    # hour 216 is measured (40): the period 214..215 has ended -> mean of 30 and 40
    store_hours(db, Q2 + 216 * H, [(40.0, "N")])
    measured = all_hours(db)
    subs, unruled = run_plan(db, Q2 + 217 * H)
    assert unruled == []
    assert [(round((s.ts - Q2) / H), s.value, s.method, s.capture_rate) for s in subs] == [
        (214, 35.0, "hj75.missing.before_after_mean", pytest.approx(207 / 214)),
        (215, 35.0, "hj75.missing.before_after_mean", pytest.approx(207 / 214))]
    assert json.loads(stored(db)[-1].source_hours) == labels([213, 216])
    assert run_plan(db, Q2 + 217 * H) == ([], [])
    assert len(stored(db)) == 7
    assert all_hours(db) == measured  # no measured hour changed or added

    report = share_report(db, CHANNEL, Q2, Q2 + 217 * H)
    measured_mass = 196 * 10.0 + 999.0 + 50.0 + 7 * 10.0 + 16.0 + 30.0 + 40.0
    substituted_mass = 3 * 50.0 + 2 * 23.0 + 2 * 35.0
    assert report == {
        "channel": CHANNEL, "from": "2026-03-31T16:00:00Z", "to": "2026-04-09T17:00:00Z",
        "hours": 217, "stop_hours": 2, "operating_hours": 215, "valid_hours": 208,
        "substituted_hours": 7, "unsubstituted_hours": 0,
        "capture_rate": pytest.approx(208 / 215),
        "share_substituted_hours": pytest.approx(7 / 215),
        "measured_mass": pytest.approx(measured_mass),
        "substituted_mass": pytest.approx(substituted_mass),
        "share_substituted_mass": pytest.approx(substituted_mass / (measured_mass
                                                                    + substituted_mass)),
        "methods": ["hj75.missing.before_after_mean",
                    "hj75.out_of_control.max_180h_before_check"],
    }


def test_capture_rate_from_the_local_quarter_start_without_stop_hours(db: Database) -> None:
    """The quarter-to-date option. March is fully valid; in April, 20 valid and 2 stop
    hours come before a 3-hour gap: a = 20 / 23 (75 - 90 %): max of the valid hours before,
    March included (9 at -50 h). Counting March in the rate would make it >= 90 % (the mean
    7); counting stop hours would give 20 / 25, a UTC quarter start 12 / 15."""
    march = [(9.0 if i == 250 else 5.0, "N") for i in range(300)]
    april = [(7.0, "N")] * 10 + [(None, "F")] * 2 + [(7.0, "N")] * 10
    april += [(None, "D")] * 3 + [(7.0, "N")]
    store_hours(db, Q2 - 300 * H, march + april)
    subs, unruled = run_plan(db, Q2 + 26 * H, Rules(window="quarter"))
    assert unruled == []
    assert [(round((s.ts - Q2) / H), s.value) for s in subs] == [(22, 9.0), (23, 9.0),
                                                                  (24, 9.0)]
    rows = stored(db)
    assert {r.method for r in rows} == {"hj75.missing.max_2160h_before"}
    assert [r.capture_rate for r in rows] == [pytest.approx(20 / 23)] * 3
    sources = [Q2 + i * H for i in range(-300, 22) if i not in (10, 11)]
    assert len(sources) == 320  # fewer than 2160: all of them, listed
    assert json.loads(rows[0].source_hours) == [utc_label(t) for t in sources]


def first_day_of_a_quarter(db: Database) -> None:
    """A full first quarter (2160 valid hours, 1 Jan to 1 Apr), then 00:00 on 1 April
    measured (8), 01:00 missing, 02:00 measured (12)."""
    q1 = [(5.0, "N")] * 2160
    store_hours(db, Q2 - 2160 * H, [*q1, (8.0, "N"), (None, "B"), (12.0, "N")])


@pytest.mark.parametrize(("side", "value", "method"), [
    ("project", 10.0, "hj75.missing.before_after_mean"),
    (BASELINE, 8.0, "hj75.missing.before_after_min"),
])
def test_a_one_hour_gap_on_the_first_day_of_a_quarter_is_substituted(
        db: Database, side: str, value: float, method: str) -> None:
    """The trailing window (default) sees the full previous quarter: a = 2159 / 2160."""
    first_day_of_a_quarter(db)
    subs, unruled = run_plan(db, Q2 + 3 * H, Rules(side=side))
    assert unruled == []
    assert [(s.ts, s.value, s.method, s.capture_rate) for s in subs] == [
        (Q2 + H, value, method, pytest.approx(2159 / 2160))]


def test_the_quarter_window_leaves_that_gap_unsubstituted(db: Database) -> None:
    """Quarter to date (the option): 1 valid hour of 2, no rule on the project side; the
    baseline side takes zero."""
    first_day_of_a_quarter(db)
    subs, unruled = run_plan(db, Q2 + 3 * H, Rules(window="quarter"))
    assert subs == [] and [(p.start, len(p.hours)) for p in unruled] == [(Q2 + H, 1)]
    subs, unruled = plan_substitutions(db, CHANNEL, [INPUT], Q2 + 3 * H, TZ,
                                       Rules(BASELINE, window="quarter"))
    assert unruled == []
    assert [(s.ts, s.value, s.method, s.capture_rate) for s in subs] == [
        (Q2 + H, 0.0, "zero.capture_rate_below_75", pytest.approx(0.5))]


def test_below_75_percent_nothing_is_stored_and_the_period_is_reported(db: Database) -> None:
    store_hours(db, Q2, [(5.0, "N")] * 10 + [(None, "B")] * 10 + [(5.0, "N")])
    subs, unruled = run_plan(db, Q2 + 21 * H)
    assert subs == []
    assert [(p.kind, p.start, len(p.hours)) for p in unruled] == [("missing", Q2 + 10 * H, 10)]
    assert stored(db) == []
    report = share_report(db, CHANNEL, Q2, Q2 + 21 * H)
    assert (report["capture_rate"], report["unsubstituted_hours"],
            report["share_substituted_mass"]) == (pytest.approx(11 / 21), 10, 0.0)


GAP_ENDS = {  # a 2-hour gap after 30 valid hours, then the hours that end it
    "by a stop": ([(None, "F")] * 3, None),
    "by an out-of-control period": ([(None, "D")] * 3, (32, 35)),
}


@pytest.mark.parametrize("end", sorted(GAP_ENDS))
def test_a_substitute_does_not_depend_on_when_it_was_planned(tmp_path: Path,
                                                              end: str) -> None:
    """A short gap ended by something other than a valid hour: the valid hour after it
    comes only later. Planned at each hour close (as the daemon does) or once at the end,
    the stored substitutes must be the same."""
    following, control = GAP_ENDS[end]
    layout = [(10.0, "N")] * 30 + [(None, "D")] * 2 + following + [(30.0, "N")]
    every_hour = Database(f"sqlite:///{tmp_path / 'a.db'}")
    once = Database(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        for db in (every_hour, once):
            db.upgrade()
        if control is not None:
            period = {"channel": INPUT, "kind": "out_of_control",
                      "started_at": Q2 + control[0] * H, "ended_at": None, "opened_by": None,
                      "closed_by": None, "reason": "drift", "created_at": Q2 + control[0] * H}
            records.insert_control_period(every_hour, period)
            records.insert_control_period(once, {**period, "ended_at": Q2 + control[1] * H})
        for i in range(len(layout)):
            if control is not None and i == control[1]:
                records.close_control_periods(every_hour, INPUT, ("out_of_control",),
                                              Q2 + i * H, None)
            store_hours(every_hour, Q2 + i * H, [layout[i]])
            run_plan(every_hour, Q2 + (i + 1) * H)
        store_hours(once, Q2, layout)
        run_plan(once, Q2 + len(layout) * H)

        def values(db: Database) -> list[tuple]:
            return [(r.ts, r.value, r.method, r.source_hours) for r in stored(db)]

        assert len(values(once)) == 2 + (3 if control else 0)
        assert values(every_hour) == values(once)
    finally:
        every_hour.close()
        once.close()
