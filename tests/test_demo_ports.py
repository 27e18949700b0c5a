"""`cemsd demo` when another process holds a simulator port: it says which port and runs
on a free one instead of failing with "Could not start listen" (or polling the stranger)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from cemsd.store import schema
from cemsd.store.database import Database
from helpers import free_port, write_config, write_scenario
from simulators import demo
from simulators.demo import run_demo


def _demo_beside_a_stranger(tmp_path: Path) -> tuple[int, str, bool, list, Any, Any]:
    """Run a 6-minute demo whose analyzer bus is configured on a port a stranger listens on:
    (exit code, printed, whether the stranger was connected to, minutes, scenario, port)."""
    stranger = socket.socket()
    stranger.bind(("127.0.0.1", 0))
    stranger.listen()
    busy = stranger.getsockname()[1]
    free = free_port()
    scenario = write_scenario(tmp_path, {
        "start": "2026-06-01T00:00:00+08:00",
        "buses": [{"name": "analyzers", "transport": "tcp", "host": "127.0.0.1", "port": busy},
                  {"name": "io", "transport": "tcp", "host": "127.0.0.1", "port": free}],
        "devices": [{"name": "analyzer", "bus": "analyzers", "device_id": 1,
                     "profile": "n2o-analyzer-ppm", "signals": {"n2o": {"base": 80.0}}},
                    {"name": "plant", "bus": "io", "device_id": 1, "profile": "plant-io",
                     "signals": {"production_running": {"base": 1}}}],
    })
    config = write_config(tmp_path, {
        "plant": {"id": "demo-ports", "timezone": "Asia/Shanghai"},
        "points": {"outlet": {}},
        "buses": [{"name": n, "transport": "tcp", "host": "127.0.0.1", "port": p,
                   "timeout": 0.3, "retries": 0} for n, p in (("analyzers", busy), ("io", free))],
        "devices": [{"name": "analyzer", "bus": "analyzers", "device_id": 1,
                     "profile": "n2o-analyzer-ppm", "poll_interval": 5.0},
                    {"name": "plant", "bus": "io", "device_id": 1, "profile": "plant-io",
                     "poll_interval": 5.0}],
    })
    try:
        code = run_demo(str(config.source), str(tmp_path / "scenario.toml"), 0.1, "max")
        accepted = stranger.accept  # the stranger was never polled: nothing connected
        stranger.setblocking(False)
        try:
            accepted()
            polled_stranger = True
        except BlockingIOError:
            polled_stranger = False
    finally:
        stranger.close()
    db = Database(config.storage.database_url)
    try:
        minutes = db.aggregates_between(schema.minutes, 0, 4e9, ["analyzer.n2o"])
    finally:
        db.close()
    return code, polled_stranger, minutes, scenario, busy


def test_the_demo_moves_off_a_busy_port(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, polled_stranger, minutes, scenario, busy = _demo_beside_a_stranger(tmp_path)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"demo: port {busy} on 127.0.0.1 (bus analyzers) is in use by another process; " \
           "the demo uses port " in out
    assert not polled_stranger
    assert not (tmp_path / ".scenario-free-ports.toml").exists()  # the copy is removed
    assert len(minutes) == 6 and all(m.flag == "N" for m in minutes)  # 6 minutes, all read
    assert scenario.epoch == minutes[0].ts.timestamp()


def test_a_port_taken_between_the_look_and_the_bind_is_looked_at_again(
        tmp_path: Path, capfd, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Another program takes the port after the demo saw it free: the simulator cannot
    serve it and says so; the demo never takes the stranger for its simulator, looks at the
    ports again and runs on a free one."""
    looks: list[int] = []
    real = demo._can_listen

    def first_look_misses_the_stranger(host: str, port: int) -> bool:
        looks.append(port)
        return len(looks) == 1 or real(host, port)

    monkeypatch.setattr(demo, "_can_listen", first_look_misses_the_stranger)
    code, polled_stranger, minutes, _, busy = _demo_beside_a_stranger(tmp_path)
    captured = capfd.readouterr()  # the simulator's own stderr too
    assert code == 0, captured.out + captured.err
    assert f"bus analyzers: cannot serve on 127.0.0.1:{busy}" in captured.err
    assert "demo: the simulator exited with code 1 (attempt 1 of 3)" in captured.err
    assert f"demo: port {busy} on 127.0.0.1 (bus analyzers) is in use" in captured.out
    assert not polled_stranger
    assert len(minutes) == 6 and all(m.flag == "N" for m in minutes)
