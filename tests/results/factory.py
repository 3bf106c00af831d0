"""Build jobs, batches, recipients and claims the way bridge core does, for results tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables

NOW = 1_800_000_000
_report_ids = itertools.count(1)


def make_tables(engine: sa.Engine, prefix: str = "mdl_") -> BridgeTables:
    tables = build_bridge_tables(prefix)
    tables.metadata.create_all(engine)
    return tables


@dataclass
class JobFixture:
    job_id: int
    company_id: int
    batch_key: str
    batch_rowid: int
    recipient_ids: list[int]
    email_ids: list[int]


def create_job(
    conn: sa.Connection,
    tables: BridgeTables,
    *,
    company_id: int = 7,
    recipients: int = 4,
    per_email: int = 1,
    status: str = "queued",
    recipient_status: str = "queued",
    email_id_start: int | None = 1000,
    batch_key: str | None = None,
) -> JobFixture:
    """A submitted job: one batch holding every recipient. With ``email_id_start``, recipients are
    grouped ``per_email`` to an IOMAD row and each row has a claim."""
    job_id = conn.execute(
        tables.jobs.insert().values(
            companyid=company_id, jobtype="email", source="iomad", provider="aws", status=status,
            recipientstotal=recipients, timecreated=NOW, timemodified=NOW, timesubmitted=NOW,
        )
    ).inserted_primary_key[0]
    key = batch_key or f"b-{job_id}-1"
    batch_rowid = conn.execute(
        tables.batches.insert().values(
            jobid=job_id, batchkey=key, attempt=1, status="submitted", target="sqs",
            recipientcount=recipients, timecreated=NOW, timesubmitted=NOW,
        )
    ).inserted_primary_key[0]
    rows: list[dict[str, Any]] = []
    email_ids: list[int] = []
    for i in range(recipients):
        emailid = None
        if email_id_start is not None:
            emailid = email_id_start + job_id * 100_000 + i // per_email
            if emailid not in email_ids:
                email_ids.append(emailid)
        rows.append(
            {
                "jobid": job_id, "companyid": company_id, "emailid": emailid, "userid": 100 + i,
                "role": "user" if i % per_email == 0 else "manager", "address": f"User{i}@Example.org",
                "dedupekey": f"d{i}", "status": recipient_status, "attempts": 1, "batchid": batch_rowid,
                "timecreated": NOW, "timemodified": NOW,
            }
        )
    conn.execute(tables.recipients.insert(), rows)
    ids = [
        int(x)
        for x in conn.execute(
            sa.select(tables.recipients.c.id).where(tables.recipients.c.jobid == job_id).order_by(tables.recipients.c.id)
        ).scalars()
    ]
    if email_ids:
        conn.execute(
            tables.claims.insert(),
            [
                {"emailid": e, "companyid": company_id, "jobid": job_id, "templatename": "user_create",
                 "state": "claimed", "originaldue": NOW - 60, "timeclaimed": NOW}
                for e in email_ids
            ],
        )
    return JobFixture(int(job_id), company_id, key, int(batch_rowid), ids, email_ids)


def result(job: JobFixture, index: int, status: str, *, at: int = NOW + 10, message_id: str | None = None,
           permanent: bool = True, code: str = "MessageRejected") -> dict[str, Any]:
    item: dict[str, Any] = {
        "job_id": str(job.job_id), "recipient_id": str(job.recipient_ids[index]), "status": status,
        "attempts": 1, "occurred_at": at,
    }
    if status == "sent" or (message_id and status in ("delivered", "bounced", "complained", "rejected")):
        item["provider_message_id"] = message_id or f"ses-{job.recipient_ids[index]}"
    if status in ("failed", "retrying", "rejected"):
        item["error"] = {"code": code, "message": "the provider said no", "permanent": permanent}
    if status == "rendered":
        item["artifact"] = {"store": "s3", "key": f"certificates/x/{index}.pdf", "sha256": "0" * 64, "bytes": 10}
    return item


def result_batch(company_id: int, results: list[dict[str, Any]], *, batch_id: str | None = None,
                 report_id: str | None = None, reporter: str = "email_sender") -> dict[str, Any]:
    batch: dict[str, Any] = {
        "type": "result_batch", "contract_version": 1,
        "report_id": report_id or f"rep-{next(_report_ids)}", "company_id": company_id,
        "reporter": reporter, "created_at": NOW + 20, "results": results,
    }
    if batch_id:
        batch["batch_id"] = batch_id
    return batch


def counters_match(conn: sa.Connection, tables: BridgeTables) -> list[str]:
    """Differences between every job's counters and a recount over its recipient rows."""
    from moodle_bridge.results.ingest import recount
    from moodle_bridge.results.states import COUNTER_COLUMNS

    j = tables.jobs
    problems = []
    jobs = {int(row.id): row for row in conn.execute(sa.select(j))}
    counts = recount(conn, tables, jobs)
    for job_id, row in jobs.items():
        for column in COUNTER_COLUMNS:
            if int(getattr(row, column)) != counts[job_id][column]:
                problems.append(f"job {job_id} {column}={getattr(row, column)} recount={counts[job_id][column]}")
    return problems


def snapshot(conn: sa.Connection, tables: BridgeTables, *, skip: tuple[str, ...] = ()) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every bridge table (minus ``skip``), for before/after comparisons."""
    out = {}
    for table in tables.metadata.sorted_tables:
        if any(table.name.endswith(s) for s in skip):
            continue
        out[table.name] = sorted(tuple(row) for row in conn.execute(sa.select(table)))
    return out
