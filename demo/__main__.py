"""``make demo``: the whole offload, end to end, on embedded defaults.

1. An IOMAD-shaped Moodle database (SQLite by default; ``--engine mariadb|postgres``) seeded
   as a CSV upload would: ``user_create`` rows with temporary passwords, ``license_allocated``
   rows, managers and supervisors, and a few course completions. Company 1 is routed to the
   cloud, company 2 stays local.
2. An embedded AWS: moto in server mode on 127.0.0.1, provisioned like the CDK stack.
3. The bridge exactly as cron and DevOps run it: ``moodle-offload migrate``, ``company``,
   ``tick``, and ``serve`` as a real process receiving callbacks over HTTP.
4. The Lambda handlers fed by an event-source-mapping emulator: batches, partial failures,
   redelivery; with injected faults (a sender crash, an SES throttling burst, a callback
   delivered twice) unless ``--no-faults``.
5. A report: mail sent per type, certificates as PDFs in a folder, IOMAD rows suppressed,
   the local company's rows untouched, exactly-once checks, time taken.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from demo.cloudflare import CallbackFaults, flaky_proxy, report_cloudflare, submit_twice
from demo.embedded_aws import SEAL_KEYSET, EmbeddedAws, embedded_aws
from demo.event_source import EventSourceMapping, Handler, LambdaCrash, LocalQueue, drain
from demo.ses_emulator import FakeSes, throttle, to_sqs
from demo.wrangler_dev import WranglerUnavailable, wrangler_dev
from iomad_sim import scratch_databases
from iomad_sim.iomad_schema import create_iomad_schema
from iomad_sim.iomad_seed import ADMIN_ID, SeedSpec, seed_iomad
from moodle_bridge.cli import main as moodle_offload
from moodle_bridge.commands.dashboard import signin_url
from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.config import load_config
from moodle_bridge.sources.iomad.schema import IomadGeneration
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.statuses import JOB_TERMINAL
from moodle_bridge.transports.targets import WorkerSubmitter
from offload_contract.signing import decode_root_secret, generate_root_secret

PREFIX = "mdl_"
CLOUD_COMPANY = 1
#: The SES account rate (recipients per second) the demo's and the fault harness's SES emulator
#: enforce, as SES does, and the sender paces to: a production account after one increase (new
#: production accounts start at 14/s; docs/AWS_SETUP.md).
SEND_RATE = 200
LOCAL_COMPANY = 2
KEYSET = "demo"
FINAL_STATUSES = ("sent", "delivered", "failed", "bounced", "complained", "skipped", "cancelled", "restored")

console = Console(highlight=False, soft_wrap=True)


@dataclass
class FaultPlan:
    """Faults injected into the run (each once), and what they did."""

    enabled: bool
    crash_sender_on_invocation: int = 2
    throttle_ses_calls: range = field(default_factory=lambda: range(5, 8))
    duplicate_callback_on_invocation: int = 2
    log: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------
#: Optional overrides of the servers the demo uses (defaults: the local MariaDB / PostgreSQL).
DEMO_SERVER_ENV = {"mariadb": "MRCO_DEMO_MARIADB_URL", "postgres": "MRCO_DEMO_POSTGRES_URL"}


@contextlib.contextmanager
def moodle_database(engine_name: str, output: Path, keep: bool) -> Iterator[str]:
    """A fresh database for the demo's Moodle site; server databases are dropped afterwards."""
    if engine_name == "sqlite":
        path = output / "moodle.sqlite3"
        yield f"sqlite:///{path}"
        return
    server_url = os.environ.get(DEMO_SERVER_ENV[engine_name])
    try:
        url = scratch_databases.create_database(engine_name, "demo", server_url)
    except sa.exc.OperationalError as exc:
        raise SystemExit(f"demo: cannot reach {engine_name} ({str(exc).splitlines()[0]})") from None
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        if not keep:
            scratch_databases.drop_database(engine_name, url, server_url)


