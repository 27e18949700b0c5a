"""The registry API: one year of hourly values of 10 channels (87,600 hours) over HTTP.

A SQLite database is filled through cemsd's own store code (schema migrations, hour rows
as the closer writes them, every hour sealed into the hash chain as the daemon seals
finalised hours), then `cemsd serve` (a separate process) serves it on 127.0.0.1. The
client fetches GET /v1/hours for the whole year as a registry would: the largest page
the API allows, following `next_cursor` to the end, reading and parsing every page, and
checks it received every hour once; and GET /v1/hours/columns, the whole year in one
request as arrays per channel, parsed and checked the same way; and its compact layout
(`layout=compact`), parsed and decoded to the same arrays (what a registry storing arrays
needs) before the check. Median of several runs after a warm-up. Goal: <= 300 ms for the
whole year. Usage:
    .venv/bin/python bench/bench_api.py [--runs 7] [--page-size 5000] [--format json]
        [--endpoint both|hours|columns|compact|bulk|all] [--workdir DIR]
(both: hours and columns; bulk: the two layouts of columns, alternating; all: the three.)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import tomli_w
from sqlalchemy import insert

from cemsd import chain
from cemsd.api.columns_compact import decode
from cemsd.api.tokens import create_token
from cemsd.periods import HOUR
from cemsd.store import schema
from cemsd.store.database import Database

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import child_pids, free_port, machine_info, status_kb, wait_port

CHANNELS = 10
HOURS = 365 * 24
START = 1767196800.0  # 2026-01-01T00:00+08:00, plant time
GOAL_SECONDS = 0.300


def fill(db: Database, seed: int = 7, start: float = START, names: list[str] | None = None
         ) -> None:
    """A year of hours from `start` per channel (`names`, default line<c>.n2o), about 5 %
    invalid and substituted, all sealed."""
    names = names or [f"line{c}.n2o" for c in range(CHANNELS)]
    rng = np.random.default_rng(seed)
    db.upgrade()
    db.upsert_channels([{"name": name, "device": name.split(".")[0], "key": "n2o",
                         "unit": "ppm", "kind": "analog"} for name in names])
    created = start + (HOURS + 2) * HOUR
    for name in names:
        values = 300.0 + rng.normal(0, 20, HOURS)
        invalid = rng.random(HOURS) < 0.05
        db.insert_aggregates(schema.hours, [
            {"channel": name, "ts": start + h * HOUR, "value": float(values[h]),
             "minimum": float(values[h]) - 5, "maximum": float(values[h]) + 5,
             "n_valid": 30 if invalid[h] else 60, "n_expected": 60,
             "flag": "B" if invalid[h] else "N",
             "reason": "30 of 60 minutes valid, 45 needed; B communication fault: 30"
             if invalid[h] else None, "unit": "ppm", "created_at": created}
            for h in range(HOURS)])
        with db.transaction() as conn:
            conn.execute(insert(schema.substitutions), [
                {"channel": name, "ts": start + h * HOUR, "value": 300.0,
                 "unit": "ppm", "flag": "S", "method": "hj75.missing.before_after_mean",
                 "period_kind": "missing", "period_start": start + h * HOUR, "period_hours": 1,
                 "capture_rate": 0.95, "source_hours": "[]", "created_at": created}
                for h in np.flatnonzero(invalid).tolist()])
    chain.seal_due(db, start + HOURS * HOUR, created)


def write_config(tmp: Path, port: int, max_page: int) -> Path:
    config = {"plant": {"id": "bench-api", "timezone": "Asia/Shanghai"},
              "storage": {"state_dir": str(tmp / "state")}, "buses": [], "devices": [],
              "api": {"port": port, "max_page_size": max_page,
                      "default_page_size": min(500, max_page)}}
    path = tmp / "cemsd.toml"
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


def fetch_year(client: httpx.Client, page_size: int, fmt: str
               ) -> tuple[int, list[float], float]:
    """Every hour of the year, page by page; returns rows, the seconds of each page and the
    seconds the client spent parsing the bodies."""
    params: dict[str, str | int] = {"from": "2026-01-01", "to": "2027-01-01",
                                    "limit": page_size, "format": fmt}
    rows, pages, seen, parsing = 0, [], set(), 0.0
    while True:
        started = time.perf_counter()
        response = client.get("/v1/hours", params=params)
        response.raise_for_status()
        received = time.perf_counter()
        if fmt == "json":
            body = json.loads(response.content)
            items, cursor = body["items"], body["next_cursor"]
            keys = [(i["channel"], i["start_utc"]) for i in items]
        else:
            table = list(csv.DictReader(io.StringIO(response.text)))
            cursor = response.headers.get("X-Next-Cursor")
            keys = [(r["channel"], r["start_utc"]) for r in table]
        pages.append(time.perf_counter() - started)
        parsing += time.perf_counter() - received
        rows += len(keys)
        seen.update(keys)
        if cursor is None:
            break
        params["cursor"] = cursor
    if rows != CHANNELS * HOURS or len(seen) != rows:
        raise SystemExit(f"got {rows} rows ({len(seen)} distinct), expected {CHANNELS * HOURS}")
    return rows, pages, parsing


YEAR = {"from": "2026-01-01", "to": "2027-01-01"}


def fetch_year_columns(client: httpx.Client, layout: str) -> tuple[int, float, float]:
    """Every hour of the year in one request of arrays per channel (the compact layout
    decoded to them); returns the hours, the seconds from the request to the parsed (and
    decoded) body, and of those the client's parsing and decoding. The check that every
    hour came once is the bench's own and not timed (a set of 87,600 keys costs ~50 ms)."""
    start = time.perf_counter()
    response = client.get("/v1/hours/columns", params={**YEAR, "layout": layout})
    response.raise_for_status()
    received = time.perf_counter()
    body = json.loads(response.content)
    if layout == "compact":
        body = decode(body)
    done = time.perf_counter()
    keys = {(c["channel"], start) for c in body["channels"] for start in c["start_epoch"]}
    rows = sum(len(c["start_epoch"]) for c in body["channels"])
    if rows != CHANNELS * HOURS or len(keys) != rows:
        raise SystemExit(f"got {rows} hours ({len(keys)} distinct), expected {CHANNELS * HOURS}")
    return rows, done - start, done - received


