"""Reconciliation, run at the end of every ``tick``.

1. Drain results the cloud kept durably: the results DLQ in push mode (callbacks that never got
   through), the results queue itself in pull mode. Each message body is a contract
   ``result_batch``; it is validated, scoped to its own ``company_id`` (and to the company of its
   ``key_id`` attribute when present), ingested, and deleted from the queue only after the database
   commit. A message that can never apply (invalid, or outside its company) is moved aside: audited
   with its SQS message id and hidden for 12 hours, so it never blocks the queue.
2. Flag jobs past their deadline (``timedeadline``, else ``timecreated + job_deadline_seconds``):
   the status stays, an audit entry is written once and ``jobs list`` shows them as overdue.
3. Tell the cloud about cancelled jobs it has not heard of yet (``job_control.signal_cancels``).
4. Ask the cloud's own records (the sender's per-recipient items, ``transports.cloud_records``)
   about recipients still in the cloud of a cancelled job (every tick) or of a job past its
   deadline: a recipient the sender completed gets the result the sender stored (``sent`` with
   its message id, or its failure); one nobody claimed is closed in the cloud first (a
   conditional put, so a late delivery of its batch replays instead of sending), then recorded
   ``cancelled`` (cancelled job) or ``failed``/``never_processed`` (its IOMAD row then goes back
   to IOMAD by the fallback rule); one claimed but never completed past the deadline is
   ``failed``/``outcome_unknown`` with the reason. Ingested like any result report.
5. Settle IOMAD rows whose recipients are all final but whose claim is still open (mark sent, or
   restore to IOMAD when the fallback rule says so; see ``settle``).
6. Purge expired callback nonces and expired dashboard sessions.

Each step runs on its own: a step that fails (the cloud unreachable, a database error) is
reported in ``errors`` with one line, and the next steps still run. A queue message that
cannot be stored (whatever the reason) is quarantined and the drain goes on.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3  # type: ignore[import-untyped,unused-ignore]
import sqlalchemy as sa
from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
    BotoCoreError,
    ClientError,
)

from moodle_bridge.config import BridgeConfig
from moodle_bridge.results.ingest import (
    ConcurrentChange,
    ScopeError,
    ingest_result_batch,
    lock_jobs,
    refresh_jobs,
)
from moodle_bridge.results.iomad_link import AdapterQueue, IomadQueue
from moodle_bridge.results.job_control import signal_cancels
from moodle_bridge.results.nonce_store import purge_expired
from moodle_bridge.results.settle import CLAIM_CLAIMED, settle_rows
from moodle_bridge.results.states import (
    ACTIVE_STATUSES,
    CANCELLED_IN_CLOUD,
    JOB_CANCELLING,
    JOB_TERMINAL,
    NEVER_PROCESSED,
    QUEUED,
    RETRYING,
)
from moodle_bridge.sources.schedules.local_reports import purge_report_files
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.dash_sessions import purge_sessions
from moodle_bridge.transports.cloud_records import (
    CloudRecords,
    CloudUnavailable,
    SendRecord,
    cloud_records_from_config,
)
from moodle_bridge.transports.targets import SubmitError
from offload_contract import ContractError, validate
from offload_contract.codec import decode_message
from offload_contract.signing import SignatureError, parse_key_id

log = logging.getLogger("moodle_bridge.results.reconcile")

ACTOR = "cron:reconcile"
#: Hide a poison message this long (SQS caps the total since receipt at 12 h).
QUARANTINE_VISIBILITY_SECONDS = 6 * 3600
#: At most this many queue messages per tick, so one tick stays short.
MAX_MESSAGES_PER_TICK = 2000


@dataclass
class ReconcileContext:
    """What ``tick`` hands to ``reconcile``."""

    engine: sa.Engine
    tables: BridgeTables
    config: BridgeConfig
    clock: Callable[[], float] = time.time
    #: A boto3 SQS client (endpoint_url set for moto/VPC endpoints); None skips queue draining.
    sqs: Any = None
    #: The IOMAD link (``iomad_link.detect_queue``); None on a plain Moodle site.
    iomad_queue: IomadQueue | None = None
    max_messages: int = MAX_MESSAGES_PER_TICK
    #: The sender's records (``aws.idempotency_table``); None: the cloud cannot be asked or told.
    cloud: CloudRecords | None = None
    #: The Cloudflare Worker (``WorkerSubmitter``): results it kept are pulled for these companies.
    worker: Any = None
    worker_companies: tuple[int, ...] = ()


@dataclass
class ReconcileReport:
    queue_url: str = ""
    messages_applied: int = 0
    messages_duplicate: int = 0
    messages_quarantined: int = 0
    messages_deferred: int = 0
    results_applied: int = 0
    jobs_flagged_overdue: list[int] = field(default_factory=list)
    rows_marked_sent: int = 0
    rows_restored: int = 0
    nonces_purged: int = 0
    sessions_purged: int = 0
    #: Report files the bridge wrote under Moodle's dataroot for IOMAD, deleted after 7 days.
    local_report_files_purged: int = 0
    #: Jobs whose cancel the cloud was told about in this pass / could not be told about.
    cancels_signalled: int = 0
    cancels_not_signalled: int = 0
    #: Recipients settled from the cloud's own records (sent, cancelled, failed with a reason).
    settled_from_cloud: int = 0
    #: One line per step that failed in this pass (cause and what to do).
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def results_source_url(config: BridgeConfig) -> str:
    if config.callbacks.results_mode == "pull":
        return config.aws.results_queue_url
    return config.aws.results_dlq_url


def _quarantine(ctx: ReconcileContext, url: str, message: dict[str, Any], reason: str, now: int) -> None:
    message_id = str(message.get("MessageId", ""))
    log.warning("result message %s moved aside: %s", message_id, reason)
    with ctx.engine.begin() as conn:
        audit.record(
            conn,
            ctx.tables,
            actor=ACTOR,
            action=audit.RESULT_MESSAGE_QUARANTINED,
            now=now,
            detail={
                "sqs_message_id": message_id,
                "reason": reason,
                "queue": url.rsplit("/", 1)[-1],
                "bytes": len(str(message.get("Body", "")).encode("utf-8")),
            },
        )
    try:
        ctx.sqs.change_message_visibility(
            QueueUrl=url,
            ReceiptHandle=message["ReceiptHandle"],
            VisibilityTimeout=QUARANTINE_VISIBILITY_SECONDS,
        )
    except ClientError as exc:  # it reappears after the receive's own visibility timeout instead
        log.warning(
            "could not hide result message %s: %s", message_id, exc.response.get("Error", {}).get("Code")
        )


def _handle_message(
    ctx: ReconcileContext, url: str, message: dict[str, Any], report: ReconcileReport
) -> None:
    now = int(ctx.clock())
    try:
        batch = decode_message(message.get("Body", ""))
        validate("result_batch", batch)
    except ContractError as exc:
        _quarantine(ctx, url, message, f"contract: {exc.path}: {exc.reason}", now)
        report.messages_quarantined += 1
        return
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to decode
        _quarantine(ctx, url, message, "invalid_json", now)
        report.messages_quarantined += 1
        return
    company_id = int(batch["company_id"])
    key_attr = (message.get("MessageAttributes") or {}).get("key_id", {}).get("StringValue")
    if key_attr:
        try:
            _, key_company = parse_key_id(str(key_attr))
        except SignatureError:
            key_company = -1
        if key_company != company_id:
            _quarantine(ctx, url, message, "company_mismatch", now)
            report.messages_quarantined += 1
            return
    try:
        with ctx.engine.begin() as conn:
            outcome = ingest_result_batch(
                conn, ctx.tables, batch, company_id=company_id, now=now, actor=ACTOR, queue=ctx.iomad_queue
            )
    except ScopeError as exc:
        _quarantine(ctx, url, message, exc.code, now)
        report.messages_quarantined += 1
        return
    except ConcurrentChange as exc:
        log.info("result message %s deferred (%s)", message.get("MessageId"), type(exc).__name__)
        report.messages_deferred += 1
        return
    except (sa.exc.OperationalError, sa.exc.IntegrityError) as exc:
        if not _transient(exc):
            _quarantine(ctx, url, message, f"unstorable: {type(exc).__name__}", now)
            report.messages_quarantined += 1
            return
        log.info("result message %s deferred (%s)", message.get("MessageId"), type(exc).__name__)
        report.messages_deferred += 1
        return
    except (sa.exc.StatementError, UnicodeError, ValueError, TypeError, KeyError) as exc:
        # One bad message (text an engine cannot store, a shape ingestion cannot read) must not
        # stop every later tick: it is moved aside and the drain goes on.
        _quarantine(ctx, url, message, f"unstorable: {type(exc).__name__}", now)
        report.messages_quarantined += 1
        return
    # Committed: now, and only now, the message may go.
    ctx.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    if outcome.duplicate_report:
        report.messages_duplicate += 1
    else:
        report.messages_applied += 1
        report.results_applied += outcome.applied


#: Driver error codes that mean "try again": lock wait timeout, deadlock (MariaDB), serialization
#: failure and deadlock (PostgreSQL), and a lost connection. Anything else is the message's fault.
_TRANSIENT_CODES = frozenset({1205, 1213, 2006, 2013, "40001", "40P01", "08006", "08003", "57P01"})


def _transient(exc: sa.exc.DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if orig is None:
        return False
    args = getattr(orig, "args", ())
    code = getattr(orig, "sqlstate", None) or (args[0] if args else None)
    if "database is locked" in str(orig):
        return True
    return code in _TRANSIENT_CODES


def drain_results(ctx: ReconcileContext, report: ReconcileReport) -> None:
    url = results_source_url(ctx.config)
    report.queue_url = url
    if ctx.sqs is None or not url:
        return
    handled = 0
    while handled < ctx.max_messages:
        response = ctx.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
            VisibilityTimeout=60,
        )
        messages = response.get("Messages") or []
        if not messages:
            return
        for message in messages:
            _handle_message(ctx, url, message, report)
            handled += 1


def _apply_pulled(ctx: ReconcileContext, company_id: int, batch: Any, report: ReconcileReport) -> bool:
    """Ingest one result_batch pulled from the Worker; False when it must be pulled again."""
    now = int(ctx.clock())
    try:
        validate("result_batch", batch)
    except ContractError as exc:
        log.warning("worker result moved aside: contract: %s: %s", exc.path, exc.reason)
        report.messages_quarantined += 1
        return True
    if int(batch["company_id"]) != company_id:  # the Worker answered another company's batch
        log.warning("worker result moved aside: company_mismatch")
        report.messages_quarantined += 1
        return True
    try:
        with ctx.engine.begin() as conn:
            outcome = ingest_result_batch(
                conn, ctx.tables, batch, company_id=company_id, now=now, actor=ACTOR, queue=ctx.iomad_queue
            )
    except ScopeError as exc:
        log.warning("worker result moved aside: %s", exc.code)
        report.messages_quarantined += 1
        return True
    except (ConcurrentChange, sa.exc.OperationalError, sa.exc.IntegrityError) as exc:
        log.info("worker result deferred (%s)", type(exc).__name__)
        report.messages_deferred += 1
        return False
    if outcome.duplicate_report:
        report.messages_duplicate += 1
    else:
        report.messages_applied += 1
        report.results_applied += outcome.applied
    return True


def drain_worker_results(ctx: ReconcileContext, report: ReconcileReport) -> None:
    """Pull what the Worker kept (pull mode, or callbacks that never got through), per company.

    Each page is acknowledged on the next request, after its results are committed; a result
    that must be retried stops the company's drain there, so it is pulled again next tick.
    """
    if ctx.worker is None:
        return
    for company_id in ctx.worker_companies:
        handled, ack = 0, None
        while handled < ctx.max_messages:
            try:
                page = ctx.worker.pull_results(company_id, ack)
            except SubmitError as exc:
                log.warning("could not pull results from the Worker for company %s: %s", company_id, exc)
                break
            entries = page.get("entries") or []
            if not entries:
                break
            done_through = None
            for entry in entries:
                if not _apply_pulled(ctx, company_id, entry.get("result_batch"), report):
                    break
                done_through = int(entry["seq"])
                handled += 1
            if done_through is None:
                break
            ack = done_through
            if len(entries) and done_through != int(entries[-1]["seq"]):
                ctx.worker.pull_results(company_id, ack, 1)
                break


def flag_overdue(ctx: ReconcileContext, conn: sa.Connection, now: int) -> list[int]:
    j, a = ctx.tables.jobs, ctx.tables.audit_log
    deadline = sa.func.coalesce(j.c.timedeadline, j.c.timecreated + ctx.config.job_deadline_seconds)
    already = sa.select(a.c.jobid).where(a.c.action == audit.JOB_OVERDUE, a.c.jobid.is_not(None))
    rows = conn.execute(
        sa.select(j.c.id, j.c.companyid, j.c.status, deadline.label("deadline"))
        .where(j.c.status.not_in(sorted(JOB_TERMINAL)), deadline < now, j.c.id.not_in(already))
        .order_by(j.c.id)
    ).all()
    for row in rows:
        audit.record(
            conn,
            ctx.tables,
            actor=ACTOR,
            action=audit.JOB_OVERDUE,
            now=now,
            companyid=int(row.companyid),
            jobid=int(row.id),
            detail={"status": row.status, "deadline": int(row.deadline)},
        )
    return [int(row.id) for row in rows]


def settle_open_rows(ctx: ReconcileContext, conn: sa.Connection, now: int) -> tuple[int, int]:
    c, r = ctx.tables.claims, ctx.tables.recipients
    busy = sa.select(r.c.emailid).where(r.c.emailid == c.c.emailid, r.c.status.in_(sorted(ACTIVE_STATUSES)))
    has_recipients = sa.select(r.c.id).where(r.c.emailid == c.c.emailid)
    open_rows = conn.execute(
        sa.select(c.c.emailid, c.c.jobid).where(
            c.c.state == CLAIM_CLAIMED, c.c.jobid.is_not(None), ~sa.exists(busy), sa.exists(has_recipients)
        )
    ).all()
    if not open_rows:
        return 0, 0
    jobs = lock_jobs(conn, ctx.tables, {int(row.jobid) for row in open_rows})
    settled = settle_rows(
        conn, ctx.tables, ctx.iomad_queue, [int(row.emailid) for row in open_rows], now=now, actor=ACTOR
    )
    changed = {job_id: jobs[job_id] for job_id in settled.restored_recipients if job_id in jobs}
    if changed:
        refresh_jobs(conn, ctx.tables, changed, now=now, actor=ACTOR)
    return len(settled.marked_sent), len(settled.restored)


def _result(job_id: int, rid: int, attempt: int, now: int, code: str, message: str) -> dict[str, Any]:
    return {
        "job_id": str(job_id),
        "recipient_id": str(rid),
        "status": "failed",
        "attempts": max(1, attempt),
        "occurred_at": now,
        "error": {"code": code, "message": message, "permanent": True},
    }


def _ask_cloud(
    cloud: CloudRecords,
    company_id: int,
    job_id: int,
    rows: Sequence[Any],
    *,
    cancelling: bool,
    overdue: bool,
    now: int,
) -> list[dict[str, Any]]:
    """Results for ``rows`` (recipients still in the cloud) from the sender's own records."""
    records = cloud.send_records(company_id, job_id, [int(row.id) for row in rows])
    results: list[dict[str, Any]] = []
    for row in rows:
        rid = int(row.id)
        record: SendRecord | None = records.get(rid)
        if record is None:
            if cancelling:
                closing = _result(
                    job_id,
                    rid,
                    int(row.attempts),
                    now,
                    CANCELLED_IN_CLOUD,
                    "the job was cancelled before the cloud sent this recipient",
                )
            elif overdue:
                closing = _result(
                    job_id,
                    rid,
                    int(row.attempts),
                    now,
                    NEVER_PROCESSED,
                    "the cloud accepted the batch but never processed this recipient "
                    "before the job's deadline; it was closed in the cloud",
                )
            else:
                continue
            record = cloud.close_unclaimed(company_id, job_id, rid, closing)
            if record is None:
                results.append(closing)
                continue
        if record.state == "completed" and record.result:
            result = dict(record.result)
            result["job_id"], result["recipient_id"] = str(job_id), str(rid)
            result.setdefault("occurred_at", now)
            results.append(result)
        elif overdue and record.lease_until < now:
            results.append(
                _result(
                    job_id,
                    rid,
                    int(row.attempts),
                    now,
                    "outcome_unknown",
                    "the sender claimed this recipient but never recorded whether SES accepted it "
                    "(it stopped inside its SES call); not resent to avoid a duplicate",
                )
            )
    return results


