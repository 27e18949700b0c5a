"""The attacks of docs/TAMPER-EVIDENCE.md, each done with raw SQL (triggers dropped first,
as anyone with write access can) on a real database from a short simulated run: what
`cemsd verify` says alone, with the daemon's head file, and with heads a registry pinned.
Every row of the document's attack table has its test here (ATTACKS, by row name).

The run: 4.5 hours of a small plant with finalise_after_hours = 0, a production import and
its correction, and an audited QA/QC correction of the first hour (invalidate_window), so
the chain holds hours, substitutions are absent, production days and audit entries too."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Connection
from test_cli import _scenario as cli_scenario

from cemsd import chain
from cemsd.chainhead import HEAD_FILE, UnknownDatabase, head_pin
from cemsd.cli import main
from cemsd.config import Config
from cemsd.errors import StorageError
from cemsd.metrics import chain_refusals, chain_state
from cemsd.qaqc.corrections import invalidate_window
from cemsd.qaqc.views import fault_lines
from cemsd.reduction.production import import_days
from cemsd.status import summary_line
from cemsd.store import schema
from cemsd.store.database import Database
from helpers import (
    REPO,
    PostgresServer,
    RunningDaemon,
    analyzer_and_flow_plant,
    free_port,
    tampering,
    write_config,
    write_scenario,
)

HOUR = 3600.0
DOC = REPO / "docs" / "TAMPER-EVIDENCE.md"


@dataclass
class Pristine:
    """A database after a short run, its state directory (head file) and config data."""

    raw: dict[str, Any]
    state: Path
    url: str
    head: dict[str, Any]  # the head a registry pinned at the end of the run
    postgres: PostgresServer | str | None = None


def _simulate(tmp: Path, url: str | None) -> Pristine:
    port = free_port()
    storage: dict[str, Any] = {"state_dir": str(tmp / "state"), "finalise_after_hours": 0}
    if url:
        storage["url"] = url
    raw = analyzer_and_flow_plant("tamper", port, storage=storage)
    config = write_config(tmp, raw)
    scenario = write_scenario(tmp, cli_scenario(port))
    t0 = scenario.epoch
    db = Database(config.storage.database_url)
    db.upgrade()
    import_days(db, [(date(2026, 6, 1), 400.0), (date(2026, 6, 2), 410.0)], "import:a.csv", t0,
                "planner")
    import_days(db, [(date(2026, 6, 1), 401.5)], "import:b.csv", t0 + 60, "planner")
    db.close()
    asyncio.run(_run(config, scenario, t0))
    db = Database(config.storage.database_url)
    head = head_pin(chain.head(db)).as_json()
    db.close()
    return Pristine(raw, tmp / "state", config.storage.database_url, head)


async def _run(config: Config, scenario: Any, t0: float) -> None:
    async with RunningDaemon(config, scenario, until=t0 + 4.5 * HOUR) as running:
        with running.clock.participant():
            await running.clock.sleep_until(t0 + 3 * HOUR + 300)
            daemon = running.daemon
            channel = daemon.plan.channel("analyzer.n2o")
            await invalidate_window(daemon, channel, t0 + 600, t0 + 1500, "span check failed")
        await running.finished()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return _simulate(tmp_path_factory.mktemp("tamper"), None)


@pytest.fixture(scope="module")
def pristine_pg(tmp_path_factory: pytest.TempPathFactory,
                postgres: PostgresServer | str) -> Pristine:
    made = _simulate(tmp_path_factory.mktemp("tamper-pg"), _pg_create(postgres, None))
    made.postgres = postgres
    return made


def _pg_create(postgres: PostgresServer | str, template: str | None) -> str:
    server = postgres if isinstance(postgres, str) else postgres.url()
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        copy = f' TEMPLATE "{template}"' if template else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    engine.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"


@dataclass
class Copy:
    """One attacked copy: its config file, database and state directory."""

    config: Path
    db: Database
    state: Path

    def verify(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["verify", "--config", str(self.config), *args])
        return result.exit_code, result.output


def _copy(pristine: Pristine, tmp: Path) -> Copy:
    state = tmp / "state"
    shutil.copytree(pristine.state, state)
    storage = {**pristine.raw["storage"], "state_dir": str(state)}
    if pristine.postgres is not None:
        storage["url"] = _pg_create(pristine.postgres, pristine.url.rsplit("/", 1)[1])
    config = write_config(tmp, {**pristine.raw, "storage": storage})
    return Copy(config.source, Database(config.storage.database_url), state)


# --- the attacks: raw SQL, as someone with write access to the database ------------------

SQL = Callable[[Connection], None]


def _sql(*statements: str) -> SQL:
    def run(conn: Connection) -> None:
        for statement in statements:
            conn.execute(text(statement))
    return run


def _nth_link(table: str, n: int) -> str:
    return f"(SELECT record_id FROM chain WHERE record_table = '{table}' ORDER BY seq " \
           f"LIMIT 1 OFFSET {n})"


_FIRST_SEALED_HOUR = _nth_link("hours", 0)
_COPY_HOUR = ("channel, ts, value, minimum, maximum, n_valid, n_expected, flag, reason, unit, "
              "created_at")


def _rebuild_from(n: int) -> SQL:
    """Change the n-th sealed hour, then recompute its link and every later one: a chain
    that verifies on its own."""
    def run(conn: Connection) -> None:
        link = conn.execute(text("SELECT * FROM chain WHERE record_table = 'hours' "
                                 f"ORDER BY seq LIMIT 1 OFFSET {n}")).one()
        conn.execute(text(f"UPDATE hours SET n_valid = n_valid - 1 WHERE id = {link.record_id}"))
        _relink(conn, link.seq)
    return run


def _relink(conn: Connection, seq: int) -> None:
    """Recompute record_hash and chain_hash of every link from `seq` on, as cemsd would."""
    prev = conn.execute(text(f"SELECT chain_hash FROM chain WHERE seq = {seq - 1}")).scalar()
    prev = prev or chain.GENESIS
    for link in conn.execute(text(f"SELECT * FROM chain WHERE seq >= {seq} ORDER BY seq")).all():
        kind = chain.KINDS[link.record_table]
        row = chain.parse_row(kind.table, conn.execute(chain.raw_select(kind.table).where(
            kind.table.c.id == link.record_id)).one())
        under = _minutes_under(conn, row) if kind.name == "hours" else {}
        rec = chain.hash_record(kind, row, link.form, under)
        chained = chain.link_hash(prev, rec)
        conn.execute(text("UPDATE chain SET record_hash = :r, prev_hash = :p, chain_hash = :c "
                          "WHERE seq = :s"), {"r": rec, "p": prev, "c": chained, "s": link.seq})
        prev = chained


def _minutes_under(conn: Connection, hour: Any) -> dict[Any, list[Any]]:
    m = schema.minutes
    rows = conn.execute(chain.raw_select(m).where(
        m.c.channel == hour.channel, m.c.ts >= hour.ts,
        m.c.ts < hour.ts.timestamp() + HOUR)).all()
    return {(hour.channel, hour.ts): [chain.parse_row(m, r) for r in rows]}


def _swap_seq(a: int, b: int) -> SQL:
    return _sql(f"UPDATE chain SET seq = -1 WHERE seq = {a}",
                f"UPDATE chain SET seq = {a} WHERE seq = {b}",
                f"UPDATE chain SET seq = {b} WHERE seq = -1")


def _swap_records(conn: Connection) -> None:
    """Links 1 and 2 of hours point at each other's record."""
    a, b = conn.execute(text("SELECT seq, record_id FROM chain WHERE record_table = 'hours' "
                             "ORDER BY seq LIMIT 2")).all()
    for seq, record_id in ((a.seq, -1), (b.seq, a.record_id), (a.seq, b.record_id)):
        conn.execute(text(f"UPDATE chain SET record_id = {record_id} WHERE seq = {seq}"))


