"""Job control and job summaries: the one place the CLI (``moodle-offload jobs``) and the
dashboard read counts from and act through.

* ``job_counts`` / ``job_summary`` / ``list_jobs``: the honest counts of a job, recounted from
  its recipient rows (sent, delivered, failed, bounced, complained, skipped, fell back to
  IOMAD, cancelled, and still in flight), its status, whether it is overdue and whether it
  needs a person (``attention``).
* ``retry_failed``: failed recipients that can succeed (by default; ``include_permanent`` for
  all) go back to ``pending`` in new outbox batches (the next attempt number); results for
  their old batches are then stale and ignored, so a retry is exactly-once like a first attempt.
* ``cancel_job``: recipients not yet handed to the cloud are ``cancelled`` at once and their
  batches ``abandoned``; recipients already in the cloud keep their status until the cloud
  says what happened to them (the job is ``cancelling``). ``signal_cancels`` then writes the
  job's cancel record in the cloud (the sender checks it before each SES call), and
  reconciliation settles the rest from the sender's own records (``reconcile``): a recipient
  the cloud sent is recorded ``sent`` (with its provider message id, so its bounces still reach
  the suppression list), one it never sent ``cancelled``. A job that already ended is never
  changed. ``cancel_open_jobs`` does the same for every open job of a company (or all), for
  the global and company switches.
* ``error_rows`` / ``write_error_csv``: the error report, without bodies or secrets.

Every database action locks the job row first (the same lock ingestion takes) and is audited.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import sqlalchemy as sa

from moodle_bridge.pipeline.batching import message_type_for
from moodle_bridge.results.ingest import lock_jobs, recount, refresh_jobs
from moodle_bridge.results.iomad_link import IomadQueue
from moodle_bridge.results.settle import settle_rows
from moodle_bridge.results.states import (
    BOUNCED,
    CANCELLED,
    COMPLAINED,
    FAILED,
    JOB_CANCEL_STATES,
    JOB_CANCELLING,
    JOB_TERMINAL,
    PENDING,
    RESTORED,
    SKIPPED,
)
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.storage.sqlutil import chunks, update_where_in
from moodle_bridge.transports.cloud_records import CloudRecords, CloudUnavailable

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
    #: Failed recipients left out (failures a retry cannot cure; ``include_permanent`` takes them).
    left_failed: int = 0


@dataclass(frozen=True)
class CancelReport:
    job_id: int
    recipients_cancelled: int
    batches_abandoned: int
    rows_restored: int
    #: Recipients already handed to the cloud: their outcome is recorded when the cloud reports it.
    in_cloud: int = 0
    status: str = "cancelled"
    provider: str = "aws"


@dataclass
class SignalReport:
    told: list[int] = field(default_factory=list)
    not_told: list[int] = field(default_factory=list)
    error: str = ""


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


#: Failure codes a retry can cure: the cloud or the queue was unavailable, or the sender gave up
#: on a transient error. Anything else (invalid address, rejected by SES, bad template data,
#: message too large, an unresolved crash window...) fails again or risks a duplicate, so
#: ``jobs retry`` leaves it unless asked (``--all``).
RETRYABLE_FAILURE_CODES = frozenset(
    {
        "submit_abandoned",
        "never_processed",
        "connect_failed",
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "LimitExceededException",
        "SendingPausedException",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ACCOUNT_THROTTLED",
        "ACCOUNT_DAILY_QUOTA_EXCEEDED",
        "TRANSIENT_FAILURE",
        "ACCOUNT_SENDING_PAUSED",
        "CONFIGURATION_SET_SENDING_PAUSED",
        "content_unavailable",
    }
)


def retry_failed(
    conn: sa.Connection,
    tables: BridgeTables,
    job_id: int,
    *,
    actor: str,
    now: int,
    max_recipients: int = 200,
    target: str | None = None,
    include_permanent: bool = False,
) -> RetryReport:
    """Send the job's failed recipients again (a new attempt). By default only failures a retry
    can cure (``RETRYABLE_FAILURE_CODES``); ``include_permanent`` takes every failed recipient.
    Restored ones belong to IOMAD now."""
    job = _locked_job(conn, tables, job_id)
    if job["status"] in JOB_CANCEL_STATES:
        raise JobControlError(f"job {job_id} is {job['status']}; nothing to retry")
    r, b = tables.recipients, tables.batches
    rows = conn.execute(
        sa.select(r.c.id, r.c.errorcode).where(r.c.jobid == job_id, r.c.status == FAILED).order_by(r.c.id)
    ).all()
    failed = [int(x.id) for x in rows if include_permanent or x.errorcode in RETRYABLE_FAILURE_CODES]
    left = len(rows) - len(failed)
    if not failed:
        if rows:
            raise JobControlError(
                f"job {job_id}: its {len(rows)} failed recipients failed for reasons a retry cannot "
                "cure (see `jobs errors`); fix the data, or use --all to retry them anyway"
            )
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
        detail={
            "attempt": attempt,
            "recipients": len(failed),
            "left_failed": left,
            "batches": len(keys),
            "all": include_permanent,
        },
    )
    return RetryReport(job_id, attempt, len(failed), keys, left)


def cancel_job(
    conn: sa.Connection,
    tables: BridgeTables,
    job_id: int,
    *,
    actor: str,
    now: int,
    queue: IomadQueue | None = None,
    reason: str = "cancelled",
) -> CancelReport:
    """Cancel a job in the database (the caller commits, then calls ``signal_cancels``).

    Recipients whose batch never reached the queue are cancelled now; recipients already in the
    cloud keep their status until its results (or reconciliation) say what happened to them. A
    job that already ended is left exactly as it is (``JobControlError`` says how it ended)."""
    job = _locked_job(conn, tables, job_id)
    if job["status"] in JOB_TERMINAL:
        counts = recount(conn, tables, [job_id])[job_id]
        raise JobControlError(
            f"job {job_id} already ended ({job['status']}: {describe_counts(counts)}); nothing changed"
        )
    r, b, j = tables.recipients, tables.batches, tables.jobs
    # Batches a submitter holds right now may be accepted by the queue in a moment: their
    # recipients are treated as in the cloud (the cancel record and reconciliation settle them).
    leased = sa.select(b.c.id).where(
        b.c.jobid == job_id, b.c.status == BATCH_PENDING, b.c.leasetoken.is_not(None), b.c.nexttry > now
    )
    local = conn.execute(
        sa.select(r.c.id, r.c.emailid).where(
            r.c.jobid == job_id,
            r.c.status == PENDING,
            sa.or_(r.c.batchid.is_(None), r.c.batchid.not_in(leased)),
        )
    ).all()
    ids = [int(row.id) for row in local]
    cancelled = {
        "status": CANCELLED,
        "errorcode": "job_cancelled",
        "errormessage": f"{reason} before it was handed to the cloud",
        "timefinal": now,
        "timemodified": now,
    }
    update_where_in(conn, r, r.c.id, ids, cancelled, r.c.status == PENDING)
    abandoned = (
        conn.execute(
            b.update()
            .where(b.c.jobid == job_id, b.c.status == BATCH_PENDING, b.c.id.not_in(leased))
            .values(status=BATCH_ABANDONED, lasterror=f"job {reason}")
        ).rowcount
        or 0
    )
    email_ids = {int(row.emailid) for row in local if row.emailid is not None}
    settled = settle_rows(conn, tables, queue, email_ids, now=now, actor=actor)
    first = job["status"] != JOB_CANCELLING
    values: dict[str, Any] = {"status": JOB_CANCELLING}
    if first:
        values.update(timecancelrequested=now, timecancelsignalled=None)
    conn.execute(j.update().where(j.c.id == job_id).values(**values))
    job["status"] = JOB_CANCELLING
    refresh_jobs(conn, tables, {job_id: job}, now=now, actor=actor)
    counts = recount(conn, tables, [job_id])[job_id]
    audit.record(
        conn,
        tables,
        actor=actor,
        action=audit.JOB_CANCELLED,
        now=now,
        companyid=int(job["companyid"]),
        jobid=job_id,
        detail={
            "reason": reason,
            "recipients": len(ids),
            "in_cloud": counts["active"],
            "batches_abandoned": abandoned,
            "rows_restored": len(settled.restored),
        },
    )
    return CancelReport(
        job_id,
        recipients_cancelled=len(ids),
        batches_abandoned=abandoned,
        rows_restored=len(settled.restored),
        in_cloud=counts["active"],
        status=str(job["status"]),
        provider=str(job.get("provider") or "aws"),
    )


def signal_cancels(
    engine: sa.Engine,
    tables: BridgeTables,
    cloud: CloudRecords | None,
    *,
    now: int,
    job_ids: Iterable[int] | None = None,
) -> SignalReport:
    """Write the cancel record in the cloud for cancelled jobs the cloud has not been told about
    (all of them, or ``job_ids``); an AWS job the cloud was told about is marked signalled. The
    database is not locked while the cloud is called."""
    report = SignalReport()
    j = tables.jobs
    query = sa.select(j.c.id, j.c.companyid, j.c.provider).where(
        j.c.timecancelrequested.is_not(None), j.c.timecancelsignalled.is_(None), j.c.provider == "aws"
    )
    if job_ids is not None:
        query = query.where(j.c.id.in_(sorted(set(job_ids))))
    with engine.connect() as conn:
        waiting = conn.execute(query.order_by(j.c.id)).all()
    if not waiting:
        return report
    if cloud is None:
        report.not_told = [int(row.id) for row in waiting]
        report.error = "aws.idempotency_table is not set, so the cloud cannot be told"
        return report
    for row in waiting:
        try:
            cloud.request_cancel(int(row.id), int(row.companyid), "cancelled")
        except CloudUnavailable as exc:
            report.not_told.append(int(row.id))
            report.error = str(exc)
            continue
        with engine.begin() as conn:
            conn.execute(
                j.update()
                .where(j.c.id == row.id, j.c.timecancelsignalled.is_(None))
                .values(timecancelsignalled=now)
            )
        report.told.append(int(row.id))
    return report


def cancel_open_jobs(
    conn: sa.Connection,
    tables: BridgeTables,
    *,
    actor: str,
    now: int,
    reason: str,
    company_id: int | None = None,
    queue: IomadQueue | None = None,
) -> list[CancelReport]:
    """Cancel every job that has not ended and is not being cancelled already (of ``company_id``,
    or of every company): what the global switch and a company's cloud switch do when turned off."""
    j = tables.jobs
    query = sa.select(j.c.id).where(j.c.status.not_in(sorted(JOB_TERMINAL | JOB_CANCEL_STATES)))
    if company_id is not None:
        query = query.where(j.c.companyid == company_id)
    reports = []
    for job_id in conn.execute(query.order_by(j.c.id)).scalars():
        reports.append(
            cancel_job(conn, tables, int(job_id), actor=actor, now=now, queue=queue, reason=reason)
        )
    return reports