# ---------------------------------------------------------------------------------------
# The bridge, as cron and DevOps run it
# ---------------------------------------------------------------------------------------
def bridge_environment(
    aws: EmbeddedAws, db_url: str, root_secret: str, port: int, engine_name: str
) -> dict[str, str]:
    return {
        "MRCO_DATABASE_URL": db_url,
        "MRCO_DB_PREFIX": PREFIX,
        "MRCO_MOODLE_DBNAME": "moodle",
        "MRCO_SITE": "iomad",
        "MRCO_AWS_REGION": aws.region,
        "MRCO_AWS_ENDPOINT_URL": aws.endpoint_url,
        "MRCO_JOBS_QUEUE_URL": aws.queue_urls["jobs"],
        "MRCO_CERTIFICATES_QUEUE_URL": aws.queue_urls["certificates"],
        "MRCO_RESULTS_QUEUE_URL": aws.queue_urls["results"],
        "MRCO_RESULTS_DLQ_URL": aws.dlq_urls["results"],
        "MRCO_CONTENT_BUCKET": aws.bucket,
        "MRCO_IDEMPOTENCY_TABLE": aws.table,
        "MRCO_CALLBACK_PUBLIC_URL": f"http://127.0.0.1:{port}/callbacks/v1/results",
        "MRCO_CALLBACK_BIND_HOST": "127.0.0.1",
        "MRCO_CALLBACK_BIND_PORT": str(port),
        "MRCO_KEYSETS": f"{KEYSET}={root_secret}",
        "MRCO_KEYSET_CURRENT": KEYSET,
        "MRCO_SEAL_KEYSETS": f"{SEAL_KEYSET}={aws.seal_root}",
        "MRCO_PASSWORD_KEY": base64.b64encode(secrets.token_bytes(32)).decode("ascii"),
        "MRCO_SENDER_ADDRESS": aws.sender,
        "MRCO_SENDER_NAME": "Acme Training",
        "MRCO_VERIFY_URL_BASE": "https://offload.example/v1/certificates/verify",
        "MRCO_UNSUBSCRIBE_URL_BASE": "https://offload.example/v1/unsubscribe",
        "MRCO_RETRY_BASE_SECONDS": "1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # moto's fixed test credentials
        "AWS_DEFAULT_REGION": aws.region,
    }


def run_cli(*args: str) -> None:
    """Run ``moodle-offload ARGS`` in-process, as cron would run the command."""
    code = moodle_offload(list(args))
    if code != 0:
        raise SystemExit(f"demo: `moodle-offload {' '.join(args)}` exited {code}")


