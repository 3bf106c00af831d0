"""Turn planned recipients into a job's recipient rows and outbox batches, in the caller's
transaction. Used by the IOMAD claim pass and by plain-Moodle list jobs alike.

Round trips per call: one INSERT per 1,000 batches, one SELECT for their ids, one INSERT
per 1,000 recipients. Nothing is executed per recipient.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.batching import (
    ID_PLACEHOLDER,
    JobHeader,
    message_type_for,
    pack,
    recipient_entry,
    template_content,
    template_content_key,
)
from moodle_bridge.pipeline.outbox import job_header_for
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.results.suppression import REASON_UNSUBSCRIBE, SKIP_CODES, filter_suppressed
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.database import now
from moodle_bridge.storage.secrets_at_rest import SecretBox, associated_data
from offload_contract.limits import QueueLimits
from offload_contract.packing import ContentOffloader, PackItem


@dataclass(frozen=True)
class TemplateJob:
    """A new job whose recipients share one template content (campaign, schedule, list)."""

    jobid: int
    header: JobHeader
    contentkey: str
    companyid: int
    provider: str
    category: str
    template_json: str


def create_template_job(
    conn: sa.Connection,
    repo: BridgeRepo,
    config: BridgeConfig,
    settings: CompanySettings,
    *,
    companyid: int,
    source: str,
    category: str,
    templatename: str | None,
    template_json: str,
    actor: str,
    at: int,
    jobtype: str = "email",
) -> TemplateJob:
    """Insert the job row (``pending``, deadline from the config) and build its batch header.

    Raises ``BuildError`` when the company's settings and the configuration cannot make a header
    (no sender address, no key set): the caller's transaction then rolls the row back.
    """
    jobid = repo.create_job(
        conn,
        companyid=companyid,
        jobtype=jobtype,
        source=source,
        category=category,
        provider=settings.provider,
        status="pending",
        templatename=templatename,
        template=template_json,
        createdby=actor,
        timecreated=at,
        timemodified=at,
        timedeadline=at + config.job_deadline_seconds,
    )
    job = repo.job(conn, jobid)
    if job is None:  # pragma: no cover - inserted just above in this transaction
        raise RuntimeError(f"job {jobid} vanished")
    return TemplateJob(
        jobid,
        job_header_for(job, settings, config),
        template_content_key(jobid),
        companyid,
        settings.provider,
        category,
        template_json,
    )


@dataclass
class PlannedRecipient:
    dedupekey: str
    role: str
    address: str
    fullname: str = ""
    userid: int | None = None
    emailid: int | None = None
    contentkey: str | None = None
    data: Mapping[str, Any] | None = None
    #: pending (to be sent) or a final outcome decided before sending: skipped | failed.
    status: str = "pending"
    errorcode: str | None = None
    errormessage: str | None = None
    #: A temporary password to keep encrypted until the outcome is final. Never printed.
    secret: str | None = field(default=None, repr=False)
    #: The Moodle user the address belongs to, when not ``userid`` (a manager's copy of a
    #: learner's mail): the row's user when the mail is queued for IOMAD to send.
    addressee: int | None = None


@dataclass
class CreatedBatches:
    batches: int = 0
    recipients: int = 0
    pending: int = 0
    rejected: list[PlannedRecipient] = field(default_factory=list)
    next_seq: int = 0


def skip_suppressed(
    conn: sa.Connection,
    repo: BridgeRepo,
    companyid: int,
    planned: Sequence[PlannedRecipient],
    category: str = "transactional",
) -> int:
    """Mark pending recipients the company must not mail ``skipped`` with the reason's code:
    bounced and complained addresses always; unsubscribed ones only for campaign mail
    (passwords, licences and completions are never suppressed by a campaign unsubscribe).
    One query per 500 distinct addresses; returns how many."""
    pending = [p for p in planned if p.status == "pending" and p.address]
    suppressed = filter_suppressed(conn, repo.t, companyid, {p.address for p in pending})
    skipped = 0
    for p in pending:
        reason = suppressed.get(p.address)
        if reason is None or (reason == REASON_UNSUBSCRIBE and category != "campaign"):
            continue
        p.status, p.errorcode = "skipped", SKIP_CODES.get(reason, f"suppressed_{reason}")[:100]
        p.errormessage = f"address suppressed for this company after a {reason}; not sent"
        skipped += 1
    return skipped


def target_for(provider: str, aws_mode: str) -> str:
    return "worker" if provider == "cloudflare" else aws_mode


def add_recipients(
    conn: sa.Connection,
    repo: BridgeRepo,
    header: JobHeader,
    planned: Sequence[PlannedRecipient],
    contents: Mapping[str, dict[str, Any]],
    limits: QueueLimits,
    *,
    target: str,
    first_seq: int = 0,
    offload: ContentOffloader | None = None,
    box: SecretBox | None = None,
) -> CreatedBatches:
    """Pack the pending recipients into outbox batches and insert everything.

    Recipients the packer cannot fit even alone are inserted ``failed`` / ``too_large``
    (the caller decides beforehand whether such rows stay with IOMAD instead).
    """
    result = CreatedBatches(next_seq=first_seq)
    items: list[PackItem] = []
    pending = [p for p in planned if p.status == "pending"]
    for index, p in enumerate(pending):
        placeholder = f"{index:0{len(ID_PLACEHOLDER)}d}"
        entry = recipient_entry(
            placeholder,
            p.address,
            p.fullname,
            p.contentkey,
            p.data,
            header.jobtype,
            header.unsubscribe_url,
            header.attachments,
        )
        content = contents.get(p.contentkey) if p.contentkey else None
        items.append(PackItem(entry, p.contentkey if content is not None else None, content))
    packed = pack(header, items, limits, first_seq=first_seq, offload=offload)
    batch_of: dict[int, str] = {}
    for batch in packed.batches:
        for rid in batch.recipient_ids:
            batch_of[int(rid)] = batch.batch_id
    rejected = {int(r.recipient_id): r for r in packed.rejected}
    created = now()
    batch_rows = [
        {
            "jobid": header.jobid,
            "companyid": header.companyid,
            "messagetype": message_type_for(header.jobtype),
            "batchkey": b.batch_id,
            "attempt": header.attempt,
            "status": "pending",
            "target": target,
            "recipientcount": len(b.recipient_ids),
            "bytes": len(b.body),
            "tries": 0,
            "nexttry": 0,
            "timecreated": created,
        }
        for b in packed.batches
    ]
    batch_ids = repo.insert_batches(conn, batch_rows) if batch_rows else {}
    rows: list[dict[str, Any]] = []
    pending_index = {id(p): i for i, p in enumerate(pending)}
    for p in planned:
        status, code, message, batchid = p.status, p.errorcode, p.errormessage, None
        if p.status == "pending":
            index = pending_index[id(p)]
            if index in rejected:
                status, code, message = "failed", "too_large", rejected[index].detail
                result.rejected.append(p)
            else:
                batchid = batch_ids[batch_of[index]]
                result.pending += 1
        # Sealed whatever the recipient's own outcome: the row's third-party copies are redacted
        # with it (BridgeRepo.clear_final_secrets deletes it once no copy can need it).
        secret = None
        if p.secret:
            if box is None:
                raise ValueError("a temporary password needs the password key (MRCO_PASSWORD_KEY)")
            secret = box.seal(p.secret, associated_data(header.jobid, p.dedupekey))
        rows.append(
            {
                "jobid": header.jobid,
                "companyid": header.companyid,
                "emailid": p.emailid,
                "userid": p.userid,
                "role": p.role,
                "address": p.address[:254],
                "fullname": p.fullname[:255],
                "dedupekey": p.dedupekey[:300],
                "contentkey": p.contentkey,
                "data": None if p.data is None else json.dumps(dict(p.data), sort_keys=True),
                "status": status,
                "batchid": batchid,
                "errorcode": code,
                "errormessage": None if message is None else message[:1000],
                "secret": secret,
                "timecreated": created,
                "timemodified": created,
                "timefinal": None if status == "pending" else created,
            }
        )
    repo.insert_recipients(conn, rows)
    result.batches = len(batch_rows)
    result.recipients = len(rows)
    result.next_seq = first_seq + len(batch_rows)
    return result


OffloadFactory = Callable[[int, int], ContentOffloader | None]  # (companyid, jobid) -> offloader


def fill_template_job(
    conn: sa.Connection,
    repo: BridgeRepo,
    config: BridgeConfig,
    job: TemplateJob,
    planned: Sequence[PlannedRecipient],
) -> CreatedBatches:
    """Skip the addresses the company must not mail (by the job's category), insert the
    recipients and their outbox batches, and count them on the job."""
    skip_suppressed(conn, repo, job.companyid, planned, category=job.category)
    created = add_recipients(
        conn,
        repo,
        job.header,
        planned,
        {job.contentkey: template_content(job.template_json)},
        QueueLimits.for_provider(job.provider, config.submit.max_recipients),
        target=target_for(job.provider, config.submit.aws_mode),
    )
    repo.refresh_job_totals(conn, [job.jobid])
    return created
