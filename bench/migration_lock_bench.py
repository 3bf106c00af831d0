"""How long a migration step locks the 1,000,000-row recipients table (docs/UPGRADING.md).

For each reachable server engine: a scratch database migrated to the latest schema, 1,000,000
rows in ``mrcloud_recipients`` (the largest bridge table: one row per recipient), then each
kind of DDL a migration step uses, timed, while a writer thread keeps doing what the bridge
does to that table (single-row UPDATEs by id, autocommit). The writer's latency during the
DDL, against its own latency just before it in the same run (the baseline), shows whether the
step blocks the bridge and for how long. Last, the one step so far that builds indexes on that
table (step 7: three indexes for the dashboard) is applied as ``migrate`` applies it to a
database upgraded from version 6: its indexes dropped, then the step in one transaction.

    python -m bench.migration_lock_bench [--rows 1000000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.schema import CreateColumn

from bench.common import write_results
from iomad_sim import scratch_databases as databases
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from moodle_bridge.storage.migrations import LATEST_VERSION, STEPS, migrate

PREFIX = "mdl_"
#: The step that builds indexes on the recipients table, and the indexes it builds.
INDEX_STEP = 7
INDEX_STEP_INDEXES = ("mrclreci_jobuse_ix", "mrclreci_jobadd_ix", "mrclreci_jobful_ix")


def _seed(engine: sa.Engine, rows: int, family: str) -> float:
    t = build_bridge_tables(PREFIX).recipients
    if family == "mysql":
        source = f"seq_1_to_{rows}"
        n = "seq"
        concat = "CONCAT('u', seq, '@example.com'), CONCAT('Learner ', seq), CONCAT('e', seq, ':user')"
        div = "seq DIV 200"
    else:
        source = f"generate_series(1, {rows}) AS g(n)"
        n, concat = "n", "'u' || n || '@example.com', 'Learner ' || n, 'e' || n || ':user'"
        div = "n / 200"
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO {t.name} (jobid, companyid, emailid, userid, role, address, fullname, dedupekey, "
            f"status, attempts, timecreated, timemodified) SELECT {div}, 1 + MOD({n}, 5), {n}, {n}, 'user', "
            f"{concat}, 'sent', 1, 1800000000, 1800000000 FROM {source}"
        )
    if family == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"VACUUM ANALYZE {t.name}"))
    return time.perf_counter() - start


class Writer:
    """Single-row UPDATEs by id in a loop (autocommit), recording each latency."""

    def __init__(self, url: Any, rows: int) -> None:
        self.engine = create_bridge_engine(url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
        self.table = build_bridge_tables(PREFIX).recipients.name
        self.rows = rows
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        rng = random.Random(7)
        with self.engine.connect() as conn:
            statement = sa.text(f"UPDATE {self.table} SET attempts = attempts + 1 WHERE id = :id")
            while not self._stop.is_set():
                began = time.perf_counter()
                conn.execute(statement, {"id": rng.randint(1, self.rows)})
                self.samples.append((began, time.perf_counter() - began))
                time.sleep(0.005)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)
        self.engine.dispose()

    def window(self, start: float, end: float) -> dict[str, Any]:
        inside = [
            s for began, s in self.samples if start <= began <= end or (began < start and began + s > start)
        ]
        if not inside:
            return {"writes": 0}
        return {
            "writes": len(inside),
            "p50_ms": round(statistics.median(inside) * 1000, 2),
            "max_ms": round(max(inside) * 1000, 1),
        }


def _ddl_cases(engine: sa.Engine) -> list[tuple[str, str]]:
    t = build_bridge_tables(PREFIX).recipients
    dialect = engine.dialect
    nullable = CreateColumn(sa.Column("benchnote", sa.String(36), nullable=True)).compile(dialect=dialect)
    defaulted = CreateColumn(
        sa.Column("benchflag", sa.BigInteger, nullable=False, server_default="0")
    ).compile(dialect=dialect)
    return [
        ("add_nullable_column", f"ALTER TABLE {t.name} ADD COLUMN {nullable}"),
        ("add_column_not_null_default_0", f"ALTER TABLE {t.name} ADD COLUMN {defaulted}"),
        ("create_index", f"CREATE INDEX {PREFIX}mrclreci_bench_ix ON {t.name} (companyid, timefinal)"),
    ]


def _index_step_case(engine: sa.Engine, writer: Writer, baseline: dict[str, Any]) -> dict[str, Any]:
    """Step 7 as ``migrate`` applies it on a database at version 6: its indexes are not there yet."""
    table = build_bridge_tables(PREFIX).recipients
    built = [ix for ix in table.indexes if ix.name and ix.name.endswith(INDEX_STEP_INDEXES)]
    if len(built) != len(INDEX_STEP_INDEXES):
        raise RuntimeError(f"step {INDEX_STEP}'s indexes are not all declared: {[ix.name for ix in built]}")
    with engine.begin() as conn:
        for index in built:
            index.drop(conn)
    step = next(s for s in STEPS if s.version == INDEX_STEP)
    time.sleep(1)
    start = time.perf_counter()
    with engine.begin() as conn:  # one transaction per step, as migrate applies it
        step.apply(conn, build_bridge_tables(PREFIX))
    end = time.perf_counter()
    time.sleep(0.5)
    with engine.connect() as conn:
        present = {ix["name"] for ix in sa.inspect(conn).get_indexes(table.name)}
    if not {ix.name for ix in built} <= present:
        raise RuntimeError(f"step {INDEX_STEP} did not rebuild its indexes")
    during = writer.window(start, end)
    case: dict[str, Any] = {
        "indexes": len(built),
        "ddl_seconds": round(end - start, 3),
        "writer_during_ddl": during,
    }
    if during.get("max_ms") and baseline.get("max_ms"):
        case["writer_max_vs_baseline_max"] = round(during["max_ms"] / baseline["max_ms"], 1)
    return case


def bench_engine(engine_name: str, rows: int) -> dict[str, Any]:
    url = databases.create_database(engine_name, label="lockbench")
    engine = create_bridge_engine(url)
    try:
        migrate(engine, PREFIX)
        family = "mysql" if engine.dialect.name in ("mysql", "mariadb") else engine.dialect.name
        with engine.connect() as conn:
            version = str(conn.execute(sa.text("SELECT version()")).scalar_one()).split(",")[0]
        seeded = _seed(engine, rows, family)
        writer = Writer(url, rows)
        writer.start()
        time.sleep(3)
        base_start = time.perf_counter()
        time.sleep(3)
        baseline = writer.window(base_start, time.perf_counter())
        cases: dict[str, Any] = {}
        for name, ddl in _ddl_cases(engine):
            time.sleep(1)
            start = time.perf_counter()
            with engine.begin() as conn:  # as migrate applies a step: one transaction per step
                conn.execute(sa.text(ddl))
            end = time.perf_counter()
            time.sleep(0.5)
            during = writer.window(start, end)
            cases[name] = {"ddl_seconds": round(end - start, 3), "writer_during_ddl": during}
            if during.get("max_ms") and baseline.get("max_ms"):
                cases[name]["writer_max_vs_baseline_max"] = round(during["max_ms"] / baseline["max_ms"], 1)
        cases[f"step_{INDEX_STEP}_recipient_indexes"] = _index_step_case(engine, writer, baseline)
        writer.stop()
        return {
            "engine": engine_name,
            "server": version,
            "rows": rows,
            "seed_seconds": round(seeded, 1),
            "schema_version": LATEST_VERSION,
            "writer_baseline": baseline,
            "ddl": cases,
        }
    finally:
        engine.dispose()
        databases.drop_database(engine_name, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    results = []
    for engine_name in ("mariadb", "postgres"):
        status = databases.probe(engine_name)
        if not status.reachable:
            print(f"skipping {engine_name}: {status.detail}")
            continue
        figures = bench_engine(engine_name, args.rows)
        print(figures)
        results.append(figures)
    path = write_results("migration_lock", {"engines": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
