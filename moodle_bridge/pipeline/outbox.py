"""The outbox: submit pending batches, record acceptance, retry with backoff, fall back.

A batch row is ``pending`` until its target *accepted* the message; only then does it
become ``submitted`` (with the queue's message id) and its recipients ``queued``, in one
transaction. The message is rebuilt from the recipient rows every time (nothing secret is
stored in the outbox). If the process dies after the queue accepted a batch but before the
row was marked, the next pass submits the same ``batch_id`` again; the workers deduplicate
per (job_id, recipient_id), so the recipient still gets one message (docs/sending.md, I5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.batching import (
    STORE_ONLY_DELIVERY,
    STORE_ONLY_SOURCE,
    JobHeader,
    Sender,
    encode_batch,
    job_attachments,
    recipient_entry,
    rendered_content,
    sealed_if_secret,
    template_content,
)
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.pipeline.worker_templates import WorkerTemplateError, render_entries
from moodle_bridge.sources.iomad.passwords import PASSWORD_TEMPLATES
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_repo import BatchRow, BridgeRepo
from moodle_bridge.storage.database import now as unix_now
from moodle_bridge.storage.secrets_at_rest import SecretBox, SecretError, associated_data
from moodle_bridge.transports.targets import SubmitError, Submitter
from moodle_bridge.transports.worker_objects import WorkerObjectError
from offload_contract.codec import encode_message
from offload_contract.limits import QueueLimits
from offload_contract.unsubscribe import campaign_for_job, make_token

log = logging.getLogger("moodle_bridge.pipeline.outbox")


class IomadContents(Protocol):
    """What the outbox needs from IOMAD's side (``iomad_contents.IomadRowContents``)."""

    def load_rendered(self, conn: sa.Connection, emailids: list[int]) -> dict[int, tuple[str, str]]:
        """emailid -> (subject, body) as IOMAD queued them."""

    def load_for_send(
        self, conn: sa.Connection, emailids: list[int]
    ) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
        """(emailid -> (subject, body) of rows still parked and unsent, emailid -> row state)."""

    def redact(self, body: str, password: str | None) -> str:
        """The body with the temporary password removed."""

    def restore(self, conn: sa.Connection, originals: Mapping[int, int]) -> list[int]:
        """Give parked rows back to IOMAD (original due back); returns the ids restored."""


class BuildError(Exception):
    """The batch cannot be built (configuration or data); recorded on the outbox row."""


class OversizeBatch(BuildError):
    """The built message is over the queue limit (a batch packed by count only: ``jobs retry``)."""


def job_header_for(job: sa.Row[Any], settings: CompanySettings | None, config: BridgeConfig) -> JobHeader:
    """The contract header of a job's batches, from the job row, company settings and config."""
    sender_address = (settings.senderaddress if settings else None) or config.submit.sender_address
    if not sender_address:
        raise BuildError("no sender address: set submit.sender_address or the company's --sender-address")
    if not config.keys.current:
        raise BuildError("keys.current is not configured: callbacks cannot be signed")
    sender_name = (settings.sendername if settings else None) or config.submit.sender_name or None
    return JobHeader(
        jobid=int(job.id),
        companyid=int(job.companyid),
        jobtype=str(job.jobtype),
        attempt=int(job.attempt),
        category=str(job.category),
        created_at=int(job.timecreated),
        callback_url=config.callbacks.public_url,
        keyset=config.keys.current,
        sender=Sender(sender_address, sender_name),
        ses_tenant=settings.sesstenant if settings else None,
        cert_template=settings.certtemplate if settings else "default",
        verify_url_base=config.submit.verify_url_base or None,
        delivery=STORE_ONLY_DELIVERY if str(job.source) == STORE_ONLY_SOURCE else "email_attachment",
        unsubscribe_url=_unsubscribe_urls(job, config) if str(job.category) == "campaign" else None,
        attachments=job_attachments(job.template) if str(job.jobtype) == "email" else (),
    )


