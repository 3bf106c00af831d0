"""Job control, shared by the CLI (``moodle-offload jobs``) and, later, the dashboard.

* ``retry_failed``: failed recipients go back to ``pending`` in new outbox batches (status
  ``pending``, the next attempt number); the outbox adds 1 to ``attempts`` when it submits them.
  Results for their old batches are then stale and ignored, so a retry is exactly-once in the same
  way as the first attempt.
* ``cancel_job``: recipients not yet final are ``cancelled``; batches not yet submitted are
  ``abandoned``; IOMAD rows none of whose recipients were reached are restored to IOMAD's cron.
  A batch already in the cloud may still send: a late ``sent`` for a cancelled recipient is
  ignored (and audited), never resurrecting it.
* ``error_rows`` / ``write_error_csv``: the error report, without bodies or secrets.

Every function locks the job row first (the same lock ingestion takes) and audits what it did.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import sqlalchemy as sa

from moodle_bridge.pipeline.batching import message_type_for
from moodle_bridge.results.ingest import lock_jobs, refresh_jobs
from moodle_bridge.results.iomad_link import IomadQueue
from moodle_bridge.results.settle import settle_rows
from moodle_bridge.results.states import (
    ACTIVE_STATUSES,
    BOUNCED,
    CANCELLED,
    COMPLAINED,
    FAILED,
    JOB_CANCELLED,
    JOB_TERMINAL,
    PENDING,
    RESTORED,
    SKIPPED,
)
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.storage.sqlutil import chunks, update_where_in

BATCH_PENDING = "pending"
BATCH_ABANDONED = "abandoned"


class JobControlError(Exception):
    """The action does not apply to this job (unknown id, wrong state). The message says why."""


@dataclass(frozen=True)
class RetryReport:
    job_id: int
    attempt: int
    recipients: int
    batches: list[str]


@dataclass(frozen=True)
class CancelReport:
    job_id: int
    recipients_cancelled: int
    batches_abandoned: int
    rows_restored: int


def _locked_job(conn: sa.Connection, tables: BridgeTables, job_id: int) -> dict[str, Any]:
    jobs = lock_jobs(conn, tables, [job_id])
    if job_id not in jobs:
        raise JobControlError(f"job {job_id} does not exist")
    j = tables.jobs
    full = conn.execute(sa.select(j).where(j.c.id == job_id)).mappings().one()
    jobs[job_id].update(full)
    return jobs[job_id]


def create_retry_batches(
    conn: sa.Connection,
    tables: BridgeTables,
    job_id: int,
    recipient_ids: list[int],
    *,
    attempt: int,
    target: str,
    max_recipients: int,
    now: int,
    company_id: int,
    message_type: str,
) -> list[str]:
    """Outbox batch rows (``pending``) for ``recipient_ids`` and point the recipients at them.

    The submitter builds each batch's message from its recipients when it sends it, exactly as for
    a first attempt; the batch key carries the attempt so the cloud's idempotency keys differ.
    """
    b, r = tables.batches, tables.recipients
    keys: list[str] = []
    for number, part in enumerate(chunks(sorted(recipient_ids), max_recipients), start=1):
        key = f"j{job_id}-a{attempt}-{number}"
        inserted = conn.execute(
            b.insert().values(
                jobid=job_id,
                companyid=company_id,
                messagetype=message_type,
                batchkey=key,
                attempt=attempt,
                status=BATCH_PENDING,
                target=target,
                recipientcount=len(part),
                timecreated=now,
                nexttry=0,
            )
        ).inserted_primary_key
        if inserted is None:  # pragma: no cover - every engine returns the new id
            raise RuntimeError("the database did not return the new batch id")
        conn.execute(r.update().where(r.c.id.in_(part)).values(batchid=inserted[0]))
        keys.append(key)
    return keys


def retry_failed(
    conn: sa.Connection,
    tables: BridgeTables,
    job_id: int,
    *,
    actor: str,
    now: int,
    max_recipients: int = 200,
    target: str | None = None,
) -> RetryReport:
    """Send the job's failed recipients again (a new attempt). Restored ones belong to IOMAD now."""
    job = _locked_job(conn, tables, job_id)
    if job["status"] == JOB_CANCELLED:
        raise JobControlError(f"job {job_id} is cancelled; nothing to retry")
    r, b = tables.recipients, tables.batches
    failed = [
        int(x)
        for x in conn.execute(
            sa.select(r.c.id).where(r.c.jobid == job_id, r.c.status == FAILED).order_by(r.c.id)
        ).scalars()
    ]
    if not failed:
        raise JobControlError(f"job {job_id} has no failed recipients to retry")
    attempt = int(job["attempt"]) + 1
    if target is None:
        last = conn.execute(
            sa.select(b.c.target).where(b.c.jobid == job_id).order_by(b.c.id.desc()).limit(1)
        ).scalar()
        target = str(last or "sqs")
    again = {
        "status": PENDING,
        "batchid": None,
        "providermessageid": None,
        "errorcode": None,
        "errormessage": None,
        "timefinal": None,
        "timemodified": now,
    }
    update_where_in(conn, r, r.c.id, failed, again, r.c.status == FAILED)
    keys = create_retry_batches(
        conn,
        tables,
        job_id,
        failed,
        attempt=attempt,
        target=target,
        max_recipients=max_recipients,
        now=now,
        company_id=int(job["companyid"]),
        message_type=message_type_for(str(job["jobtype"])),
    )
    conn.execute(tables.jobs.update().where(tables.jobs.c.id == job_id).values(attempt=attempt))
    refresh_jobs(conn, tables, {job_id: job}, now=now, actor=actor)
    audit.record(
        conn,
        tables,
        actor=actor,
        action=audit.JOB_RETRIED,
        now=now,
        companyid=int(job["companyid"]),
        jobid=job_id,
        detail={"attempt": attempt, "recipients": len(failed), "batches": len(keys)},
    )
    return RetryReport(job_id, attempt, len(failed), keys)


