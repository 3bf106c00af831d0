"""Apply a ``result_batch`` to the bridge's tables: idempotent, scoped, set-based, one transaction.

The caller opens the transaction (``engine.begin()``) and has validated the message against the
contract. ``ingest_result_batch``:

1. checks scope: the report's company is the caller's, and every job named exists and belongs to
   it (``ScopeError``, nothing written otherwise);
2. locks the touched job rows (``SELECT .. FOR UPDATE`` in id order), which serialises every writer
   of those jobs' recipients and counters (results, retry, cancel);
3. skips a report already applied (``report_id``), then decides each result with the pure state
   machine in ``states`` against the current rows;
4. writes the transitions with a few ``UPDATE .. SET col = CASE id ..`` statements, each guarded by
   the status it read, records suppressions, recounts the touched jobs' counters with one
   ``GROUP BY`` and settles IOMAD rows whose recipients are all final.

Counters are recomputed from the recipient rows in the same transaction, so they cannot drift.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from moodle_bridge.results.iomad_link import IomadQueue
from moodle_bridge.results.settle import settle_rows
from moodle_bridge.results.states import (
    ACTIVE_STATUSES,
    BOUNCED,
    CLOSED_STATUSES,
    COMPLAINED,
    COUNTER_BUCKETS,
    COUNTER_COLUMNS,
    FINAL_STATUSES,
    JOB_TERMINAL,
    UNSUBSCRIBED,
    Outcome,
    RecipientView,
    decide,
    decide_unsubscribe,
    job_status_for,
)
from moodle_bridge.results.suppression import (
    REASON_BOUNCE,
    REASON_COMPLAINT,
    REASON_UNSUBSCRIBE,
    filter_suppressed,
    normalise,
    record_suppressions,
)
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.storage.sqlutil import chunks, update_rows_by_id


class ScopeError(Exception):
    """The report names a company or job the caller may not touch. ``code`` is safe to log."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class ConcurrentChange(Exception):
    """A recipient changed between read and write (a writer that does not lock the job row).

    The transaction must be rolled back and the report retried; nothing was applied.
    """


@dataclass
class IngestResult:
    applied: int = 0
    duplicates: int = 0
    ignored: int = 0
    duplicate_report: bool = False
    ignored_reasons: Counter[str] = field(default_factory=Counter)
    jobs: list[int] = field(default_factory=list)
    completed_jobs: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "duplicates": self.duplicates,
            "ignored": self.ignored,
            "duplicate_report": self.duplicate_report,
            "ignored_reasons": dict(sorted(self.ignored_reasons.items())),
        }