# -- summaries (the CLI's and the dashboard's one source of counts) ----------------------------

#: Count name -> job counter column, in display order. Disjoint; with ``in_flight`` they add up to
#: ``total`` (docs/results.md, "What counts where").
COUNT_COLUMNS: dict[str, str] = {
    "sent": "recipientssent",
    "delivered": "recipientsdelivered",
    "failed": "recipientsfailed",
    "bounced": "recipientsbounced",
    "complained": "recipientscomplained",
    "skipped": "recipientsskipped",
    "fell_back": "recipientsfellback",
    "cancelled": "recipientscancelled",
}


@dataclass(frozen=True)
class JobCounts:
    total: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    bounced: int = 0
    complained: int = 0
    skipped: int = 0
    fell_back: int = 0
    cancelled: int = 0
    in_flight: int = 0

    @classmethod
    def from_recount(cls, counts: dict[str, int]) -> JobCounts:
        return cls(
            total=counts["recipientstotal"],
            in_flight=counts["active"],
            **{name: counts[column] for name, column in COUNT_COLUMNS.items()},
        )

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def labelled(self) -> tuple[tuple[str, int], ...]:
        """Every count with the words a person reads, in display order (they add up to ``total``)."""
        return (
            ("sent", self.sent),
            ("delivered", self.delivered),
            ("failed", self.failed),
            ("bounced", self.bounced),
            ("complained", self.complained),
            ("skipped", self.skipped),
            ("fell back to IOMAD", self.fell_back),
            ("cancelled", self.cancelled),
            ("in flight", self.in_flight),
        )


