"""Sending at the account's rate: how much of SES's MaxSendRate the email sender really uses.

``python -m bench.pacing_bench [--quick] [--label NAME]`` writes ``bench/results/pacing.json``.

The parts are the project's own: moto in-process (``mock_aws``: the same backends as the demo's
moto on loopback without the HTTP hop, which on a shared 2-vCPU machine would cap the harness
below the rates measured; DynamoDB made atomic per item as DynamoDB is, see
``atomic_moto_dynamodb``), the SES emulator refusing any call that
would take a calendar second over the rate (``TooManyRequestsException``, counted where the call
*arrives*), the real email sender built by the Lambda handler's own ``build_sender`` (one copy
per poller, as one per Lambda container), the event-source-mapping emulation with as many
pollers as the stack would deploy (``infra.config.OffloadConfig.sender_max_concurrency``), and
the shared limiter in DynamoDB.

Latency model (botocore hooks on each poller's clients): every DynamoDB call takes
``DYNAMODB_MS`` (half on the way there, half back), every SQS call ``SQS_MS``, and an SES call
reaches SES after ``SES_ARRIVAL_MS`` and answers ``SES_MS`` after it started. The emulator counts
a call in the second it reaches SES, as SES counts it.

Per row: the steady share (recipients SES accepted per second, over the whole seconds between the
first and the last second of sending, against the rate), the end-to-end share (recipients over
rate x (last result - first call reaching SES)), the busiest second against the rate, the calls SES
refused for the rate, and lost / duplicated recipients (from the tags on what SES accepted). The
emulation's own ceiling is the same harness, latency model and pollers with the rate out of the way
(100,000/s): a row's figure is not limited by the harness while its ceiling is well above its rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
from moto import mock_aws

from bench.common import write_results
from demo.event_source import EventSourceMapping, LambdaContext
from demo.ses_emulator import FakeSes
from infra.config import OffloadConfig
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


@contextlib.contextmanager
def atomic_moto_dynamodb() -> Iterator[None]:
    """moto applies a conditional write in two unlocked steps (read, then write), so two threads
    can both pass one condition; DynamoDB applies each write atomically per item. Serialise
    moto's writes so the harness checks our conditions, not moto's threading."""
    from moto.dynamodb.models import DynamoDBBackend  # noqa: PLC0415

    lock = threading.Lock()
    originals = {name: getattr(DynamoDBBackend, name) for name in ("update_item", "put_item", "delete_item")}

    def locked(original: Any) -> Any:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock:
                return original(self, *args, **kwargs)

        return call

    for name, original in originals.items():
        setattr(DynamoDBBackend, name, locked(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(DynamoDBBackend, name, original)


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


@dataclass
class Aws:
    """What the sender needs, provisioned in moto's in-process backends (as the stack defines it)."""

    queue_urls: dict[str, str] = field(default_factory=dict)
    table: str = "offload-idempotency"
    region: str = REGION

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106
        )

    def provision(self) -> None:
        from moto.core.models import DEFAULT_ACCOUNT_ID  # noqa: PLC0415
        from moto.dynamodb.models import dynamodb_backends  # noqa: PLC0415
        from moto.sqs.models import sqs_backends  # noqa: PLC0415

        dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].reset()
        sqs_backends[DEFAULT_ACCOUNT_ID][REGION].reset()
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


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: set[str] = field(default_factory=set)
    last_result: float = 0.0
    throttled_reports: int = 0

    def add(self, results: list[dict[str, Any]], throttled: int) -> None:
        with self.lock:
            self.throttled_reports += throttled
            for r in results:
                if r.get("status") in ("sent", "failed"):
                    self.finished.add(r["recipient_id"])
            self.last_result = time.time()


def _poller(
    aws: Aws, ses: FakeSes, latency: Latency, tally: Tally, stop: threading.Event
) -> threading.Thread:
    from lambdas.handlers.email_sender import build_sender  # noqa: PLC0415 - after the environment

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
            tally.add(report.results, report.throttled)
        return {"batchItemFailures": []}

    mapping = EventSourceMapping(
        aws.client("sqs"), aws.queue_urls["jobs"], handler, "email-sender", batch_size=1
    )

    def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                if mapping.poll_once():
                    continue
            time.sleep(0.1)  # the ESM long-polls; an empty receive comes back at once here

    return threading.Thread(target=loop, daemon=True)  # started once every poller is built


