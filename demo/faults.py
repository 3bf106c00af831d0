"""Fault-injection harness: the whole offload in-process, faults on a schedule, an exactly-once oracle.

Used by tests/faults/ (10,000 recipients and small focused scenarios) and bench/faults_bench.py.
The parts are the real ones the demo runs: an IOMAD database seeded as a CSV upload would, the
embedded AWS (moto on loopback, provisioned like the CDK stack), the bridge's ``run_tick``
in-process, the callback receiver as its own ``moodle-offload serve`` process, the Lambda
handlers fed by the event-source-mapping emulator, and IOMAD's own email cron (simulated)
delivering into a recording SMTP sink for the rows the bridge leaves or gives back.

The oracle counts what reached people: messages the emulated SES accepted, keyed by the
(job_id, recipient_id) tags the sender puts on each message, and messages IOMAD's cron put
into the SMTP sink, keyed by (queue row, address).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from demo.__main__ import (
    CLOUD_COMPANY,
    KEYSET,
    LOCAL_COMPANY,
    PREFIX,
    SEND_RATE,
    bridge_environment,
    callback_receiver,
    free_port,
    logged,
    open_jobs,
    run_cli,
    ses_events_mapping,
)
from demo.embedded_aws import EmbeddedAws, embedded_aws
from demo.event_source import EventSourceMapping, LambdaCrash, drain
from demo.ses_emulator import FakeSes, throttle
from iomad_sim.iomad_cron import CronRun, run_iomad_email_cron
from iomad_sim.iomad_schema import create_iomad_schema
from iomad_sim.iomad_seed import SeedSpec, seed_iomad
from iomad_sim.smtp_sink import RecordingSmtpSink
from lambdas.email.crash_window import PROBE_TAG
from moodle_bridge.commands.tick import TickReport, build_submitters, run_tick
from moodle_bridge.config import BridgeConfig, load_config
from moodle_bridge.pipeline.claiming import ClaimPass
from moodle_bridge.sources.iomad.queue import PARKED_DUE_BASE
from moodle_bridge.sources.iomad.schema import IomadGeneration
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from moodle_bridge.transports.targets import Submitter
from offload_contract.signing import generate_root_secret

T = build_bridge_tables(PREFIX)
SENT = ("sent", "delivered", "bounced", "complained")  # SES accepted it: one message each
EMAIL = sa.table(
    f"{PREFIX}email",
    sa.column("id"),
    sa.column("companyid"),
    sa.column("sent"),
    sa.column("due"),
    sa.column("body"),
    sa.column("templatename"),
)


class BridgeKilled(BaseException):
    """The bridge's process dying at an injected point (nothing in the bridge can catch it)."""


@dataclass
class CloudFaults:
    """Cloud-side faults, each by the invocation / call number it hits (1-based).

    A mid-batch crash hits the first sender invocation from its number on that makes a
    second SES call; a duplicate delivery follows the first invocation from its number on
    that completes."""

    crash_sender_at_start: set[int] = field(default_factory=set)
    crash_sender_mid_batch: set[int] = field(default_factory=set)  # on the 2nd SES call of it
    #: As mid-batch, but on the 2nd call SES accepted (its answer is lost when the Lambda dies).
    crash_sender_after_ses_accepted: set[int] = field(default_factory=set)
    throttle_ses_calls: range = range(0)
    duplicate_jobs_message_after: set[int] = field(default_factory=set)
    duplicate_callback_on_dispatch: set[int] = field(default_factory=set)
    lose_callback_on_dispatch: set[int] = field(default_factory=set)

    @classmethod
    def everything(cls) -> CloudFaults:
        return cls(
            crash_sender_mid_batch={1},
            crash_sender_after_ses_accepted={4},
            crash_sender_at_start={2},
            throttle_ses_calls=range(40, 46),
            duplicate_jobs_message_after={3},
            duplicate_callback_on_dispatch={2},
            lose_callback_on_dispatch={4},
        )