def describe_counts(counts: dict[str, int] | JobCounts) -> str:
    """``12 sent, 3 failed, 1 fell back to IOMAD`` (non-zero counts only)."""
    c = counts if isinstance(counts, JobCounts) else JobCounts.from_recount(counts)
    parts = [f"{n} {label}" for label, n in c.labelled() if n]
    return ", ".join(parts) or f"{c.total} recipients"


@dataclass(frozen=True)
class JobSummary:
    id: int
    company: int
    type: str
    source: str
    provider: str
    status: str
    attempt: int
    counts: JobCounts
    overdue: bool
    created: int
    submitted: int | None
    completed: int | None
    cancel_requested: int | None
    cancel_signalled: int | None
    #: Why a person should look (empty when nothing needs one).
    attention: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["counts"] = self.counts.as_dict()
        out["attention"] = list(self.attention)
        return out


def _attention(row: Any, counts: JobCounts, overdue: bool) -> tuple[str, ...]:
    why: list[str] = []
    if counts.failed:
        why.append(f"{counts.failed} failed")
    if overdue:
        why.append("overdue")
    if row.status == JOB_CANCELLING and row.provider == "aws" and row.timecancelsignalled is None:
        why.append("the cloud has not been told about the cancel yet")
    return tuple(why)


def _summaries(
    conn: sa.Connection, tables: BridgeTables, rows: list[Any], *, deadline_seconds: int, now: int
) -> list[JobSummary]:
    live = recount(conn, tables, [int(row.id) for row in rows])
    out = []
    for row in rows:
        counts = JobCounts.from_recount(live[int(row.id)])
        deadline = row.timedeadline or (int(row.timecreated) + deadline_seconds)
        overdue = row.status not in JOB_TERMINAL and int(deadline) < now
        out.append(
            JobSummary(
                id=int(row.id),
                company=int(row.companyid),
                type=str(row.jobtype),
                source=str(row.source),
                provider=str(row.provider),
                status=str(row.status),
                attempt=int(row.attempt),
                counts=counts,
                overdue=overdue,
                created=int(row.timecreated),
                submitted=row.timesubmitted,
                completed=row.timecompleted,
                cancel_requested=row.timecancelrequested,
                cancel_signalled=row.timecancelsignalled,
                attention=_attention(row, counts, overdue),
            )
        )
    return out


