"""The durable record of every outcome: the SQS ``results`` queue (COMMON.md decision).

The body is exactly a contract result_batch; attributes ``callback_url`` and ``key_id`` say
where and as whom the dispatcher delivers it (or the bridge drains it in pull mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from offload_contract import encode_message


class ResultsQueue:
    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._url = queue_url
        self.sent = 0

    def publish(self, batches: Sequence[dict[str, Any]], callback_url: str, key_id: str) -> None:
        attributes = {"key_id": {"DataType": "String", "StringValue": key_id}}
        if callback_url:  # SQS refuses an empty attribute; without one only pull or the DLQ delivers it
            attributes["callback_url"] = {"DataType": "String", "StringValue": callback_url}
        entries = [
            {
                "Id": str(index),
                "MessageBody": encode_message(batch).decode("utf-8"),
                "MessageAttributes": attributes,
            }
            for index, batch in enumerate(batches)
        ]
        for start in range(0, len(entries), 10):
            chunk = entries[start : start + 10]
            response = self._sqs.send_message_batch(QueueUrl=self._url, Entries=chunk)
            failed = response.get("Failed") or []
            if failed:
                # Raising fails the SQS record, which is redelivered; stored results are
                # reported again then (the bridge applies a result twice harmlessly).
                raise RuntimeError(f"{len(failed)} result messages were refused by SQS")
            self.sent += len(chunk)