def _forged_correction(conn: Connection) -> None:
    """A revision with an audit record of its own: who and why are a lie, but recorded."""
    audit_id = conn.execute(text(
        "INSERT INTO audit_log (at, actor, action, target, reason, host) VALUES "
        "('2030-01-01 00:00:00.000000', 'mallory', 'correction.invalidate', "
        "'analyzer.n2o', 'drift', 'x') RETURNING id")).scalar()
    conn.execute(text(
        f"INSERT INTO hours ({_COPY_HOUR}, revision, supersedes, audit_id) "
        f"SELECT channel, ts, value / 2, minimum, maximum, n_valid, n_expected, flag, reason, "
        f"unit, '2030-01-01 00:00:00.000000', 5, id, {audit_id} FROM hours "
        f"WHERE id = {_nth_link('hours', 4)}"))


@dataclass(frozen=True)
class Attack:
    row: str  # the attack's name in the document's table
    sql: SQL
    found_by: str  # verify | head file | pinned | nothing
    findings: tuple[str, ...] = ()  # problems named (by verify, or by verify --pinned)
    without_head_file: int | None = None  # verify's exit once the head file is gone too


ATTACKS = [
    Attack("change a value", _sql(f"UPDATE hours SET value = value + 0.001 "
                                  f"WHERE id = {_nth_link('hours', 3)}"),
           "verify", ("record changed",)),
    Attack("change a flag and fix the link's record_hash", _sql(
        f"UPDATE hours SET flag = 'N' WHERE id = {_nth_link('hours', 5)}",
        "UPDATE chain SET record_hash = '" + "ab" * 32 + "' WHERE seq = "
        "(SELECT seq FROM chain WHERE record_table = 'hours' ORDER BY seq LIMIT 1 OFFSET 5)"),
           "verify", ("chain link altered",)),
    Attack("delete a record", _sql(f"DELETE FROM hours WHERE id = {_nth_link('hours', 2)}"),
           "verify", ("record deleted",)),
    Attack("insert a revision", _sql(
        f"INSERT INTO hours ({_COPY_HOUR}, revision, supersedes) SELECT channel, ts, "
        f"value * 0.5, minimum, maximum, n_valid, n_expected, flag, reason, unit, created_at, "
        f"7, id FROM hours WHERE id = {_nth_link('hours', 4)}"),
           "verify", ("revision not audited", "record not sealed")),
    Attack("insert a revision with a forged audit record", _forged_correction, "nothing"),
    Attack("cut the tail", _sql("DELETE FROM chain WHERE seq > (SELECT max(seq) - 4 FROM chain)"),
           "head file", ("chain shorter than a recorded head", "record not sealed"), 1),
    Attack("empty the chain", _sql("DELETE FROM chain"),
           "head file", ("chain shorter than a recorded head", "record not sealed"), 0),
    Attack("rebuild the chain from a point", _rebuild_from(6),
           "head file", ("recorded head not on the chain",), 0),
    Attack("rebuild the chain and rewrite the head file", _rebuild_from(6),
           "pinned", ("recorded head not on the chain",)),
    Attack("reorder", _swap_seq(3, 4), "verify", ("chain link broken",)),
    Attack("renumber", _sql("UPDATE chain SET seq = -seq WHERE seq >= 10",
                            "UPDATE chain SET seq = 1 - seq WHERE seq < 0"),
           "verify", ("chain link missing",)),
    Attack("remove a link and renumber", _sql(
        "DELETE FROM chain WHERE seq = 7", "UPDATE chain SET seq = -seq WHERE seq > 7",
        "UPDATE chain SET seq = -seq - 1 WHERE seq < 0"),
           "verify", ("chain link broken",)),
    Attack("swap links", _swap_records, "verify", ("record changed",)),
    Attack("rewrite a minute under a sealed hour", _sql(
        f"UPDATE minutes SET value = value + 1 WHERE id = (SELECT min(m.id) FROM minutes m "
        f"JOIN hours h ON h.channel = m.channel AND m.ts >= h.ts "
        f"WHERE h.id = {_FIRST_SEALED_HOUR} AND m.flag = 'N')"),
           "verify", ("minutes changed",)),
    Attack("insert a minute revision under a sealed hour", _sql(
        "INSERT INTO minutes (channel, ts, value, minimum, maximum, n_valid, n_expected, "
        "flag, reason, unit, created_at, revision, supersedes) SELECT m.channel, m.ts, 0, 0, "
        "0, m.n_valid, m.n_expected, m.flag, m.reason, m.unit, '2026-05-31 19:00:00.000000', "
        "3, m.id FROM minutes m JOIN hours h ON h.channel = m.channel AND m.ts >= h.ts "
        f"WHERE h.id = {_FIRST_SEALED_HOUR} ORDER BY m.id LIMIT 1"),
           "verify", ("revision not audited", "minute not sealed")),
    Attack("rewrite a production day", _sql("UPDATE production_days SET tonnes = 999 "
                                            "WHERE revision = 1"),
           "verify", ("record changed",)),
    Attack("insert a production day revision", _sql(
        "INSERT INTO production_days (day, tonnes, source, created_at, revision, supersedes) "
        "SELECT day, 10, source, created_at, 1, id FROM production_days "
        "WHERE day = '2026-06-02'"),
           "verify", ("revision not audited",)),
    Attack("rewrite the audit log", _sql("UPDATE audit_log SET actor = 'someone else' "
                                         "WHERE action = 'correction.invalidate'"),
           "verify", ("record changed",)),
    Attack("delete the audit record of a correction", _sql(
        "DELETE FROM audit_log WHERE action = 'correction.invalidate'"),
           "verify", ("record deleted", "revision not audited")),
    Attack("text in a number column", _sql(f"UPDATE hours SET value = 'lots' "
                                           f"WHERE id = {_nth_link('hours', 1)}"),
           "verify", ("record malformed",)),
    Attack("a garbage timestamp", _sql(f"UPDATE hours SET ts = 'yesterday-ish' "
                                       f"WHERE id = {_nth_link('hours', 1)}"),
           "verify", ("record malformed",)),
    Attack("change a minute of an hour not closed yet", _sql(
        "UPDATE minutes SET value = value + 5 WHERE id = (SELECT max(id) FROM minutes)"),
           "nothing"),
]
PG_ATTACKS = ("change a value", "insert a revision", "empty the chain", "cut the tail",
              "rewrite a minute under a sealed hour", "rewrite the audit log",
              "rebuild the chain and rewrite the head file", "insert a production day revision")