def job_summary(
    conn: sa.Connection, tables: BridgeTables, job_id: int, *, deadline_seconds: int, now: int
) -> JobSummary:
    j = tables.jobs
    row = conn.execute(sa.select(j).where(j.c.id == job_id)).first()
    if row is None:
        raise JobControlError(f"job {job_id} does not exist")
    return _summaries(conn, tables, [row], deadline_seconds=deadline_seconds, now=now)[0]


def list_jobs(
    conn: sa.Connection,
    tables: BridgeTables,
    *,
    deadline_seconds: int,
    now: int,
    company_id: int | None = None,
    status: str | None = None,
    limit: int = 50,
) -> list[JobSummary]:
    j = tables.jobs
    query = sa.select(j).order_by(j.c.id.desc()).limit(limit)
    if company_id is not None:
        query = query.where(j.c.companyid == company_id)
    if status:
        query = query.where(j.c.status == status)
    return _summaries(conn, tables, list(conn.execute(query)), deadline_seconds=deadline_seconds, now=now)


def job_counts(conn: sa.Connection, tables: BridgeTables, job_id: int) -> JobCounts:
    return JobCounts.from_recount(recount(conn, tables, [job_id])[job_id])


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


def csv_safe(value: Any) -> Any:
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
        writer.writerow({k: csv_safe(v) for k, v in row.items()})
        count += 1
    return count
