"""AWS in-process (moto) for the Lambda tests, plus the SESv2 fake for the calls moto lacks."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from demo.ses_emulator import FakeSes

REGION = "eu-west-1"
ENV = {
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "POWERTOOLS_SERVICE_NAME": "offload-test",
    "POWERTOOLS_METRICS_NAMESPACE": "ManiReportsOffload",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_DEV": "false",
    "IDEMPOTENCY_TABLE": "offload-idempotency",
    "CERTIFICATE_BUCKET": "offload-certificates",
    "CONTENT_BUCKET": "offload-certificates",
    "CONFIGURATION_SET_NAME": "offload",
    "SENDER_ADDRESS": "noreply@acme.example",
    "VERIFY_URL_BASE": "https://offload.example/v1/certificates/verify/",
    "SSE_ALGORITHM": "AES256",
}

for _key in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_TRACE_DISABLED"):
    os.environ.setdefault(_key, ENV[_key])

CALLBACK = {"url": "https://moodle.example.org/offload/callbacks/v1/results", "key_id": "k2026.c7"}


@dataclass
class Aws:
    sqs: Any
    s3: Any
    dynamodb: Any
    sesv2: Any
    secrets: Any
    ses: FakeSes
    jobs_url: str
    results_url: str
    certificates_url: str
    events_url: str

    def drain(self, url: str) -> list[dict[str, Any]]:
        """Receive and delete everything visible (delays ignored by moto? no: see ``drain_all``)."""
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=0
            ).get("Messages", [])
            if not got:
                return out
            for message in got:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            out.extend(got)

    def results(self) -> list[dict[str, Any]]:
        """Every recipient result published to the results queue so far (drained)."""
        out = []
        for message in self.drain(self.results_url):
            out.extend(json.loads(message["Body"])["results"])
        return out


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    from lambdas.common.aws import client, reset_clients
    from lambdas.common.settings import settings

    with mock_aws():
        reset_clients()
        settings.cache_clear()
        sqs = client("sqs")
        urls = {}
        for name in ("jobs", "results", "certificates", "ses-events"):
            urls[name] = sqs.create_queue(QueueName=f"offload-{name}")["QueueUrl"]
        for key, name in (
            ("JOBS_QUEUE_URL", "jobs"),
            ("RESULTS_QUEUE_URL", "results"),
            ("CERTIFICATES_QUEUE_URL", "certificates"),
        ):
            monkeypatch.setenv(key, urls[name])
        settings.cache_clear()
        dynamodb = client("dynamodb")
        dynamodb.create_table(
            TableName=ENV["IDEMPOTENCY_TABLE"],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        s3 = client("s3")
        s3.create_bucket(
            Bucket=ENV["CERTIFICATE_BUCKET"], CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        sesv2 = client("sesv2")
        boto3.client("ses", region_name=REGION).verify_domain_identity(Domain="acme.example")
        fake = FakeSes(region=REGION)
        fake.install(sesv2)
        secrets = boto3.client("secretsmanager", region_name=REGION)
        yield Aws(
            sqs, s3, dynamodb, sesv2, secrets, fake,
            urls["jobs"], urls["results"], urls["certificates"], urls["ses-events"],
        )  # fmt: skip
        reset_clients()
        settings.cache_clear()


class FakeContext:
    function_name = "offload-test"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:offload-test"
    aws_request_id = "req-1"

    def __init__(self, remaining_ms: int = 300_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def sqs_event(
    *bodies: bytes | str, source_arn: str = "arn:aws:sqs:eu-west-1:123456789012:offload-jobs"
) -> dict:
    records = []
    for index, body in enumerate(bodies):
        records.append(
            {
                "messageId": f"m-{index}",
                "receiptHandle": f"rh-{index}",
                "body": body.decode("utf-8") if isinstance(body, bytes) else body,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": source_arn,
                "awsRegion": REGION,
            }
        )
    return {"Records": records}


def email_batch(
    recipients: list[dict], contents: dict, *, category: str = "transactional", **extra: Any
) -> dict:
    batch = {
        "type": "email_batch",
        "contract_version": 1,
        "batch_id": "b-7-000001",
        "job_id": "j-7-000001",
        "company_id": 7,
        "attempt": 1,
        "created_at": 1795361900,
        "callback": dict(CALLBACK),
        "category": category,
        "sender": {"address": "noreply@acme.example", "name": "Acme Training"},
        "contents": copy.deepcopy(contents),
        "recipients": copy.deepcopy(recipients),
    }
    batch.update(extra)
    return batch


FANOUT_BATCH = email_batch(
    [{"recipient_id": "r-1", "to": "zoe@example.org", "name": "Zoë", "content_id": "e-1"}],
    {"e-1": {"kind": "rendered", "subject": "Hi", "html": "<p>Hi</p>"}},
)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