@dataclass
class Verdict:
    """What the oracle found."""

    expected: int = 0  # recipients that must have received exactly one message
    delivered_cloud: int = 0
    delivered_local: int = 0
    permanent_failures: int = 0  # reported failed with a reason, visible as failed
    duplicates: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unknown_sends: list[str] = field(default_factory=list)
    rows_unsettled: list[int] = field(default_factory=list)
    restored_rows: int = 0
    probes: int = 0  # Send-event probes to SES's mailbox simulator (not mail to people)
    passwords_checked: int = 0
    passwords_leaked: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.duplicates or self.lost or self.unknown_sends or self.rows_unsettled or self.passwords_leaked
        )

    def summary(self) -> dict[str, Any]:
        return {
            "expected_recipients": self.expected,
            "delivered_by_cloud": self.delivered_cloud,
            "delivered_by_iomad": self.delivered_local,
            "permanent_failures": self.permanent_failures,
            "duplicates": len(self.duplicates),
            "lost": len(self.lost),
            "unknown_sends": len(self.unknown_sends),
            "iomad_rows_unsettled": len(self.rows_unsettled),
            "iomad_rows_restored": self.restored_rows,
            "ses_event_probes": self.probes,
            "passwords_checked": self.passwords_checked,
            "passwords_leaked": self.passwords_leaked,
        }


