"""``moodle-offload tick``: one cron pass — claim, create, submit, reconcile.

Run it from cron every minute (``* * * * * moodle-offload tick``). Two ticks never overlap:
the second exits 0 with a message (or waits with ``--wait``). An unreachable queue is not an
error: batches stay pending in the outbox and are retried with backoff. Errors that need a
human (database unreachable, IOMAD schema missing, tables not migrated) exit 1 with one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import sqlalchemy as sa
from botocore.config import Config as BotoConfig

from moodle_bridge.aws_session import aws_session
from moodle_bridge.commands._common import fail
from moodle_bridge.config import BridgeConfig, ConfigError
from moodle_bridge.operations.metrics import observe_tick
from moodle_bridge.pipeline.claiming import ClaimError, ClaimPass, ClaimReport
from moodle_bridge.pipeline.iomad_contents import IomadRowContents
from moodle_bridge.pipeline.outbox import Outbox, OutboxReport
from moodle_bridge.pipeline.store_only import StoreOnlyError, StoreOnlyPass, StoreOnlyReport
from moodle_bridge.pipeline.ticklock import TickBusy, tick_lock
from moodle_bridge.results.iomad_link import AdapterQueue
from moodle_bridge.results.reconcile import ReconcileContext, ReconcileReport, reconcile
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound, IomadTables, detect_iomad
from moodle_bridge.sources.schedules.runner import ScheduleRunReport, run_due
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import (
    DatabaseUnavailable,
    check_connection,
    create_bridge_engine,
    describe_database_error,
    require_database,
)
from moodle_bridge.storage.database import now as unix_now
from moodle_bridge.storage.migrations import LATEST_VERSION, current_version
from moodle_bridge.storage.secrets_at_rest import SecretBox
from moodle_bridge.transports.capabilities import WorkerCheck
from moodle_bridge.transports.cloud_records import cloud_records_from_config
from moodle_bridge.transports.targets import ApiGatewaySubmitter, SqsSubmitter, Submitter, WorkerSubmitter
from moodle_bridge.transports.worker_objects import worker_objects


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("tick", help="one cron pass: claim, create, submit, reconcile")
    parser.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait up to SECONDS for a running tick instead of exiting",
    )
    parser.add_argument("--no-claim", action="store_true", help="only submit and reconcile")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    parser.set_defaults(handler=run)


def build_submitters(config: BridgeConfig, *, sqs_client: Any = None) -> dict[str, Submitter]:
    """Submission targets by outbox target name, from the configuration."""
    out: dict[str, Submitter] = {}
    queues = {
        "email_batch": config.aws.jobs_queue_url,
        "certificate_batch": config.aws.certificates_queue_url,
    }
    if any(queues.values()):
        client = sqs_client or boto3.client(
            "sqs",
            region_name=config.aws.region,
            endpoint_url=config.aws.endpoint_url or None,
            # An unreachable queue must cost seconds, not minutes: the outbox retries later.
            config=BotoConfig(
                connect_timeout=5, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"}
            ),
        )
        out["sqs"] = SqsSubmitter(client, {k: v for k, v in queues.items() if v})
    root = config.keys.root_secrets().get(config.keys.current) if config.keys.current else None
    if root is not None and config.aws.api_gateway_url:
        url = config.aws.api_gateway_url.rstrip("/")
        if not url.endswith("/v1/batches"):
            url += "/v1/batches"
        credentials = aws_session(config).get_credentials()
        out["api_gateway"] = ApiGatewaySubmitter(
            url, config.keys.current, root, region=config.aws.region, credentials=credentials
        )
    if root is not None and config.cloudflare.intake_url:
        out["worker"] = WorkerSubmitter(config.cloudflare.intake_url, config.keys.current, root)
    return out


def attachment_uploader(
    config: BridgeConfig, *, s3_client: Any = None
) -> Callable[[str, bytes, str], None] | None:
    """Puts an object (a scheduled report's file, a content too large for a batch) into the content
    bucket (SSE-KMS), or None without a bucket."""
    if not config.aws.content_bucket:
        return None
    client = s3_client or boto3.client(
        "s3", region_name=config.aws.region, endpoint_url=config.aws.endpoint_url or None
    )
    bucket = config.aws.content_bucket

    def upload(key: str, body: bytes, content_type: str) -> None:
        client.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType=content_type, ServerSideEncryption="aws:kms"
        )

    return upload


def content_uploader(config: BridgeConfig, *, s3_client: Any = None) -> Callable[[str, bytes], None] | None:
    """Puts contents too large for a batch into the content bucket as JSON, or None."""
    put = attachment_uploader(config, s3_client=s3_client)
    if put is None:
        return None
    return lambda key, body: put(key, body, "application/json")


def worker_content_uploader(config: BridgeConfig) -> Callable[[str, bytes], None] | None:
    """Puts contents too large for a Cloudflare batch into the Worker's R2 (signed object route)."""
    objects = worker_objects(config)
    if objects is None:
        return None

    def upload(key: str, body: bytes) -> None:
        objects.put(key, body, "application/json")

    return upload


@dataclass
class TickReport:
    claim: ClaimReport | None = None
    outbox: OutboxReport | None = None
    reconciled: ReconcileReport | None = None
    store_only: StoreOnlyReport | None = None
    secrets_cleared: int = 0
    schedules: list[ScheduleRunReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def reconcile_context(ctx: TickContext) -> ReconcileContext:
    """The results part's ``ReconcileContext`` built from this pass."""
    link = AdapterQueue(ctx.iomad) if ctx.iomad is not None else None
    config = ctx.config
    sqs = None
    if config.aws.results_queue_url or config.aws.results_dlq_url:
        sqs = boto3.client("sqs", region_name=config.aws.region, endpoint_url=config.aws.endpoint_url or None)
    worker = ctx.submitters.get("worker")
    companies: tuple[int, ...] = ()
    if isinstance(worker, WorkerSubmitter):
        with ctx.engine.connect() as conn:
            settings = ctx.repo.all_settings(conn)
        companies = tuple(sorted(cid for cid, s in settings.items() if s.provider == "cloudflare"))
    return ReconcileContext(
        engine=ctx.engine,
        tables=ctx.repo.t,
        config=config,
        sqs=sqs,
        iomad_queue=link,
        cloud=cloud_records_from_config(config),
        worker=worker if companies else None,
        worker_companies=companies,
    )


@dataclass
class TickContext:
    """What one pass works with; handed to the results part's reconcile(ctx)."""

    engine: sa.Engine
    config: BridgeConfig
    repo: BridgeRepo
    iomad: IomadTables | None
    submitters: dict[str, Submitter]
    box: SecretBox | None


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str], Callable[[int, int], None]] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def make(label: str) -> Callable[[int, int], None]:
            def update(done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total)
                bar.update(tasks[label], completed=done, total=total)

            return update

        yield make


