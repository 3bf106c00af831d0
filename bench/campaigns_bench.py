"""Campaign audience queries on a large Moodle: 100,000 users and 1,000,000 log rows.

For each engine that answers (SQLite always; MariaDB and PostgreSQL when reachable) the bench
seeds one IOMAD company of ``--users`` learners with Moodle's own tables and indexes
(``iomad_sim``): enrolments, course access, completions, module completions, cohorts, and
``--log-rows`` rows of ``logstore_standard_log``. It then times each trigger's audience query
(best of three) against a naive baseline that finds inactive users from the log, as a report
plugin reading the log would. Goal: every audience query <= 2 s.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

import sqlalchemy as sa

from bench.common import best_of, write_results
from iomad_sim.iomad_schema import create_iomad_schema, metadata_for
from iomad_sim.scratch_databases import ENGINES, create_database, drop_database, probe
from moodle_bridge.sources.campaigns.audience import audience
from moodle_bridge.sources.campaigns.rules import DAY, parse_rule
from moodle_bridge.sources.campaigns.runner import moodle_tables_for
from moodle_bridge.sources.iomad.schema import IomadTables, detect_iomad
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from moodle_bridge.storage.migrations import migrate

NOW = 1_780_000_000
COURSE = 2
TEMPLATE = {"subject": "s", "html": "h"}
TRIGGERS = {
    "inactive_site_30d": {"kind": "inactive_site", "days": 30},
    "inactive_course_14d": {"kind": "inactive_course", "days": 14, "course": COURSE},
    "not_started_7d": {"kind": "not_started", "days": 7, "course": COURSE},
    "not_completed_deadline": {"kind": "not_completed", "days": 30, "course": COURSE, "deadline": NOW + DAY},
}


def _insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], chunk: int = 20_000) -> None:
    for start in range(0, len(rows), chunk):
        conn.execute(table.insert(), rows[start : start + chunk])


def moodle_tables(iomad: IomadTables) -> dict[str, sa.Table]:
    """The simulated Moodle's tables by name without the ``mdl_`` prefix."""
    return {name.removeprefix("mdl_"): table for name, table in metadata_for(iomad).tables.items()}


def seed(engine: sa.Engine, users: int, log_rows: int) -> None:
    iomad = create_iomad_schema(engine)
    t = moodle_tables(iomad)
    with engine.begin() as conn:
        _insert(conn, t["course"], [{"id": COURSE, "fullname": "Safety 101", "shortname": "s"}])
        seed_learners(conn, t, company=1, ids=range(10, 10 + users), log_rows=log_rows)
    if engine.dialect.name in ("sqlite", "postgresql"):
        with engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))
            conn.commit()


def seed_learners(
    conn: sa.Connection, t: dict[str, sa.Table], *, company: int, ids: range, log_rows: int, now: int = NOW
) -> None:
    """Learners ``ids`` of ``company`` in Moodle's own tables: users (one in ten never logged in),
    company membership, a licence enrolment in course ``COURSE`` (which must exist) for half of
    them, course access, completions, module completions, a cohort and ``log_rows`` rows of
    ``logstore_standard_log``, dated before ``now``. Deterministic (seed 7); one enrolment
    method, id 1, per database."""
    rng = random.Random(7)
    _insert(conn, t["enrol"], [{"id": 1, "enrol": "license", "courseid": COURSE}])
    _insert(
        conn,
        t["user"],
        [
            {
                "id": u,
                "username": f"u{u}",
                "email": f"u{u}@example.com",
                "firstname": "F",
                "lastname": "L",
                "mnethostid": 1,
                "lastaccess": now - rng.randrange(0, 120 * DAY) if u % 10 else 0,
                "timecreated": now - 400 * DAY,
            }
            for u in ids
        ],
    )
    _insert(
        conn,
        t["company_users"],
        [{"companyid": company, "userid": u, "managertype": 0, "departmentid": 100 + u % 20} for u in ids],
    )
    enrolled = [u for u in ids if u % 2 == 0]
    _insert(
        conn,
        t["user_enrolments"],
        [{"enrolid": 1, "userid": u, "timestart": now - rng.randrange(0, 60 * DAY)} for u in enrolled],
    )
    _insert(
        conn,
        t["user_lastaccess"],
        [
            {"userid": u, "courseid": COURSE, "timeaccess": now - rng.randrange(0, 40 * DAY)}
            for u in enrolled[::2]
        ],
    )
    _insert(
        conn,
        t["course_completions"],
        [
            {
                "userid": u,
                "course": COURSE,
                "timeenrolled": now - 60 * DAY,
                "timestarted": now - 30 * DAY,
                "timecompleted": now - DAY if u % 3 == 0 else None,
            }
            for u in enrolled[::3]
        ],
    )
    _insert(
        conn,
        t["course_modules_completion"],
        [
            {"coursemoduleid": 99, "userid": u, "completionstate": 1, "timemodified": now}
            for u in enrolled[::5]
        ],
    )
    _insert(conn, t["cohort_members"], [{"cohortid": 1, "userid": u} for u in ids if u % 5 == 0])
    _insert(
        conn,
        t["logstore_standard_log"],
        [
            {
                "eventname": "\\core\\event\\course_viewed",
                "component": "core",
                "action": "viewed",
                "target": "course",
                "crud": "r",
                "contextid": 1,
                "contextlevel": 50,
                "contextinstanceid": COURSE,
                "userid": rng.choice(ids),
                "courseid": COURSE,
                "timecreated": now - rng.randrange(0, 365 * DAY),
            }
            for _ in range(log_rows)
        ],
        chunk=50_000,
    )


