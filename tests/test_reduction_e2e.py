"""A simulated day through to the report and the verification bundle.

03:00-04:30 the bypass valve is open (the gas skips the unit; the inlet is monitored);
18:00-19:30 the outlet analyzer is silent (two invalid outlet hours, substituted by HJ 75's
before/after mean: the quarter's capture rate is still above 90 %). Production 420 t is
imported for the day; the cap is 150,000 t a year.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import io
import json
import tarfile

import httpx
import pytest
from click.testing import CliRunner
from reduction_line import reduction_line

from cemsd import chain
from cemsd.chainhead import head_pin
from cemsd.cli import main
from cemsd.reduction.bundle import BundleError, export_bundle, open_bundle, recompute
from cemsd.reduction.calculator import HourInput
from cemsd.reduction.report import build_report
from cemsd.store import schema
from helpers import (
    database,
    free_port,
    run_virtual,
    serve_process,
    wait_healthy,
)

K = 44.013 / 22.414
REL = 1e-9


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("reduction")
    config, scenario = reduction_line(tmp, [
        {"device": "plant", "kind": "set", "channel": "bypass_position", "value": 100.0,
         "start": "3h", "end": "4h30m"},
        {"device": "outlet-analyzer", "kind": "no_reply", "start": "18h", "end": "19h30m"},
    ])
    epoch = scenario.epoch
    asyncio.run(run_virtual(config, scenario, epoch + 24 * 3600 + 120))
    (tmp / "production.csv").write_text("date,tonnes\n2026-06-01,420\n")
    imported = CliRunner().invoke(main, ["production", "import", "--config",
                                         str(config.source), str(tmp / "production.csv")])
    assert imported.exit_code == 0, imported.output
    db = database(config)
    report = build_report(db, config, epoch, epoch + 24 * 3600, epoch + 25 * 3600)
    stored = {
        "hours": {(r.channel, round(r.ts.timestamp() - epoch) // 3600): r
                  for r in db.aggregates_between(schema.hours, 0, 2e9)},
        "minutes": db.aggregates_between(schema.minutes, epoch + 3 * 3600,
                                         epoch + 4.5 * 3600, ["inlet.n2o_kg_h"]),
        "subs": db.fetch(schema.substitutions.select()),
        "events": db.fetch(schema.bypass_events.select()),
    }
    db.close()
    return {"tmp": tmp, "config": config, "epoch": epoch, "report": report, **stored}


def test_the_bypass_event_has_its_duration_and_mass(day: dict) -> None:
    [event] = day["events"]
    epoch = day["epoch"]
    assert event.started_at.timestamp() == epoch + 3 * 3600
    assert event.ended_at.timestamp() == epoch + 4.5 * 3600
    assert json.loads(event.triggers) == ["valve"]
    # inlet monitored, no bypass-duct meter: the inlet stream, minute by minute
    assert len(day["minutes"]) == 90 and all(m.flag == "N" for m in day["minutes"])
    assert event.n2o_kg == pytest.approx(sum(m.value for m in day["minutes"]) / 60, rel=REL)
    expected = 24.0 * 10_000 * K * 10_000 * 1e-6 * 1.5  # %vol -> ppm, x Q, 1.5 h
    assert event.n2o_kg == pytest.approx(expected, rel=2e-3)
    assert event.n2o_estimated_kg == 0 and event.method == "measured_inlet: 90 min"
    assert event.gas_volume_nm3 == pytest.approx(10_000 * 1.5, rel=1e-3)


def test_the_outlet_outage_is_substituted(day: dict) -> None:
    hours, subs = day["hours"], day["subs"]
    assert [hours[("outlet.n2o_kg_h", h)].flag for h in (17, 18, 19, 20)] == ["N", "B", "B", "N"]
    [s18, s19] = sorted((s for s in subs if s.channel == "outlet.n2o_kg_h"),
                        key=lambda s: s.ts)
    mean = (hours[("outlet.n2o_kg_h", 17)].value + hours[("outlet.n2o_kg_h", 20)].value) / 2
    for s in (s18, s19):
        assert s.method == "hj75.missing.before_after_mean" and s.flag == "S"
        assert s.value == pytest.approx(mean, rel=REL) and s.period_hours == 2
        assert s.capture_rate >= 0.9
    assert not [s for s in subs if s.channel == "inlet.n2o_kg_h"]


def test_report_totals_equal_a_hand_calculation(day: dict) -> None:
    hours, report = day["hours"], day["report"]
    subs = {round(s.ts.timestamp() - day["epoch"]) // 3600: s.value for s in day["subs"]}
    [event] = day["events"]
    inlet = [hours[("inlet.n2o_kg_h", h)].value for h in range(24)]
    outlet = [subs[h] if h in subs else hours[("outlet.n2o_kg_h", h)].value
              for h in range(24) if h != 3]  # 03:00-04:00 the unit treated nothing
    gen, out, byp = sum(inlet) / 1000, sum(outlet) / 1000, event.n2o_kg / 1000
    pe = out + byp
    be = gen * 0.10
    cap = 150_000 / 365
    er = max(0.0, (be - pe) * min(1.0, cap / 420))
    r = report["result"]
    assert r["totals"]["n2o_generated_t"] == pytest.approx(gen, rel=REL)
    assert r["totals"]["n2o_outlet_t"] == pytest.approx(out, rel=REL)
    assert r["totals"]["n2o_bypass_t"] == pytest.approx(byp, rel=REL)
    assert r["project_emissions_t"] == pytest.approx(pe, rel=REL)
    assert r["de_overall"] == pytest.approx(1 - pe / gen, rel=REL)
    assert r["er_t"] == pytest.approx(er, rel=REL) and r["er_t"] > 0
    assert r["er_co2e_t"] == pytest.approx(er * 265, rel=REL)
    assert r["alternative_share"] == pytest.approx((subs[18] + subs[19]) / 1000 / pe, rel=REL)
    assert r["creditable"] and report["parameters"]["gwp_source"].startswith("IPCC AR5")
    assert report["production"]["total_t"] == 420 and report["production"]["cap_t"] == \
        pytest.approx(cap, rel=REL)
    assert [h["unit_running"] for h in report["hours"]].count(False) == 1
    assert report["hours"][18]["outlet_method"] == "hj75.missing.before_after_mean"


def test_a_plant_without_units_reports_as_before(day: dict) -> None:
    """One implicit unit: the plant's result is the unit's, and the inputs digest is the
    one reports and bundles had before units existed (hours without a unit name)."""
    report = day["report"]
    assert list(report["units"]) == ["main"]
    assert report["units"]["main"]["result"] == report["result"]
    assert report["parameters"]["inlet_series"] == "inlet.n2o_kg_h"
    assert "units" not in report["parameters"]
    fields = [f.name for f in dataclasses.fields(HourInput)]
    canonical = json.dumps({
        "hours": [[h[f] for f in fields] for h in report["hours"]],
        "production": [[d["date"], d["tonnes"]] for d in report["production"]["days"]],
        "parameters": report["parameters"],
    }, sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert report["inputs_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()


def test_cli_report_formats(day: dict) -> None:
    source = str(day["config"].source)
    base = ["report", "--config", source, "--from", "2026-06-01", "--to", "2026-06-02"]
    as_json = CliRunner().invoke(main, [*base, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["inputs_sha256"] == day["report"]["inputs_sha256"]
    as_csv = CliRunner().invoke(main, [*base, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert len(rows) == 24 and rows[3]["unit_running"] == "False"
    html = day["tmp"] / "report.html"
    as_html = CliRunner().invoke(main, [*base, "--format", "html", "--output", str(html)])
    assert as_html.exit_code == 0
    page = html.read_text()
    assert "<svg" in page and "measured_inlet: 90 min" in page and "hj75.missing" in page


def test_the_bundle_recomputes_the_report_and_detects_a_change(day: dict) -> None:
    db = database(day["config"])
    path = day["tmp"] / "bundle.tar.gz"
    epoch = day["epoch"]
    manifest = export_bundle(db, day["config"], epoch, epoch + 86400, epoch + 25 * 3600, path)
    head = head_pin(chain.head(db)).as_json()
    db.close()
    assert {"report.json", "inputs/hours.csv", "data/calibrations.csv", "data/audit.jsonl",
            "config/cemsd.toml", "data/bypass_events.csv"} <= set(manifest["files"])
    bundle = open_bundle(path)
    assert json.loads(bundle.text("chain/head.json")) == head and head["seq"] > 0  # a pin
    again = recompute(bundle)
    assert again["result"] == bundle.report["result"]
    assert again["inputs_sha256"] == day["report"]["inputs_sha256"]
    cli = CliRunner().invoke(main, ["report", "--from-bundle", str(path)])
    assert cli.exit_code == 0 and "equals report.json" in cli.output
    # a verifier's copy with one changed number
    tampered = day["tmp"] / "tampered.tar.gz"
    with tarfile.open(path) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "inputs/hours.csv":
                data = data.replace(b",measured,", b",measured,", 1).replace(b"False", b"True", 1)
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(BundleError, match=r"inputs/hours\.csv: changed"):
        open_bundle(tampered)
    refused = CliRunner().invoke(main, ["report", "--from-bundle", str(tampered)])
    assert refused.exit_code == 1 and "cannot be trusted" in refused.output


def test_the_api_serves_bypass_events_and_reports(day: dict) -> None:
    source = str(day["config"].source)
    token = CliRunner().invoke(main, ["token", "create", "--config", source, "--name", "reg"])
    assert token.exit_code == 0, token.output
    auth = {"Authorization": f"Bearer {token.stdout.strip()}"}
    port = free_port()
    process = serve_process(day["config"].source, port)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        events = httpx.get(f"{base}/bypass-events", headers=auth,
                           params={"from": "2026-06-01", "to": "2026-06-02"}).json()["items"]
        assert [(e["id"], e["triggers"]) for e in events] == [(day["events"][0].id, ["valve"])]
        report = httpx.get(f"{base}/reports", headers=auth,
                           params={"from": "2026-06-01", "to": "2026-06-02"}, timeout=60)
        assert report.status_code == 200
        assert report.json()["inputs_sha256"] == day["report"]["inputs_sha256"]
        page = httpx.get(f"{base}/reports", headers=auth, timeout=60,
                         params={"from": "2026-06-01", "to": "2026-06-02", "format": "html"})
        assert page.headers["content-type"].startswith("text/html") and "<svg" in page.text
        missing = httpx.get(f"{base}/reports", headers=auth, params={"period": "2026-07"})
        assert missing.status_code == 409 and "2026-07-01" in missing.json()["detail"]
        assert httpx.get(f"{base}/reports", headers=auth,
                         params={"period": "2026-13"}).status_code == 400
        assert httpx.get(f"{base}/reports", params={"period": "2026-06"}).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=20)