def run_tick(
    engine: sa.Engine,
    config: BridgeConfig,
    *,
    claim: bool = True,
    submitters: dict[str, Submitter] | None = None,
    upload: Callable[[str, bytes], None] | None = None,
    r2_upload: Callable[[str, bytes], None] | None = None,
    report_upload: Callable[[str, bytes, str], None] | None = None,
    progress: Callable[[str], Callable[[int, int], None]] | None = None,
    claim_pass_factory: Callable[..., ClaimPass] = ClaimPass,
) -> TickReport:
    """One pass. Raises IomadSchemaNotFound, ClaimError, DatabaseUnavailable on hard errors."""
    tables = build_bridge_tables(config.database.prefix)
    repo = BridgeRepo(tables)
    report = TickReport()
    with engine.connect() as conn:
        version = current_version(conn, tables)
        if version > LATEST_VERSION:
            raise ConfigError(
                f"bridge tables are at schema version {version}, newer than this release knows "
                f"({LATEST_VERSION}): a downgrade is not supported; install the release that migrated them"
            )
        if version != LATEST_VERSION:
            raise ConfigError(
                f"bridge tables are at schema version {version}, this release needs {LATEST_VERSION}: "
                "run `moodle-offload migrate`"
            )
        iomad: IomadTables | None = None
        if config.database.site == "iomad":
            iomad = detect_iomad(conn, config.database.prefix)
    box = (
        SecretBox(config.password_key_bytes(), config.previous_password_keys())
        if config.password_key
        else None
    )
    targets = submitters if submitters is not None else build_submitters(config)
    if claim and iomad is not None:
        claimer = claim_pass_factory(engine, repo, iomad, config, box=box)
        worker = targets.get("worker")
        check = WorkerCheck(worker if isinstance(worker, WorkerSubmitter) else None)
        claimer.worker_check = check
        claimer.certificate_check = check.certificate_refusal
        report.claim = claimer.run(progress("claiming IOMAD rows") if progress else None)
        if report.claim.lock_lost:
            report.notes.append(
                "Moodle's lock was lost mid-claim; that chunk was rolled back, claiming again next pass"
            )
        report.notes.extend(report.claim.refusals)
        store_only = StoreOnlyPass(engine, repo, iomad, config)
        try:
            report.store_only = store_only.run(unix_now())
        except StoreOnlyError as exc:
            report.notes.append(f"store-only certificates not created: {exc}")
        else:
            report.notes.extend(report.store_only.notes)
    if iomad is not None:  # schedules fire before the outbox, so this pass submits their jobs
        report.schedules = run_due(
            engine,
            repo,
            config,
            at=int(time.time()),
            upload=report_upload if report_upload is not None else attachment_uploader(config),
            iomad=iomad,
        )
        failed = [r for r in report.schedules if r.outcome == "failed"]
        report.notes.extend(f"schedule {r.scheduleid}: {'; '.join(r.notes)}" for r in failed)
    outbox = Outbox(
        engine,
        repo,
        config,
        targets,
        iomad=IomadRowContents(iomad) if iomad else None,
        box=box,
        upload=upload if upload is not None else content_uploader(config),
        r2_upload=r2_upload if r2_upload is not None else worker_content_uploader(config),
    )
    report.outbox = outbox.submit_due(progress=progress("submitting batches") if progress else None)
    try:
        report.reconciled = reconcile(
            reconcile_context(TickContext(engine, config, repo, iomad, targets, box))
        )
    finally:  # sealed passwords past their time are cleared whatever reconciliation met
        with engine.begin() as conn:
            report.secrets_cleared = repo.clear_final_secrets(conn)
    observe_tick(report)  # this process's counters on /metrics (the long-running service)
    return report


