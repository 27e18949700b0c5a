"""One writer per database (issue 11 item 4): a second daemon on the same database is
refused before it migrates or records a run, naming the holder, whether it reaches the
SQLite file through `state_dir` or through `[storage] url`, or shares a PostgreSQL
database; the first runs on undisturbed, its minutes published once each. Read-only
commands keep working beside the writer. The closer publishes only what it inserted."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from cemsd.clock import VirtualClock
from cemsd.closer import Closer
from cemsd.config import Config
from cemsd.daemon import Daemon
from cemsd.periods import MINUTE
from cemsd.plan import compile_plan
from cemsd.store import schema
from cemsd.store.database import Database
from cemsd.store.lock import WriterLockError, acquire_writer_lock, lock_path
from cemsd.store.writer import Store
from helpers import RunningDaemon, database, free_port, write_config, write_scenario

START = "2026-06-01T00:00:00+08:00"
POLL = 5.0
END = 4 * 60.0


def _plant(tmp: Path, port: int, storage: dict[str, Any] | None = None,
           name: str = "cemsd.toml") -> Config:
    return write_config(tmp, {
        "plant": {"id": "one-writer"},
        "points": {"outlet": {}},
        "storage": storage or {},
        "buses": [{"name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                   "timeout": 0.25, "retries": 0}],
        "devices": [{"name": "analyzer", "bus": "bus", "device_id": 1,
                     "profile": "n2o-analyzer-ppm", "poll_interval": POLL}],
    }, name=name)


def _scenario(tmp: Path, port: int) -> Any:
    return write_scenario(tmp, {
        "start": START,
        "buses": [{"name": "bus", "transport": "tcp", "port": port}],
        "devices": [{"name": "analyzer", "bus": "bus", "device_id": 1,
                     "profile": "n2o-analyzer-ppm", "signals": {"n2o": {"base": 100.0}}}],
    })


def _runs(config: Config) -> int:
    db = database(config)
    try:
        return int(db.fetch(select(func.count()).select_from(schema.daemon_runs))[0][0])
    finally:
        db.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cemsd", "--log-level", "WARNING", *args],
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


async def _second_start_refused(first: Config, second: Config, scenario: Any,
                                from_cli: bool) -> dict[str, Any]:
    """Run `first`; at one minute try `second` (in process and as `cemsd run`), run the
    read-only commands, then let `first` finish. What each attempt said."""
    seen: dict[str, Any] = {"published": []}
    epoch = scenario.epoch
    async with RunningDaemon(first, scenario, epoch + END) as running:
        async def collect(kind: str, rows: list[dict[str, Any]]) -> None:
            seen["published"] += [(kind, r["channel"], r["ts"]) for r in rows]

        running.daemon.period_listeners.append(collect)
        with running.clock.participant():
            await running.clock.sleep_until(epoch + 60)
            seen["runs_before"] = await asyncio.to_thread(_runs, first)
            intruder = Daemon(second, VirtualClock(epoch + 60), clock_name="virtual")
            with pytest.raises(WriterLockError) as refused:
                await intruder.run()
            seen["refused"] = str(refused.value)
            if from_cli:
                seen["cli"] = await asyncio.to_thread(
                    _cli, "run", "--config", str(second.source), "--accelerate", "max")
                seen["hours"] = await asyncio.to_thread(_cli, "hours", "--config",
                                                        str(second.source))
                seen["verify"] = await asyncio.to_thread(_cli, "verify", "--config",
                                                         str(second.source))
            seen["runs_after"] = await asyncio.to_thread(_runs, first)
        await running.finished()
    return seen


def _assert_first_undisturbed(config: Config, seen: dict[str, Any], epoch: float) -> None:
    db = database(config)
    try:
        minutes = db.aggregates_between(schema.minutes, epoch, epoch + END, ["analyzer.n2o"])
    finally:
        db.close()
    assert [m.ts.timestamp() - epoch for m in minutes] == [60.0 * i for i in range(4)]
    assert all(m.flag == "N" and m.n_valid == 12 for m in minutes)
    published = [p for p in seen["published"] if p[0] == "minute"]
    assert len(published) == len(set(published))  # each minute of each channel once
    assert len({ts for _, _, ts in published}) == 4
    assert seen["runs_after"] == seen["runs_before"] == 1


def test_the_same_sqlite_file_through_state_dir_and_url_has_one_writer(tmp_path: Path) -> None:
    port = free_port()
    scenario = _scenario(tmp_path, port)
    first = _plant(tmp_path, port)
    db_file = first.storage.state_dir / "cemsd.db"
    # another configuration, another state directory, the same file through a symlinked
    # directory: the lock follows the file, not the name
    alias = tmp_path / "alias"
    alias.symlink_to(first.storage.state_dir, target_is_directory=True)
    second = _plant(tmp_path / "other", port, name="second.toml", storage={
        "state_dir": str(tmp_path / "other" / "state"), "url": f"sqlite:///{alias}/cemsd.db"})

    seen = asyncio.run(_second_start_refused(first, second, scenario, from_cli=True))

    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    assert holder in seen["refused"] and str(db_file.resolve()) in seen["refused"]
    assert str(first.source) in seen["refused"]
    cli = seen["cli"]
    assert cli.returncode == 1 and holder in cli.stderr and "one writer" in cli.stderr, cli
    assert seen["hours"].returncode == 0, seen["hours"].stderr
    assert seen["verify"].returncode == 0, seen["verify"].stderr
    _assert_first_undisturbed(first, seen, scenario.epoch)
    assert lock_path(db_file).read_text() == ""  # released at stop, holder details cleared
    assert not list((tmp_path / "other" / "state").glob("*.db"))  # nothing made beside it


def test_a_stopped_writer_leaves_the_database_to_the_next(tmp_path: Path) -> None:
    port = free_port()
    scenario = _scenario(tmp_path, port)
    config = _plant(tmp_path, port)

    async def twice() -> None:
        for start in (0.0, 120.0):
            async with RunningDaemon(config, scenario, scenario.epoch + start + 60,
                                     VirtualClock(scenario.epoch + start)) as running:
                await running.finished()

    asyncio.run(twice())
    assert _runs(config) == 2


def test_postgresql_has_one_writer_per_plant(tmp_path: Path, pg_url: str) -> None:
    port = free_port()
    scenario = _scenario(tmp_path, port)
    first = _plant(tmp_path, port, storage={"url": pg_url})
    second = _plant(tmp_path / "other", port, name="second.toml", storage={
        "state_dir": str(tmp_path / "other" / "state"), "url": pg_url})

    seen = asyncio.run(_second_start_refused(first, second, scenario, from_cli=True))

    assert "written by another cemsd for plant 'one-writer'" in seen["refused"]
    assert f"cemsd writer one-writer pid {os.getpid()}" in seen["refused"]
    assert seen["cli"].returncode == 1 and "one writer" in seen["cli"].stderr
    assert seen["hours"].returncode == 0, seen["hours"].stderr
    _assert_first_undisturbed(first, seen, scenario.epoch)


def test_the_closer_publishes_only_the_rows_it_inserted(tmp_path: Path) -> None:
    """A minute closed again (a restarted closer) is stored once and published once."""
    port = free_port()
    scenario = _scenario(tmp_path, port)
    config = _plant(tmp_path, port)

    async def run_then_close_again() -> tuple[list[tuple[str, int]], int]:
        async with RunningDaemon(config, scenario, scenario.epoch + 3 * MINUTE) as running:
            await running.finished()
        store = Store(Database(config.storage.database_url))
        published: list[tuple[str, int]] = []

        async def collect(kind: str, rows: list[dict[str, Any]]) -> None:
            published.append((kind, len(rows)))

        closer = Closer(config, compile_plan(config), store,
                        VirtualClock(scenario.epoch + 4 * MINUTE), listeners=[collect])
        closer.next_minute, closer.next_hour = scenario.epoch, scenario.epoch
        try:
            await closer.close_through(scenario.epoch + 4 * MINUTE)
        finally:
            await store.close()
        return published, len(closer.series)

    published, series = asyncio.run(run_then_close_again())
    # minutes 0-2 were stored by the daemon: only minute 3 is new
    assert published == [("minute", series)]


def test_the_lock_file_names_its_holder_and_is_free_after_release(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state' / 'cemsd.db'}"
    held = acquire_writer_lock(url, "p", "/etc/cemsd/a.toml")
    with pytest.raises(WriterLockError, match=r"pid \d+ on .* since .* with /etc/cemsd/a.toml"):
        acquire_writer_lock(f"sqlite:///{tmp_path / 'state' / '..' / 'state' / 'cemsd.db'}",
                            "p")
    held.release()
    held.release()  # idempotent
    acquire_writer_lock(url, "p").release()


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://cemsd@db/cemsd", "unsupported database 'mysql'"),
    ("not a url", "not a database URL"),
    ("postgresql+psycopg://nobody@127.0.0.1:1/none", "cannot take the writer lock"),
])
def test_a_lock_that_cannot_be_taken_is_a_clear_error(url: str, message: str) -> None:
    with pytest.raises(WriterLockError, match=message):
        acquire_writer_lock(url, "p")