def run_hours(client: httpx.Client, args: argparse.Namespace) -> None:
    fetch_year(client, args.page_size, args.format)  # warm-up
    totals, page_times, parse_times = [], [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        rows, pages, parsing = fetch_year(client, args.page_size, args.format)
        totals.append(time.perf_counter() - t0)
        page_times.extend(pages)
        parse_times.append(parsing)
    print(f"GET /v1/hours, {args.format}, limit {args.page_size}: {rows:,} rows in "
          f"{len(pages)} page(s) per fetch, {args.runs} runs after a warm-up")
    print(f"per page: median {1000 * statistics.median(page_times):.0f} ms "
          f"(min {1000 * min(page_times):.0f}, max {1000 * max(page_times):.0f})")
    report(totals, parse_times)


def run_columns(client: httpx.Client, args: argparse.Namespace, layouts: list[str]) -> None:
    """Each run fetches the year in each of `layouts`, alternating which goes first, so
    the layouts share the machine's load."""
    for layout in layouts:
        fetch_year_columns(client, layout)  # warm-up
    totals: dict[str, list[float]] = {layout: [] for layout in layouts}
    parse_times: dict[str, list[float]] = {layout: [] for layout in layouts}
    for run in range(args.runs):
        for layout in layouts[::-1] if run % 2 else layouts:
            rows, elapsed, parsing = fetch_year_columns(client, layout)
            totals[layout].append(elapsed)
            parse_times[layout].append(parsing)
    for layout in layouts:
        size = len(client.get("/v1/hours/columns", params={**YEAR, "layout": layout}).content)
        print(f"GET /v1/hours/columns?layout={layout}: {rows:,} hours in one request of "
              f"{size / 1e6:.2f} MB, {args.runs} runs after a warm-up")
        report(totals[layout], parse_times[layout],
               "parsing" + " and decoding" * (layout == "compact"))


def report(totals: list[float], parse_times: list[float], work: str = "parsing") -> None:
    median = statistics.median(totals)
    print(f"whole year: median {1000 * median:.0f} ms (min {1000 * min(totals):.0f}, "
          f"max {1000 * max(totals):.0f}), of which the client {work} the bodies "
          f"{1000 * statistics.median(parse_times):.0f} ms; goal <= {1000 * GOAL_SECONDS:.0f} ms: "
          f"{'met' if median <= GOAL_SECONDS else 'MISSED'}")


def report_memory(pid: int) -> None:
    """Peak RSS of the server and of its worker processes (which build the heavy answers)."""
    workers = [f"{status_kb(child, 'VmHWM') / 1024:.0f}" for child in child_pids(pid)]
    print(f"peak RSS (VmHWM): server {status_kb(pid, 'VmHWM') / 1024:.0f} MB, its child "
          f"processes (heavy-work workers; multiprocessing's helper) {', '.join(workers)} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--page-size", type=int, default=5000,
                        help="limit per request; also the server's max_page_size")
    parser.add_argument("--format", choices=["json", "csv"], default="json",
                        help="of /v1/hours")
    parser.add_argument("--endpoint", default="both",
                        choices=["both", "hours", "columns", "compact", "bulk", "all"],
                        help="/v1/hours page by page, /v1/hours/columns in one request, in "
                        "its compact layout; both: the first two; bulk: the last two, "
                        "alternating; all: the three")
    parser.add_argument("--workdir", type=Path,
                        help="the directory of an earlier run: its database is served as it "
                             "is (upgraded), not filled again")
    args = parser.parse_args()
    print(machine_info())
    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="cemsd-bench-api-"))
    port = free_port()
    config_path = write_config(tmp, port, args.page_size)
    path = tmp / "state" / "cemsd.db"
    reused = path.exists()
    db = Database(f"sqlite:///{path}")
    started = time.perf_counter()
    if reused:
        db.upgrade()
        print(f"the database of an earlier run: {path}")
    else:
        fill(db)
        print(f"filled {CHANNELS} channels x {HOURS} hours, sealed, in "
              f"{time.perf_counter() - started:.1f} s ({path})")
    token = create_token(db, f"registry-{time.time_ns()}", "bench")
    db.close()
    server = subprocess.Popen([sys.executable, "-m", "cemsd", "--log-level", "WARNING", "serve",
                               "--config", str(config_path)], stdin=subprocess.DEVNULL)
    try:
        wait_port(port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            if args.endpoint in ("both", "all", "hours"):
                run_hours(client, args)
            layouts = {"both": ["arrays"], "columns": ["arrays"], "compact": ["compact"],
                       "bulk": ["arrays", "compact"], "all": ["arrays", "compact"]
                       }.get(args.endpoint, [])
            if layouts:
                run_columns(client, args, layouts)
        report_memory(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