def summary(report: TickReport) -> str:
    parts = []
    if report.claim is not None and report.claim.lock_busy:
        parts.append("claiming skipped: IOMAD's email cron holds its lock (due rows are claimed next pass)")
    elif report.claim is not None:
        c = report.claim
        parts.append(
            f"claimed {c.claimed} of {c.considered} due rows ({c.recipients} recipients, {c.batches} batches"
            + (f", {c.suppressed} skipped as suppressed" if c.suppressed else "")
            + (f", {c.released} released to IOMAD" if c.released else "")
            + (f", left local: {dict(c.left_local)}" if c.left_local else "")
            + ")"
        )
    if report.store_only is not None and report.store_only.certificates:
        parts.append(
            f"{report.store_only.certificates} store-only certificates planned "
            f"(completions without a mail, {len(report.store_only.jobs)} jobs)"
        )
    if report.outbox is not None:
        o = report.outbox
        parts.append(
            f"submitted {o.submitted} batches"
            + (f", {o.retried} to retry" if o.retried else "")
            + (f", {o.abandoned} abandoned" if o.abandoned else "")
            + (f", {o.split} split (over the queue limit)" if o.split else "")
        )
    if report.reconciled is not None:
        parts.append(reconcile_summary(report.reconciled))
    parts.extend(report.notes)
    return "; ".join(parts) or "nothing to do"


