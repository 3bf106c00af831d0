"""Tenants cannot interfere in the cloud: send claims, job routes and certificate codes are scoped
by company, so a batch signed by company 7 cannot pre-claim company 8's recipients or codes."""

from __future__ import annotations

from typing import Any

import pytest

from lambdas.common.idempotency import IdempotencyStore, job_key
from lambdas.handlers import email_sender
from offload_contract import encode_message
from offload_contract.cloud_keys import send_key
from tests.lambdas.conftest import Aws, FakeContext, email_batch, sqs_event

CONTENTS = {"e-1": {"kind": "rendered", "subject": "Hi", "html": "<p>Hi</p>"}}


@pytest.fixture
def run(aws: Aws):
    email_sender.sender.cache_clear()

    def invoke(batch: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = email_sender.handler(sqs_event(encode_message(batch)), FakeContext(300_000))
        return result

    yield invoke
    email_sender.sender.cache_clear()


def test_one_companys_batch_cannot_pre_claim_another_companys_recipient(aws: Aws, run) -> None:
    hostile = email_batch(
        [{"recipient_id": "r-1", "to": "attacker@example.org", "content_id": "e-1"}],
        CONTENTS,
        job_id="j-1",
        company_id=7,
    )
    genuine = email_batch(
        [{"recipient_id": "r-1", "to": "learner@example.org", "content_id": "e-1"}],
        CONTENTS,
        job_id="j-1",
        company_id=8,
        callback={"url": "https://moodle.example.org/offload/callbacks/v1/results", "key_id": "k2026.c8"},
    )
    assert run(hostile) == {"batchItemFailures": []}
    assert run(genuine) == {"batchItemFailures": []}
    sent_to = sorted(to for to, _tags in aws.ses.sends_by_tags())
    assert any("learner@example.org" in to for to in sent_to), sent_to
    assert len(sent_to) == 2


def test_keys_name_the_company() -> None:
    assert send_key(7, "j-1", "r-1") != send_key(8, "j-1", "r-1")
    assert job_key(7, "j-1") != job_key(8, "j-1")


def test_a_certificate_code_of_one_company_cannot_be_overwritten_by_another(aws: Aws) -> None:
    store = IdempotencyStore(aws.dynamodb, "offload-idempotency")
    genuine = {"learner_name": {"S": "Zoë"}, "course_name": {"S": "Safety"}}
    assert store.put_company_item("cert#ABCDEF123456", 8, genuine)
    assert not store.put_company_item("cert#ABCDEF123456", 7, {"learner_name": {"S": "Forged"}})
    item = store.get_item("cert#ABCDEF123456")
    assert item is not None and item["learner_name"]["S"] == "Zoë"
    assert store.put_company_item("cert#ABCDEF123456", 8, genuine)  # the owner may write it again
