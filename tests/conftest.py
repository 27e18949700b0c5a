from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cemsd.store.database import Database
from fleet_helpers import BROKER
from helpers import PostgresServer
from mqtt_helpers import Mosquitto

OUTPUT = Path(__file__).resolve().parent.parent / "test-output"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | str]:
    """A real PostgreSQL server for this session (or CEMSD_TEST_PG_URL's)."""
    if url := os.environ.get("CEMSD_TEST_PG_URL"):
        yield url
        return
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer | str) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    if isinstance(postgres, str):
        return postgres
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


def _installed(*names: str, package: str) -> str:
    """The path of a program `make test` installs (scripts/install-system-deps)."""
    path = next((p for p in map(shutil.which, names) if p), None)
    if path is None:
        pytest.fail(f"{names[0]} is not installed: `make test` installs the {package} package")
    return path


@pytest.fixture(scope="session")
def socat() -> str:
    return _installed("socat", package="socat")


@pytest.fixture(scope="session")
def chromium() -> str:
    return _installed("chromium", "chromium-browser", package="chromium")


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    return _installed("systemd-analyze", package="systemd")


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """Where a test leaves artefacts for people to look at (screenshots, logs)."""
    path = OUTPUT / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty, migrated database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state' / 'cemsd.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    database = Database(url)
    database.upgrade()
    yield database
    database.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how many regulatory cases tests/cases/ holds (read by the test_cases_* modules)."""
    from casefiles import count_by_topic

    counts = count_by_topic()
    listed = ", ".join(f"{topic} {n}" for topic, n in counts.items())
    terminalreporter.write_line(f"regulatory cases in tests/cases: {sum(counts.values())} "
                                f"({listed})")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A central broker for the fleet tests (fleet_helpers.BROKER; test_mqtt.py has its
    own)."""
    server = Mosquitto(tmp_path / "broker", extra=BROKER)
    server.start()
    try:
        yield server
    finally:
        server.stop()
