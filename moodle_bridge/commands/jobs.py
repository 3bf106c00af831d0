"""``moodle-offload jobs``: list, show, retry, cancel and error reports.

Output never contains bodies, template data or secrets: the error report lists addresses,
statuses and provider error codes/messages only.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from typing import Any

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.results.eta import eta_seconds, unsent
from moodle_bridge.results.iomad_link import detect_queue
from moodle_bridge.results.job_control import (
    JobControlError,
    cancel_job,
    error_rows,
    retry_failed,
    write_error_csv,
)
from moodle_bridge.results.runtime import open_database
from moodle_bridge.results.states import COUNTER_COLUMNS, JOB_TERMINAL
from moodle_bridge.results.suppression import suppression_counts
from moodle_bridge.storage import audit


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("jobs", help="list jobs, show one, retry failures, cancel, error reports")
    actions = parser.add_subparsers(dest="jobs_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--company", type=int, help="only this company id")
    listing.add_argument("--status", help="only this status (pending, queued, processing, completed, ...)")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = actions.add_parser("show", help="one job: counters, skipped reasons, recent audit")
    show.add_argument("job_id", type=int)
    show.add_argument("--json", action="store_true")
    retry = actions.add_parser("retry", help="send the job's failed recipients again (a new attempt)")
    retry.add_argument("job_id", type=int)
    cancel = actions.add_parser("cancel", help="cancel unsent recipients and give their rows back to IOMAD")
    cancel.add_argument("job_id", type=int)
    errors = actions.add_parser("errors", help="error report as CSV")
    errors.add_argument("job_id", type=int)
    errors.add_argument("--output", help="write to this file instead of standard output")
    parser.set_defaults(handler=handle)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _overdue(row: Any, config: BridgeConfig, now: int) -> bool:
    deadline = row.timedeadline or (int(row.timecreated) + config.job_deadline_seconds)
    return row.status not in JOB_TERMINAL and int(deadline) < now


def _eta(row: Any, config: BridgeConfig) -> dict[str, Any]:
    """Unsent recipients and the time they take at the account's SES rate (results/eta.py)."""
    left = unsent({c: getattr(row, c) for c in COUNTER_COLUMNS})
    rate = config.aws.ses_send_rate
    return {
        "unsent": left,
        "ses_send_rate": rate or None,
        "eta_seconds": None if row.status in JOB_TERMINAL else eta_seconds(left, rate),
    }


def handle(args: argparse.Namespace, config: BridgeConfig) -> int:
    engine, tables = open_database(config)
    try:
        return _dispatch(args, config, engine, tables)
    except JobControlError as exc:
        print(f"moodle-offload jobs: {exc}", file=sys.stderr)
        return 1
    except sa.exc.SQLAlchemyError as exc:
        print(f"moodle-offload jobs: database error: {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _dispatch(args: argparse.Namespace, config: BridgeConfig, engine: sa.Engine, tables: Any) -> int:
    now = int(time.time())
    j = tables.jobs
    if args.jobs_action == "list":
        query = sa.select(j).order_by(j.c.id.desc()).limit(args.limit)
        if args.company is not None:
            query = query.where(j.c.companyid == args.company)
        if args.status:
            query = query.where(j.c.status == args.status)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        items = [
            {
                "id": row.id,
                "company": row.companyid,
                "type": row.jobtype,
                "source": row.source,
                "status": row.status,
                "overdue": _overdue(row, config, now),
                "attempt": row.attempt,
                **{c.removeprefix("recipients"): getattr(row, c) for c in COUNTER_COLUMNS},
            }
            for row in rows
        ]
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        print(
            f"{'id':>7} {'company':>7} {'type':<11} {'status':<16} {'total':>7} {'sent':>7} {'failed':>6} "
            f"{'bounced':>7} {'skipped':>7} {'cancel':>6}"
        )
        for it in items:
            flag = " OVERDUE" if it["overdue"] else ""
            print(
                f"{it['id']:>7} {it['company']:>7} {it['type']:<11} {it['status']:<16} {it['total']:>7} "
                f"{it['sent']:>7} {it['failed']:>6} {it['bounced']:>7} {it['skipped']:>7} "
                f"{it['cancelled']:>6}{flag}"
            )
        return 0
    if args.jobs_action == "show":
        with engine.connect() as conn:
            row = conn.execute(sa.select(j).where(j.c.id == args.job_id)).first()
            if row is None:
                raise JobControlError(f"job {args.job_id} does not exist")
            skipped = suppression_counts(conn, tables, args.job_id)
            a = tables.audit_log
            events = conn.execute(
                sa.select(a.c.timecreated, a.c.actor, a.c.action, a.c.detail)
                .where(a.c.jobid == args.job_id)
                .order_by(a.c.id.desc())
                .limit(20)
            ).all()
        info = {
            "id": row.id,
            "company": row.companyid,
            "type": row.jobtype,
            "source": row.source,
            "category": row.category,
            "provider": row.provider,
            "status": row.status,
            "overdue": _overdue(row, config, now),
            "attempt": row.attempt,
            "counters": {c: getattr(row, c) for c in COUNTER_COLUMNS},
            **_eta(row, config),
            "skipped_by_reason": skipped,
            "created": row.timecreated,
            "submitted": row.timesubmitted,
            "completed": row.timecompleted,
            "audit": [
                {
                    "time": e.timecreated,
                    "actor": e.actor,
                    "action": e.action,
                    "detail": json.loads(e.detail) if e.detail else None,
                }
                for e in events
            ],
        }
        print(json.dumps(info, indent=2))
        return 0
    if args.jobs_action == "retry":
        with engine.begin() as conn:
            report = retry_failed(
                conn,
                tables,
                args.job_id,
                actor=_actor(),
                now=now,
                max_recipients=config.submit.max_recipients,
            )
        print(
            f"job {report.job_id}: attempt {report.attempt}, {report.recipients} recipients in "
            f"{len(report.batches)} new batches (sent by the next tick)"
        )
        return 0
    if args.jobs_action == "cancel":
        queue = detect_queue(engine, config.database.prefix)
        with engine.begin() as conn:
            cancelled = cancel_job(conn, tables, args.job_id, actor=_actor(), now=now, queue=queue)
        print(
            f"job {cancelled.job_id} cancelled: {cancelled.recipients_cancelled} recipients, "
            f"{cancelled.batches_abandoned} batches abandoned, {cancelled.rows_restored} IOMAD rows restored"
        )
        return 0
    if args.jobs_action == "errors":
        with engine.connect() as conn:
            rows_iter = list(error_rows(conn, tables, args.job_id))
        if args.output:
            with open(args.output, "w", encoding="utf-8", newline="") as handle_out:
                count = write_error_csv(rows_iter, handle_out)
            print(f"{count} rows written to {args.output}")
        else:
            write_error_csv(rows_iter, sys.stdout)
        with engine.begin() as conn:
            audit.record(
                conn,
                tables,
                actor=_actor(),
                action="error_report_downloaded",
                now=now,
                jobid=args.job_id,
                detail={"rows": len(rows_iter)},
            )
        return 0
    raise JobControlError(f"unknown action {args.jobs_action}")  # pragma: no cover
