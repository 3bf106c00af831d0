"""Benchmark of the IOMAD data layer: seed, select, expand, park/restore/mark at 50,000 users.

Run: ``.venv/bin/python -m bench.iomad_bench [--users 50000] [--engines mariadb,postgres,sqlite]``.
Writes bench/results/iomad.json and prints a table. Statements are counted with a
``before_cursor_execute`` listener. The baseline in the same run is the naive way: one UPDATE
per row to park, over the first ``--baseline-rows`` rows.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from iomad_sim import scratch_databases
from iomad_sim.iomad_schema import create_iomad_schema
from iomad_sim.iomad_seed import SeedSpec, seed_iomad
from moodle_bridge.sources.iomad.queries import PARKED_DUE_BASE
from moodle_bridge.sources.iomad.queue import mark_emails_sent, park_emails, restore_emails, select_due_emails
from moodle_bridge.sources.iomad.recipients import expand_emails
from moodle_bridge.sources.iomad.schema import detect_iomad

SERVERS = {
    "mariadb": os.environ.get("MRCO_BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/"),
    "postgres": os.environ.get(
        "MRCO_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
}
RESULTS = Path(__file__).parent / "results" / "iomad.json"
T = TypeVar("T")


@contextmanager
def database(engine_name: str) -> Iterator[sa.Engine]:
    server_url = SERVERS.get(engine_name)
    url = scratch_databases.create_database(engine_name, "bench", server_url)
    engine = sa.create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        scratch_databases.drop_database(engine_name, url, server_url)


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *args: Any) -> None:
        self.n += 1


def measure(engine: sa.Engine, fn: Callable[[], T]) -> tuple[T, float, int]:
    counter = Counter()
    sa.event.listen(engine, "before_cursor_execute", counter)
    started = time.perf_counter()
    try:
        out = fn()
    finally:
        elapsed = time.perf_counter() - started
        sa.event.remove(engine, "before_cursor_execute", counter)
    return out, elapsed, counter.n


def run(engine_name: str, users: int, baseline_rows: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"engine": engine_name, "users": users}
    with database(engine_name) as engine:
        tables = create_iomad_schema(engine)
        companies = 5
        spec = SeedSpec(
            companies=companies,
            users_per_company=users // companies,
            managers_per_company=3,
            child_departments=4,
            supervisor_every=5,
            license_allocated=False,
            now=1_795_361_815,
        )
        _, secs, stmts = measure(engine, lambda: seed_iomad(engine, tables, spec))
        figures["seed"] = {"seconds": round(secs, 3), "statements": stmts}
        now = spec.now + 1000
        with engine.connect() as conn:
            tables = detect_iomad(conn, "mdl_")
            rows, secs, stmts = measure(engine, lambda: select_due_emails(conn, tables, now, None, None))
            figures["select"] = {"rows": len(rows), "seconds": round(secs, 3), "statements": stmts}
            expanded, secs, stmts = measure(engine, lambda: expand_emails(conn, tables, rows))
            recipients = sum(len(x.recipients) for x in expanded.values())
            figures["expand"] = {
                "rows": len(rows),
                "recipients": recipients,
                "seconds": round(secs, 3),
                "statements": stmts,
            }
        ids = [r.id for r in rows]
        e = tables.email

        def naive_park() -> None:
            with engine.begin() as conn:
                for i in ids[:baseline_rows]:
                    conn.execute(sa.update(e).where(e.c.id == i).values(due=e.c.due + PARKED_DUE_BASE))
                raise _Rollback

        started = time.perf_counter()
        with suppress(_Rollback):
            measure(engine, naive_park)
        base_secs = time.perf_counter() - started
        figures["baseline_per_row_park"] = {
            "rows": min(baseline_rows, len(ids)),
            "seconds": round(base_secs, 3),
            "statements": min(baseline_rows, len(ids)),
        }
        for label, op in (
            ("park", lambda c: park_emails(c, tables, ids)),
            ("restore", lambda c: restore_emails(c, tables, ids)),
            ("park_again", lambda c: park_emails(c, tables, ids)),
            ("mark_sent", lambda c: mark_emails_sent(c, tables, ids, now)),
        ):

            def txn(op: Callable[[sa.Connection], list[int]] = op) -> list[int]:
                with engine.begin() as conn:
                    return op(conn)

            done, secs, stmts = measure(engine, txn)
            figures[label] = {"rows": len(done), "seconds": round(secs, 3), "statements": stmts}
    return figures


class _Rollback(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--engines", default="mariadb")
    parser.add_argument("--baseline-rows", type=int, default=5_000)
    args = parser.parse_args(argv)
    results = [run(name, args.users, args.baseline_rows) for name in args.engines.split(",")]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for fig in results:
        print(f"== {fig['engine']} ({fig['users']} users)")
        for key, value in fig.items():
            if isinstance(value, dict):
                print(f"  {key:24s} " + ", ".join(f"{k}={v}" for k, v in value.items()))
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
