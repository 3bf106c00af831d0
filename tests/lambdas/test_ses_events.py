"""SES events map back to (job, recipient) by tags, and settle crash-window claims."""

from __future__ import annotations

import json
from typing import Any

from lambdas.common.idempotency import IdempotencyStore, send_key
from lambdas.handlers import ses_events
from tests.lambdas.conftest import CALLBACK, Aws, FakeContext, sqs_event


def event(event_type: str, recipient_id: str = "r-1", job_id: str = "j-7-000001", **extra: Any) -> str:
    detail: dict[str, Any] = {
        "eventType": event_type,
        "mail": {
            "timestamp": "2026-11-22T10:00:00.000Z",
            "messageId": f"ses-{recipient_id}",
            "tags": {
                "job_id": [job_id.replace(":", "@")],
                "recipient_id": [recipient_id],
                "company_id": ["7"],
                "ses:configuration-set": ["offload"],
            },
        },
        **extra,
    }
    return json.dumps({"version": "0", "source": "aws.ses", "detail-type": "x", "detail": detail})


BOUNCE = {
    "bounceType": "Permanent",
    "bounceSubType": "NoEmail",
    "bouncedRecipients": [{"diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
}


def run(*bodies: str) -> Any:
    ses_events.events_processor.cache_clear()
    return ses_events.handler(sqs_event(*bodies), FakeContext())


def test_bounce_complaint_delivery_reject_and_rendering_failure_are_reported(aws: Aws) -> None:
    store = IdempotencyStore(aws.dynamodb, "offload-idempotency")
    store.remember_job("j-7-000001", 7, CALLBACK["url"], CALLBACK["key_id"])
    response = run(
        event("Bounce", "r-1", bounce=BOUNCE),
        event("Complaint", "r-2", complaint={"complaintFeedbackType": "abuse"}),
        event("Delivery", "r-3", delivery={"timestamp": "2026-11-22T10:00:05.000Z"}),
        event("Reject", "r-4", reject={"reason": "Bad content"}),
        event("Rendering Failure", "r-5", failure={"errorMessage": "Attribute 'name' is not present"}),
        event("Open", "r-6"),
    )  # fmt: skip
    assert response == {"batchItemFailures": []}
    messages = aws.drain(aws.results_url)
    assert {m["MessageAttributes"]["callback_url"]["StringValue"] for m in messages} == {CALLBACK["url"]}
    results = {r["recipient_id"]: r for m in messages for r in json.loads(m["Body"])["results"]}
    assert results["r-1"]["status"] == "bounced"
    assert results["r-1"]["error"] == {
        "code": "bounce.Permanent.NoEmail", "message": "smtp; 550 5.1.1 user unknown", "permanent": True,
    }  # fmt: skip
    assert results["r-2"]["status"] == "complained"
    assert results["r-3"]["status"] == "delivered" and results["r-3"]["provider_message_id"] == "ses-r-3"
    assert results["r-4"]["status"] == "rejected" and results["r-4"]["error"]["message"] == "Bad content"
    assert results["r-5"]["status"] == "failed" and results["r-5"]["error"]["code"] == "rendering_failure"
    assert "r-6" not in results


def test_send_event_settles_a_claim_left_in_the_crash_window(aws: Aws) -> None:
    store = IdempotencyStore(aws.dynamodb, "offload-idempotency")
    store.remember_job("j-7-000001", 7, CALLBACK["url"], CALLBACK["key_id"])
    key = send_key("j-7-000001", "r-1")
    store.claim_many([key], 600)  # the sender claimed, SES accepted, then the sender died
    run(event("Send", "r-1"))
    (result,) = aws.results()
    assert result["status"] == "sent" and result["provider_message_id"] == "ses-r-1"
    claim = IdempotencyStore(aws.dynamodb, "offload-idempotency").claim_many([key], 600)[key]
    assert claim.state.value == "completed" and claim.result == result  # a redelivery replays it
    run(event("Send", "r-1"))  # ordinary Send events (already COMPLETED) are not re-reported
    assert aws.results() == []


def test_events_of_unknown_jobs_or_foreign_sources_are_dropped(aws: Aws) -> None:
    run(
        event("Bounce", job_id="j-unknown", bounce={"bounceType": "Transient"}),
        json.dumps({"source": "evil"}),
    )
    assert aws.results() == []
