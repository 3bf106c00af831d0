"""Drive Lambda handlers from SQS the way an event source mapping does.

Real ESM behaviour reproduced: batches of up to ``batch_size`` records with the real SQS
event shape; a handler that raises leaves the whole batch for redelivery after the
visibility timeout; ``batchItemFailures`` leaves only those records; everything else is
deleted. Redrive to the DLQ is the queue's own (moto implements maxReceiveCount).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[dict[str, Any], Any], Any]


class LambdaCrash(BaseException):
    """Raised by a test or the demo to kill an invocation the way a dead sandbox would:
    no code in the handler can catch it, and the whole batch goes back to the queue."""


@dataclass
class LambdaContext:
    """The attributes of the Lambda runtime's context object that handlers use."""

    function_name: str
    timeout_seconds: int = 60
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = ""
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    _deadline: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.invoked_function_arn = self.invoked_function_arn or (
            f"arn:aws:lambda:eu-west-1:123456789012:function:{self.function_name}"
        )
        self.log_group_name = f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class MappingStats:
    invocations: int = 0
    records: int = 0
    deleted: int = 0
    item_failures: int = 0
    handler_errors: int = 0


@dataclass
class EventSourceMapping:
    sqs: Any
    queue_url: str
    handler: Handler
    function_name: str
    batch_size: int = 10
    region: str = "eu-west-1"
    stats: MappingStats = field(default_factory=MappingStats)

    def _queue_arn(self) -> str:
        name = self.queue_url.rsplit("/", 1)[-1]
        return f"arn:aws:sqs:{self.region}:123456789012:{name}"

    def _event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        records = []
        for msg in messages:
            attributes = {
                name: {
                    "stringValue": value.get("StringValue"),
                    "binaryValue": value.get("BinaryValue"),
                    "stringListValues": [],
                    "binaryListValues": [],
                    "dataType": value.get("DataType", "String"),
                }
                for name, value in (msg.get("MessageAttributes") or {}).items()
            }
            records.append(
                {
                    "messageId": msg["MessageId"],
                    "receiptHandle": msg["ReceiptHandle"],
                    "body": msg["Body"],
                    "attributes": msg.get("Attributes", {}),
                    "messageAttributes": attributes,
                    "md5OfBody": hashlib.md5(msg["Body"].encode("utf-8"), usedforsecurity=False).hexdigest(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self._queue_arn(),
                    "awsRegion": self.region,
                }
            )
        return {"Records": records}

    def poll_once(self) -> int:
        """One receive + invoke + delete cycle; returns the number of records handled."""
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=min(self.batch_size, 10),
            WaitTimeSeconds=0,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            return 0
        self.stats.invocations += 1
        self.stats.records += len(messages)
        try:
            result = self.handler(self._event(messages), LambdaContext(self.function_name))
        except (Exception, LambdaCrash):  # the whole batch goes back, exactly as Lambda does
            self.stats.handler_errors += 1
            return len(messages)
        failed = {item["itemIdentifier"] for item in (result or {}).get("batchItemFailures", [])}
        self.stats.item_failures += len(failed)
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
        self.stats.deleted += len(done)
        return len(messages)


def queue_depth(sqs: Any, queue_url: str) -> tuple[int, int, int]:
    """(visible, in flight, delayed) messages."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        int(attrs["ApproximateNumberOfMessagesDelayed"]),
    )


def drain(
    mappings: list[EventSourceMapping],
    *,
    timeout_seconds: float = 600,
    idle_sleep: float = 0.2,
    on_progress: Callable[[], None] | None = None,
) -> bool:
    """Poll every mapping until all their queues are empty (nothing visible, in flight or
    delayed). Returns False on timeout."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        handled = sum(m.poll_once() for m in mappings)
        if on_progress is not None:
            on_progress()
        if handled:
            continue
        if all(sum(queue_depth(m.sqs, m.queue_url)) == 0 for m in mappings):
            return True
        time.sleep(idle_sleep)
    return False