def resolve_in_cloud(ctx: ReconcileContext, report: ReconcileReport, now: int) -> None:
    """Step 4 of the module docstring: settle recipients still in the cloud from its records."""
    if ctx.cloud is None:
        return
    j, r = ctx.tables.jobs, ctx.tables.recipients
    deadline = sa.func.coalesce(j.c.timedeadline, j.c.timecreated + ctx.config.job_deadline_seconds)
    in_cloud = sa.select(r.c.id).where(r.c.jobid == j.c.id, r.c.status.in_((QUEUED, RETRYING)))
    with ctx.engine.connect() as conn:
        jobs = conn.execute(
            sa.select(j.c.id, j.c.companyid, j.c.status, (deadline < now).label("overdue"))
            .where(
                j.c.provider == "aws",
                j.c.status.not_in(sorted(JOB_TERMINAL)),
                sa.or_(j.c.status == JOB_CANCELLING, deadline < now),
                sa.exists(in_cloud),
            )
            .order_by(j.c.id)
        ).all()
    for job in jobs:
        job_id = int(job.id)
        with ctx.engine.connect() as conn:
            rows = conn.execute(
                sa.select(r.c.id, r.c.attempts)
                .where(r.c.jobid == job_id, r.c.status.in_((QUEUED, RETRYING)))
                .order_by(r.c.id)
            ).all()
        results = _ask_cloud(
            ctx.cloud,
            int(job.companyid),
            job_id,
            rows,
            cancelling=job.status == JOB_CANCELLING,
            overdue=bool(job.overdue),
            now=now,
        )
        for start in range(0, len(results), 5000):
            batch = {
                "type": "result_batch",
                "contract_version": 1,
                "report_id": f"reconcile-{job_id}-{uuid.uuid4().hex}",
                "company_id": int(job.companyid),
                "reporter": "email_sender",
                "created_at": now,
                "results": results[start : start + 5000],
            }
            with ctx.engine.begin() as conn:
                outcome = ingest_result_batch(
                    conn,
                    ctx.tables,
                    batch,
                    company_id=int(job.companyid),
                    now=now,
                    actor=ACTOR,
                    queue=ctx.iomad_queue,
                )
            report.settled_from_cloud += outcome.applied