def run_row(
    aws: Aws, rate: int, mode: str, recipients: int, pollers: int, latency: Latency, run: str
) -> dict[str, Any]:
    aws.provision()
    os.environ.update(aws.lambda_environment())
    os.environ["SES_MAX_SEND_RATE"] = str(rate)
    from lambdas.common.settings import settings  # noqa: PLC0415

    settings.cache_clear()
    ses = FakeSes(region=aws.region, max_send_rate=float(rate))
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
    tally, stop = Tally(), threading.Event()
    started = time.time()
    threads = [_poller(aws, ses, latency, tally, stop) for _ in range(pollers)]  # warm containers
    for thread in threads:
        thread.start()
    budget = 120 + 3 * recipients / rate
    while len(tally.finished) < recipients and time.time() - started < budget:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=SENDER_TIMEOUT_S)
    return summarise(ses, rate, mode, recipients, pollers, tally)


def summarise(
    ses: FakeSes, rate: int, mode: str, recipients: int, pollers: int, tally: Tally
) -> dict[str, Any]:
    per_second = dict(sorted(ses.per_second.items()))
    seconds = list(per_second)
    sends: Counter[str] = Counter(tags.get("recipient_id", "?") for _, tags in ses.sends_by_tags())
    duplicated = sum(1 for n in sends.values() if n > 1)
    lost = recipients - sum(1 for rid in (f"r-{n}" for n in range(recipients)) if sends.get(rid))
    first = seconds[0] if seconds else 0
    steady = [per_second.get(s, 0) for s in range(first + 1, seconds[-1])] if len(seconds) > 2 else []
    steady_share = sum(steady) / (len(steady) * rate) if steady else 0.0
    first_call = ses.first_accepted or 0.0
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
        "peak_second": max(per_second.values(), default=0),
        "peak_over_rate": max(per_second.values(), default=0) > rate,
        "rate_throttles": ses.rate_throttled,
        "throttled_recipients_reported": tally.throttled_reports,
        "lost": lost,
        "duplicated": duplicated,
        "finished": len(tally.finished),
    }


ROWS = [(14, "bulk", 1000), (14, "single", 1000), (50, "bulk", 3000), (50, "single", 3000),
        (200, "bulk", 6000), (200, "single", 6000)]  # fmt: skip


def _pollers(rate: int) -> int:
    """The sender concurrency the stack deploys for ``rate`` (default send latency and parallelism)."""
    return OffloadConfig(env_name="dev", ses_send_rate=rate).sender_max_concurrency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pacing_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fifth of the recipients per row")
    parser.add_argument("--label", default="after", help="stored under this key (e.g. before/after)")
    parser.add_argument("--rows", nargs="*", help="only rows like 50/single")
    args = parser.parse_args(argv)
    scale = 5 if args.quick else 1
    rows = [r for r in ROWS if not args.rows or f"{r[0]}/{r[1]}" in args.rows]
    results: list[dict[str, Any]] = []
    with atomic_moto_dynamodb(), mock_aws():
        aws = Aws()
        for pollers in sorted({_pollers(rate) for rate, _, _ in rows}):
            for mode in ("bulk", "single"):
                n = BATCH_RECIPIENTS * pollers * (1 if args.quick else 2) * (3 if mode == "bulk" else 1)
                ceiling = run_row(aws, CEILING_RATE, mode, n, pollers, Latency(), f"ceiling-{mode}-{pollers}")
                ceiling["end_to_end_per_second"] = round(n / max(1e-9, ceiling["end_to_end_seconds"]), 1)
                results.append({"name": f"ceiling/{mode}/{pollers} pollers", **ceiling})
                print(json.dumps(results[-1]), flush=True)
        for rate, mode, recipients in rows:
            pollers = _pollers(rate)
            row = run_row(aws, rate, mode, recipients // scale, pollers, Latency(), f"{rate}-{mode}")
            row["goal_met"] = (
                row["steady_share"] >= 0.95 and row["end_to_end_share"] >= 0.90 and not row["peak_over_rate"]
                and row["lost"] == 0 and row["duplicated"] == 0
            )  # fmt: skip
            results.append({"name": f"{rate}/{mode}", **row})
            print(json.dumps(results[-1]), flush=True)
    latency = {"dynamodb": DYNAMODB_MS, "sqs": SQS_MS, "ses_arrival": SES_ARRIVAL_MS, "ses": SES_MS}
    name = "pacing" if args.label == "after" else f"pacing-{args.label}"
    path = write_results(name, {"latency_model_ms": latency, "rows": results})
    print(f"wrote {path}")
    return 0 if all(r.get("goal_met", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