@contextlib.contextmanager
def callback_receiver(
    env: dict[str, str], port: int, log_path: Path, command: tuple[str, ...] = ("serve",)
) -> Iterator[None]:
    """``moodle-offload serve`` (or ``dashboard serve``) in its own process, like the systemd units
    in docs/bridge.md and docs/dashboard.md."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moodle_bridge", *command],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"demo: `moodle-offload {' '.join(command)}` did not start; see {log_path}"
                    )
                time.sleep(0.2)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def dashboard_environment(port: int) -> dict[str, str]:
    return {
        "MRCO_DASHBOARD_KEY": generate_root_secret(),
        "MRCO_DASHBOARD_URL": f"http://127.0.0.1:{port}",
        "MRCO_DASHBOARD_BIND_HOST": "127.0.0.1",
        "MRCO_DASHBOARD_BIND_PORT": str(port),
    }


def print_signin_link(why: str) -> None:
    """A one-time link for the seeded site admin, as ``moodle-offload dashboard link`` prints it."""
    url = signin_url(load_config(), user_id=ADMIN_ID)
    console.print(f"[bold]{why}:[/] open within 60 s (one use): {url}", soft_wrap=True)


def keep_dashboard_open() -> None:
    """Keep the dashboard (and the emulated AWS) up until Ctrl-C; Enter prints a fresh link."""
    print_signin_link("Sign in to the dashboard")
    console.print("The dashboard keeps running. Enter: a new sign-in link; Ctrl-C: stop.")
    try:
        while True:
            line = sys.stdin.readline() if sys.stdin.isatty() else ""
            if line:
                print_signin_link("New sign-in link")
            else:
                time.sleep(3600)
    except KeyboardInterrupt:
        console.print("Dashboard stopped.")


def free_port() -> int:
    import socket  # noqa: PLC0415 - only here

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------
# A re-engagement campaign (docs/campaigns.md)
# ---------------------------------------------------------------------------------------
INACTIVE_EVERY = 20
INACTIVE_DAYS = 45
CAMPAIGN_RULE = {
    "trigger": {"kind": "inactive_site", "days": 30},
    "template": {
        "subject": "We miss you, {{ firstname }}",
        "html": "<p>Hello {{ fullname }}, your last visit was {{ days_inactive }} days ago.</p>",
        "text": "Hello {{ fullname }}, your last visit was {{ days_inactive }} days ago.",
    },
    "recipients": "user",
    "cadence": {"every_days": 7, "max_reminders": 3},
}


def age_some_learners(engine: sa.Engine, now: int) -> int:
    """Every ``INACTIVE_EVERY``th learner of the cloud company last visited the site
    ``INACTIVE_DAYS`` days ago (the seed's learners are all new): the campaign's audience."""
    with engine.begin() as conn:
        learners = [
            int(u)
            for u in conn.execute(
                sa.text(
                    f"SELECT userid FROM {PREFIX}company_users WHERE companyid = :c AND managertype = 0 "
                    "ORDER BY userid"
                ),
                {"c": CLOUD_COMPANY},
            ).scalars()
        ][::INACTIVE_EVERY]
        for userid in learners:
            conn.execute(
                sa.text(f"UPDATE {PREFIX}user SET lastaccess = :t WHERE id = :u"),
                {"t": now - INACTIVE_DAYS * 86400, "u": userid},
            )
    return len(learners)


def create_campaign(output: Path) -> None:
    """``campaigns create``, ``preview`` and ``run-now`` as a site's admin would type them."""
    rule = output / "campaign.json"
    rule.write_text(json.dumps(CAMPAIGN_RULE, indent=2), "utf-8")
    run_cli(
        "campaigns", "create", "--company", str(CLOUD_COMPANY), "--name", "We miss you", "--rule", str(rule)
    )
    run_cli("campaigns", "preview", "1")
    run_cli("campaigns", "run-now", "1")


def campaign_summary(engine: sa.Engine) -> tuple[int, list[tuple[int, str, int, int]]]:
    """Users in the campaign's ledger, and its jobs (id, status, recipients, sent or delivered)."""
    t = build_bridge_tables(PREFIX)
    with engine.connect() as conn:
        reminded = conn.execute(sa.select(sa.func.count()).select_from(t.campaign_ledger)).scalar_one()
        jobs = [
            (int(j.id), str(j.status), int(j.recipientstotal), int(j.recipientssent + j.recipientsdelivered))
            for j in conn.execute(
                sa.select(t.jobs).where(t.jobs.c.source == "campaign").order_by(t.jobs.c.id)
            )
        ]
    return int(reminded), jobs


# ---------------------------------------------------------------------------------------
# The Lambdas, fed as the event source mappings would
# ---------------------------------------------------------------------------------------
def logged(handler: Any, log: Any) -> Any:
    """What a function prints (Powertools' EMF metrics) goes to a log file, as CloudWatch
    would hold it, instead of the demo's console."""

    def invoke(event: dict[str, Any], context: Any) -> Any:
        with contextlib.redirect_stdout(log):
            return handler(event, context)

    return invoke


def ses_events_mapping(
    ses: FakeSes, handler: Handler, *, visibility_timeout: float = 5, max_receive: int = 5
) -> EventSourceMapping:
    """``ses``'s Send events, delivered as the configuration set's EventBridge rule and the
    stack's event source mapping do (batches of up to 100), to ``handler``. One message per
    email, so the queue is kept in memory: moto's SQS slows down in proportion to its depth."""
    queue = LocalQueue(visibility_timeout=visibility_timeout, max_receive=max_receive)
    ses.publish = to_sqs(queue, "local:ses-events")
    return EventSourceMapping(queue, "local:ses-events", handler, "ses-events", batch_size=100)


def lambda_mappings(
    aws: EmbeddedAws, faults: FaultPlan, log: Any
) -> tuple[list[EventSourceMapping], FakeSes]:
    os.environ.update(aws.lambda_environment())
    os.environ["SES_MAX_SEND_RATE"] = str(SEND_RATE)  # what the stack sets from ses_send_rate
    from lambdas.common.aws import client  # noqa: PLC0415 - after the environment is set
    from lambdas.handlers import (  # noqa: PLC0415
        callback_dispatcher,
        certificate_renderer,
        email_sender,
        ses_events,
    )

    ses = FakeSes(region=aws.region, max_send_rate=float(SEND_RATE))  # refuses anything over it
    ses.install(client("sesv2"))
    calls = Counter[str]()

    def ses_fault(operation: str, params: dict[str, Any]) -> Any:
        calls["ses"] += 1
        if faults.enabled and calls["ses"] in faults.throttle_ses_calls:
            if calls["ses"] == faults.throttle_ses_calls.start:
                faults.log.append(
                    "SES throttling burst: 3 calls answered ThrottlingException; re-queued with backoff"
                )
            return throttle()
        return None

    ses.fault = ses_fault

    def sender(event: dict[str, Any], context: Any) -> Any:
        calls["sender"] += 1
        if faults.enabled and calls["sender"] == faults.crash_sender_on_invocation:
            faults.log.append("email sender crashed at the start of an invocation; SQS redelivered its batch")
            raise LambdaCrash("injected crash")
        return email_sender.handler(event, context)

    def dispatcher(event: dict[str, Any], context: Any) -> Any:
        calls["dispatcher"] += 1
        response = callback_dispatcher.handler(event, context)
        if faults.enabled and calls["dispatcher"] == faults.duplicate_callback_on_invocation:
            faults.log.append("callback dispatcher crashed after posting; the callback was delivered twice")
            raise LambdaCrash("injected crash after the callback was delivered")
        return response

    sqs = aws.client("sqs")
    mappings = [
        EventSourceMapping(
            sqs,
            aws.queue_urls["certificates"],
            logged(certificate_renderer.handler, log),
            "certificate-renderer",
        ),
        EventSourceMapping(sqs, aws.queue_urls["jobs"], logged(sender, log), "email-sender"),
        EventSourceMapping(sqs, aws.queue_urls["results"], logged(dispatcher, log), "callback-dispatcher"),
        ses_events_mapping(ses, logged(ses_events.handler, log)),
    ]
    return mappings, ses


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
def job_progress(engine: sa.Engine) -> tuple[int, int]:
    t = build_bridge_tables(PREFIX)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(t.recipients)).scalar_one()
        final = conn.execute(
            sa.select(sa.func.count())
            .select_from(t.recipients)
            .where(t.recipients.c.status.in_(FINAL_STATUSES))
        ).scalar_one()
    return int(final), int(total)