@dataclass
class Pipeline:
    engine: sa.Engine
    db_url: str
    aws: EmbeddedAws
    env: dict[str, str]
    root_secret: str
    port: int
    workdir: Path
    ses: FakeSes
    sink: RecordingSmtpSink
    mappings: list[EventSourceMapping]
    faults: CloudFaults
    passwords: list[str]
    injected: Counter[str] = field(default_factory=Counter)
    posts: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    lambda_log: io.StringIO = field(default_factory=io.StringIO)
    lost_bodies: list[str] = field(default_factory=list)
    visibility_timeout: int = 5
    max_receive: int = 5
    cron_runs: list[CronRun] = field(default_factory=list)

    # -- the bridge ---------------------------------------------------------------------
    def config(self) -> BridgeConfig:
        return load_config(environ=self.env)

    def tick(
        self,
        *,
        claim_pass_factory: Callable[..., ClaimPass] = ClaimPass,
        wrap_submitter: Callable[[Submitter], Submitter] | None = None,
        engine: sa.Engine | None = None,
    ) -> TickReport:
        """One cron pass in-process (a fresh engine each time, as a new cron process has)."""
        config = self.config()
        own = engine is None
        db = engine if engine is not None else create_bridge_engine(config.database)
        try:
            submitters = build_submitters(config, sqs_client=self.aws.client("sqs"))
            if wrap_submitter is not None:
                submitters = {name: wrap_submitter(s) for name, s in submitters.items()}
            return run_tick(db, config, submitters=submitters, claim_pass_factory=claim_pass_factory)
        finally:
            if own:
                db.dispose()

    def iomad_cron(
        self, after_load: Callable[[list[int]], None] | None = None, *, lock_timeout: float = 0
    ) -> CronRun:
        run = run_iomad_email_cron(
            self.engine, PREFIX, "moodle", self.sink, after_load=after_load, lock_timeout=lock_timeout
        )
        self.cron_runs.append(run)
        return run

    # -- running to the end -------------------------------------------------------------
    def settle(self, *, rounds: int = 60, tick: Callable[[], Any] | None = None) -> None:
        """Lambdas drain their queues, cron ticks, IOMAD's cron runs: until no job is open."""
        for _ in range(rounds):
            drain(self.mappings, timeout_seconds=600, idle_sleep=0.2)
            (tick or self.tick)()
            self.iomad_cron()
            if open_jobs(self.engine) == 0 and not self._pending_iomad_rows():
                drain(self.mappings, timeout_seconds=120, idle_sleep=0.2)
                return
            time.sleep(0.5)
        raise AssertionError("the pipeline did not settle")

    def _pending_iomad_rows(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(EMAIL).where(EMAIL.c.sent.is_(None))
                ).scalar_one()
            )

    # -- callbacks sent by hand -----------------------------------------------------------
    def post_callback(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(url, content=body, headers=headers, timeout=30)

    def signed(
        self, url: str, result_body: str, root_secret: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """A result_batch signed as the dispatcher signs it (fresh nonce): (envelope, headers)."""
        import json  # noqa: PLC0415

        from lambdas.common.keys import KeySets  # noqa: PLC0415
        from lambdas.results.dispatcher import CallbackDispatcher  # noqa: PLC0415

        captured: list[tuple[bytes, dict[str, str]]] = []

        def keep(_url: str, body: bytes, headers: dict[str, str]) -> int:
            captured.append((body, dict(headers)))
            return 200

        keys = KeySets.parse(
            json.dumps({"current": KEYSET, "keysets": {KEYSET: root_secret or self.root_secret}})
        )
        company = json.loads(result_body)["company_id"]
        CallbackDispatcher(lambda: keys, sender=keep).dispatch(result_body, url, f"{KEYSET}.c{company}")
        return captured[0]

    def snapshot(self) -> tuple[Any, ...]:
        """Every state a callback could change."""
        with self.engine.connect() as conn:
            return (
                tuple(conn.execute(sa.select(T.recipients).order_by(T.recipients.c.id)).all()),
                tuple(conn.execute(sa.select(T.jobs).order_by(T.jobs.c.id)).all()),
                tuple(
                    conn.execute(sa.select(EMAIL.c.id, EMAIL.c.sent, EMAIL.c.due).order_by(EMAIL.c.id)).all()
                ),
            )

    # -- the oracle ---------------------------------------------------------------------
    def verdict(self, extra_output: str = "") -> Verdict:
        v = Verdict()
        sends: Counter[tuple[str, str]] = Counter()
        for _to, tags in self.ses.sends_by_tags():
            if PROBE_TAG in tags:
                v.probes += 1
                continue
            sends[
                (tags.get("job_id", "?").replace("@", ":"), tags.get("recipient_id", "?").replace("@", ":"))
            ] += 1
        local = self.sink.deliveries()
        with self.engine.connect() as conn:
            recipients = conn.execute(
                sa.select(
                    T.recipients.c.id,
                    T.recipients.c.jobid,
                    T.recipients.c.emailid,
                    T.recipients.c.address,
                    T.recipients.c.status,
                    T.recipients.c.errorcode,
                )
            ).all()
            claims = {
                int(r.emailid): r.state for r in conn.execute(sa.select(T.claims.c.emailid, T.claims.c.state))
            }
            rows = conn.execute(sa.select(EMAIL.c.id, EMAIL.c.sent, EMAIL.c.due)).all()
        cloud_rows: set[int] = set()
        for r in recipients:
            key = (str(r.jobid), str(r.id))
            n = sends.pop(key, 0)
            label = f"job {r.jobid} recipient {r.id} ({r.status})"
            if r.status in SENT:
                v.expected += 1
                v.delivered_cloud += min(n, 1)
                if r.emailid is not None:
                    cloud_rows.add(int(r.emailid))
                if n == 0:
                    v.lost.append(label)
                elif n > 1:
                    v.duplicates.append(f"{label}: {n} SES messages")
                if r.emailid is not None and local.get((int(r.emailid), r.address.lower()), 0):
                    v.duplicates.append(f"{label}: also sent by IOMAD")
            elif r.status == "restored":
                if n:
                    v.duplicates.append(f"{label}: SES sent it and it was given back")
                # IOMAD sends it now: counted below with the row's other local deliveries
            elif r.status in ("failed", "skipped", "cancelled"):
                if n:
                    v.duplicates.append(f"{label}: SES sent it but it is reported {r.status}")
                if r.status == "failed" and not r.errorcode:
                    v.lost.append(f"{label}: failed without a reason")
                elif r.status == "failed" and r.errorcode == "outcome_unknown":
                    # Not a reason that reached anyone: the crash window was never resolved.
                    v.lost.append(f"{label}: outcome unknown, never resolved")
                v.permanent_failures += 1
            else:
                v.lost.append(f"{label}: never settled")
        v.unknown_sends = [f"SES message for job {j} recipient {rid}" for (j, rid) in sends]
        for (emailid, address), n in local.items():
            if (
                emailid is not None
                and claims.get(emailid) not in (None, "released")
                and emailid in cloud_rows
            ):
                continue  # already reported above as a cross-path duplicate
            v.expected += 1
            v.delivered_local += 1
            if n > 1:
                v.duplicates.append(f"row {emailid} {address}: {n} SMTP messages")
        v.restored_rows = sum(1 for state in claims.values() if state == "released")
        v.rows_unsettled = [
            int(r.id) for r in rows if r.sent is None or (r.due is not None and int(r.due) >= PARKED_DUE_BASE)
        ]
        logs = self.collected_output() + extra_output
        v.passwords_checked = len(self.passwords)
        v.passwords_leaked = sum(1 for p in self.passwords if p in logs)
        return v

    def collected_output(self) -> str:
        parts = [self.lambda_log.getvalue()]
        for path in self.workdir.glob("*.log"):
            parts.append(path.read_text("utf-8", "replace"))
        return "".join(parts)


def _passwords(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        bodies = conn.execute(sa.select(EMAIL.c.body).where(EMAIL.c.templatename == "user_create")).scalars()
        return [
            line.split("password: ", 1)[1].split("<", 1)[0]
            for body in bodies
            for line in str(body).splitlines()
            if "password: " in line
        ]


_ORIGINAL_DISPATCHER: dict[str, Any] = {}


def _restore_lambda_state() -> None:
    """Leave the handler modules as imported, for whatever runs next in this process."""
    from lambdas.handlers import (  # noqa: PLC0415
        callback_dispatcher,
        certificate_renderer,
        email_sender,
        ses_events,
    )

    _forget_cached_lambda_state(email_sender, certificate_renderer, callback_dispatcher, ses_events)


def _forget_cached_lambda_state(*modules: Any) -> None:
    """Each pipeline has its own emulator endpoint: drop clients and handlers cached by earlier ones."""
    from lambdas.common.aws import reset_clients  # noqa: PLC0415
    from lambdas.common.settings import settings  # noqa: PLC0415

    reset_clients()
    settings.cache_clear()  # queue URLs, secret ARN: this pipeline's emulator
    for module in modules:
        if module.__name__.endswith("callback_dispatcher"):
            module.dispatcher = _ORIGINAL_DISPATCHER.setdefault("fn", module.dispatcher)
        for name in dir(module):
            fn = getattr(module, name)
            if (
                callable(fn)
                and hasattr(fn, "cache_clear")
                and getattr(fn, "__module__", "") == module.__name__
            ):
                fn.cache_clear()


def _is_probe(params: dict[str, Any]) -> bool:
    """The sender's Send-event probe (to SES's mailbox simulator), not mail to a person."""
    return any(t.get("Name") == PROBE_TAG for t in params.get("EmailTags", []))


def _lambda_mappings(p: Pipeline) -> list[EventSourceMapping]:
    os.environ.update(p.aws.lambda_environment())
    os.environ["SES_MAX_SEND_RATE"] = str(SEND_RATE)
    # Crash-window recipients are looked at again after 5 s instead of a minute (test speed).
    os.environ["CRASH_WINDOW_RECHECK_SECONDS"] = "5"
    from lambdas.common.aws import client  # noqa: PLC0415 - after the environment is set
    from lambdas.common.keys import SecretKeySets  # noqa: PLC0415
    from lambdas.handlers import (  # noqa: PLC0415
        callback_dispatcher,
        certificate_renderer,
        email_sender,
        ses_events,
    )
    from lambdas.results.dispatcher import CallbackDispatcher, CallbackError, post  # noqa: PLC0415

    _forget_cached_lambda_state(email_sender, certificate_renderer, callback_dispatcher, ses_events)
    p.ses.install(client("sesv2"))
    f, calls = p.faults, p.injected
    state: dict[str, Any] = {
        "invocation": 0,
        "ses_in_invocation": 0,
        "accepted_in_invocation": 0,
        "lost": set(),
    }
    lock = threading.Lock()

    def ses_fault(operation: str, params: dict[str, Any]) -> Any:
        if operation not in ("SendBulkEmail", "SendEmail") or _is_probe(params):
            return None
        with lock:  # the sender makes its calls side by side
            calls["ses calls"] += 1
            state["ses_in_invocation"] += 1
            second, number = state["ses_in_invocation"] == 2, calls["ses calls"]
        due = [n for n in f.crash_sender_mid_batch if n <= state["invocation"]]
        if due and second:  # the first invocation from n on with 2+ SES calls
            f.crash_sender_mid_batch.discard(min(due))
            calls["Lambda crash mid-batch (after an SES call of the invocation succeeded)"] += 1
            raise LambdaCrash("injected crash mid-batch")
        if number in f.throttle_ses_calls:
            calls["SES throttling (TooManyRequests)"] += 1
            return throttle()
        return None

    def ses_accepted(operation: str, params: dict[str, Any]) -> None:
        if _is_probe(params):
            return
        with lock:  # the sender makes its calls side by side
            state["accepted_in_invocation"] += 1
            second = state["accepted_in_invocation"] == 2
        due = [n for n in f.crash_sender_after_ses_accepted if n <= state["invocation"]]
        if due and second:
            f.crash_sender_after_ses_accepted.discard(min(due))
            calls["Lambda crash mid-batch right after SES accepted a call (its answer lost)"] += 1
            raise LambdaCrash("injected crash after SES accepted the call")

    sqs = p.aws.client("sqs")
    p.ses.fault = ses_fault
    p.ses.accepted = ses_accepted

    def sender(event: dict[str, Any], context: Any) -> Any:
        state["invocation"] += 1
        state["ses_in_invocation"] = state["accepted_in_invocation"] = 0
        n = state["invocation"]
        if n in f.crash_sender_at_start:
            calls["Lambda crash at the start of an invocation (SQS redelivers the batch)"] += 1
            raise LambdaCrash("injected crash")
        result = email_sender.handler(event, context)
        due = [k for k in f.duplicate_jobs_message_after if k <= n]
        if due:  # the first invocation from k on that completes
            f.duplicate_jobs_message_after.discard(min(due))
            calls["SQS delivers a jobs message a second time"] += 1
            record = event["Records"][0]
            sqs.send_message(QueueUrl=p.aws.queue_urls["jobs"], MessageBody=record["body"])
        return result

    def recording_post(url: str, body: bytes, headers: dict[str, str]) -> int:
        status = post(url, body, headers)
        p.posts.append((url, body, dict(headers)))
        return status

    class LossyDispatcher(CallbackDispatcher):
        def dispatch(self, body: str | bytes, callback_url: str, key_id: str) -> int:
            if (body.encode("utf-8") if isinstance(body, str) else body) in state["lost"]:
                calls["callback POST lost (every attempt; the message goes to the results DLQ)"] += 1
                raise CallbackError("connection reset (injected)")
            return super().dispatch(body, callback_url, key_id)

    lossy = LossyDispatcher(
        SecretKeySets(client("secretsmanager"), p.aws.secret_arn).get, sender=recording_post
    )
    callback_dispatcher.dispatcher = lambda: lossy  # type: ignore[assignment]
    dispatched = {"n": 0}

    def dispatcher(event: dict[str, Any], context: Any) -> Any:
        dispatched["n"] += 1
        n = dispatched["n"]
        if n in f.lose_callback_on_dispatch:
            state["lost"].add(event["Records"][0]["body"].encode("utf-8"))
            p.lost_bodies.append(event["Records"][0]["body"])
        response = callback_dispatcher.handler(event, context)
        if n in f.duplicate_callback_on_dispatch:
            calls["callback delivered twice (dispatcher crashed after posting)"] += 1
            raise LambdaCrash("injected crash after the callback was delivered")
        return response

    return [
        EventSourceMapping(
            sqs,
            p.aws.queue_urls["certificates"],
            logged(certificate_renderer.handler, p.lambda_log),
            "certificate-renderer",
        ),
        EventSourceMapping(sqs, p.aws.queue_urls["jobs"], logged(sender, p.lambda_log), "email-sender"),
        EventSourceMapping(
            sqs, p.aws.queue_urls["results"], logged(dispatcher, p.lambda_log), "callback-dispatcher"
        ),
        ses_events_mapping(
            p.ses,
            logged(ses_events.handler, p.lambda_log),
            visibility_timeout=p.visibility_timeout,
            max_receive=p.max_receive,
        ),
    ]


@contextlib.contextmanager
def pipeline(
    users_per_company: int,
    *,
    faults: CloudFaults | None = None,
    db_url: str | None = None,
    workdir: Path | None = None,
    visibility_timeout: int = 5,
    max_receive: int = 5,
) -> Iterator[Pipeline]:
    """Seed, provision, migrate, route (company 1 cloud, company 2 local), start the receiver."""
    saved_env = dict(os.environ)
    own_workdir = workdir is None
    work = workdir or Path(tempfile.mkdtemp(prefix="mrco-faults-"))
    url = db_url or f"sqlite:///{work / 'moodle.sqlite3'}"
    engine = sa.create_engine(url)
    log_handler = logging.FileHandler(work / "python.log", encoding="utf-8")
    log_handler.setLevel(logging.DEBUG)
    root_logger = logging.getLogger()
    root_logger.addHandler(log_handler)
    try:
        iomad = create_iomad_schema(engine, PREFIX, IomadGeneration.LEGACY)
        seed_iomad(
            engine,
            iomad,
            SeedSpec(
                companies=2,
                users_per_company=users_per_company,
                managers_per_company=2,
                child_departments=2,
                supervisor_every=25,
                license_allocated=True,
                completions_per_company=4,
                now=int(time.time()) - 60,
                seed=11,
            ),
        )
        passwords = _passwords(engine)
        with embedded_aws() as aws:
            # moto's backends live in this process: start from nothing, as a fresh account does
            httpx.post(f"{aws.endpoint_url}/moto-api/reset", timeout=30).raise_for_status()
            root = generate_root_secret()
            aws.provision(KEYSET, root, visibility_timeout=visibility_timeout, max_receive=max_receive)
            port = free_port()
            env = bridge_environment(aws, url, root, port, engine.dialect.name)
            os.environ.update(env)
            run_cli("migrate")
            run_cli(
                "company", "set", str(CLOUD_COMPANY), "--cloud", "on", "--provider", "aws",
                "--emails", "on", "--certificates", "on", "--threshold", "1", "--fallback", "on",
            )  # fmt: skip
            run_cli("company", "set", str(LOCAL_COMPANY), "--cloud", "off")
            run_cli("company", "global", "on")
            with callback_receiver(env, port, work / "receiver.log"):
                p = Pipeline(
                    engine=engine,
                    db_url=url,
                    aws=aws,
                    env={**os.environ, **env},
                    root_secret=root,
                    port=port,
                    workdir=work,
                    ses=FakeSes(region=aws.region, max_send_rate=float(SEND_RATE)),
                    sink=RecordingSmtpSink(),
                    mappings=[],
                    faults=faults or CloudFaults(),
                    passwords=passwords,
                    visibility_timeout=visibility_timeout,
                    max_receive=max_receive,
                )
                p.mappings = _lambda_mappings(p)
                yield p
    finally:
        if _ORIGINAL_DISPATCHER:
            _restore_lambda_state()
        root_logger.removeHandler(log_handler)
        log_handler.close()
        engine.dispose()
        os.environ.clear()
        os.environ.update(saved_env)
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)


def callback_url(p: Pipeline) -> str:
    return f"http://127.0.0.1:{p.port}/callbacks/v1/results"


__all__ = [
    "BridgeKilled",
    "CloudFaults",
    "Pipeline",
    "Verdict",
    "callback_url",
    "pipeline",
]