def cancel_job(
    conn: sa.Connection,
    tables: BridgeTables,
    job_id: int,
    *,
    actor: str,
    now: int,
    queue: IomadQueue | None = None,
) -> CancelReport:
    job = _locked_job(conn, tables, job_id)
    if job["status"] in JOB_TERMINAL:
        raise JobControlError(f"job {job_id} is already {job['status']}; nothing to cancel")
    r, b, j = tables.recipients, tables.batches, tables.jobs
    active = conn.execute(
        sa.select(r.c.id, r.c.emailid).where(r.c.jobid == job_id, r.c.status.in_(sorted(ACTIVE_STATUSES)))
    ).all()
    ids = [int(row.id) for row in active]
    cancelled = {"status": CANCELLED, "timefinal": now, "timemodified": now}
    update_where_in(conn, r, r.c.id, ids, cancelled, r.c.status.in_(sorted(ACTIVE_STATUSES)))
    abandoned = (
        conn.execute(
            b.update().where(b.c.jobid == job_id, b.c.status == BATCH_PENDING).values(status=BATCH_ABANDONED)
        ).rowcount
        or 0
    )
    email_ids = {int(row.emailid) for row in active if row.emailid is not None}
    settled = settle_rows(conn, tables, queue, email_ids, now=now, actor=actor)
    refresh_jobs(conn, tables, {job_id: job}, now=now, actor=actor, recompute_status=False)
    conn.execute(j.update().where(j.c.id == job_id).values(status=JOB_CANCELLED, timecompleted=now))
    audit.record(
        conn,
        tables,
        actor=actor,
        action=audit.JOB_CANCELLED,
        now=now,
        companyid=int(job["companyid"]),
        jobid=job_id,
        detail={
            "recipients": len(ids),
            "batches_abandoned": abandoned,
            "rows_restored": len(settled.restored),
        },
    )
    return CancelReport(job_id, len(ids), abandoned, len(settled.restored))


ERROR_STATUSES = (FAILED, RESTORED, BOUNCED, COMPLAINED, SKIPPED, CANCELLED)
CSV_COLUMNS = (
    "recipient_id",
    "job_id",
    "address",
    "role",
    "status",
    "error_code",
    "error_message",
    "attempts",
    "iomad_email_id",
    "time_final",
)


def error_rows(conn: sa.Connection, tables: BridgeTables, job_id: int) -> Iterator[dict[str, Any]]:
    """Recipients that were not delivered, with why. Never bodies, secrets or template data."""
    r = tables.recipients
    if conn.execute(sa.select(tables.jobs.c.id).where(tables.jobs.c.id == job_id)).first() is None:
        raise JobControlError(f"job {job_id} does not exist")
    query = (
        sa.select(
            r.c.id,
            r.c.jobid,
            r.c.address,
            r.c.role,
            r.c.status,
            r.c.errorcode,
            r.c.errormessage,
            r.c.attempts,
            r.c.emailid,
            r.c.timefinal,
        )
        .where(r.c.jobid == job_id, r.c.status.in_(ERROR_STATUSES))
        .order_by(r.c.id)
    )
    for row in conn.execute(query):
        yield {
            "recipient_id": row.id,
            "job_id": row.jobid,
            "address": row.address,
            "role": row.role,
            "status": row.status,
            "error_code": row.errorcode or "",
            "error_message": row.errormessage or "",
            "attempts": row.attempts,
            "iomad_email_id": row.emailid if row.emailid is not None else "",
            "time_final": (
                dt.datetime.fromtimestamp(int(row.timefinal), dt.UTC).isoformat() if row.timefinal else ""
            ),
        }


#: C0/C1 controls (terminal escape sequences, NUL, line breaks) and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_text(value: str) -> str:
    """Untrusted provider text made safe for a terminal: every control character becomes a space."""
    return _CONTROL.sub(" ", value)


def _csv_safe(value: Any) -> Any:
    """Provider messages are untrusted text: strip control characters (escape sequences would run in
    the terminal that prints the report), then neutralise spreadsheet formulas (OWASP CSV injection)."""
    if not isinstance(value, str):
        return value
    value = clean_text(value)
    if value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def write_error_csv(rows: Iterable[dict[str, Any]], out: IO[str]) -> int:
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({k: _csv_safe(v) for k, v in row.items()})
        count += 1
    return count