def open_jobs(engine: sa.Engine) -> int:
    t = build_bridge_tables(PREFIX)
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(t.jobs)
                .where(t.jobs.c.status.not_in(sorted(JOB_TERMINAL)))
            ).scalar_one()
        )


def download_certificates(aws: EmbeddedAws, folder: Path) -> list[Path]:
    s3 = aws.client("s3")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix="certificates/"):
        for obj in page.get("Contents", []):
            target = folder / obj["Key"].removeprefix("certificates/").replace("/", "_")
            s3.download_file(aws.bucket, obj["Key"], str(target))
            paths.append(target)
    return paths


@dataclass
class ExactlyOnce:
    """The demo's check, per (job, recipient) like the fault harness's oracle: totals alone would
    let one duplicate hide one loss."""

    messages: int = 0
    reported_sent: int = 0
    duplicates: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.lost or self.unexpected)


def check_exactly_once(
    sends: list[tuple[str, dict[str, str]]], reported: list[tuple[int, int, str]]
) -> ExactlyOnce:
    """``sends``: (to, SES tags) of every accepted message; ``reported``: (job id, recipient id,
    status) of every recipient. A recipient reported sent/delivered/bounced/complained needs
    exactly one message; any other recipient none."""
    from lambdas.email.crash_window import PROBE_TAG  # noqa: PLC0415

    per_key: Counter[tuple[str, str]] = Counter()
    for _to, tags in sends:
        if PROBE_TAG in tags:
            continue  # the Send-event probe to SES's mailbox simulator, not mail to a person
        per_key[
            (tags.get("job_id", "?").replace("@", ":"), tags.get("recipient_id", "?").replace("@", ":"))
        ] += 1
    out = ExactlyOnce(messages=sum(per_key.values()))
    for job_id, recipient_id, status in reported:
        n = per_key.pop((str(job_id), str(recipient_id)), 0)
        label = f"job {job_id} recipient {recipient_id} ({status})"
        if status in ("sent", "delivered", "bounced", "complained"):
            out.reported_sent += 1
            if n == 0:
                out.lost.append(label)
            elif n > 1:
                out.duplicates.append(f"{label}: {n} messages")
        elif n:
            out.unexpected.append(f"{label}: {n} messages")
    out.unexpected.extend(
        f"job {j} recipient {r}: {n} messages, unknown to the bridge" for (j, r), n in per_key.items()
    )
    return out