def context_from_tick(tick: Any) -> ReconcileContext:
    """Adapt bridge core's ``TickContext`` (engine, config, repo, iomad, ...) to ours."""
    config: BridgeConfig = tick.config
    tables = (
        tick.repo.t
        if getattr(tick, "repo", None) is not None
        else build_bridge_tables(config.database.prefix)
    )
    sqs = None
    if results_source_url(config):
        sqs = boto3.client("sqs", region_name=config.aws.region, endpoint_url=config.aws.endpoint_url or None)
    iomad = getattr(tick, "iomad", None)
    return ReconcileContext(
        engine=tick.engine,
        tables=tables,
        config=config,
        sqs=sqs,
        iomad_queue=AdapterQueue(iomad) if iomad is not None else None,
        cloud=cloud_records_from_config(config),
    )


def _step_error(step: str, exc: BaseException) -> str:
    """One line naming the step, the cause and the fix (no URL, body or secret)."""
    if isinstance(exc, CloudUnavailable):
        cause = str(exc)
    elif isinstance(exc, ClientError):
        cause = f"AWS refused the call: {exc.response.get('Error', {}).get('Code', 'error')}"
    elif isinstance(exc, BotoCoreError):
        cause = f"AWS endpoint unreachable ({type(exc).__name__})"
    elif isinstance(exc, sa.exc.SQLAlchemyError):
        cause = f"database error: {type(exc).__name__}"
    else:
        cause = f"{type(exc).__name__}"
    fix = (
        "check aws.endpoint_url/region, the network and the bridge's AWS credentials"
        if isinstance(exc, CloudUnavailable | ClientError | BotoCoreError)
        else "check the database; the next tick tries again"
    )
    return f"{step}: {cause}; {fix}"


