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
            companyid=company_id,
            jobtype="email",
            source="iomad",
            provider="aws",
            status=status,
            recipientstotal=recipients,
            timecreated=NOW,
            timemodified=NOW,
            timesubmitted=NOW,
        )
    ).inserted_primary_key[0]  # type: ignore[index]
    key = batch_key or f"b-{job_id}-1"
    batch_rowid = conn.execute(
        tables.batches.insert().values(
            jobid=job_id,
            batchkey=key,
            attempt=1,
            status="submitted",
            target="sqs",
            recipientcount=recipients,
            timecreated=NOW,
            timesubmitted=NOW,
        )
    ).inserted_primary_key[0]  # type: ignore[index]
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
                "jobid": job_id,
                "companyid": company_id,
                "emailid": emailid,
                "userid": 100 + i,
                "role": "user" if i % per_email == 0 else "manager",
                "address": f"User{i}@Example.org",
                "dedupekey": f"d{i}",
                "status": recipient_status,
                "attempts": 1,
                "batchid": batch_rowid,
                "timecreated": NOW,
                "timemodified": NOW,
            }
        )
    conn.execute(tables.recipients.insert(), rows)
    ids = [
        int(x)
        for x in conn.execute(
            sa.select(tables.recipients.c.id)
            .where(tables.recipients.c.jobid == job_id)
            .order_by(tables.recipients.c.id)
        ).scalars()
    ]
    if email_ids:
        conn.execute(
            tables.claims.insert(),
            [
                {
                    "emailid": e,
                    "companyid": company_id,
                    "jobid": job_id,
                    "templatename": "user_create",
                    "state": "claimed",
                    "originaldue": NOW - 60,
                    "timeclaimed": NOW,
                }
                for e in email_ids
            ],
        )
    return JobFixture(int(job_id), company_id, key, int(batch_rowid), ids, email_ids)


def result(
    job: JobFixture,
    index: int,
    status: str,
    *,
    at: int = NOW + 10,
    message_id: str | None = None,
    permanent: bool = True,
    code: str = "MessageRejected",
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "job_id": str(job.job_id),
        "recipient_id": str(job.recipient_ids[index]),
        "status": status,
        "attempts": 1,
        "occurred_at": at,
    }
    if status == "sent" or (message_id and status in ("delivered", "bounced", "complained", "rejected")):
        item["provider_message_id"] = message_id or f"ses-{job.recipient_ids[index]}"
    if status in ("failed", "retrying", "rejected"):
        item["error"] = {"code": code, "message": "the provider said no", "permanent": permanent}
    if status == "rendered":
        item["artifact"] = {
            "store": "s3",
            "key": f"certificates/x/{index}.pdf",
            "sha256": "0" * 64,
            "bytes": 10,
        }
    return item


def result_batch(
    company_id: int,
    results: list[dict[str, Any]],
    *,
    batch_id: str | None = None,
    report_id: str | None = None,
    reporter: str = "email_sender",
) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "type": "result_batch",
        "contract_version": 1,
        "report_id": report_id or f"rep-{next(_report_ids)}",
        "company_id": company_id,
        "reporter": reporter,
        "created_at": NOW + 20,
        "results": results,
    }
    if batch_id:
        batch["batch_id"] = batch_id
    return batch


#: The counter definition, written out independently of the code under test: disjoint, one
#: bucket per final status (docs/results.md "What counts where").
EXPECTED_BUCKETS = {
    "recipientssent": ("sent", "rendered"),
    "recipientsdelivered": ("delivered",),
    "recipientsfailed": ("failed",),
    "recipientsbounced": ("bounced",),
    "recipientscomplained": ("complained",),
    "recipientsskipped": ("skipped",),
    "recipientsfellback": ("restored",),
    "recipientscancelled": ("cancelled",),
}


def counters_match(conn: sa.Connection, tables: BridgeTables) -> list[str]:
    """Differences between every job's counters and a plain recount over its recipient rows."""
    j, r = tables.jobs, tables.recipients
    problems = []
    statuses: dict[int, list[str]] = {}
    for jobid, status in conn.execute(sa.select(r.c.jobid, r.c.status)):
        statuses.setdefault(int(jobid), []).append(str(status))
    for row in conn.execute(sa.select(j)):
        mine = statuses.get(int(row.id), [])
        expected = {"recipientstotal": len(mine)}
        for column, bucket in EXPECTED_BUCKETS.items():
            expected[column] = sum(1 for s in mine if s in bucket)
        for column, value in expected.items():
            if int(getattr(row, column)) != value:
                problems.append(f"job {row.id} {column}={getattr(row, column)} recount={value}")
    return problems


def snapshot(
    conn: sa.Connection, tables: BridgeTables, *, skip: tuple[str, ...] = ()
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every bridge table (minus ``skip``), for before/after comparisons."""
    out = {}
    for table in tables.metadata.sorted_tables:
        if any(table.name.endswith(s) for s in skip):
            continue
        out[table.name] = sorted(tuple(row) for row in conn.execute(sa.select(table)))
    return out


SECRET_PASSWORD = "Zq9!TempPass-4471"  # what IOMAD would have in a user_create body


def make_iomad(engine: sa.Engine, prefix: str = "mdl_") -> Any:
    """IOMAD's tables (the adapter's definitions) and the results link to them."""
    from moodle_bridge.results.iomad_link import AdapterQueue
    from moodle_bridge.sources.iomad.schema import build_iomad_tables

    itables = build_iomad_tables(prefix)
    itables.metadata.create_all(engine)
    return itables, AdapterQueue(itables)


def park_rows(conn: sa.Connection, itables: Any, email_ids: list[int], company_id: int = 7) -> None:
    """Queue rows the way IOMAD does, parked the way bridge core parks claimed rows."""
    from moodle_bridge.sources.iomad.queries import PARKED_DUE_BASE

    conn.execute(
        itables.email.insert(),
        [
            {
                "id": e,
                "templatename": "user_create",
                "modifiedtime": NOW - 60,
                "sent": None,
                "subject": "Welcome",
                "body": f"Your password is {SECRET_PASSWORD}",
                "varsreplaced": 1,
                "companyid": company_id,
                "courseid": 1,
                "userid": 100,
                "senderid": -20,
                "headers": None,
                "due": PARKED_DUE_BASE + NOW - 60,
            }
            for e in email_ids
        ],
    )


def email_state(conn: sa.Connection, itables: Any) -> dict[int, tuple[Any, Any]]:
    """IOMAD row id -> (sent, due)."""
    e = itables.email
    return {int(r.id): (r.sent, r.due) for r in conn.execute(sa.select(e.c.id, e.c.sent, e.c.due))}
