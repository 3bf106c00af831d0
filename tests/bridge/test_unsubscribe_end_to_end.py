"""Unsubscribe end to end, on SQLite, MariaDB and PostgreSQL, through the emulated AWS (moto):

a campaign is run and sent (the real email sender Lambda), a learner opens the unsubscribe page
and confirms (the real API Lambda), the report reaches the bridge (push: the real callback
dispatcher Lambda POSTs it to the bridge's receiver on a real HTTP server; pull: one ``tick``
drains the results queue), the address is suppressed for the company's campaign mail, the next
campaign run skips the learner, and a transactional mail to the same learner still goes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email.utils import parseaddr
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from demo.ses_emulator import FakeSes
from iomad_sim.hostile import serve_in_thread
from moodle_bridge.commands.submit_list import ListRow, compile_template, create_list_job
from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.outbox import Outbox
from moodle_bridge.results.receiver import create_app
from moodle_bridge.results.server import ReceiverServerSettings
from moodle_bridge.sources.campaigns.rules import DAY
from moodle_bridge.sources.campaigns.runner import run_campaign
from offload_contract.codec import decode_message
from tests.bridge import test_campaigns
from tests.bridge.test_campaigns import NOW, Site, create, recipients_of, rule

# The campaign tests' fixtures (an IOMAD site with the bridge migrated), used here by name.
site = test_campaigns.site
bridge = test_campaigns.bridge

REGION = "eu-west-1"
TABLE = "offload-idempotency"


@dataclass
class Cloud:
    """The Lambdas of the stack, over moto, sharing the bridge's key set."""

    sqs: Any
    dynamodb: Any
    ses: FakeSes
    jobs_url: str
    results_url: str

    def mailed(self) -> list[str]:
        """Who SES accepted mail for since the last call (single and bulk sends)."""
        sent = [to for to, _ in self.ses.single_sent] + [b.to for b in self.ses.bulk_sent]
        out = sorted(parseaddr(to)[1] for to in sent)
        self.ses.single_sent.clear()
        self.ses.bulk_sent.clear()
        return out

    def messages(self, url: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while got := self.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", []):
            for message in got:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            out.extend(got)
        return out

    def run_sender(self) -> list[dict[str, Any]]:
        """The email sender on everything in the jobs queue; returns the batches it handled."""
        from lambdas.handlers import email_sender
        from tests.lambdas.conftest import FakeContext, sqs_event

        bodies = [m["Body"] for m in self.messages(self.jobs_url)]
        for body in bodies:
            assert email_sender.handler(sqs_event(body), FakeContext()) == {"batchItemFailures": []}
        return [decode_message(body) for body in bodies]

    def run_dispatcher(self) -> int:
        """The callback dispatcher on everything in the results queue (push mode)."""
        from lambdas.handlers import callback_dispatcher
        from tests.lambdas.conftest import FakeContext, sqs_event

        messages = self.messages(self.results_url)
        for message in messages:
            event = sqs_event(message["Body"], source_arn="arn:aws:sqs:eu-west-1:123456789012:results")
            event["Records"][0]["messageAttributes"] = {
                name: {"stringValue": value["StringValue"], "dataType": "String"}
                for name, value in message.get("MessageAttributes", {}).items()
            }
            assert callback_dispatcher.handler(event, FakeContext()) == {"batchItemFailures": []}
        return len(messages)

    def api(self, method: str, token: str, body: bytes = b"") -> tuple[int, str]:
        from lambdas.handlers import api
        from tests.lambdas.conftest import FakeContext
        from tests.lambdas.test_api import rest_event

        headers = {"Accept": "text/html", "Content-Type": "application/x-www-form-urlencoded"}
        event = rest_event(
            method,
            f"/prod/v1/unsubscribe/{token}",
            "/v1/unsubscribe/{token}",
            body,
            headers,
            {"token": token},
        )
        response = api.handler(event, FakeContext())
        return int(response["statusCode"]), str(response["body"])


@pytest.fixture
def cloud(aws: dict[str, Any], bridge: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    from lambdas.common.aws import client, reset_clients
    from lambdas.common.settings import settings
    from lambdas.handlers import api, callback_dispatcher, email_sender

    config: BridgeConfig = bridge["config"]
    sqs = aws["sqs"]
    results = sqs.create_queue(QueueName="results")["QueueUrl"]
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    keysets = {"current": config.keys.current, "keysets": dict(config.keys.keysets)}
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="offload-hmac", SecretString=json.dumps(keysets)
    )["ARN"]
    boto3.client("ses", region_name=REGION).verify_domain_identity(Domain="example.com")
    for key, value in {
        "AWS_DEFAULT_REGION": REGION,
        "POWERTOOLS_SERVICE_NAME": "offload-test",
        "POWERTOOLS_METRICS_NAMESPACE": "ManiReportsOffload",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "JOBS_QUEUE_URL": aws["jobs"],
        "CERTIFICATES_QUEUE_URL": aws["certificates"],
        "RESULTS_QUEUE_URL": results,
        "IDEMPOTENCY_TABLE": TABLE,
        "CONFIGURATION_SET_NAME": "offload",
        "SENDER_ADDRESS": "noreply@example.com",
        "HMAC_SECRET_ARN": arn,
    }.items():
        monkeypatch.setenv(key, value)

    def forget() -> None:
        reset_clients()
        settings.cache_clear()
        api.intake.cache_clear()
        email_sender.sender.cache_clear()
        callback_dispatcher.dispatcher.cache_clear()

    forget()
    ses = FakeSes(region=REGION, enforce_rate=False)
    ses.install(client("sesv2"))
    yield Cloud(sqs, dynamodb, ses, aws["jobs"], results)
    forget()


def suppressions(engine: sa.Engine, repo: Any) -> list[tuple[int, str, str]]:
    s = repo.t.suppressions
    with engine.connect() as conn:
        rows = conn.execute(sa.select(s.c.companyid, s.c.address, s.c.reason).order_by(s.c.address)).all()
    return [(int(c), str(a), str(r)) for c, a, r in rows]


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_an_unsubscribe_reaches_the_bridge_in_one_pass_and_stops_campaigns_only(
    site: Site, bridge: dict[str, Any], cloud: Cloud, mode: str
) -> None:
    engine, repo = site.engine, bridge["repo"]
    site.user(10, lastaccess=NOW - 40 * DAY)
    site.user(11, lastaccess=NOW - 40 * DAY)
    campaign = create(bridge, engine, rule(cadence={"every_days": 7, "max_reminders": 3}, start=NOW))
    receiver = create_app(engine, repo.t, bridge["config"])
    with serve_in_thread(receiver, ReceiverServerSettings()) as running:
        base: BridgeConfig = bridge["config"]
        config = replace(
            base,
            callbacks=replace(
                base.callbacks,
                public_url=f"http://{running.host}:{running.port}/callbacks/v1/results",
                results_mode=mode,
            ),
            aws=replace(base.aws, results_queue_url=cloud.results_url, region=REGION),
        )
        submitters = build_submitters(config)

        # 1. The campaign is planned, submitted and sent.
        first = run_campaign(engine, repo, config, campaign, at=NOW, actor="test")
        assert first.jobid is not None and first.pending == 2
        assert Outbox(engine, repo, config, submitters).submit_due().submitted == 1
        [batch] = cloud.run_sender()
        assert cloud.mailed() == ["u10@example.com", "u11@example.com"]
        url = next(r["unsubscribe_url"] for r in batch["recipients"] if r["to"] == "u10@example.com")
        token = url.rsplit("/", 1)[1]

        # 2. The learner opens the page (nothing changes), then confirms.
        assert cloud.api("GET", token)[0] == 200
        assert cloud.api("GET", token)[0] == 200
        assert cloud.api("POST", token, b"confirm=yes")[0] == 200

        # 3. One pass brings the results, the unsubscribe among them, to the bridge.
        if mode == "push":
            assert cloud.run_dispatcher() == 2  # the sender's report, then the unsubscribe
        else:
            tick = run_tick(engine, config, submitters=submitters)
            assert tick.reconciled is not None and tick.reconciled.messages_applied == 2
        assert suppressions(engine, repo) == [(1, "u10@example.com", "unsubscribe")]
        # The delivery status is the provider's word, untouched by the unsubscribe.
        assert recipients_of(engine, repo, first.jobid) == [
            ("u10@example.com", "sent", None),
            ("u11@example.com", "sent", None),
        ]
        # Clicking again (or a mail client retrying the one-click POST) changes nothing more.
        assert cloud.api("POST", token, b"List-Unsubscribe=One-Click")[0] == 200
        if mode == "push":
            cloud.run_dispatcher()
        else:
            run_tick(engine, config, submitters=submitters)
        assert suppressions(engine, repo) == [(1, "u10@example.com", "unsubscribe")]

        # 4. The next cycle skips the learner; the other one is reminded.
        second = run_campaign(engine, repo, config, campaign, at=NOW + 7 * DAY, actor="test")
        assert second.jobid is not None
        assert recipients_of(engine, repo, second.jobid) == [
            ("u10@example.com", "skipped", "suppressed_unsubscribe"),
            ("u11@example.com", "pending", None),
        ]
        assert Outbox(engine, repo, config, submitters).submit_due().submitted == 1
        cloud.run_sender()
        assert cloud.mailed() == ["u11@example.com"]

        # 5. Transactional mail to the same learner still goes.
        templates = compile_template("Your licence", "<p>Hello {{ name }}</p>", None)
        rows = [ListRow(line=1, email="u10@example.com", name="First10", userid=10, data={})]
        created = create_list_job(
            engine, repo, config, 1, "Your licence", "<p>Hello {{ name }}</p>", None, rows, templates, "test"
        )
        assert not isinstance(created, str)
        jobid, planned = created
        assert planned.pending == 1
        assert recipients_of(engine, repo, jobid) == [("u10@example.com", "pending", None)]
        assert Outbox(engine, repo, config, submitters).submit_due().submitted == 1
        [sent] = cloud.run_sender()
        assert sent["category"] == "transactional"
        assert cloud.mailed() == ["u10@example.com"]
