"""The operator's status page in headless Chromium, served by the daemon's API on a
simulated plant (a live analyzer and flow meter, an outlet analyzer that never answers):
no data without a token; with one, the live values and flags are the daemon's own, the
dead device shows as down with its error, the last hours are charted with the invalid
ones marked, the bypass events the daemon detected from the simulated valve are shown open
and closed. Screenshots go to test-output/."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from hj212_platform import OPS_MN, OPS_PW, Platform, ops_uplink

from cemsd import signing
from cemsd.api.tokens import create_token
from cemsd.control import request_async
from cemsd.periods import HOUR, MINUTE
from cemsd.store.database import Database
from helpers import RunningDaemon, free_port, write_config, write_scenario
from ops_helpers import plant, scenario

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"]
LOOK_AT = 2 * HOUR + 10 * 60 + 1  # 02:10:01 plant time: between two polls (every 2 s)
BYPASS_OPEN = [(30 * MINUTE, 40 * MINUTE), (2 * HOUR + 5 * MINUTE, 2 * HOUR + 15 * MINUTE)]
AFTER_SECOND_BYPASS = 2 * HOUR + 18 * MINUTE


def with_bypass_valve(data: dict[str, Any], scene: dict[str, Any]) -> None:
    """A plant I/O block on bus "a" whose bypass valve opens twice (BYPASS_OPEN)."""
    data["devices"].append({
        "name": "plant", "bus": "a", "device_id": 3, "profile": "plant-io",
        "poll_interval": 2.0, "backoff_max": 1.0,
        "channels": {k: {"enabled": False} for k in
                     ("abatement_running", "production_running", "bypass_open",
                      "production_counter")}})
    scene["devices"].append({"name": "plant", "bus": "a", "device_id": 3,
                             "profile": "plant-io"})
    scene["events"] += [{"device": "plant", "kind": "set", "channel": "bypass_position",
                         "value": 100.0, "start": start, "end": end}
                        for start, end in BYPASS_OPEN]


def _parse(text: str) -> float:
    return float(text.replace(",", ""))


async def test_status_page_shows_the_plant_as_the_daemon_sees_it(
        tmp_path: Path, output_dir: Path, chromium: str,
        caplog: pytest.LogCaptureFixture) -> None:
    from playwright.async_api import async_playwright

    caplog.set_level(logging.INFO, logger="cemsd.acquisition")
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    live_port, dead_port, api_port = free_port(), free_port(), free_port()
    platform = Platform(OPS_MN, OPS_PW)
    platform_port = await platform.start()
    data = plant(tmp_path, live_port, dead_port, api={"port": api_port},
                 hj212=[ops_uplink("city", platform_port), ops_uplink("province", free_port())])
    data["buses"][1]["timeout"] = 0.05  # the dead device costs less wall time
    scene_data = scenario(live_port, dead_port)
    with_bypass_valve(data, scene_data)
    scene_data["devices"][0]["calibration"] = {"channel": "n2o", "zero_gas": 0.0}
    config = write_config(tmp_path, data)
    scene = write_scenario(tmp_path, scene_data)
    t0 = scene.epoch
    base = f"http://127.0.0.1:{api_port}"
    async with RunningDaemon(config, scene, until=t0 + 3 * HOUR) as run:
        db = Database(config.storage.database_url)
        token = create_token(db, "operator", "test")
        db.close()
        daemon = run.daemon
        with run.clock.participant():  # simulated time stands still while we look
            await run.clock.sleep_until(t0 + LOOK_AT)
            async with httpx.AsyncClient(base_url=base) as client:
                page_html = await client.get("/status")
                no_token = await client.get("/v1/status")
                status = (await client.get(
                    "/v1/status", headers={"Authorization": f"Bearer {token}"})).json()
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium,
                                                   args=CHROMIUM_FLAGS)
                try:
                    seen = await _look(browser, base, token, output_dir, daemon)
                    latest = {name: (r.value, r.flag.value)
                              for name, r in daemon.pipeline.latest.items()}
                    # a zero check starts a minute before we look again (stabilising 120 s)
                    await run.clock.sleep_until(t0 + AFTER_SECOND_BYPASS - 60)
                    check = asyncio.ensure_future(request_async(
                        config.storage.state_dir / "cemsd.sock", {
                            "op": "calibrate", "channel": "analyzer.n2o", "kind": "zero",
                            "reference": 0.0, "technician": "Li Wei"}))
                    await run.clock.sleep_until(t0 + AFTER_SECOND_BYPASS)
                    page = seen.pop("page")
                    seen["after_close"] = await _refresh_and_read_bypass(page)
                    seen["check"] = await page.text_content("#checks li.check")
                    seen["uplinks"] = await page.eval_on_selector_all(
                        "#uplinks .uplink", """cards => Object.fromEntries(cards.map(c =>
                            [c.dataset.platform, c.textContent]))""")
                    seen["updated"] = await page.text_content("#updated")
                    seen["lost"] = await page.eval_on_selector_all(
                        "#channels tbody tr", """rows => rows.filter(r =>
                            r.cells[3].querySelector('.pill.lost')).map(r => r.dataset.channel)""")
                    await page.screenshot(path=str(output_dir / "status-calibrating.png"),
                                          full_page=True)
                finally:
                    await browser.close()
        await check  # time runs again: the check ends
    await platform.stop()

    # The shell is public and holds nothing; the data needs the token.
    assert page_html.status_code == 200
    assert "script-src 'self'" in page_html.headers["content-security-policy"]
    assert no_token.status_code == 401
    assert status["plant"]["id"] == "ops" and status["now_label"] == "2026-06-01T02:10+08:00"

    # The login form first, then the board; a wrong token is refused with a message.
    assert seen["login_first"] and seen["wrong_token_error"] == "Unknown token."

    # Live values: exactly the daemon's last readings, with their flags.
    rows = seen["channels"]
    for name, (value, flag) in latest.items():
        shown = rows[name]
        assert shown["flag"].startswith(flag), (name, shown)
        if value is None:
            assert shown["value"] == "–"
        else:
            assert _parse(shown["value"]) == pytest.approx(value, rel=1e-3, abs=1e-3), name
    assert rows["stack.n2o"]["flag"] == "B communication fault"
    assert "no reply" in rows["stack.n2o"]["reason"]
    assert rows["analyzer.n2o"]["flag"] == "N" and rows["analyzer.n2o"]["unit"] == "%vol"
    assert rows["inlet.n2o_kg_h"]["unit"] == "kg/h"
    assert rows["analyzer.n2o"]["valid"] == "10 / 10"  # 02:00 to 02:10, all valid
    assert rows["stack.n2o"]["valid"] == "0 / 10"
    assert rows["inlet.n2o_kg_h"]["flag"] == "N"  # derived, the last closed minute

    # Device health: the dead one is down with its error; the others up.
    devices = seen["devices"]
    assert devices["stack"]["state"] == "down" and "DOWN" in devices["stack"]["text"]
    assert "no reply" in devices["stack"]["text"]
    assert devices["analyzer"]["state"] == devices["flow"]["state"] == "up"
    downs = [r for r in caplog.records if r.getMessage() == "device down"]
    assert [r.device for r in downs] == ["stack"]  # one line for the whole episode

    # The last hours: two closed hours per series; the dead analyzer's are marked invalid.
    charts = seen["charts"]
    assert set(charts) == set(status["history"]["series"])
    assert {"analyzer.n2o", "inlet.n2o_kg_h", "stack.n2o"} <= set(charts)
    assert charts["analyzer.n2o"] == {"bars": 2, "invalid": 0}
    assert charts["stack.n2o"] == {"bars": 2, "invalid": 2}

    # Calibration state of the gas analyzers; the outbox; bypass events live and stored.
    assert seen["calibration"]["analyzer.n2o"] == "in control"
    assert "0 message(s) waiting" in seen["outputs"]
    assert "hash chainevery due record sealed" in seen["outputs"]  # <dt> then <dd>
    # The bundle-signing key's fingerprint, as the API publishes it and the key file holds.
    key = signing.load_or_create(config.storage.state_dir).public_key()
    assert status["signing"]["fingerprint"] == signing.fingerprint(key)
    assert f"Ed25519 {signing.fingerprint(key)}" in seen["outputs"]
    # The valve opened at 02:05 and, debounced by a minute, the event opened then; the
    # 00:30-00:40 event is closed with its figures; at 02:18 both are closed.
    assert seen["bypass_state"] == "OPEN"
    [now_open] = seen["bypass_open"]
    assert "started_at: 2026-06-01T02:05+08:00" in now_open and "triggers: valve" in now_open
    [earlier] = seen["bypass_recent"]
    assert "started_at: 2026-06-01T00:30+08:00" in earlier
    assert "ended_at: 2026-06-01T00:40+08:00" in earlier and "n2o_kg: " in earlier
    assert seen["after_close"]["state"] == "closed"
    assert seen["after_close"]["open_texts"] == []
    assert len(seen["after_close"]["recent_texts"]) == 2
    for shot in ("status.png", "status-phone.png", "status-large.png",
                 "status-calibrating.png"):
        assert (output_dir / shot).stat().st_size > 10_000

    # A running check counts down with the analyzer's current reading (zero gas, C).
    countdown = re.fullmatch(r"C analyzer\.n2o: stabilising, (\d+) s left"
                             r"now analyzer\.n2o = (\S+) %vol \(C\)", seen["check"])
    assert countdown, seen["check"]
    assert 0 < int(countdown[1]) <= 60  # 60 s left when the page polled, ticking since
    reading = float(countdown[2])
    assert abs(reading) < 0.5 and rows["analyzer.n2o"]["value"] != countdown[2]  # zero gas,
    assert _parse(rows["analyzer.n2o"]["value"]) > 5  # not the sample read before
    # The uplinks: the platform that answers has everything; the other has a backlog of
    # every minute since the start (the first minute it saw) and never acknowledged.
    city, province = seen["uplinks"]["city"], seen["uplinks"]["province"]
    # (the minute that just closed may still be on its way: at most one period behind)
    backlog = re.search(r"backlog (\d+) period", city)
    assert "CONNECTED" in city and backlog and int(backlog[1]) <= 1 and "never" not in city
    minutes = int(AFTER_SECOND_BYPASS // MINUTE)  # closed minutes since 00:00
    assert "DISCONNECTED" in province and "cannot connect to 127.0.0.1:" in province
    # + 2 hours; the minute closing as the page polled may or may not be counted yet
    backlog = re.search(r"backlog (\d+) period\(s\), oldest 06-01 00:00", province)
    assert backlog and int(backlog[1]) in (minutes + 1, minutes + 2), province
    assert "last acknowledgement never" in province
    assert seen["updated"] == "updated 02:18"  # plant time, whatever the browser's zone
    # At 02:18 the dead analyzer has 0 valid minutes and 42 to come: its hour is lost. At
    # 02:10 (0 + 50) it was not yet; the live one never is.
    assert sorted(seen["lost"]) == ["outlet.n2o_mg_m3", "stack.n2o", "stack.status"]
    assert "hour lost" not in rows["stack.n2o"]["valid"]
    # no line per request from uvicorn (`[api] access_log` is off by default)
    assert not [r for r in caplog.records if r.name == "uvicorn.access"]


async def _look(browser: Any, base: str, token: str, output_dir: Path,
                daemon: Any) -> dict[str, Any]:
    page = await browser.new_page(viewport={"width": 1440, "height": 1000})
    await page.goto(f"{base}/status")
    await page.wait_for_selector("#login:not([hidden])")
    seen: dict[str, Any] = {"login_first": await page.is_hidden("#board")}
    await page.fill("#token", "not-a-token")
    await page.click("#login button[type=submit]")
    # locator waits, not wait_for_function: its polling evaluates strings, which the page's
    # Content-Security-Policy (no 'unsafe-eval') rightly refuses
    await page.wait_for_selector("#login-error:not(:empty)")
    seen["wrong_token_error"] = await page.text_content("#login-error")
    await page.fill("#token", token)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector("#board:not([hidden])")
    await page.wait_for_selector("#channels tbody tr")
    seen["channels"] = await page.eval_on_selector_all("#channels tbody tr", """rows =>
        Object.fromEntries(rows.map(r => [r.dataset.channel, {
            value: r.cells[1].querySelector('.value').textContent,
            unit: r.cells[1].querySelector('.unit').textContent.trim(),
            flag: r.cells[2].textContent, valid: r.cells[3].textContent,
            reason: r.cells[5].textContent}]))""")
    seen["devices"] = await page.eval_on_selector_all("#devices .device", """cards =>
        Object.fromEntries(cards.map(c => [c.dataset.device, {
            state: c.classList.contains('down') ? 'down' : c.classList.contains('up') ? 'up'
                   : 'unknown', text: c.textContent}]))""")
    seen["charts"] = await page.eval_on_selector_all("#charts .chart", """charts =>
        Object.fromEntries(charts.map(c => [c.dataset.series, {
            bars: c.querySelectorAll('rect.bar:not([data-invalid])').length,
            invalid: c.querySelectorAll('rect[data-invalid]').length}]))""")
    seen["calibration"] = await page.eval_on_selector_all("#calibration tbody tr", """rows =>
        Object.fromEntries(rows.map(r => [r.cells[0].textContent, r.cells[1].textContent]))""")
    seen["outputs"] = await page.text_content("#outputs")
    seen["bypass_state"] = await page.text_content("#bypass-state")
    seen["bypass_open"] = await page.eval_on_selector_all("#bypass-open li:not(.empty)",
                                                          "items => items.map(i => i.textContent)")
    seen["bypass_recent"] = await page.eval_on_selector_all(
        "#bypass-recent li:not(.empty)", "items => items.map(i => i.textContent)")
    await page.screenshot(path=str(output_dir / "status.png"), full_page=True)
    phone = await browser.new_page(viewport={"width": 390, "height": 844},
                                   device_scale_factor=2, is_mobile=True)
    await phone.goto(f"{base}/status")
    await phone.fill("#token", token)
    await phone.click("#login button[type=submit]")
    await phone.wait_for_selector("#channels tbody tr")
    await phone.screenshot(path=str(output_dir / "status-phone.png"), full_page=True)
    await phone.close()
    await page.click("#large")  # the control-room screen
    await page.screenshot(path=str(output_dir / "status-large.png"))
    await page.click("#large")
    seen["page"] = page
    return seen


async def _refresh_and_read_bypass(page: Any) -> dict[str, Any]:
    """The page polls every 5 s; ask it now, and wait for the closed state."""
    await page.evaluate("poll()")
    await page.wait_for_selector("#bypass-state :text-is('closed')", timeout=15_000)
    texts = {}
    for part in ("open", "recent"):
        texts[f"{part}_texts"] = await page.eval_on_selector_all(
            f"#bypass-{part} li:not(.empty)", "items => items.map(i => i.textContent)")
    return {"state": await page.text_content("#bypass-state"), **texts}


async def test_without_a_daemon_the_page_is_there_and_its_data_is_not(tmp_path: Path) -> None:
    """`cemsd serve` has the registry API but no live daemon: /v1/status says so (503)
    behind the token, the page itself is public, and neither is in the OpenAPI document."""
    from zoneinfo import ZoneInfo

    from cemsd.api.app import create_app
    from cemsd.settings.api import ApiConfig

    db = Database(f"sqlite:///{tmp_path / 'cemsd.db'}")
    db.upgrade()
    token = create_token(db, "operator", "test")
    app = create_app(db, ApiConfig(), ZoneInfo("Asia/Shanghai"))
    auth = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://cemsd") as client:
            assert (await client.get("/v1/status")).status_code == 401
            unavailable = await client.get("/v1/status", headers=auth)
            assert unavailable.status_code == 503
            assert "running daemon" in unavailable.json()["detail"]
            for asset, kind in (("/status", "text/html"), ("/status/status.js", "text/javascript"),
                                ("/status/status.css", "text/css")):
                reply = await client.get(asset)
                assert reply.status_code == 200 and reply.headers["content-type"].startswith(kind)
            assert (await client.get("/status/../app.py")).status_code == 404
            assert (await client.get("/status/status.html")).status_code == 404
            paths = (await client.get("/v1/openapi.json", headers=auth)).json()["paths"]
            assert "/v1/status" not in paths and "/status" not in paths and "/v1/hours" in paths
    finally:
        db.close()