def reconcile_summary(reconciled: ReconcileReport) -> str:
    """The reconciliation pass in one clause: counts only (no queue URL, no message content)."""

    def count(name: str) -> int:
        value = getattr(reconciled, name, 0)
        return len(value) if isinstance(value, list | tuple | set) else int(value or 0)

    drained = count("messages_applied") + count("messages_duplicate")
    text = (
        f"reconciled: {count('results_applied')} results ingested from {drained} messages"
        f", {count('messages_quarantined')} quarantined"
        f", {count('jobs_flagged_overdue')} jobs flagged overdue"
        f", {count('rows_marked_sent')} IOMAD rows settled, {count('rows_restored')} restored"
    )
    deferred = count("messages_deferred")
    text += f", {deferred} messages deferred" if deferred else ""
    if count("cancels_signalled"):
        text += f", {count('cancels_signalled')} cancels sent to the cloud"
    if count("settled_from_cloud"):
        text += f", {count('settled_from_cloud')} recipients settled from the cloud's records"
    return text


def problems(report: TickReport) -> list[str]:
    """Lines for what needs a person after this pass, each with its cause and its fix. cron mails
    them to the admin: ``tick`` prints them even with ``--quiet`` and exits 1."""
    out: list[str] = []
    if report.outbox is not None and report.outbox.errors:
        o = report.outbox
        first = o.errors[0]
        if o.abandoned:
            out.append(
                f"{o.abandoned} batches were abandoned after the job deadline ({first}); their rows went "
                "back to IOMAD where possible, the rest are failed (see `jobs list`). Fix: check the queue "
                "settings ([aws] queue URLs, credentials) and `jobs retry`"
            )
        failed = len(o.errors) - o.abandoned
        if failed > 0:
            out.append(
                f"{failed} batches could not be submitted ({first}); they are retried with backoff. Fix: "
                "check the queue URL in [aws], the network and the bridge's AWS credentials"
            )
    if report.reconciled is not None:
        r = report.reconciled
        out.extend(getattr(r, "errors", []) or [])
        if r.messages_quarantined:
            out.append(
                f"{r.messages_quarantined} result messages could not be applied and were moved aside "
                "(audit log: result_message_quarantined); reconciliation went on. Fix: read the audit "
                "entries; the messages stay in the results queue until its retention ends"
            )
    return out


def run(args: argparse.Namespace, config: BridgeConfig) -> int:
    require_database(config.database)
    engine = create_bridge_engine(config.database)
    try:
        check_connection(engine)
        try:
            with (
                tick_lock(engine, config.database.prefix, args.wait),
                _progress(sys.stderr.isatty() and not args.quiet) as progress,
            ):
                report = run_tick(engine, config, claim=not args.no_claim, progress=progress)
        except TickBusy:
            if not args.quiet:
                print("moodle-offload: another tick is running; this one exits (use --wait to wait)")
            return 0
    except DatabaseUnavailable as exc:
        return fail(str(exc))
    except IomadSchemaNotFound as exc:
        return fail(f'{exc} (for a plain Moodle site set database.site = "moodle")')
    except ClaimError as exc:
        return fail(f"cannot claim: {exc}")
    except sa.exc.SQLAlchemyError as exc:
        return fail(
            f"database error: {describe_database_error(exc)}; check the "
            "database server and run the tick again"
        )
    finally:
        engine.dispose()
    if not args.quiet:
        print(f"moodle-offload tick: {summary(report)}")
    trouble = problems(report)
    for line in trouble:
        print(f"moodle-offload tick: {line}", file=sys.stderr)
    return 1 if trouble else 0