def _unsubscribe_urls(job: sa.Row[Any], config: BridgeConfig) -> Callable[[str], str]:
    """Signed one-click unsubscribe URLs for a campaign job's recipients (docs/campaigns.md)."""
    base = config.submit.unsubscribe_url_base.rstrip("/")
    if not base:
        raise BuildError("campaign mail needs submit.unsubscribe_url_base (the API's /v1/unsubscribe URL)")
    root = config.keys.root_secrets()[config.keys.current]
    companyid, campaign = int(job.companyid), campaign_for_job(int(job.id))

    def url(recipient_id: str) -> str:
        return f"{base}/{make_token(root, config.keys.current, companyid, recipient_id, campaign)}"

    return url


@dataclass
class Prefetched:
    """A lease group's recipients, IOMAD bodies and (decrypted, in memory only) passwords."""

    recipients: dict[int, list[sa.Row[Any]]] = field(default_factory=dict)
    rendered: dict[int, tuple[str, str]] = field(default_factory=dict, repr=False)
    #: emailid -> the template's (sender display name, Reply-To) recorded at claim time
    senders: dict[int, tuple[str | None, list[str]]] = field(default_factory=dict)
    passwords: dict[tuple[int, int], str] = field(default_factory=dict, repr=False)
    #: emailid -> IOMAD template name (password mail leaves sealed)
    templates: dict[int, str] = field(default_factory=dict)
    #: emailid -> parked | sent | due | gone (``sources.iomad.queue.rows_for_send``)
    row_states: dict[int, str] = field(default_factory=dict)


#: Why a recipient is settled instead of sent, by the state of its IOMAD row (I9, I4).
_ROW_SETTLEMENT: dict[str, tuple[str, str, str]] = {
    "sent": (
        "skipped",
        "iomad_already_sent",
        "IOMAD's row was already sent (by IOMAD's cron) before the cloud sent it; not sent twice",
    ),
    "gone": ("skipped", "iomad_row_gone", "IOMAD deleted the row before the cloud sent it; not sent"),
    "due": (
        "restored",
        "iomad_row_unparked",
        "the row is back on IOMAD's path (no longer parked); IOMAD sends it",
    ),
}


@dataclass
class OutboxReport:
    submitted: int = 0
    retried: int = 0
    abandoned: int = 0
    restored_rows: int = 0
    #: batches over the queue limit split in two (both halves go at the next pass)
    split: int = 0
    #: recipients settled instead of sent: their IOMAD row is no longer parked and unsent, or
    #: their redacted copy cannot be built (each alone, with its reason; never the whole batch)
    settled: int = 0
    errors: list[str] = field(default_factory=list)


def backoff_seconds(tries: int, base: int, cap: int, rng: random.Random | None = None) -> int:
    """Exponential backoff with full jitter in [delay/2, delay]: 15 s, 30 s, 60 s ... up to the cap."""
    delay = min(cap, base * (2 ** max(0, tries - 1)))
    r = rng or random.Random()  # noqa: S311 - jitter, not security
    return max(1, int(delay / 2 + r.random() * delay / 2))


@dataclass
class _PassState:
    """What one ``submit_due`` pass learned about its targets."""

    #: target -> (error, nexttry) once it failed: its other batches wait with it
    down: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: targets that accepted a batch: their calls may overlap
    healthy: set[str] = field(default_factory=set)


#: Batches leased (taken) per group: one commit per group instead of one per batch.
LEASE_GROUP = 25
#: How long a submitter owns a leased group (longer than the group's submit time-outs).
LEASE_SECONDS = 600

ContentUploader = Callable[[str, bytes], None]  # (key, encoded content) -> None


