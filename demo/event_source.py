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
from collections import deque
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
        """One batch (receives of up to 10 until ``batch_size`` or the queue runs dry), one
        invocation, one delete of what succeeded; returns the number of records handled."""
        messages: list[dict[str, Any]] = []
        while len(messages) < self.batch_size:
            response = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(self.batch_size - len(messages), 10),
                WaitTimeSeconds=0,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received = response.get("Messages", [])
            messages.extend(received)
            if len(received) < 10:
                break
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


@dataclass
class _Held:
    message: dict[str, Any]
    receives: int = 0
    visible_at: float = 0.0


class LocalQueue:
    """A standard SQS queue in this process's memory, for traffic moto's SQS cannot carry.

    moto's SQS costs time in proportion to the queue's depth on every call; one message per
    email (SES events) would make a 10,000-recipient run take many minutes. This queue keeps
    what the consumer relies on: at-least-once delivery, a visibility timeout after which
    received and undeleted messages come back, and redrive to a dead-letter list after
    ``max_receive`` receives. It answers the boto3 calls ``EventSourceMapping`` and an
    EventBridge SQS target make (``send_message_batch``, ``receive_message``,
    ``delete_message_batch``, ``get_queue_attributes``), so it stands in for the client.
    """

    def __init__(self, *, visibility_timeout: float = 30, max_receive: int = 5) -> None:
        self.visibility_timeout = visibility_timeout
        self.max_receive = max_receive
        self._visible: deque[str] = deque()
        self._in_flight: dict[str, _Held] = {}
        self._held: dict[str, _Held] = {}
        self.dead_letters: list[dict[str, Any]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        for entry in Entries:
            message_id = str(uuid.uuid4())
            self._held[message_id] = _Held({"MessageId": message_id, "Body": entry["MessageBody"]})
            self._visible.append(message_id)
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def _return_expired(self) -> None:
        now = time.monotonic()
        for message_id in [m for m, held in self._in_flight.items() if held.visible_at <= now]:
            held = self._in_flight.pop(message_id)
            if held.receives >= self.max_receive:
                self.dead_letters.append(self._held.pop(message_id).message)
            else:
                self._visible.append(message_id)

    def receive_message(self, QueueUrl: str, MaxNumberOfMessages: int = 1, **_: Any) -> dict[str, Any]:
        self._return_expired()
        messages: list[dict[str, Any]] = []
        while self._visible and len(messages) < MaxNumberOfMessages:
            message_id = self._visible.popleft()
            held = self._held[message_id]
            held.receives += 1
            held.visible_at = time.monotonic() + self.visibility_timeout
            self._in_flight[message_id] = held
            receipt = f"{message_id}#{held.receives}"
            messages.append(
                {
                    **held.message,
                    "ReceiptHandle": receipt,
                    "Attributes": {"ApproximateReceiveCount": str(held.receives)},
                }
            )
        return {"Messages": messages}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        for entry in Entries:
            message_id, receives = entry["ReceiptHandle"].rsplit("#", 1)
            held = self._in_flight.get(message_id)
            if held is not None and held.receives == int(receives):  # a stale handle deletes nothing
                del self._in_flight[message_id]
                del self._held[message_id]
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        self._return_expired()
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(len(self._visible)),
                "ApproximateNumberOfMessagesNotVisible": str(len(self._in_flight)),
                "ApproximateNumberOfMessagesDelayed": "0",
            }
        }


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