def _pinned(copy: Copy, tmp: Path, head: dict[str, Any]) -> tuple[int, str]:
    pins = tmp / "pinned.json"
    pins.write_text(json.dumps([head]))
    return copy.verify("--pinned", str(pins))


def _attack(pristine: Pristine, tmp: Path, attack: Attack) -> None:
    copy = _copy(pristine, tmp)
    code, output = copy.verify()
    assert code == 0 and output.startswith("chain OK"), output  # untouched, it verifies
    with tampering(copy.db) as conn:
        attack.sql(conn)
    if attack.row.endswith("rewrite the head file"):  # root on the host: the file too
        db_head = head_pin(chain.head(copy.db)).as_json()
        (copy.state / HEAD_FILE).write_text(json.dumps(db_head))
    copy.db.close()
    alone, output = copy.verify()
    pinned, pinned_output = _pinned(copy, tmp, pristine.head)
    if attack.found_by == "nothing":
        assert (alone, pinned) == (0, 0), output + pinned_output
        return
    if attack.found_by == "pinned":
        assert alone == 0, output
        assert pinned == 1
        output = pinned_output
    else:
        assert alone == 1, output
        assert pinned == 1
        if attack.without_head_file is not None:  # what the head file adds
            (copy.state / HEAD_FILE).unlink()
            assert copy.verify()[0] == attack.without_head_file
    assert output.startswith("chain BROKEN")
    for problem in attack.findings:
        assert problem in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.row.replace(" ", "-") for a in ATTACKS])