def parse_row_id(value: str) -> int | None:
    """Contract ids of jobs and recipients are the bridge's row ids in decimal."""
    if value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def lock_jobs(conn: sa.Connection, tables: BridgeTables, job_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Lock job rows in id order (no deadlocks between writers) and return them by id."""
    j = tables.jobs
    ids = sorted(set(job_ids))
    out: dict[int, dict[str, Any]] = {}
    for part in chunks(ids):
        rows = conn.execute(
            sa.select(j.c.id, j.c.companyid, j.c.status, j.c.timecompleted, j.c.category)
            .where(j.c.id.in_(part))
            .order_by(j.c.id)
            .with_for_update()
        ).mappings()
        for job in rows:
            out[int(job["id"])] = dict(job)
    return out


def recount(conn: sa.Connection, tables: BridgeTables, job_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Counter values (plus ``active``) per job, counted from the recipient rows."""
    r = tables.recipients
    ids = sorted(set(job_ids))
    out = {job_id: dict.fromkeys((*COUNTER_COLUMNS, "active"), 0) for job_id in ids}
    for part in chunks(ids):
        rows = conn.execute(
            sa.select(r.c.jobid, r.c.status, sa.func.count())
            .where(r.c.jobid.in_(part))
            .group_by(r.c.jobid, r.c.status)
        )
        for jobid, status, n in rows:
            counts = out[int(jobid)]
            counts["recipientstotal"] += int(n)
            if status in ACTIVE_STATUSES:
                counts["active"] += int(n)
            for column, bucket in COUNTER_BUCKETS.items():
                if status in bucket:
                    counts[column] += int(n)
    return out


def refresh_jobs(
    conn: sa.Connection,
    tables: BridgeTables,
    jobs: dict[int, dict[str, Any]],
    *,
    now: int,
    actor: str,
    recompute_status: bool = True,
) -> list[int]:
    """Rewrite counters (and status) of locked ``jobs`` from their recipients; returns jobs that
    became terminal now."""
    j = tables.jobs
    counts = recount(conn, tables, jobs)
    finished: list[int] = []
    for job_id, row in sorted(jobs.items()):
        values: dict[str, Any] = {k: counts[job_id][k] for k in COUNTER_COLUMNS}
        values["timemodified"] = now
        if recompute_status:
            status = job_status_for(counts[job_id], str(row["status"]))
            values["status"] = status
            if status in JOB_TERMINAL and row["status"] not in JOB_TERMINAL:
                values["timecompleted"] = now
                finished.append(job_id)
            elif status not in JOB_TERMINAL:
                values["timecompleted"] = None
        conn.execute(j.update().where(j.c.id == job_id).values(**values))
        row.update(values)
        if job_id in finished:
            audit.record(
                conn,
                tables,
                actor=actor,
                action=audit.JOB_COMPLETED,
                now=now,
                companyid=int(row["companyid"]),
                jobid=job_id,
                detail={"status": values["status"], **{k: counts[job_id][k] for k in COUNTER_COLUMNS}},
            )
    return finished


def _decide_unsubscribes(
    conn: sa.Connection,
    tables: BridgeTables,
    company_id: int,
    recipient_ids: set[int],
    outcome: IngestResult,
    suppress: dict[int, str],
) -> None:
    """Decide the report's ``unsubscribed`` results (campaign jobs only, checked by the caller):
    each new address is suppressed for the company under ``unsubscribe``; an address already
    suppressed is a duplicate. No recipient row changes."""
    r = tables.recipients
    addresses: dict[int, str] = {}
    for part in chunks(sorted(recipient_ids)):
        addresses.update(
            (int(i), str(a or ""))
            for i, a in conn.execute(sa.select(r.c.id, r.c.address).where(r.c.id.in_(part)))
        )
    already = filter_suppressed(conn, tables, company_id, {a for a in addresses.values() if a})
    decided: set[str] = set()  # one address twice in a report: the second is a duplicate
    for rid in sorted(recipient_ids):
        address = addresses.get(rid, "")
        if not address:
            outcome.ignored += 1
            outcome.ignored_reasons["no_address"] += 1
            continue
        known = already.get(address) or (REASON_UNSUBSCRIBE if normalise(address) in decided else None)
        decision = decide_unsubscribe("campaign", known)
        if decision.outcome is Outcome.APPLIED:
            outcome.applied += 1
            decided.add(normalise(address))
            suppress.setdefault(rid, REASON_UNSUBSCRIBE)
        else:
            outcome.duplicates += 1


def ingest_result_batch(
    conn: sa.Connection,
    tables: BridgeTables,
    batch: dict[str, Any],
    *,
    company_id: int,
    now: int,
    actor: str,
    queue: IomadQueue | None = None,
) -> IngestResult:
    """Apply one validated ``result_batch`` as company ``company_id`` (see module docstring)."""
    if int(batch["company_id"]) != company_id:
        raise ScopeError("company_mismatch", "result_batch.company_id is not the signing key's company")
    results: Sequence[dict[str, Any]] = batch["results"]
    job_ids: set[int] = set()
    for item in results:
        job_id = parse_row_id(item["job_id"])
        if job_id is None:
            raise ScopeError("job_scope", "a job_id does not name a job of this company")
        job_ids.add(job_id)
    jobs = lock_jobs(conn, tables, job_ids)
    if len(jobs) != len(job_ids) or any(int(row["companyid"]) != company_id for row in jobs.values()):
        raise ScopeError("job_scope", "a job_id does not name a job of this company")

    outcome = IngestResult(jobs=sorted(jobs))
    rr = tables.result_reports
    seen = conn.execute(
        sa.select(rr.c.id).where(rr.c.companyid == company_id, rr.c.reportid == batch["report_id"])
    ).first()
    if seen is not None:
        outcome.duplicate_report = True
        outcome.duplicates = len(results)
        return outcome

    batch_rowid: int | None = None
    if batch.get("batch_id"):
        b = tables.batches
        batch_row = conn.execute(
            sa.select(b.c.id, b.c.jobid).where(b.c.batchkey == batch["batch_id"])
        ).first()
        # An unknown batch, or one of another job, can never match a recipient's batch: -1.
        batch_rowid = int(batch_row.id) if batch_row is not None and int(batch_row.jobid) in jobs else -1

    # Read the recipients named by the report.
    r = tables.recipients
    wanted: dict[int, int] = {}
    for item in results:
        rid = parse_row_id(item["recipient_id"])
        if rid is not None:
            wanted[rid] = parse_row_id(item["job_id"]) or 0
    # Only the columns the state machine needs (the driver parses every value it is sent).
    columns = [r.c.id, r.c.jobid, r.c.emailid, r.c.status, r.c.batchid, r.c.providermessageid, r.c.errorcode]
    if any(item["status"] == "rendered" for item in results):
        columns.append(r.c.artifactkey)
    rows: dict[int, dict[str, Any]] = {}
    for part in chunks(sorted(wanted)):
        for recipient in conn.execute(sa.select(*columns).where(r.c.id.in_(part))).mappings():
            rows[int(recipient["id"])] = dict(recipient)

    # Decide, in event order; several results for one recipient fold into one final change.
    original_status = {rid: str(row["status"]) for rid, row in rows.items()}
    changes: dict[int, dict[str, Any]] = defaultdict(dict)
    late_for_closed: Counter[int] = Counter()
    suppress: dict[int, str] = {}  # recipient id -> suppression reason
    unsubscribed: set[int] = set()  # recipients whose campaign unsubscribe is decided below
    for item in sorted(results, key=lambda i: int(i["occurred_at"])):
        rid = parse_row_id(item["recipient_id"])
        found = rows.get(rid) if rid is not None else None
        if rid is None or found is None or int(found["jobid"]) != parse_row_id(item["job_id"]):
            outcome.ignored += 1
            outcome.ignored_reasons["unknown_recipient"] += 1
            continue
        row = found
        if item["status"] == UNSUBSCRIBED:
            category = str(jobs[int(row["jobid"])]["category"])
            if category != "campaign":
                outcome.ignored += 1
                outcome.ignored_reasons[decide_unsubscribe(category, None).reason] += 1
            else:
                unsubscribed.add(rid)
            continue
        view = RecipientView(
            str(row["status"]),
            row["batchid"],
            row["providermessageid"],
            row.get("artifactkey"),
            row["errorcode"],
        )
        decision = decide(view, item, batch_rowid)
        if decision.outcome is Outcome.APPLIED:
            outcome.applied += 1
            for column, value in decision.changes:
                row[column] = value
                changes[rid][column] = value
            if decision.new_status in (BOUNCED, COMPLAINED):
                reason = REASON_BOUNCE if decision.new_status == BOUNCED else REASON_COMPLAINT
                suppress[rid] = reason
        elif decision.outcome is Outcome.DUPLICATE:
            outcome.duplicates += 1
        else:
            outcome.ignored += 1
            outcome.ignored_reasons[decision.reason] += 1
            if view.status in CLOSED_STATUSES:
                late_for_closed[int(row["jobid"])] += 1

    # Write: group rows by (status read, columns written); each UPDATE is guarded by the status read.
    groups: dict[tuple[str, tuple[str, ...]], dict[int, dict[str, Any]]] = defaultdict(dict)
    for rid, values in changes.items():
        full = {**values, "timemodified": now}
        new_status = full["status"]
        if new_status in FINAL_STATUSES and original_status[rid] not in FINAL_STATUSES:
            full["timefinal"] = now
        # The sealed temporary password is not deleted here: a failed third-party copy of the row
        # may be retried and must be redacted with it (BridgeRepo.clear_final_secrets, every tick).
        groups[(original_status[rid], tuple(sorted(full)))][rid] = full
    for (status_read, _columns), values_by_id in sorted(groups.items()):
        matched = update_rows_by_id(conn, r, values_by_id, where_equals={"status": status_read})
        if matched != len(values_by_id):
            raise ConcurrentChange("recipients changed while the report was applied; retry it")

    if unsubscribed:
        _decide_unsubscribes(conn, tables, company_id, unsubscribed, outcome, suppress)

    if suppress:
        addresses: dict[int, str] = {}
        for part in chunks(sorted(suppress)):
            addresses.update(
                (int(i), str(a))
                for i, a in conn.execute(sa.select(r.c.id, r.c.address).where(r.c.id.in_(part)))
            )
        # Unsubscribes first: a bounce or complaint of the same address in this report replaces it.
        entries = sorted(suppress.items(), key=lambda entry: entry[1] != REASON_UNSUBSCRIBE)
        record_suppressions(
            conn,
            tables,
            [(company_id, addresses[rid], reason) for rid, reason in entries if rid in addresses],
            source=f"{actor}:{batch['reporter']}",
            now=now,
        )

    touched_jobs = {int(rows[rid]["jobid"]) for rid in changes}
    if touched_jobs:
        # Settle IOMAD rows first: restoring moves recipients failed -> restored, which the recount sees.
        final_emails = {
            int(rows[rid]["emailid"])
            for rid, values in changes.items()
            if rows[rid]["emailid"] is not None and values["status"] in FINAL_STATUSES
        }
        settle_rows(conn, tables, queue, final_emails, now=now, actor=actor)
        outcome.completed_jobs = refresh_jobs(
            conn, tables, {k: jobs[k] for k in touched_jobs}, now=now, actor=actor
        )

    for job_id, n in sorted(late_for_closed.items()):
        audit.record(
            conn,
            tables,
            actor=actor,
            action=audit.RESULTS_LATE,
            now=now,
            companyid=company_id,
            jobid=job_id,
            detail={"results": n, "report_id": batch["report_id"]},
        )
    conn.execute(
        rr.insert().values(
            reportid=batch["report_id"],
            companyid=company_id,
            reporter=batch["reporter"],
            resultcount=len(results),
            timereceived=now,
        )
    )
    return outcome
