"""The event-source-mapping emulator behaves like Lambda's: partial failures, crashes, DLQ."""

import time
from collections.abc import Iterator
from typing import Any

import pytest

from demo.embedded_aws import EmbeddedAws, embedded_aws
from demo.event_source import EventSourceMapping, LocalQueue, drain, queue_depth
from offload_contract.signing import generate_root_secret


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    with embedded_aws() as instance:
        instance.provision("t", generate_root_secret(), visibility_timeout=1, max_receive=3)
        yield instance


def _send(aws: EmbeddedAws, queue: str, bodies: list[str]) -> None:
    sqs = aws.client("sqs")
    for i in range(0, len(bodies), 10):
        sqs.send_message_batch(
            QueueUrl=aws.queue_urls[queue],
            Entries=[{"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies[i : i + 10])],
        )


def test_partial_failure_redelivers_only_failed_records(aws: EmbeddedAws) -> None:
    seen: list[str] = []
    failed_once: set[str] = set()

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        assert context.get_remaining_time_in_millis() > 0
        failures = []
        for record in event["Records"]:
            assert record["eventSource"] == "aws:sqs"
            seen.append(record["body"])
            if record["body"].endswith("3") and record["body"] not in failed_once:
                failed_once.add(record["body"])
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    _send(aws, "jobs", [f"m{n}" for n in range(25)])
    mapping = EventSourceMapping(aws.client("sqs"), aws.queue_urls["jobs"], handler, "sender")
    assert drain([mapping], timeout_seconds=60, idle_sleep=0.1)
    assert sorted(set(seen)) == sorted(f"m{n}" for n in range(25))
    assert len(seen) == 25 + len(failed_once)
    assert mapping.stats.item_failures == len(failed_once) == 3


def test_crashing_handler_redelivers_batch_then_dlq_takes_poison(aws: EmbeddedAws) -> None:
    def handler(event: dict[str, Any], context: Any) -> None:
        if any(r["body"] == "poison" for r in event["Records"]):
            raise RuntimeError("boom")

    _send(aws, "results", ["poison"])
    mapping = EventSourceMapping(
        aws.client("sqs"), aws.queue_urls["results"], handler, "dispatcher", batch_size=1
    )
    assert drain([mapping], timeout_seconds=60, idle_sleep=0.2)
    assert mapping.stats.handler_errors == 3
    visible, _, _ = queue_depth(aws.client("sqs"), aws.dlq_urls["results"])
    assert visible == 1


def test_the_in_memory_queue_redelivers_after_the_visibility_timeout_and_dead_letters() -> None:
    queue = LocalQueue(visibility_timeout=0.05, max_receive=2)
    queue.send_message_batch(
        QueueUrl="q", Entries=[{"Id": "0", "MessageBody": "a"}, {"Id": "1", "MessageBody": "b"}]
    )
    first = queue.receive_message(QueueUrl="q", MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in first] == ["a", "b"]
    assert queue.receive_message(QueueUrl="q", MaxNumberOfMessages=10)["Messages"] == []  # in flight
    queue.delete_message_batch(
        QueueUrl="q", Entries=[{"Id": "0", "ReceiptHandle": first[0]["ReceiptHandle"]}]
    )
    time.sleep(0.06)
    (again,) = queue.receive_message(QueueUrl="q", MaxNumberOfMessages=10)["Messages"]
    assert again["Body"] == "b" and again["Attributes"]["ApproximateReceiveCount"] == "2"
    # A handle from an earlier receive deletes nothing.
    queue.delete_message_batch(
        QueueUrl="q", Entries=[{"Id": "0", "ReceiptHandle": first[1]["ReceiptHandle"]}]
    )
    time.sleep(0.06)
    assert queue.receive_message(QueueUrl="q", MaxNumberOfMessages=10)["Messages"] == []
    assert [m["Body"] for m in queue.dead_letters] == ["b"]  # after max_receive receives
    depth = queue.get_queue_attributes(QueueUrl="q", AttributeNames=["All"])["Attributes"]
    assert depth["ApproximateNumberOfMessages"] == depth["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_the_demo_check_counts_per_job_and_recipient() -> None:
    """One duplicate plus one loss keep the totals equal; the per-recipient check still fails."""
    from demo.__main__ import check_exactly_once

    reported = [(1, 10, "sent"), (1, 11, "delivered"), (1, 12, "cancelled"), (2, 20, "restored")]
    good = [("a", {"job_id": "1", "recipient_id": "10"}), ("b", {"job_id": "1", "recipient_id": "11"})]
    assert check_exactly_once(good, reported).ok
    twice_and_lost = [
        ("a", {"job_id": "1", "recipient_id": "10"}),
        ("a", {"job_id": "1", "recipient_id": "10"}),
    ]
    check = check_exactly_once(twice_and_lost, reported)
    assert check.messages == check.reported_sent == 2  # the old totals check would pass
    assert not check.ok and check.duplicates and check.lost
    cancelled_but_sent = [*good, ("c", {"job_id": "1", "recipient_id": "12"})]
    assert check_exactly_once(cancelled_but_sent, reported).unexpected
    from lambdas.email.crash_window import PROBE_TAG

    probe = [*good, ("success@simulator.amazonses.com", {PROBE_TAG: "1"})]
    assert check_exactly_once(probe, reported).ok