def test_attack_on_sqlite(pristine: Pristine, tmp_path: Path, attack: Attack) -> None:
    _attack(pristine, tmp_path, attack)


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.row in PG_ATTACKS],
                         ids=[a.row.replace(" ", "-") for a in ATTACKS if a.row in PG_ATTACKS])
def test_attack_on_postgresql(pristine_pg: Pristine, tmp_path: Path, attack: Attack) -> None:
    _attack(pristine_pg, tmp_path, attack)


def test_every_attack_in_the_document_has_a_test() -> None:
    table = DOC.read_text().split("## Attacks", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| (?:\d+\. )?([a-z][^|]*?) \|", table, re.M)
    assert len(documented) >= 12
    assert sorted(documented) == sorted(a.row for a in ATTACKS)
    for attack in ATTACKS:
        line = next(ln for ln in table.splitlines() if f"| {attack.row} |" in ln
                    or re.search(rf"\| \d+\. {re.escape(attack.row)} \|", ln))
        assert f"`{attack.found_by}`" in line, line


# --- the database itself refuses, and the daemon raises the alarm ------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_chain_is_append_only(request: pytest.FixtureRequest, tmp_path: Path,
                                  backend: str) -> None:
    pristine = request.getfixturevalue("pristine" if backend == "sqlite" else "pristine_pg")
    copy = _copy(pristine, tmp_path)
    for statement in ("UPDATE chain SET record_hash = prev_hash WHERE seq = 1",
                      "DELETE FROM chain WHERE seq = (SELECT max(seq) FROM chain)",
                      "DELETE FROM chain"):
        with pytest.raises(StorageError, match=r"append-only|not allowed"), \
                copy.db.transaction() as conn:
            conn.execute(text(statement))
    assert copy.verify()[0] == 0
    copy.db.close()