def report(
    engine: sa.Engine,
    aws: EmbeddedAws,
    ses: FakeSes,
    output: Path,
    seeded_local: dict[int, int],
    faults: FaultPlan,
    started: float,
) -> bool:
    t = build_bridge_tables(PREFIX)
    email = sa.table(
        "mdl_email",
        sa.column("id"),
        sa.column("companyid"),
        sa.column("sent"),
        sa.column("due"),
        sa.column("templatename"),
    )
    with engine.connect() as conn:
        per_type = conn.execute(
            sa.select(
                sa.func.coalesce(t.claims.c.templatename, t.jobs.c.templatename, t.jobs.c.jobtype),
                t.recipients.c.status,
                sa.func.count(),
            )
            .select_from(
                t.recipients.join(t.jobs, t.jobs.c.id == t.recipients.c.jobid).outerjoin(
                    t.claims, t.claims.c.emailid == t.recipients.c.emailid
                )
            )
            .group_by(
                sa.func.coalesce(t.claims.c.templatename, t.jobs.c.templatename, t.jobs.c.jobtype),
                t.recipients.c.status,
            )
        ).all()
        claimed = conn.execute(sa.select(sa.func.count()).select_from(t.claims)).scalar_one()
        cloud_rows = conn.execute(
            sa.select(sa.func.count(), sa.func.count(email.c.sent)).where(email.c.companyid == CLOUD_COMPANY)
        ).one()
        local_rows = conn.execute(
            sa.select(email.c.id, email.c.due, email.c.sent).where(email.c.companyid == LOCAL_COMPANY)
        ).all()
        jobs = conn.execute(
            sa.select(t.jobs.c.id, t.jobs.c.jobtype, t.jobs.c.status, t.jobs.c.recipientstotal)
        )
        jobs_rows = jobs.all()
        rendered = conn.execute(
            sa.select(sa.func.count())
            .select_from(t.recipients)
            .where(t.recipients.c.artifactkey.is_not(None))
        ).scalar_one()
        reported = [
            (int(j), int(r), str(st))
            for j, r, st in conn.execute(
                sa.select(t.recipients.c.jobid, t.recipients.c.id, t.recipients.c.status)
            )
        ]
        secrets_left = conn.execute(
            sa.select(sa.func.count())
            .select_from(t.recipients)
            .where(t.recipients.c.secret.is_not(None), t.recipients.c.status.in_(FINAL_STATUSES))
        ).scalar_one()

    table = Table(title="Mail offloaded for company 1 (cloud)")
    table.add_column("type")
    for status in ("sent", "delivered", "failed", "skipped", "restored", "other"):
        table.add_column(status, justify="right")
    counts: dict[str, Counter[str]] = {}
    for kind, status, count in per_type:
        bucket = status if status in ("sent", "delivered", "failed", "skipped", "restored") else "other"
        counts.setdefault(str(kind), Counter())[bucket] += int(count)
    for kind, counter in sorted(counts.items()):
        table.add_row(
            kind, *(str(counter[s]) for s in ("sent", "delivered", "failed", "skipped", "restored", "other"))
        )
    console.print(table)

    certificates = download_certificates(aws, output / "certificates")
    messages = ses.sent_messages()
    local_untouched = all(row.sent is None and row.due == seeded_local.get(row.id) for row in local_rows)

    console.print(
        f"Jobs: {len(jobs_rows)} ({', '.join(f'#{j.id} {j.jobtype} {j.status}' for j in jobs_rows)})"
    )
    console.print(
        f"IOMAD rows claimed and suppressed for company 1: {claimed}; marked sent now: "
        f"{cloud_rows[1]} of {cloud_rows[0]}"
    )
    console.print(
        f"Company 2 (local): {len(local_rows)} rows left to IOMAD untouched: "
        f"{'yes' if local_untouched else 'NO'}"
    )
    once = check_exactly_once(ses.sends_by_tags(), reported)
    verdict = "exactly once each, checked per job and recipient" if once.ok else "MISMATCH"
    console.print(
        f"Emails accepted by the emulated SES: {len(messages)}; recipients reported sent: "
        f"{once.reported_sent} ({verdict})"
    )
    for problem in (once.duplicates + once.lost + once.unexpected)[:10]:
        console.print(f"  [red]{problem}[/]")
    reminded, campaign_jobs = campaign_summary(engine)
    console.print(
        f"Campaign 1 (re-engagement, inactive 30+ days): {reminded} learners in its ledger; "
        + (", ".join(f"job #{j} {st}: {sent} of {n} sent" for j, st, n, sent in campaign_jobs) or "no job")
    )
    console.print(
        f"Certificates rendered: {rendered}; PDFs in {output / 'certificates'} ({len(certificates)} files)"
    )
    console.print(f"Temporary passwords still held for final recipients: {secrets_left}")
    for line in faults.log:
        console.print(f"Fault injected: {line}")
    console.print(f"Time taken: {time.monotonic() - started:.1f} s")
    ok = (
        once.ok
        and local_untouched
        and secrets_left == 0
        and cloud_rows[1] == cloud_rows[0]
        and all(j.status in ("completed", "partial_failure") for j in jobs_rows)
        and reminded > 0
        and all(n == sent for _, _, n, sent in campaign_jobs)
    )
    console.print("[bold green]Demo OK[/]" if ok else "[bold red]Demo finished with problems (see above)[/]")
    return ok


# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make demo", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--engine", choices=("sqlite", "mariadb", "postgres"), default="sqlite")
    parser.add_argument(
        "--provider",
        choices=("aws", "cloudflare"),
        default="aws",
        help="aws: embedded AWS and the Lambdas; cloudflare: the Worker under wrangler dev --local",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=None,
        help="learners per company (two companies; aws 1500, cloudflare 60)",
    )
    parser.add_argument("--output", default="demo-output", help="folder for the database, PDFs and logs")
    parser.add_argument("--no-faults", action="store_true", help="run without injected faults")
    parser.add_argument("--keep-db", action="store_true", help="keep the MariaDB/PostgreSQL database")
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="also run the dashboard, print a sign-in link, and keep it running until interrupted",
    )
    args = parser.parse_args(argv)
    if args.users is None:
        args.users = 1500 if args.provider == "aws" else 60
    if args.provider == "cloudflare":
        if args.dashboard:
            parser.error("--dashboard runs with the AWS demo (--provider aws) only, for now")
        return run_cloudflare(args)
    started = time.monotonic()
    output = Path(args.output).resolve()
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    faults = FaultPlan(enabled=not args.no_faults)
    now = int(time.time())

    with moodle_database(args.engine, output, args.keep_db) as db_url:
        engine = sa.create_engine(db_url)
        console.print(
            f"[bold]1.[/] Moodle/IOMAD database on {args.engine}: seeding {args.users * 2:,} learners "
            "as a CSV upload would …"
        )
        iomad = create_iomad_schema(engine, PREFIX, IomadGeneration.LEGACY)
        seeded = seed_iomad(
            engine,
            iomad,
            SeedSpec(
                companies=2,
                users_per_company=args.users,
                managers_per_company=2,
                child_departments=2,
                supervisor_every=25,
                license_allocated=True,
                completions_per_company=12,
                now=now - 60,
                seed=7,
            ),
        )
        with engine.connect() as conn:
            local: dict[int, int] = {
                int(row.id): int(row.due)
                for row in conn.execute(
                    sa.text(f"SELECT id, due FROM {PREFIX}email WHERE companyid = :c"), {"c": LOCAL_COMPANY}
                )
            }
            queued = conn.execute(sa.text(f"SELECT count(*) FROM {PREFIX}email")).scalar_one()
        console.print(
            f"   {queued:,} rows queued in {PREFIX}email ({len(seeded.learner_ids):,} learners, "
            f"{len(seeded.completion_ids)} course completions)"
        )

        with embedded_aws() as aws:
            root = generate_root_secret()
            aws.provision(KEYSET, root, visibility_timeout=5, max_receive=5)
            console.print(
                f"[bold]2.[/] Embedded AWS (moto) on {aws.endpoint_url}: queues, bucket, table, secret"
            )
            port = free_port()
            env = bridge_environment(aws, db_url, root, port, args.engine)
            dashboard_port = free_port()
            if args.dashboard:
                env.update(dashboard_environment(dashboard_port))
            os.environ.update(env)
            console.print("[bold]3.[/] moodle-offload migrate; company routing; serve")
            run_cli("migrate")
            run_cli(
                "company",
                "set",
                str(CLOUD_COMPANY),
                "--cloud",
                "on",
                "--provider",
                "aws",
                "--emails",
                "on",
                "--certificates",
                "on",
                "--threshold",
                "1",
                "--fallback",
                "on",
            )
            run_cli("company", "set", str(LOCAL_COMPANY), "--cloud", "off")
            run_cli("company", "global", "on")
            inactive = age_some_learners(engine, now)
            console.print(
                f"   campaign: {inactive} learners of company {CLOUD_COMPANY} last visited "
                f"{INACTIVE_DAYS} days ago; moodle-offload campaigns create, preview, run-now"
            )
            create_campaign(output)
            with contextlib.ExitStack() as stack:
                stack.enter_context(callback_receiver(env, port, output / "receiver.log"))
                if args.dashboard:
                    stack.enter_context(
                        callback_receiver(
                            env, dashboard_port, output / "dashboard.log", ("dashboard", "serve")
                        )
                    )
                    print_signin_link("Watch the jobs in the dashboard")
                console.print("[bold]4.[/] moodle-offload tick: claim, create jobs, submit batches")
                run_cli("tick")
                lambda_log = stack.enter_context((output / "lambdas.log").open("w", encoding="utf-8"))
                mappings, ses = lambda_mappings(aws, faults, lambda_log)
                console.print("[bold]5.[/] Lambdas on the queues (event source mapping emulation) …")
                with Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=console,
                ) as bar:
                    final, total = job_progress(engine)
                    task = bar.add_task("recipients final", total=total, completed=final)
                    deadline = time.monotonic() + 900
                    while time.monotonic() < deadline:
                        drain(
                            mappings,
                            timeout_seconds=120,
                            idle_sleep=0.25,
                            on_progress=lambda: bar.update(task, completed=job_progress(engine)[0]),
                        )
                        run_cli("tick", "--quiet")
                        final, total = job_progress(engine)
                        bar.update(task, completed=final, total=total)
                        if open_jobs(engine) == 0:
                            break
                        time.sleep(1)
                console.print("[bold]6.[/] Report")
                ok = report(engine, aws, ses, output, local, faults, started)
                if args.dashboard:
                    keep_dashboard_open()
        engine.dispose()
    return 0 if ok else 1