def reconcile(ctx: ReconcileContext | Any) -> ReconcileReport:
    """One reconciliation pass. ``ctx`` is a ``ReconcileContext`` or bridge core's ``TickContext``."""
    if not isinstance(ctx, ReconcileContext):
        ctx = context_from_tick(ctx)
    report = ReconcileReport()
    try:
        drain_results(ctx, report)
    except Exception as exc:
        log.warning("reconcile: draining results failed: %s", type(exc).__name__)
        report.errors.append(_step_error("draining results", exc))
    try:
        drain_worker_results(ctx, report)
    except Exception as exc:
        log.warning("reconcile: pulling the Worker's results failed: %s", type(exc).__name__)
        report.errors.append(_step_error("pulling the Worker's results", exc))
    now = int(ctx.clock())
    try:
        signalled = signal_cancels(ctx.engine, ctx.tables, ctx.cloud, now=now)
        report.cancels_signalled = len(signalled.told)
        report.cancels_not_signalled = len(signalled.not_told)
        if signalled.not_told:
            report.errors.append(
                f"telling the cloud about cancelled jobs {signalled.not_told[:5]}: {signalled.error}; "
                "their recipients already in the cloud may still be sent (and will be recorded so). "
                "Fix: check aws.idempotency_table, aws.endpoint_url/region, the network and the "
                "bridge's AWS credentials; every tick tries again"
            )
    except Exception as exc:
        report.errors.append(_step_error("telling the cloud about cancels", exc))
    try:
        resolve_in_cloud(ctx, report, now)
    except Exception as exc:
        log.warning("reconcile: asking the cloud failed: %s", type(exc).__name__)
        report.errors.append(_step_error("asking the cloud about unfinished recipients", exc))
    try:
        with ctx.engine.begin() as conn:
            report.jobs_flagged_overdue = flag_overdue(ctx, conn, now)
            report.rows_marked_sent, report.rows_restored = settle_open_rows(ctx, conn, now)
            report.nonces_purged = purge_expired(conn, ctx.tables, now)
            report.sessions_purged = purge_sessions(conn, ctx.tables, now=now)
    except sa.exc.SQLAlchemyError as exc:
        report.errors.append(_step_error("settling rows", exc))
    try:
        report.local_report_files_purged = purge_report_files(ctx.config.database.moodle_dataroot, now=now)
    except OSError as exc:
        report.errors.append(_step_error("deleting old report files under moodle_dataroot", exc))
    return report
