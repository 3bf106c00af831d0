"""SES events map back to (job, recipient) by tags, and settle crash-window claims."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from lambdas.common.idempotency import IdempotencyStore
from lambdas.handlers import ses_events
from offload_contract.cloud_keys import send_key
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
    key = send_key(7, "j-7-000001", "r-1")
    store.claim_many([key], 600)  # the sender claimed, SES accepted, then the sender died
    run(event("Send", "r-1"))
    (result,) = aws.results()
    assert result["status"] == "sent" and result["provider_message_id"] == "ses-r-1"
    claim = IdempotencyStore(aws.dynamodb, "offload-idempotency").claim_many([key], 600)[key]
    assert claim.state.value == "completed" and claim.result == result  # a redelivery replays it
    # The same event again (its report was lost, so SQS redelivered it) reports the stored result.
    run(event("Send", "r-1"))
    assert aws.results() == [result]
    # Ordinary Send events, for claims the sender completed and reported itself, report nothing.
    sent = {"job_id": "j-7-000001", "recipient_id": "r-2", "status": "sent", "attempts": 1}
    store.complete_many([(send_key(7, "j-7-000001", "r-2"), {**sent, "occurred_at": 1})])
    run(event("Send", "r-2"))
    assert aws.results() == []


def test_events_of_unknown_jobs_or_foreign_sources_are_dropped(aws: Aws) -> None:
    run(
        event("Bounce", job_id="j-unknown", bounce={"bounceType": "Transient"}),
        json.dumps({"source": "evil"}),
    )
    assert aws.results() == []


def test_results_of_a_batch_are_aggregated_per_callback_into_one_message(aws: Aws) -> None:
    store = IdempotencyStore(aws.dynamodb, "offload-idempotency")
    store.remember_job("j-7-000001", 7, CALLBACK["url"], CALLBACK["key_id"])
    store.remember_job("j-7-000002", 7, CALLBACK["url"], CALLBACK["key_id"])
    store.remember_job("j-7-000003", 7, "https://other.example/cb", CALLBACK["key_id"])
    bodies = [event("Delivery", f"r-{i}") for i in range(60)]
    bodies += [event("Bounce", "r-x", job_id="j-7-000002", bounce=BOUNCE)]
    bodies += [event("Delivery", "r-y", job_id="j-7-000003")]
    assert run(*bodies) == {"batchItemFailures": []}
    messages = aws.drain(aws.results_url)
    by_url: dict[str, list[dict[str, Any]]] = {}
    for message in messages:
        url = message["MessageAttributes"]["callback_url"]["StringValue"]
        by_url.setdefault(url, []).append(json.loads(message["Body"]))
    # Two jobs with one callback share one message; another callback gets its own.
    assert [len(b["results"]) for b in by_url[CALLBACK["url"]]] == [61]
    assert [len(b["results"]) for b in by_url["https://other.example/cb"]] == [1]


def test_a_failed_aggregated_write_fails_exactly_the_records_behind_it(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = IdempotencyStore(aws.dynamodb, "offload-idempotency")
    store.remember_job("j-7-000001", 7, CALLBACK["url"], CALLBACK["key_id"])
    store.remember_job("j-7-000003", 7, "https://other.example/cb", CALLBACK["key_id"])
    key = send_key(7, "j-7-000001", "r-2")
    store.claim_many([key], 600)  # left in the crash window
    real_send = aws.sqs.send_message_batch

    def refuse_first_callback(**kwargs: Any) -> Any:
        entries = kwargs["Entries"]
        if entries[0]["MessageAttributes"]["callback_url"]["StringValue"] == CALLBACK["url"]:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, "SendMessageBatch")
        return real_send(**kwargs)

    monkeypatch.setattr(aws.sqs, "send_message_batch", refuse_first_callback)
    response = run(
        event("Delivery", "r-1"),
        event("Delivery", "r-y", job_id="j-7-000003"),
        event("Send", "r-2"),
        event("Open", "r-3"),
        "not json",
    )
    failed = [f["itemIdentifier"] for f in response["batchItemFailures"]]
    # m-0 and m-2 fed the refused message, m-4 is malformed; m-1 was written, m-3 ignored.
    assert failed == ["m-0", "m-2", "m-4"]
    assert [r["recipient_id"] for r in aws.results()] == ["r-y"]
    # SQS redelivers the failed records: the settled Send event is reported again, not lost.
    monkeypatch.setattr(aws.sqs, "send_message_batch", real_send)
    assert run(event("Delivery", "r-1"), event("Send", "r-2")) == {"batchItemFailures": []}
    results = {r["recipient_id"]: r for r in aws.results()}
    assert results["r-1"]["status"] == "delivered"
    assert results["r-2"]["status"] == "sent" and results["r-2"]["provider_message_id"] == "ses-r-2"


def probe_event(timestamp: str) -> str:
    detail = {
        "eventType": "Send",
        "mail": {"timestamp": timestamp, "messageId": "probe", "tags": {"offload_probe": ["send_watermark"]}},
    }
    return json.dumps({"version": "0", "source": "aws.ses", "detail-type": "x", "detail": detail})


def test_the_send_watermark_moves_forward_only_after_a_whole_batch_is_handled(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = IdempotencyStore(aws.dynamodb, "offload-idempotency")
    store.remember_job("j-7-000001", 7, CALLBACK["url"], CALLBACK["key_id"])
    assert store.send_watermark() == 0
    run(probe_event("2026-11-22T10:00:00.000Z"), event("Delivery", "r-1"))
    assert [r["status"] for r in aws.results()] == ["delivered"]
    at_ten = store.send_watermark()
    assert at_ten == 1795341600  # 2026-11-22T10:00:00Z; probes move it like any Send event
    run(probe_event("2026-11-22T09:00:00.000Z"))
    assert store.send_watermark() == at_ten  # never backwards

    # A crash-window claim whose Send event fails to settle (DynamoDB error): the record is
    # redelivered, and the newer Send events of the same batch must not move the watermark,
    # or a sender could resend the claim before its event settles it.
    store.claim_many([send_key(7, "j-7-000001", "r-2")], 600)
    real = IdempotencyStore.complete_if_in_progress

    def failing(key: str, result: dict[str, Any]) -> Any:
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "x"}}, "UpdateItem")

    monkeypatch.setattr(IdempotencyStore, "complete_if_in_progress", failing)
    response = run(event("Send", "r-2"), probe_event("2026-11-22T11:00:00.000Z"))
    assert len(response["batchItemFailures"]) == 1
    assert store.send_watermark() == at_ten
    monkeypatch.setattr(IdempotencyStore, "complete_if_in_progress", real)
    assert run(event("Send", "r-2"), probe_event("2026-11-22T11:00:00.000Z")) == {"batchItemFailures": []}
    assert store.send_watermark() == at_ten + 3600
    (settled,) = aws.results()
    assert settled["recipient_id"] == "r-2" and settled["status"] == "sent"