def test_the_daemon_refuses_to_seal_a_forged_revision_and_raises_the_alarm(
        pristine: Pristine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    copy = _copy(pristine, tmp_path)
    with tampering(copy.db) as conn:
        next(a for a in ATTACKS if a.row == "insert a revision").sql(conn)
    copy.db.close()
    config = write_config(tmp_path, {**pristine.raw, "storage": {
        **pristine.raw["storage"], "state_dir": str(copy.state)}}, name="again.toml")
    scenario = write_scenario(tmp_path, cli_scenario(int(config.buses[0].port)))
    events: list[tuple[str, dict[str, Any]]] = []
    gauges: dict[str, int] = {}
    shown: dict[str, Any] = {}

    async def run() -> None:
        start = scenario.epoch + 4.5 * HOUR
        from cemsd.clock import VirtualClock

        running = RunningDaemon(config, scenario, until=start + 1.2 * HOUR,
                                clock=VirtualClock(start))
        async with running:
            async def listen(kind: str, payload: dict[str, Any]) -> None:
                events.append((kind, payload))
            running.daemon.event_listeners.append(listen)
            await running.finished()
            gauges.update(chain_state(running.daemon))
            shown["summary"] = summary_line(running.daemon, None)
            shown["lines"] = fault_lines(
                {"chain": chain_refusals(running.daemon, running.daemon.config.plant.tz)})

    with caplog.at_level(logging.ERROR, logger="cemsd.sealing"):
        asyncio.run(run())
    alarms = [r for r in caplog.records if "refusing to seal" in r.getMessage()]
    assert len(alarms) == 1  # once, not at every pass
    assert alarms[0].channel and alarms[0].hour.startswith("2026-06-01T")
    refused = [p for k, p in events if k == "chain.refused"]
    assert refused and refused[0]["records"] == 1
    assert gauges["chain_refused"] == 1  # cemsd_chain_refused_records
    # where a person looks: systemd STATUS / the page's header, `cemsd status`
    assert "CHAIN: 1 record(s) refused for sealing" in shown["summary"]
    assert shown["lines"][0].startswith("hash chain: 1 record(s) refused for sealing")
    assert "revision 7: revision above 0 without an audited correction" in shown["lines"][1]
    heads = [p for k, p in events if k == "chain.head"]
    assert heads and heads[-1]["seq"] > pristine.head["seq"]  # the rest is sealed on
    recorded = json.loads((copy.state / HEAD_FILE).read_text())
    assert (recorded["seq"], recorded["hash"]) == (heads[-1]["seq"], heads[-1]["hash"])
    db = Database(config.storage.database_url)
    assert [r.revision for r in chain.refused(db, scenario.epoch + 10 * HOUR)] == [7]
    db.close()
    code, output = Copy(config.source, Database(config.storage.database_url), copy.state).verify()
    assert code == 1 and "revision not audited" in output


def test_an_emptied_database_is_refused_unless_accepted(pristine: Pristine,
                                                        tmp_path: Path) -> None:
    copy = _copy(pristine, tmp_path)
    copy.db.close()
    path = Path(copy.db.location)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"")  # a zero-byte database file
    config = write_config(tmp_path, {**pristine.raw, "storage": {
        **pristine.raw["storage"], "state_dir": str(copy.state)}}, name="again.toml")
    scenario = write_scenario(tmp_path, cli_scenario(int(config.buses[0].port)))
    start = scenario.epoch + 5 * HOUR

    async def run(accept: bool) -> None:
        from cemsd.clock import VirtualClock
        from cemsd.daemon import Daemon

        daemon = Daemon(config, VirtualClock(start), clock_name="virtual",
                        until=start + 60, accept_new_database=accept)
        await daemon.run()

    with pytest.raises(UnknownDatabase, match="--accept-new-database") as refused:
        asyncio.run(run(False))
    assert f"link {pristine.head['seq']}" in str(refused.value)
    assert path.stat().st_size == 0  # nothing was created in it
    assert copy.verify()[0] == 1  # and verify says the chain is shorter than its head
    asyncio.run(run(True))
    db = Database(config.storage.database_url)
    [accepted] = db.fetch(select(schema.audit_log).where(
        schema.audit_log.c.action == "chain.new_database"))
    assert json.loads(accepted.before)["seq"] == pristine.head["seq"]
    db.close()
    assert list(copy.state.glob(f"{HEAD_FILE}.given-up-*"))


