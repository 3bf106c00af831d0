"""``moodle-offload jobs``: list, show, retry, cancel and error reports.

Output never contains bodies, template data or secrets: the error report lists addresses,
statuses and provider error codes/messages only.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
    CancelReport,
    JobControlError,
    JobSummary,
    cancel_job,
    describe_counts,
    error_rows,
    job_summary,
    list_jobs,
    retry_failed,
    write_error_csv,
)
from moodle_bridge.results.runtime import open_database
from moodle_bridge.results.suppression import suppression_counts
from moodle_bridge.results.switches import tell_cloud
from moodle_bridge.storage import audit
from moodle_bridge.storage.statuses import COUNTER_COLUMNS, JOB_TERMINAL


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("jobs", help="list jobs, show one, retry failures, cancel, error reports")
    actions = parser.add_subparsers(dest="jobs_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--company", type=int, help="only this company id")
    listing.add_argument("--status", help="only this status (pending, queued, processing, completed, ...)")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = actions.add_parser("show", help="one job: counts, skipped reasons, recent audit")
    show.add_argument("job_id", type=int)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    retry = actions.add_parser(
        "retry", help="send the job's failed recipients again, those a retry can cure (a new attempt)"
    )
    retry.add_argument("job_id", type=int)
    retry.add_argument(
        "--all",
        action="store_true",
        help="also retry permanent failures (invalid address, rejected, bad data, unknown outcome)",
    )
    cancel = actions.add_parser(
        "cancel", help="stop the job: nothing more is sent; unsent IOMAD rows go back to IOMAD"
    )
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


def when(timestamp: int | None) -> str:
    """A unix time as ``2026-11-29 19:03 UTC`` (``-`` when unset)."""
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(int(timestamp), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


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
        print(
            f"moodle-offload jobs: database error: {type(exc).__name__}; check the database and "
            "run the command again",
            file=sys.stderr,
        )
        return 1
    finally:
        engine.dispose()


def _list_line(s: JobSummary) -> str:
    c = s.counts
    flag = (" ! " + "; ".join(s.attention)) if s.attention else ""
    return (
        f"{s.id:>7} {s.company:>7} {s.type:<11} {s.status:<15} {c.total:>6} {c.sent:>6} {c.delivered:>6} "
        f"{c.failed:>6} {c.bounced + c.complained:>6} {c.skipped:>6} {c.fell_back:>6} {c.cancelled:>6} "
        f"{c.in_flight:>6}{flag}"
    )


def _show(s: JobSummary, skipped: dict[str, int], events: list[Any], eta: dict[str, Any]) -> None:
    c = s.counts
    print(f"job {s.id}: {s.type} job of company {s.company} ({s.source}, {s.provider}), attempt {s.attempt}")
    print(f"status:     {s.status}" + (" (OVERDUE)" if s.overdue else ""))
    print(f"created:    {when(s.created)}")
    print(f"submitted:  {when(s.submitted)}")
    print(f"ended:      {when(s.completed)}")
    if s.cancel_requested:
        told = when(s.cancel_signalled) if s.cancel_signalled else "not yet"
        print(f"cancelled:  {when(s.cancel_requested)} (cloud told: {told})")
    print(f"recipients: {c.total}")
    for label, value in c.labelled():
        print(f"  {label + ':':<20}{value:>8}")
    if eta.get("eta_seconds") is not None:
        minutes = eta["eta_seconds"] / 60
        rate = eta["ses_send_rate"]
        print(f"time left:  about {minutes:.0f} min for {eta['unsent']} unsent at {rate:g}/s (the SES rate)")
    if skipped:
        print("skipped by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    if s.attention:
        print("needs attention: " + "; ".join(s.attention))
    if events:
        print("recent activity:")
        for e in events:
            print(f"  {when(e.timecreated)}  {e.actor:<22} {e.action}")


def _dispatch(args: argparse.Namespace, config: BridgeConfig, engine: sa.Engine, tables: Any) -> int:
    now = int(time.time())
    if args.jobs_action == "list":
        with engine.connect() as conn:
            items = list_jobs(
                conn,
                tables,
                deadline_seconds=config.job_deadline_seconds,
                now=now,
                company_id=args.company,
                status=args.status,
                limit=args.limit,
            )
        if args.json:
            print(json.dumps([i.as_dict() for i in items], indent=2))
            return 0
        if not items:
            print("no jobs")
            return 0
        print(
            f"{'id':>7} {'company':>7} {'type':<11} {'status':<15} {'total':>6} {'sent':>6} {'deliv':>6} "
            f"{'failed':>6} {'bounce':>6} {'skip':>6} {'iomad':>6} {'cancel':>6} {'flight':>6}"
        )
        for item in items:
            print(_list_line(item))
        return 0
    if args.jobs_action == "show":
        with engine.connect() as conn:
            summary = job_summary(
                conn, tables, args.job_id, deadline_seconds=config.job_deadline_seconds, now=now
            )
            skipped = suppression_counts(conn, tables, args.job_id)
            a = tables.audit_log
            events = conn.execute(
                sa.select(a.c.timecreated, a.c.actor, a.c.action, a.c.detail)
                .where(a.c.jobid == args.job_id)
                .order_by(a.c.id.desc())
                .limit(20)
            ).all()
            row = conn.execute(sa.select(tables.jobs).where(tables.jobs.c.id == args.job_id)).first()
        eta = _eta(row, config) if row is not None else {}
        if args.json:
            info = summary.as_dict()
            info.update(eta)
            info["skipped_by_reason"] = skipped
            info["audit"] = [
                {
                    "time": e.timecreated,
                    "actor": e.actor,
                    "action": e.action,
                    "detail": json.loads(e.detail) if e.detail else None,
                }
                for e in events
            ]
            print(json.dumps(info, indent=2))
            return 0
        _show(summary, skipped, list(events), eta)
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
                include_permanent=args.all,
            )
        print(
            f"job {report.job_id}: attempt {report.attempt}, {report.recipients} recipients in "
            f"{len(report.batches)} new batches (sent by the next tick)"
        )
        if report.left_failed:
            print(
                f"  {report.left_failed} failed recipients left as they are: their failure is permanent "
                "(see `jobs errors`); `jobs retry --all` retries them too"
            )
        return 0
    if args.jobs_action == "cancel":
        queue = detect_queue(engine, config.database.prefix)
        with engine.begin() as conn:
            cancelled = cancel_job(conn, tables, args.job_id, actor=_actor(), now=now, queue=queue)
        return _report_cancel(cancelled, engine, tables, config, now)
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


def _report_cancel(
    report: CancelReport, engine: sa.Engine, tables: Any, config: BridgeConfig, now: int
) -> int:
    print(
        f"job {report.job_id}: {report.recipients_cancelled} recipients cancelled before they reached "
        f"the cloud, {report.batches_abandoned} batches abandoned, {report.rows_restored} IOMAD rows "
        "given back to IOMAD"
    )
    if report.in_cloud:
        print(
            f"  {report.in_cloud} recipients were already in the cloud: those it sent are recorded as "
            "sent, the rest as cancelled, as its records come in (every tick)"
        )
    problem = tell_cloud([report], engine, tables, config, now).problem
    if problem:
        print(f"moodle-offload jobs: {problem}", file=sys.stderr)
        return 1
    with engine.connect() as conn:
        counts = job_summary(
            conn, tables, report.job_id, deadline_seconds=config.job_deadline_seconds, now=now
        )
    print(f"  now {counts.status}: {describe_counts(counts.counts)}")
    return 0
