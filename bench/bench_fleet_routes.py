"""The fleet API's rebuilt lists (docs/decisions/0207) against the plant's own: the same
substitution rows listed by the edge API from its SQLite table (the baseline of the same
run) and by the fleet API from the plant's events in PostgreSQL, rebuilt per request,
with other plants' events beside them.

Figures: the time of the first page (500 rows) and of a narrow window (a day) of
`/substitutions`: the edge's (median), the fleet's first request (rebuilding the rows) and
its next ones (rows kept: edge_tables.RebuiltRows, median), and the ratios to the edge.
Usage:
    .venv/bin/python bench/bench_fleet_routes.py [--rows 10000] [--per-event 5] [--plants 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from benchlib import machine_info  # noqa: E402

from cemsd.api.app import create_app as edge_app  # noqa: E402
from cemsd.api.tokens import create_token as edge_token  # noqa: E402
from cemsd.fleet.api import create_app as fleet_app  # noqa: E402
from cemsd.fleet.messages import parse  # noqa: E402
from cemsd.fleet.store import FleetStore  # noqa: E402
from cemsd.fleet.tokens import create_token  # noqa: E402
from cemsd.mqtt import Topics  # noqa: E402
from cemsd.qaqc.substitution import SUBSTITUTION_EVENT, substitution_document  # noqa: E402
from cemsd.settings.api import ApiConfig  # noqa: E402
from cemsd.store import schema  # noqa: E402
from cemsd.store.database import Database  # noqa: E402
from helpers import PostgresServer  # noqa: E402

START = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
TZ = ZoneInfo("Asia/Shanghai")
CHANNELS = ("inlet.n2o_kg_h", "outlet.n2o_kg_h")


def substitution_rows(count: int) -> list[dict]:
    """`count` substituted hours, alternating channels, one every 3 hours."""
    return [{"channel": CHANNELS[i % 2], "ts": START + (i // 2) * 3 * 3600, "value": 50.0 + i % 7,
             "unit": "kg/h", "flag": "S", "method": "hj75.missing.before_after_mean",
             "period_kind": "missing", "period_start": START + (i // 2) * 3 * 3600,
             "period_hours": 1, "capture_rate": 0.97, "source_hours": "[]",
             "created_at": START + (i // 2) * 3 * 3600 + 7200.5} for i in range(count)]


def edge_database(folder: Path, rows: list[dict]) -> tuple[Database, list[dict]]:
    db = Database(f"sqlite:///{folder / 'edge.db'}")
    db.upgrade()
    db.insert_aggregates(schema.substitutions, rows)
    stored = [{k: v for k, v in r._mapping.items() if k not in ("revision", "supersedes",
                                                                  "audit_id")}
              for r in db.fetch(schema.substitutions.select().order_by(schema.substitutions.c.id))]
    return db, [{**row, **{k: row[k].timestamp() for k in ("ts", "period_start", "created_at")}}
                for row in stored]


def fleet_database(url: str, rows: list[dict], per_event: int, plants: int) -> FleetStore:
    """The plant's substitution events, and the same count of events of other plants."""
    store = FleetStore(url)
    store.upgrade()
    for p in range(plants):
        plant = "bench" if p == 0 else f"other-{p:03d}"
        topics = Topics(f"cemsd/{plant}", plant, TZ)
        messages = []
        for n, first in enumerate(range(0, len(rows), per_event)):
            event = topics.event_message(SUBSTITUTION_EVENT, {"rows": [
                substitution_document(r) for r in rows[first:first + per_event]]},
                rows[first]["created_at"])
            body = json.loads(event.payload)
            messages.append(parse(event.topic, json.dumps({"id": n + 1, **body}).encode()))
        store.ingest(messages, datetime.now(UTC))
    return store


def median_ms(call: Callable[[], object], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--per-event", type=int, default=5)
    parser.add_argument("--plants", type=int, default=20)
    args = parser.parse_args()
    print(machine_info())
    pg = PostgresServer()
    pg.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-routes-") as folder:
            edge, rows = edge_database(Path(folder), substitution_rows(args.rows))
            store = fleet_database(pg.create_database("routes"), rows, args.per_event,
                                   args.plants)
            own = TestClient(edge_app(edge, ApiConfig(), TZ), headers={
                "Authorization": f"Bearer {edge_token(edge, 'bench', 'bench')}"})
            token = create_token(store.db, "bench", ["bench"])
            day = {"from": "2025-01-10", "to": "2025-01-11"}
            asked = (("first page of 500", {"limit": 500}), ("one day", day))
            path = "/v1/plants/bench/substitutions"
            for what, params in asked:
                edge_answer = own.get("/v1/substitutions", params=params)
                edge_ms = median_ms(lambda p=params: own.get("/v1/substitutions", params=p))
                # a fresh app: its first request rebuilds the rows, the next ones keep them
                ours = TestClient(fleet_app(store, ApiConfig(), TZ),
                                  headers={"Authorization": f"Bearer {token}"})
                t = time.perf_counter()
                fleet_answer = ours.get(path, params=params)
                cold_ms = (time.perf_counter() - t) * 1000
                assert edge_answer.content == fleet_answer.content, what
                kept_ms = median_ms(lambda p=params, c=ours: c.get(path, params=p))
                print(f"{what} ({len(edge_answer.json()['items'])} rows of {args.rows}, "
                      f"{args.rows // args.per_event} events, {args.plants} plants): edge "
                      f"{edge_ms:.1f} ms; fleet rebuilding {cold_ms:.1f} ms (ratio "
                      f"{cold_ms / edge_ms:.1f}), rows kept {kept_ms:.1f} ms (ratio "
                      f"{kept_ms / edge_ms:.1f})")
            edge.close()
            store.close()
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