# --- the head where a database writer cannot reach back ---------------------------------------


async def test_the_head_is_retained_on_mqtt_and_in_the_head_file(tmp_path: Path) -> None:
    from mqtt_helpers import Mosquitto, retained

    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        port = free_port()
        raw = analyzer_and_flow_plant("tamper", port, storage={
            "state_dir": str(tmp_path / "state"), "finalise_after_hours": 0},
            mqtt={"host": "127.0.0.1", "port": broker.port})
        config = write_config(tmp_path, raw)
        scenario = write_scenario(tmp_path, cli_scenario(port))
        async with RunningDaemon(config, scenario, until=scenario.epoch + 2 * HOUR):
            pass  # runs to --until
        db = Database(config.storage.database_url)
        head = head_pin(chain.head(db)).as_json()
        db.close()
        message = await retained(broker.port, "cemsd/tamper/chain/head")
    finally:
        broker.stop()
    assert message.retain and head["seq"] > 0
    assert {k: message.body[k] for k in ("seq", "hash", "time")} == head
    recorded = json.loads((tmp_path / "state" / HEAD_FILE).read_text())
    assert {k: recorded[k] for k in ("seq", "hash", "time")} == head


@pytest.mark.parametrize(("content", "named"), [
    ("not json", "not JSON"),
    ('{"seq": 1}', "expected a JSON list"),
    ('[{"seq": -1, "hash": "' + "0" * 64 + '"}]', "pinned head 1 of"),
    ('[{"seq": 3, "hash": "XYZ"}]', "hash must be 64 lower-case hex digits"),
])
def test_a_bad_pinned_file_is_named_and_nothing_is_claimed(pristine: Pristine, tmp_path: Path,
                                                           content: str, named: str) -> None:
    copy = _copy(pristine, tmp_path)
    copy.db.close()
    pins = tmp_path / "pins.json"
    pins.write_text(content)
    code, output = copy.verify("--pinned", str(pins))
    assert code == 2 and named in output and str(pins) in output
    assert "chain OK" not in output