def seed_demo_site(engine: sa.Engine, users: int, now: int) -> dict[int, int]:
    """Seed the IOMAD site as a CSV upload would; answers the local company's rows (id -> due)."""
    iomad = create_iomad_schema(engine, PREFIX, IomadGeneration.LEGACY)
    seeded = seed_iomad(
        engine,
        iomad,
        SeedSpec(
            companies=2,
            users_per_company=users,
            managers_per_company=2,
            child_departments=2,
            supervisor_every=25,
            license_allocated=True,
            completions_per_company=12,
            now=now - 60,
            seed=7,
        ),
    )
    with engine.connect() as conn:
        local = {
            int(row.id): int(row.due)
            for row in conn.execute(
                sa.text(f"SELECT id, due FROM {PREFIX}email WHERE companyid = :c"), {"c": LOCAL_COMPANY}
            )
        }
        queued = conn.execute(sa.text(f"SELECT count(*) FROM {PREFIX}email")).scalar_one()
    console.print(
        f"   {queued:,} rows queued in {PREFIX}email ({len(seeded.learner_ids):,} learners, "
        f"{len(seeded.completion_ids)} course completions)"
    )
    return local


def run_cloudflare(args: argparse.Namespace) -> int:
    """The Cloudflare path end to end (demo/cloudflare.py says what it shows)."""
    started = time.monotonic()
    output = Path(args.output).resolve()
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    faults = CallbackFaults(enabled=not args.no_faults)
    now = int(time.time())
    root = generate_root_secret()
    ok = False
    with moodle_database(args.engine, output, args.keep_db) as db_url:
        engine = sa.create_engine(db_url)
        console.print(
            f"[bold]1.[/] Moodle/IOMAD database on {args.engine}: seeding {args.users * 2:,} learners …"
        )
        local = seed_demo_site(engine, args.users, now)
        keysets = {"current": KEYSET, "keysets": {KEYSET: root}}
        seal_root = generate_root_secret()  # password mail travels sealed; only the Worker's sender opens it
        variables = {
            "RESULTS_MODE": "push",
            "PROVIDER_RATES": '{"cloudflare": 500}',
            "SEAL_KEYSETS": json.dumps({"current": SEAL_KEYSET, "keysets": {SEAL_KEYSET: seal_root}}),
        }
        try:
            # The certificate renderer's fonts and logo go into the local R2 first, as at deploy time.
            dev_context = wrangler_dev(output / "worker", keysets, variables, renderer_assets=True)
            dev = dev_context.__enter__()
        except WranglerUnavailable as exc:
            raise SystemExit(f"demo: {exc}") from None
        try:
            console.print(f"[bold]2.[/] The Worker under wrangler dev --local on {dev.base_url}")
            port = free_port()
            with flaky_proxy(f"http://127.0.0.1:{port}", faults) as proxy:
                env = {
                    "MRCO_DATABASE_URL": db_url,
                    "MRCO_DB_PREFIX": PREFIX,
                    "MRCO_MOODLE_DBNAME": "moodle",
                    "MRCO_SITE": "iomad",
                    "MRCO_CLOUDFLARE_INTAKE_URL": dev.base_url,
                    "MRCO_CALLBACK_PUBLIC_URL": f"{proxy}/callbacks/v1/results",
                    "MRCO_CALLBACK_BIND_HOST": "127.0.0.1",
                    "MRCO_CALLBACK_BIND_PORT": str(port),
                    "MRCO_KEYSETS": f"{KEYSET}={root}",
                    "MRCO_KEYSET_CURRENT": KEYSET,
                    "MRCO_SEAL_KEYSETS": f"{SEAL_KEYSET}={seal_root}",
                    "MRCO_PASSWORD_KEY": base64.b64encode(secrets.token_bytes(32)).decode("ascii"),
                    "MRCO_SENDER_ADDRESS": "noreply@example.org",
                    "MRCO_SENDER_NAME": "Acme Training",
                    "MRCO_RETRY_BASE_SECONDS": "1",
                }
                os.environ.update(env)
                console.print(
                    "[bold]3.[/] moodle-offload migrate; company routing (checked with the Worker); serve"
                )
                run_cli("migrate")
                routing = ["company", "set", str(CLOUD_COMPANY), "--cloud", "on", "--provider", "cloudflare"]
                routing += ["--emails", "on", "--threshold", "1", "--fallback", "on"]
                run_cli(*routing, "--certificates", "on")
                run_cli("company", "set", str(LOCAL_COMPANY), "--cloud", "off")
                run_cli("company", "global", "on")
                with callback_receiver(env, port, output / "receiver.log"):
                    console.print("[bold]4.[/] moodle-offload tick: claim, create jobs, submit to the Worker")
                    config = load_config()
                    submitters = build_submitters(config)
                    worker = submitters["worker"]
                    if not isinstance(worker, WorkerSubmitter):
                        raise SystemExit("demo: the bridge has no Worker submitter")
                    submitted = submit_twice(worker)
                    run_tick(engine, config, submitters=submitters)
                    resubmitted = 0
                    if faults.enabled and submitted:
                        # The bridge lost the 202 and submits the same batch again (a fresh nonce).
                        WorkerSubmitter(dev.base_url, KEYSET, decode_root_secret(root)).submit(*submitted[0])
                        resubmitted = 1
                    console.print("[bold]5.[/] The Worker sends; results come back by signed callbacks …")
                    with Progress(
                        TextColumn("{task.description}"),
                        BarColumn(),
                        MofNCompleteColumn(),
                        TimeElapsedColumn(),
                        console=console,
                    ) as bar:
                        final, total = job_progress(engine)
                        task = bar.add_task("recipients final", total=total, completed=final)
                        deadline = time.monotonic() + 900
                        while time.monotonic() < deadline:
                            time.sleep(2)
                            run_cli("tick", "--quiet")
                            final, total = job_progress(engine)
                            bar.update(task, completed=final, total=total)
                            if open_jobs(engine) == 0:
                                break
                    time.sleep(8)  # let the duplicate submission's consumer run before counting
                    console.print("[bold]6.[/] Report")
                    ok = report_cloudflare(
                        engine,
                        dev,
                        console,
                        CLOUD_COMPANY,
                        LOCAL_COMPANY,
                        local,
                        faults,
                        resubmitted,
                        started,
                    )
        finally:
            dev_context.__exit__(None, None, None)
        engine.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