def naive_inactive(engine: sa.Engine, cutoff: int) -> int:
    """What a report reading the log does: the last event per user, from the whole log."""
    sql = sa.text(
        "SELECT COUNT(*) FROM mdl_company_users cu WHERE cu.companyid = 1 AND cu.userid NOT IN "
        "(SELECT l.userid FROM mdl_logstore_standard_log l GROUP BY l.userid HAVING MAX(l.timecreated) >= :c)"
    )
    with engine.connect() as conn:
        return int(conn.execute(sql, {"c": cutoff}).scalar_one())


def bench_engine(name: str, users: int, log_rows: int) -> dict[str, Any]:
    url = create_database(name, "campbench")
    engine = create_bridge_engine(url)
    try:
        seed(engine, users, log_rows)
        migrate(engine, "mdl_")
        bridge = build_bridge_tables("mdl_")
        with engine.connect() as conn:
            iomad = detect_iomad(conn, "mdl_")
        moodle = moodle_tables_for(iomad)
        out: dict[str, Any] = {"engine": name}
        for label, trigger in TRIGGERS.items():
            rule = parse_rule({"trigger": trigger, "template": TEMPLATE, "suppresstarget": 99})
            found: list[int] = []

            def run(rule: Any = rule, found: list[int] = found) -> None:
                with engine.connect() as conn:
                    members = audience(conn, moodle, iomad, bridge, rule, companyid=1, campaignid=1, now=NOW)
                found[:] = [len(members)]

            seconds = best_of(3, run)
            out[label] = {"seconds": round(seconds, 3), "audience": found[0]}
        baseline = best_of(1, lambda: naive_inactive(engine, NOW - 30 * DAY))
        out["naive_log_scan_inactive_30d_seconds"] = round(baseline, 3)
        worst = max(v["seconds"] for k, v in out.items() if k in TRIGGERS)
        out["slowest_audience_seconds"] = worst
        out["goal_le_2s"] = worst <= 2.0
        out["naive_over_rule_inactive_site"] = round(
            baseline / max(out["inactive_site_30d"]["seconds"], 1e-6), 1
        )
        return out
    finally:
        engine.dispose()
        drop_database(name, url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.campaigns_bench")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--log-rows", type=int, default=1_000_000)
    parser.add_argument("--engines", nargs="*", default=list(ENGINES))
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    for name in args.engines:
        status = probe(name)
        if not status.reachable:
            print(f"campaigns_bench: {name} skipped ({status.detail})")
            continue
        print(f"campaigns_bench: {name}: seeding {args.users} users and {args.log_rows} log rows", flush=True)
        results.append(bench_engine(name, args.users, args.log_rows))
        print(results[-1], flush=True)
    write_results("campaigns", {"users": args.users, "log_rows": args.log_rows, "engines": results})
    return 0 if all(r["goal_le_2s"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
