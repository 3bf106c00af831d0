"""Sending at the account's rate: how much of SES's MaxSendRate the email sender really uses.

``python -m bench.pacing_bench [--quick] [--label NAME] [--rows 50/single ...]`` writes
``bench/results/pacing.json`` (``make bench BENCH_ARGS="--only pacing_bench"``).

The parts are the project's own, each poller in its own OS process as each Lambda container is:
moto on loopback (``SERVER_GROUPS``: DynamoDB in one moto server process, SQS and SES in another;
moto in each handles one request at a time, as in ``demo/embedded_aws.py``, so DynamoDB's per-item
atomicity holds), the SES emulator refusing any call that would take a calendar second over the
rate (``TooManyRequestsException``, counted where the call *arrives*, in a ``SharedRateCount``
that every poller process books in, so the rate is the account's across processes), the real
email sender built by the Lambda handler's own ``build_sender`` (one copy per poller process),
the event-source-mapping emulation with as many pollers as the stack would deploy
(``infra.config.OffloadConfig.sender_max_concurrency``), and the shared limiter in DynamoDB.
Until this harness the pollers were threads of one Python process, which capped single sends
at 52-68/s on the 2-vCPU machine (``pacing-threads.json``).

Latency model (botocore hooks on each poller's clients): every DynamoDB call takes
``DYNAMODB_MS`` (half on the way there, half back), every SQS call ``SQS_MS``, and an SES call
reaches SES after ``SES_ARRIVAL_MS`` and answers ``SES_MS`` after it started. The emulator counts
a call in the second it reaches SES, as SES counts it.

Per row: the steady share (recipients SES accepted per second, over the whole seconds between the
first and the last second of sending, against the rate), the end-to-end share (recipients over
rate x (last result - first call reaching SES)), the busiest second against the rate, the calls SES
refused for the rate, and lost / duplicated recipients (from the tags on what SES accepted, which
every poller process hands back at the end). The harness's own ceiling is measured in the same run:
the same processes, latency model and pollers with the rate out of the way (100,000/s); each row
carries the ceiling of its poller count and mode, and ``harness_limited`` when that ceiling is not
at least the rate / 0.9 (then the harness, not the sender, may be what a row falls short on).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import multiprocessing
import os
import queue
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.context import ForkContext
from pathlib import Path
from typing import Any

import boto3
import httpx
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends

from bench.common import write_results
from demo.event_source import EventSourceMapping, LambdaContext
from demo.ses_emulator import FakeSes, SharedRateCount
from offload_contract import decode_message, encode_message

DYNAMODB_MS = 5.0
SQS_MS = 10.0
SES_ARRIVAL_MS = 10.0
SES_MS = 50.0
BATCH_RECIPIENTS = 200  # the bridge's email_batch size (one per invocation, ESM batch size 1)
SENDER_TIMEOUT_S = 300  # infra/constructs/functions.py: email_sender timeout
#: The rate of the ceiling rows: out of the way, so they show what the harness itself can carry.
CEILING_RATE = 100_000


@dataclass(frozen=True)
class Latency:
    dynamodb_ms: float = DYNAMODB_MS
    sqs_ms: float = SQS_MS
    ses_arrival_ms: float = SES_ARRIVAL_MS
    ses_ms: float = SES_MS

    @classmethod
    def none(cls) -> Latency:
        return cls(0.0, 0.0, 0.0, 0.0)


def with_latency(client: Any, service: str, before_ms: float, after_ms: float) -> Any:
    """Every call of ``client`` waits ``before_ms`` before it reaches the service and
    ``after_ms`` before its answer is back (registered first: before the SES emulator's hooks)."""
    events = client.meta.events
    if before_ms > 0:
        events.register_first(f"before-call.{service}.*", lambda **_: time.sleep(before_ms / 1000))
    if after_ms > 0:
        events.register_first(f"after-call.{service}.*", lambda **_: time.sleep(after_ms / 1000))
    return client


def workload(mode: str, recipients: int, run: str) -> list[dict[str, Any]]:
    """email_batch messages of up to 200 recipients: ``bulk`` shares one template (SendBulkEmail),
    ``single`` has a body rendered per recipient, as IOMAD's mail is (SendEmail)."""
    batches = []
    for b, start in enumerate(range(0, recipients, BATCH_RECIPIENTS)):
        people, contents = [], {}
        for n in range(start, min(recipients, start + BATCH_RECIPIENTS)):
            r: dict[str, Any] = {"recipient_id": f"r-{n}", "to": f"user{n}@example.org", "name": f"User {n}"}
            if mode == "bulk":
                r["content_id"] = "t-1"
                r["data"] = {"firstname": f"User{n}"}
            else:
                r["content_id"] = f"e-{n}"
                contents[f"e-{n}"] = {
                    "kind": "rendered",
                    "subject": "A new on-line learning account has been created for you",
                    "html": f"<p>Dear User {n},</p><p>Username: user{n}</p>" + "<p>Welcome.</p>" * 10,
                }
            people.append(r)
        if mode == "bulk":
            contents["t-1"] = {
                "kind": "template",
                "engine": "jinja2",
                "subject": "Course reminder for {{ firstname }}",
                "html": "<p>Hello {{ firstname }}</p>" + "<p>Your course is waiting.</p>" * 10,
            }
        batches.append(
            {
                "type": "email_batch", "contract_version": 1, "batch_id": f"b-{b}", "job_id": f"j-{run}",
                "company_id": 7, "attempt": 1, "created_at": int(time.time()),
                "callback": {"url": "https://moodle.example.org/cb", "key_id": "k1.c7"},
                "category": "transactional",
                "sender": {"address": "noreply@acme.example", "name": "Acme Training"},
                "contents": contents, "recipients": people,
            }
        )  # fmt: skip
    return batches


REGION = "eu-west-1"
SENDER = "noreply@acme.example"
#: Services each get their own moto server process (the rest share the last): two cores' worth.
SERVER_GROUPS = (("dynamodb",), ("sqs", "ses", "sesv2"))


def _serve(ports: Any) -> None:
    """A moto server process. Its threads read and answer requests side by side (HTTP/1.1, kept-alive
    connections), but moto handles one request at a time, as embedded_aws serves the demo: moto's
    backends are not thread-safe, and AWS services are atomic per request."""
    import logging  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app  # noqa: PLC0415
    from werkzeug.serving import make_server  # noqa: PLC0415

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def app(environ: Any, start_response: Any) -> Any:
        with one_at_a_time:
            return list(moto(environ, start_response))  # the whole answer inside the lock

    server = make_server("127.0.0.1", 0, app, threaded=True)
    ports.put(server.server_port)
    server.serve_forever()


@dataclass
class Aws:
    """What the sender needs, in moto servers on loopback (one process per group of services)."""

    endpoints: dict[str, str] = field(default_factory=dict)
    #: The moto server processes (their CPU time counts in the harness's cost per recipient).
    server_pids: list[int] = field(default_factory=list)
    queue_urls: dict[str, str] = field(default_factory=dict)
    table: str = "offload-idempotency"
    region: str = REGION

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.endpoints.get(service, self.endpoints["*"]),
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106
        )

    def provision(self) -> None:
        """Empty every server, then create what the stack defines."""
        for url in set(self.endpoints.values()):
            httpx.post(f"{url}/moto-api/reset", timeout=60).raise_for_status()
        sqs = self.client("sqs")
        for name in ("jobs", "results"):
            self.queue_urls[name] = sqs.create_queue(
                QueueName=f"offload-{name}", Attributes={"VisibilityTimeout": str(SENDER_TIMEOUT_S * 6)}
            )["QueueUrl"]
        self.client("dynamodb").create_table(
            TableName=self.table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        self.client("ses").verify_email_identity(EmailAddress=SENDER)

    def lambda_environment(self) -> dict[str, str]:
        return {
            "AWS_DEFAULT_REGION": REGION,
            "JOBS_QUEUE_URL": self.queue_urls["jobs"],
            "RESULTS_QUEUE_URL": self.queue_urls["results"],
            "IDEMPOTENCY_TABLE": self.table,
            "CONTENT_BUCKET": "offload-contents",
            "CONFIGURATION_SET_NAME": "",  # no Send events: this measures the sender alone
            "LOG_LEVEL": "WARNING",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }


@contextlib.contextmanager
def moto_servers(context: ForkContext) -> Iterator[Aws]:
    """Start one moto server process per ``SERVER_GROUPS`` entry; stop them afterwards."""
    ports = context.Queue()
    servers = [context.Process(target=_serve, args=(ports,), daemon=True) for _ in SERVER_GROUPS]
    for server in servers:
        server.start()
    try:
        urls = [f"http://127.0.0.1:{ports.get(timeout=120)}" for _ in servers]
        endpoints = {
            service: url for group, url in zip(SERVER_GROUPS, urls, strict=True) for service in group
        }
        yield Aws(endpoints={**endpoints, "*": urls[-1]}, server_pids=[s.pid for s in servers if s.pid])
    finally:
        for server in servers:
            server.terminate()
            server.join(timeout=10)


@dataclass
class Tally:
    finished: set[str] = field(default_factory=set)
    last_result: float = 0.0
    throttled_reports: int = 0

    def add(self, finished: list[str], throttled: int, at: float) -> None:
        self.throttled_reports += throttled
        self.finished.update(finished)
        self.last_result = max(self.last_result, at)


@dataclass(frozen=True)
class PollerSignals:
    """What the parent and the poller processes share: the SES count, start/stop, and a queue of
    ``("ready",)``, ``("results", finished ids, throttled, at)`` and ``("sent", [(to, tags)])``."""

    rate_count: SharedRateCount
    start: Any
    stop: Any
    reports: Any


def _poller(
    aws: Aws, environment: dict[str, str], rate: int, latency: Latency, signals: PollerSignals
) -> None:
    """One poller process: the event-source emulation driving its own copy of the real handler's
    sender (as one Lambda container), with the SES emulator counting in the shared count."""
    os.environ.update(environment)
    from lambdas.common.settings import settings  # noqa: PLC0415
    from lambdas.handlers.email_sender import build_sender  # noqa: PLC0415 - after the environment

    settings.cache_clear()
    ses = FakeSes(region=aws.region, max_send_rate=float(rate), shared_count=signals.rate_count)
    # moto has no SendBulkEmail: the emulator answers it in this process, from a local SES backend
    # that must know the sender (SendEmail reaches the moto server, where provision verified it).
    ses_backends[DEFAULT_ACCOUNT_ID][aws.region].verify_email_identity(SENDER)
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            c = aws.client(service)
            if service == "dynamodb":
                with_latency(c, "dynamodb", latency.dynamodb_ms / 2, latency.dynamodb_ms / 2)
            elif service == "sqs":
                with_latency(c, "sqs", latency.sqs_ms / 2, latency.sqs_ms / 2)
            elif service == "sesv2":
                with_latency(c, "sesv2", latency.ses_arrival_ms, latency.ses_ms - latency.ses_arrival_ms)
                ses.install(c)
            clients[service] = c
        return clients[service]

    sender = build_sender(client)

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        sender.lease_seconds = context.get_remaining_time_in_millis() // 1000 + 60
        for record in event["Records"]:
            report = sender.process(decode_message(record["body"]), context.get_remaining_time_in_millis)
            finished = [r["recipient_id"] for r in report.results if r.get("status") in ("sent", "failed")]
            signals.reports.put(("results", finished, report.throttled, time.time()))
        return {"batchItemFailures": []}

    mapping = EventSourceMapping(
        aws.client("sqs"), aws.queue_urls["jobs"], handler, "email-sender", batch_size=1
    )
    signals.reports.put(("ready",))  # a warm container: built before the clock starts
    signals.start.wait()
    cpu_at_start = time.process_time()
    while not signals.stop.is_set():
        with contextlib.suppress(Exception):
            if mapping.poll_once():
                continue
        time.sleep(0.1)  # the ESM long-polls; an empty receive comes back at once here
    signals.reports.put(("sent", ses.sends_by_tags(), time.process_time() - cpu_at_start))


def run_row(
    aws: Aws,
    context: ForkContext,
    rate: int,
    mode: str,
    recipients: int,
    pollers: int,
    latency: Latency,
    run: str,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Send ``recipients`` at ``rate`` with ``pollers`` poller processes; the row's figures."""
    aws.provision()
    environment = {**aws.lambda_environment(), "SES_MAX_SEND_RATE": str(rate)}
    sqs = aws.client("sqs")
    batches = workload(mode, recipients, run)
    for start in range(0, len(batches), 10):
        sqs.send_message_batch(
            QueueUrl=aws.queue_urls["jobs"],
            Entries=[
                {"Id": str(i), "MessageBody": encode_message(b).decode("utf-8")}
                for i, b in enumerate(batches[start : start + 10])
            ],
        )
    signals = PollerSignals(
        SharedRateCount(origin=math.floor(time.time()), seconds=7200, context=context),
        context.Event(),
        context.Event(),
        context.Queue(),
    )
    # The handler's modules read the environment when imported: import them here, once, with the
    # Lambda's environment, so that every forked poller starts warm with them.
    os.environ.update(environment)
    importlib.import_module("lambdas.handlers.email_sender")
    processes = [
        context.Process(target=_poller, args=(aws, environment, rate, latency, signals), daemon=True)
        for _ in range(pollers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        signals.reports.get(timeout=300)  # ("ready",)
    cpu_before = _cpu_seconds(aws.server_pids) + time.process_time()
    signals.start.set()
    tally, started = Tally(), time.time()
    budget = budget_s if budget_s is not None else 120 + 3 * recipients / rate
    while len(tally.finished) < recipients and time.time() - started < budget:
        with contextlib.suppress(queue.Empty):
            kind, *report = signals.reports.get(timeout=0.1)
            if kind == "results":
                tally.add(*report)
    signals.stop.set()
    cpu = _cpu_seconds(aws.server_pids) + time.process_time() - cpu_before
    sent: list[tuple[str, dict[str, str]]] = []
    reported = 0
    while reported < pollers:
        kind, *report = signals.reports.get(timeout=SENDER_TIMEOUT_S)
        if kind == "results":
            tally.add(*report)  # an invocation that ended after the stop
        elif kind == "sent":
            sent += report[0]
            cpu += report[1]
            reported += 1
    for process in processes:
        process.join(timeout=30)
    row = summarise(signals.rate_count, sent, rate, mode, recipients, pollers, tally)
    row["harness_cpu_ms_per_recipient"] = round(1000 * cpu / recipients, 2)
    # With both cores to itself and nothing but CPU in the way (the latencies are sleeps).
    row["cpu_bound_per_second_on_2_free_cores"] = round(2 * recipients / max(cpu, 1e-9), 1)
    row["load_average_1m"] = round(os.getloadavg()[0], 1)
    return row


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes ``pids`` have used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def summarise(
    count: SharedRateCount,
    sent: list[tuple[str, dict[str, str]]],
    rate: int,
    mode: str,
    recipients: int,
    pollers: int,
    tally: Tally,
) -> dict[str, Any]:
    """A row's figures from SES's count (per second, as calls arrived) and what SES accepted."""
    per_second = dict(sorted(count.per_second().items()))
    seconds = list(per_second)
    sends: Counter[str] = Counter(tags.get("recipient_id", "?") for _, tags in sent)
    duplicated = sum(1 for n in sends.values() if n > 1)
    lost = recipients - sum(1 for rid in (f"r-{n}" for n in range(recipients)) if sends.get(rid))
    first = seconds[0] if seconds else 0
    steady = [per_second.get(s, 0) for s in range(first + 1, seconds[-1])] if len(seconds) > 2 else []
    steady_share = sum(steady) / (len(steady) * rate) if steady else 0.0
    first_call = count.first_accepted or 0.0
    span = max(1e-9, tally.last_result - first_call)
    ideal = max(1.0, (recipients - 1) / rate)  # the first call's recipients count at once
    return {
        "steady_per_second": round(sum(steady) / len(steady), 1) if steady else 0.0,
        "rate": rate,
        "mode": mode,
        "recipients": recipients,
        "pollers": pollers,
        "steady_share": round(steady_share, 3),
        "end_to_end_seconds": round(span, 1),
        "end_to_end_share": round(min(ideal / span, 1.0) if tally.last_result else 0.0, 3),
        "end_to_end_per_second": round(recipients / span, 1) if tally.last_result else 0.0,
        "peak_second": max(per_second.values(), default=0),
        "counted_by_ses": sum(per_second.values()),
        "peak_over_rate": max(per_second.values(), default=0) > rate,
        "rate_throttles": count.rate_throttled,
        "throttled_recipients_reported": tally.throttled_reports,
        "lost": lost,
        "duplicated": duplicated,
        "finished": len(tally.finished),
    }


ROWS = [(14, "bulk", 1000), (14, "single", 1000), (50, "bulk", 3000), (50, "single", 3000),
        (200, "bulk", 6000), (200, "single", 6000)]  # fmt: skip


def _pollers(rate: int) -> int:
    """The sender concurrency the stack deploys for ``rate`` (default send latency and parallelism)."""
    from infra.config import OffloadConfig  # noqa: PLC0415 - loads the CDK (a node process): only here

    return OffloadConfig(env_name="dev", ses_send_rate=rate).sender_max_concurrency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pacing_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fifth of the recipients per row")
    parser.add_argument("--label", default="after", help="stored under this key (e.g. before/after)")
    parser.add_argument("--rows", nargs="*", help="only rows like 50/single")
    args = parser.parse_args(argv)
    scale = 5 if args.quick else 1
    rows = [r for r in ROWS if not args.rows or f"{r[0]}/{r[1]}" in args.rows]
    context = multiprocessing.get_context("fork")
    results: list[dict[str, Any]] = []
    ceilings: dict[tuple[int, str], dict[str, Any]] = {}
    with moto_servers(context) as aws:
        for pollers, mode in sorted({(_pollers(rate), mode) for rate, mode, _ in rows}):
            n = BATCH_RECIPIENTS * pollers * (2 if args.quick else 3) * (3 if mode == "bulk" else 1)
            ceiling = run_row(
                aws, context, CEILING_RATE, mode, n, pollers, Latency(), f"ceiling-{mode}-{pollers}"
            )
            ceilings[pollers, mode] = ceiling
            results.append({"name": f"ceiling/{mode}/{pollers} pollers", **ceiling})
            print(json.dumps(results[-1]), flush=True)
        for rate, mode, recipients in rows:
            pollers = _pollers(rate)
            row = run_row(aws, context, rate, mode, recipients // scale, pollers, Latency(), f"{rate}-{mode}")
            ceiling = ceilings[pollers, mode]["end_to_end_per_second"]
            row["harness_ceiling_per_second"] = ceiling
            # Above the rate with room to spare, or the harness (not the sender) may be the limit.
            row["harness_limited"] = ceiling < rate / 0.9
            row["goal_met"] = (
                row["steady_share"] >= 0.95 and row["end_to_end_share"] >= 0.90 and not row["peak_over_rate"]
                and row["lost"] == 0 and row["duplicated"] == 0
            )  # fmt: skip
            results.append({"name": f"{rate}/{mode}", **row})
            print(json.dumps(results[-1]), flush=True)
    latency = {"dynamodb": DYNAMODB_MS, "sqs": SQS_MS, "ses_arrival": SES_ARRIVAL_MS, "ses": SES_MS}
    harness = {
        "pollers": "one OS process each",
        "moto_servers": [list(group) for group in SERVER_GROUPS],
        "ses_rate_count": "shared memory across the poller processes",
    }
    name = "pacing" if args.label == "after" else f"pacing-{args.label}"
    path = write_results(name, {"latency_model_ms": latency, "harness": harness, "rows": results})
    print(f"wrote {path}")
    return 0 if all(r.get("goal_met", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