class Outbox:
    def __init__(
        self,
        engine: sa.Engine,
        repo: BridgeRepo,
        config: BridgeConfig,
        submitters: Mapping[str, Submitter],
        *,
        iomad: IomadContents | None = None,
        box: SecretBox | None = None,
        upload: ContentUploader | None = None,
        r2_upload: ContentUploader | None = None,
        clock: Callable[[], int] = unix_now,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.repo = repo
        self.config = config
        self.submitters = dict(submitters)
        self.iomad = iomad
        self.box = box
        self.upload = upload
        #: puts contents into the Worker's R2 (its signed object route) for Cloudflare batches
        self.r2_upload = r2_upload
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311
        self._jobs: dict[int, tuple[sa.Row[Any], JobHeader]] = {}
        self._queued_jobs: set[int] = set()

    # -- building --------------------------------------------------------------------------

    def job_header(self, job: sa.Row[Any], settings: CompanySettings | None) -> JobHeader:
        return job_header_for(job, settings, self.config)

    def prefetch(self, conn: sa.Connection, batches: list[BatchRow]) -> Prefetched:
        """Everything the batches' messages are built from, in a few queries for the group."""
        rows = self.repo.recipients_of_batches(conn, [b.id for b in batches])
        pre = Prefetched()
        for row in rows:
            if row.status in ("pending", "queued"):
                pre.recipients.setdefault(int(row.batchid), []).append(row)
        keys = {(int(r.jobid), str(r.contentkey)) for r in rows if r.contentkey and r.contentkey[0] == "e"}
        if keys:
            if self.iomad is None:
                raise BuildError("IOMAD contents requested but no IOMAD schema is available")
            emailids = sorted({int(k[1:].rstrip("r")) for _, k in keys})
            pre.rendered, pre.row_states = self.iomad.load_for_send(conn, emailids)
            # A row the bridge itself finished (claim completed, row marked sent by us) may still
            # have copies retried by a person (``jobs retry``): those are the bridge's to send.
            unparked = [e for e, state in pre.row_states.items() if state != "parked"]
            if unparked:
                finished = {
                    e for e, c in self.repo.claim_states(conn, unparked).items() if c.state == "completed"
                }
                for e in finished:
                    if pre.row_states[e] == "sent":
                        pre.row_states[e] = "parked"
                if finished:
                    more = self.iomad.load_rendered(conn, sorted(finished))
                    pre.rendered.update(more)
            pre.senders = self.repo.claim_senders(conn, emailids)
            pre.templates = self.repo.claim_templates(conn, emailids)
            redacted: dict[int, list[int]] = {}
            for jobid, key in keys:
                if key.endswith("r"):
                    redacted.setdefault(jobid, []).append(int(key[1:-1]))
            for jobid, emailids in redacted.items():
                for emailid, password in self._passwords(conn, jobid, emailids).items():
                    pre.passwords[(jobid, emailid)] = password
        return pre

    def _contents(
        self, job: sa.Row[Any], recipients: list[sa.Row[Any]], pre: Prefetched
    ) -> dict[str, dict[str, Any]]:
        contents: dict[str, dict[str, Any]] = {}
        for key in sorted({str(r.contentkey) for r in recipients if r.contentkey}):
            if key.startswith("t"):
                if job.template is None:
                    raise BuildError(f"job {job.id} has no template for content {key}")
                contents[key] = template_content(str(job.template))
                continue
            if self.iomad is None:
                raise BuildError("IOMAD contents requested but no IOMAD schema is available")
            emailid = int(key[1:].rstrip("r"))
            if emailid not in pre.rendered:
                raise BuildError(f"IOMAD queue row {emailid} is gone")
            subject, body = pre.rendered[emailid]
            if key.endswith("r"):
                password = pre.passwords.get((int(job.id), emailid))
                if password is None:
                    raise BuildError(
                        f"the temporary password of IOMAD row {emailid} is no longer kept, so its "
                        "third-party copy cannot be redacted; it is not sent"
                    )
                body = self.iomad.redact(body, password)
            from_name, reply_to = pre.senders.get(emailid, (None, []))
            try:
                contents[key] = sealed_if_secret(
                    rendered_content(subject, body, from_name, reply_to),
                    holds_password=pre.templates.get(emailid) in PASSWORD_TEMPLATES and not key.endswith("r"),
                    seal_root=self.config.keys.seal_root(),
                    companyid=int(job.companyid),
                    jobid=int(job.id),
                    content_key=key,
                )
            except ValueError as exc:
                raise BuildError(str(exc)) from None
        return contents

    def _passwords(self, conn: sa.Connection, jobid: int, emailids: list[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for row in self.repo.recipients_of_emails(conn, jobid, emailids, "user"):
            if row.secret and self.box is not None:
                try:
                    out[int(row.emailid)] = self.box.open(
                        str(row.secret), associated_data(jobid, str(row.dedupekey))
                    )
                except SecretError:
                    continue  # the copy is then refused (BuildError), never sent unredacted
        return out

    def _job(self, conn: sa.Connection, jobid: int) -> tuple[sa.Row[Any], JobHeader]:
        """The job row and its header, read once per job per ``submit_due`` call."""
        cached = self._jobs.get(jobid)
        if cached is None:
            job = self.repo.job(conn, jobid)
            if job is None:
                raise BuildError(f"job {jobid} does not exist")
            header = self.job_header(job, self.repo.get_settings(conn, int(job.companyid)))
            cached = self._jobs[jobid] = (job, header)
        return cached

    def build(
        self, conn: sa.Connection, batch: BatchRow, pre: Prefetched | None = None
    ) -> tuple[bytes, QueueLimits]:
        job, header = self._job(conn, batch.jobid)
        if pre is None:
            pre = self.prefetch(conn, [batch])
        recipients = pre.recipients.get(batch.id, [])
        if not recipients:
            raise BuildError("batch has no recipients left to send")
        contents = self._contents(job, recipients, pre)
        entries = [
            recipient_entry(
                str(r.id),
                str(r.address),
                str(r.fullname or ""),
                r.contentkey,
                json.loads(r.data) if r.data else None,
                str(job.jobtype),
                header.unsubscribe_url,
                header.attachments,
            )
            for r in recipients
        ]
        if str(job.provider) == "cloudflare":
            try:
                contents = render_entries(contents, entries)
            except WorkerTemplateError as exc:
                raise BuildError(str(exc)) from None
        limits = QueueLimits.for_provider(str(job.provider), self.config.submit.max_recipients)
        body = encode_batch(header, batch.batchkey, contents, entries)
        if len(body) > limits.max_bytes:
            body = self._offload_largest(header, batch, contents, entries, limits, str(job.provider))
        return body, limits

    def _offload_largest(
        self,
        header: JobHeader,
        batch: BatchRow,
        contents: dict[str, dict[str, Any]],
        entries: list[dict[str, Any]],
        limits: QueueLimits,
        provider: str = "aws",
    ) -> bytes:
        """Move the largest contents out of the batch, by reference, until it fits: into the
        content bucket (S3) for AWS, into the Worker's R2 through its object route for Cloudflare
        (the same key layout either way)."""
        if provider == "cloudflare":
            if self.r2_upload is None:
                raise OversizeBatch(
                    "batch is over the queue limit and the Worker's object route is not configured"
                )
            upload, store, where = self.r2_upload, {"store": "r2"}, "worker objects"
        else:
            if self.upload is None or not self.config.aws.content_bucket:
                raise OversizeBatch("batch is over the queue limit and no content bucket is configured")
            upload = self.upload
            store, where = {"store": "s3", "bucket": self.config.aws.content_bucket}, "content bucket"
        by_size = sorted(contents, key=lambda k: len(encode_message(contents[k])), reverse=True)
        for key in by_size:
            encoded = encode_message(contents[key])
            object_key = f"contents/company-{header.companyid}/{header.jobid}/{key}.json"
            try:
                upload(object_key, encoded)
            except Exception as exc:  # any storage failure: not accepted, retry later
                code = (
                    getattr(exc, "response", {}).get("Error", {}).get("Code")
                    if hasattr(exc, "response")
                    else None
                )
                if isinstance(exc, WorkerObjectError):
                    raise SubmitError(f"{where}: {exc}", retryable=exc.retryable) from None
                raise SubmitError(f"{where}: {code or type(exc).__name__}") from None
            contents[key] = {
                "kind": "reference",
                "ref": {
                    **store,
                    "key": object_key,
                    "sha256": hashlib.sha256(encoded).hexdigest(),
                    "bytes": len(encoded),
                    "content_type": "application/json",
                },
            }
            body = encode_batch(header, batch.batchkey, contents, entries)
            if len(body) <= limits.max_bytes:
                return body
        raise OversizeBatch("batch is over the queue limit even with every content by reference")

    # -- submitting ------------------------------------------------------------------------

    def submit_due(
        self, *, limit: int = 10_000, progress: Callable[[int, int], None] | None = None
    ) -> OutboxReport:
        report = OutboxReport()
        self._jobs.clear()  # settings may have changed since the last pass
        self._queued_jobs.clear()
        at = self.clock()
        with self.engine.connect() as conn:
            batches = self.repo.due_batches(conn, at, limit)
        pass_state = _PassState()
        done = 0
        workers = max(1, min(self.config.submit.concurrency, LEASE_GROUP))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="outbox") as pool:
            for start in range(0, len(batches), LEASE_GROUP):
                group = batches[start : start + LEASE_GROUP]
                self._submit_group(group, at, pool, pass_state, report)
                done += len(group)
                if progress is not None:
                    progress(done, len(batches))
        return report

    def _submit_group(
        self,
        group: list[BatchRow],
        at: int,
        pool: ThreadPoolExecutor,
        state: _PassState,
        report: OutboxReport,
    ) -> None:
        """Lease a group, build its messages, hand them to their queues, record the answers.

        A target's first batch of the pass goes alone, so a queue that is down costs one
        time-out per pass, not one per batch; once it accepted one, the group's calls to it
        overlap on the pool. Building and recording stay on this thread, in batch order.
        """
        token = uuid.uuid4().hex
        with self.engine.begin() as conn:
            held = self.repo.lease_batches(conn, [b.id for b in group], at, at + LEASE_SECONDS, token)
        if not held:
            return
        pre: Prefetched | None = None
        try:
            with self.engine.connect() as conn:
                pre = self.prefetch(conn, [b for b in group if b.id in held])
        except BuildError:
            pre = None  # each batch then reports its own error below
        if pre is not None:
            held = held - self._settle_unsendable([b for b in group if b.id in held], pre, report)
        overlapping: list[tuple[BatchRow, bytes, Submitter]] = []
        for batch in group:
            if batch.id not in held:
                continue
            if batch.target in state.down:
                self._defer(batch, *state.down[batch.target], report)
                continue
            built = self._build_for_submit(batch, report, pre)
            if built is None:
                continue
            body, target = built
            if batch.target in state.healthy:
                overlapping.append((batch, body, target))
            else:
                self._settle(batch, len(body), self._send(batch, body, target), state, report)
        futures = [pool.submit(self._send, batch, body, target) for batch, body, target in overlapping]
        for (batch, body, _target), future in zip(overlapping, futures, strict=True):
            self._settle(batch, len(body), future.result(), state, report)

    def _settle_unsendable(self, batches: list[BatchRow], pre: Prefetched, report: OutboxReport) -> set[int]:
        """Settle, each alone, the recipients that must not be sent; returns the batches emptied.

        - the IOMAD row is no longer parked and unsent (sent by IOMAD, deleted, or back on
          IOMAD's path): ownership of the row is a condition of every send (I9);
        - a redacted copy whose temporary password is no longer kept (``password_not_redactable``).

        The rest of each batch goes on as usual; a batch left with nobody is closed at once.
        """
        by_outcome: dict[tuple[str, str, str], list[int]] = {}
        released: set[int] = set()
        emptied: set[int] = set()
        for batch in batches:
            rows = pre.recipients.get(batch.id, [])
            keep = []
            for r in rows:
                key = str(r.contentkey or "")
                outcome: tuple[str, str, str] | None = None
                if key.startswith("e") and r.status == "pending":
                    emailid = int(key[1:].rstrip("r"))
                    state = pre.row_states.get(emailid, "parked")
                    if state != "parked":
                        outcome = _ROW_SETTLEMENT[state]
                        if state == "due":
                            released.add(emailid)
                    elif key.endswith("r") and (int(r.jobid), emailid) not in pre.passwords:
                        outcome = (
                            "skipped",
                            "password_not_redactable",
                            "copy of a password email whose password is not kept; not sent, to avoid "
                            "leaking it",
                        )
                if outcome is None:
                    keep.append(r)
                else:
                    by_outcome.setdefault(outcome, []).append(int(r.id))
            if len(keep) != len(rows):
                pre.recipients[batch.id] = keep
                if not keep:
                    emptied.add(batch.id)
        if not by_outcome:
            return emptied
        with self.engine.begin() as conn:
            for (status, code, message), ids in by_outcome.items():
                report.settled += self.repo.set_recipients_status(
                    conn, ids, status, errorcode=code, errormessage=message, only_from=["pending"]
                )
            if released:
                self.repo.set_claims_state(conn, sorted(released), "released")
            for batchid in sorted(emptied):
                self.repo.mark_batch_abandoned(
                    conn, batchid, "nothing left to send: every recipient was settled"
                )
            self.repo.refresh_job_totals(conn, sorted({b.jobid for b in batches}))
        return emptied

    def _defer(self, batch: BatchRow, error: str, nexttry: int, report: OutboxReport) -> None:
        """The target already failed in this pass: wait with it instead of timing out again."""
        with self.engine.begin() as conn:
            self.repo.mark_batch_retry(conn, batch.id, f"deferred: {error}", nexttry, count_try=False)
        report.retried += 1

    def _build_for_submit(
        self, batch: BatchRow, report: OutboxReport, pre: Prefetched | None
    ) -> tuple[bytes, Submitter] | None:
        """The batch's body and submitter, or None when it cannot go now (recorded here)."""
        submitter = self.submitters.get(batch.target)
        try:
            if submitter is None:
                raise BuildError(f"no submission target '{batch.target}' is configured")
            with self.engine.connect() as conn:
                body, _limits = self.build(conn, batch, pre)
        except SubmitError as exc:  # a content upload failed
            self._failed(batch, str(exc), report)
            return None
        except OversizeBatch as exc:
            if batch.recipientcount > 1:
                with self.engine.begin() as conn:
                    self.repo.split_batch(
                        conn, batch, f"j{batch.jobid}-a{batch.attempt}-x{uuid.uuid4().hex[:16]}"
                    )
                report.split += 1
            else:
                self._failed(batch, str(exc), report)
            return None
        except BuildError as exc:
            self._failed(batch, str(exc), report)
            return None
        return body, submitter

    def _settle(
        self, batch: BatchRow, size: int, outcome: str | SubmitError, state: _PassState, report: OutboxReport
    ) -> None:
        """Record what the queue said about one batch."""
        ids = {"job_id": batch.jobid, "batch_id": batch.batchkey, "company_id": batch.companyid}
        if isinstance(outcome, SubmitError):
            # INFO, not WARNING: cron's `tick --quiet` stays silent while a queue is down (the
            # outbox retries; mrco_outbox_batches_failing and the alert rules report it).
            log.info(
                "batch not accepted by %s, will retry", batch.target, extra={**ids, "reason": "submit_error"}
            )
            nexttry = self._failed(batch, str(outcome), report)
            if outcome.retryable and nexttry is not None:
                state.down[batch.target] = (str(outcome), nexttry)
            return
        state.healthy.add(batch.target)
        self._record_submitted(batch, outcome, size, report)
        log.info("batch submitted to %s: %d recipients", batch.target, batch.recipientcount, extra=ids)

    @staticmethod
    def _send(batch: BatchRow, body: bytes, submitter: Submitter) -> str | SubmitError:
        """The queue call (on a pool thread): its message id, or the SubmitError it raised."""
        try:
            return submitter.submit(batch.messagetype, batch.batchkey, batch.companyid, body)
        except SubmitError as exc:
            return exc

    def _record_submitted(self, batch: BatchRow, message_id: str, size: int, report: OutboxReport) -> None:
        with self.engine.begin() as conn:
            if self.repo.mark_batch_submitted(conn, batch.id, message_id, size):
                self.repo.mark_batch_recipients_queued(conn, batch.id)
                if batch.jobid not in self._queued_jobs:
                    self.repo.mark_job_queued(conn, batch.jobid, self.clock())
                    self._queued_jobs.add(batch.jobid)
        report.submitted += 1

    def _failed(self, batch: BatchRow, error: str, report: OutboxReport) -> int | None:
        """Record a failed attempt; returns the next try time (None when abandoned)."""
        at = self.clock()
        nexttry: int | None = None
        with self.engine.begin() as conn:
            job = self.repo.job(conn, batch.jobid)
            created = int(job.timecreated) if job is not None else at
            if at - created > self.config.job_deadline_seconds:
                self.repo.mark_batch_abandoned(conn, batch.id, error)
                report.abandoned += 1
                report.restored_rows += self._fall_back(conn, batch)
                audit.record(
                    conn,
                    self.repo.t,
                    actor="cron",
                    action=audit.BATCH_ABANDONED,
                    now=at,
                    jobid=batch.jobid,
                    companyid=batch.companyid,
                    detail={"batch": batch.batchkey, "error": error[:200]},
                )
            else:
                delay = backoff_seconds(
                    batch.tries + 1,
                    self.config.submit.retry_base_seconds,
                    self.config.submit.retry_max_seconds,
                    self.rng,
                )
                nexttry = at + delay
                self.repo.mark_batch_retry(conn, batch.id, error, nexttry)
                report.retried += 1
        report.errors.append(f"batch {batch.batchkey}: {error}")
        return nexttry

    def _fall_back(self, conn: sa.Connection, batch: BatchRow) -> int:
        """Recipients of a batch the queue never accepted: back to IOMAD, or failed and surfaced.

        A row goes back to IOMAD only when none of its recipients can have been sent by the cloud
        (else IOMAD would send those a second copy); otherwise its unsent recipients fail with
        ``submit_abandoned`` (under-sending, surfaced, never over-sending). Each recipient is
        recorded as what really happens to it: ``restored`` when IOMAD sends its row (also when
        an earlier fallback already gave the row back), ``failed`` when nobody will. Recipients of
        a row given back that wait in other batches are restored too (IOMAD sends them), and
        batches left with nobody to send are abandoned; the job ends when nobody is in flight.
        """
        recipients = [r for r in self.repo.batch_recipients(conn, batch.id) if r.status == "pending"]
        settings = self.repo.get_settings(conn, batch.companyid)
        fallback = settings.fallbacklocal if settings else True
        r, c, b = self.repo.t.recipients, self.repo.t.claims, self.repo.t.batches
        emailids = sorted({int(x.emailid) for x in recipients if x.emailid is not None})
        reached: set[int] = set()
        released: set[int] = set()
        if emailids:
            # Statuses meaning the cloud has (or may have) sent that recipient.
            maybe_sent = ("queued", "retrying", "sent", "rendered", "delivered", "bounced", "complained")
            reached = {
                int(e)
                for e in conn.execute(
                    sa.select(r.c.emailid)
                    .where(r.c.emailid.in_(emailids), r.c.status.in_(maybe_sent))
                    .distinct()
                ).scalars()
            }
            released = {
                int(e)
                for e in conn.execute(
                    sa.select(c.c.emailid).where(c.c.emailid.in_(emailids), c.c.state == "released")
                ).scalars()
            }
        restorable = (
            [e for e in emailids if e not in reached and e not in released] if fallback and self.iomad else []
        )
        restored: list[int] = []
        if restorable and self.iomad is not None:
            restored = self.iomad.restore(conn, self.repo.original_dues(conn, restorable))
            self.repo.set_claims_state(conn, restored, "released")
        back_rows = set(restored) | released
        back = [int(x.id) for x in recipients if x.emailid is not None and int(x.emailid) in back_rows]
        rest = [int(x.id) for x in recipients if int(x.id) not in set(back)]
        self.repo.set_recipients_status(
            conn,
            back,
            "restored",
            errorcode="submit_abandoned",
            errormessage="the queue did not accept the batch; IOMAD sends it",
        )
        self.repo.set_recipients_status(
            conn,
            rest,
            "failed",
            errorcode="submit_abandoned",
            errormessage="the queue did not accept the batch before the deadline",
        )
        if restored:
            others = [
                int(x)
                for x in conn.execute(
                    sa.select(r.c.id).where(
                        r.c.jobid == batch.jobid, r.c.emailid.in_(restored), r.c.status == "pending"
                    )
                ).scalars()
            ]
            self.repo.set_recipients_status(
                conn,
                others,
                "restored",
                errorcode="submit_abandoned",
                errormessage="another part of its IOMAD row could not be queued; IOMAD sends it",
                only_from=("pending",),
            )
            empty = sa.select(r.c.id).where(r.c.batchid == b.c.id, r.c.status == "pending")
            conn.execute(
                b.update()
                .where(b.c.jobid == batch.jobid, b.c.status == "pending", ~sa.exists(empty))
                .values(status="abandoned", lasterror="nobody left to send: IOMAD sends the rows")
            )
        self.repo.refresh_job_totals(conn, [batch.jobid])
        return len(restored)