@pytest.mark.parametrize("statement", [
    "UPDATE chain SET ts = 'noon' WHERE seq = 2",
    "UPDATE chain SET record_id = 'x' WHERE seq = 3",
    "UPDATE audit_log SET at = 'soon' WHERE id = (SELECT min(id) FROM audit_log)",
    "UPDATE production_days SET day = '2026-13-45' WHERE revision = 1",
    "UPDATE minutes SET value = X'00ff' WHERE id = (SELECT min(id) FROM minutes)",
    "UPDATE hours SET n_valid = 'many', created_at = 7 WHERE id = (SELECT max(id) FROM hours)",
])
def test_verify_names_any_malformed_row_and_never_crashes(pristine: Pristine, tmp_path: Path,
                                                          statement: str) -> None:
    copy = _copy(pristine, tmp_path)
    with tampering(copy.db) as conn:
        conn.execute(text(statement))
    copy.db.close()
    code, output = copy.verify()
    assert code == 1, output
    assert "malformed" in output and "Traceback" not in output, output


def test_migration_0010_down_and_up_keeps_the_older_guards(db: Database) -> None:
    """Downgrading drops only what 0010 added: the stored records stay append-only."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from cemsd.store.database import MIGRATIONS

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008")
    with db.transaction() as conn:
        conn.execute(text("INSERT INTO hours (channel, ts, n_valid, n_expected, flag, unit, "
                          "created_at) VALUES ('a', '2026-06-01 00:00:00', 60, 60, 'N', 'ppm', "
                          "'2026-06-01 01:00:00')"))
    with pytest.raises(StorageError, match=r"append-only|not allowed"), \
            db.transaction() as conn:
        conn.execute(text("UPDATE hours SET flag = 'D'"))
    db.upgrade()
    assert db.at_head()
    assert chain.seal_due(db, 2e9, 2e9) == 1
    with pytest.raises(StorageError, match=r"append-only|not allowed"), \
            db.transaction() as conn:
        conn.execute(text("DELETE FROM chain"))


def test_a_head_whose_publication_was_cut_short_is_published_by_the_next_pass(
        tmp_path: Path) -> None:
    """The daemon stopping mid-pass cancels the sealing task between recording a head and
    handing it to the outputs: the stopping pass, which finds the same head, publishes it
    then (CI once saw the retained head missing on MQTT after such a stop)."""
    from cemsd.sealing import Sealer

    config = write_config(tmp_path, analyzer_and_flow_plant("tamper", free_port(), storage={
        "state_dir": str(tmp_path / "state")}))
    sealer = Sealer(config)
    heads: list[dict[str, Any]] = []

    async def publish_event(kind: str, payload: dict[str, Any]) -> None:
        heads.append(payload)
        if len(heads) == 1:
            raise asyncio.CancelledError  # the stop cancels the pass right here

    # no links to publish (links_published None): the head alone
    sealer.daemon = SimpleNamespace(  # type: ignore[assignment]
        publish_event=publish_event, store=object())
    link = SimpleNamespace(seq=8, chain_hash="ab" * 32,
                           sealed_at=datetime(2026, 6, 1, 1, 30, tzinfo=UTC))

    async def two_passes() -> None:
        with pytest.raises(asyncio.CancelledError):
            await sealer._record_head(link, "db")
        await sealer._record_head(link, "db")  # the stopping pass: the same head
        await sealer._record_head(link, "db")  # and once published, never again

    asyncio.run(two_passes())
    assert [h["seq"] for h in heads] == [8, 8]
    assert sealer.head_seq == 8
