"""The bridge's view of the email sender's own records in DynamoDB (``aws.idempotency_table``).

The sender keeps one item per (job, recipient), ``send#c<company>#<job>#<recipient>``
(lambdas/common/idempotency.py); both sides take the key from ``offload_contract.cloud_keys``.
The bridge uses the same table for two things, and nothing else:

* **cancel**: ``cancel#<job>`` tells every sender invocation to stop: it reads the item before
  each SES call and closes the job's remaining recipients as ``failed``/``job_cancelled``
  instead of sending (the bridge records them ``cancelled``);
* **reconciliation after the deadline**: it reads the ``send#`` items of recipients it never
  heard about (sent? failed? never claimed?) and, for one never claimed, writes the closing
  record itself with a conditional put (``attribute_not_exists(id)``), so a late delivery of
  the batch replays that record and never sends. Only then is the recipient given back.

The bridge's IAM user may only read ``send#``/``cancel#`` items and write ``cancel#`` and new
``send#`` items (``dynamodb:LeadingKeys``; infra/constructs/api.py ``BridgeAccess``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from offload_contract.cloud_keys import cancel_key, send_key

#: Same retention as the sender's records (lambdas/common/idempotency.py RETENTION_SECONDS).
RETENTION_SECONDS = 35 * 24 * 3600
BATCH_GET_CHUNK = 100


class CloudUnavailable(Exception):
    """The table could not be reached or refused the call. The message is one safe line."""


@dataclass(frozen=True)
class SendRecord:
    """What the sender recorded for one recipient."""

    #: completed | in_progress
    state: str
    #: For completed: the exact result the sender reported (``sent`` with its message id, or
    #: ``failed`` with its error).
    result: dict[str, Any] | None = None
    lease_until: int = 0


def _why(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    return type(exc).__name__


class CloudRecords:
    def __init__(self, client: Any, table: str, *, clock: Any = time.time) -> None:
        self._db = client
        self._table = table
        self._clock = clock

    def request_cancel(self, job_id: int | str, company_id: int, reason: str) -> None:
        """Write (or rewrite) the job's cancel record. Idempotent."""
        now = int(self._clock())
        try:
            self._db.put_item(
                TableName=self._table,
                Item={
                    "id": {"S": cancel_key(job_id)},
                    "company_id": {"N": str(company_id)},
                    "reason": {"S": reason[:100]},
                    "requested_at": {"N": str(now)},
                    "expiration": {"N": str(now + RETENTION_SECONDS)},
                },
            )
        except (ClientError, BotoCoreError) as exc:
            raise CloudUnavailable(f"cannot write the cancel record: {_why(exc)}") from None

    def send_records(
        self, company_id: int, job_id: int | str, recipient_ids: Sequence[int | str]
    ) -> dict[int | str, SendRecord]:
        """The sender's record per recipient (absent: never claimed). Consistent reads."""
        keys = {send_key(company_id, job_id, rid): rid for rid in recipient_ids}
        now = int(self._clock())
        out: dict[int | str, SendRecord] = {}
        names = list(keys)
        try:
            for start in range(0, len(names), BATCH_GET_CHUNK):
                pending: dict[str, Any] = {
                    self._table: {
                        "Keys": [{"id": {"S": k}} for k in names[start : start + BATCH_GET_CHUNK]],
                        "ConsistentRead": True,
                    }
                }
                for attempt in range(8):
                    response = self._db.batch_get_item(RequestItems=pending)
                    for item in response.get("Responses", {}).get(self._table, []):
                        out[keys[item["id"]["S"]]] = _record(item, now)
                    pending = response.get("UnprocessedKeys") or {}
                    if not pending:
                        break
                    time.sleep(min(0.05 * 2**attempt, 1.0))
                if pending:
                    raise CloudUnavailable("DynamoDB kept keys unprocessed")
        except (ClientError, BotoCoreError) as exc:
            raise CloudUnavailable(f"cannot read the sender's records: {_why(exc)}") from None
        return out

    def close_unclaimed(
        self, company_id: int, job_id: int | str, recipient_id: int | str, result: dict[str, Any]
    ) -> SendRecord | None:
        """Write the sender's closing record for a recipient nobody claimed, so it is never sent.

        Returns None when this call closed it, else the record that got there first (the sender
        claimed it in the meantime: its outcome is then the sender's)."""
        now = int(self._clock())
        key = send_key(company_id, job_id, recipient_id)
        try:
            self._db.put_item(
                TableName=self._table,
                Item={
                    "id": {"S": key},
                    "status": {"S": "COMPLETED"},
                    "result": {"S": json.dumps(result, separators=(",", ":"))},
                    "settled_by": {"S": "bridge"},
                    "expiration": {"N": str(now + RETENTION_SECONDS)},
                },
                ConditionExpression="attribute_not_exists(id)",
            )
            return None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise CloudUnavailable(f"cannot close a recipient in the cloud: {_why(exc)}") from None
        except BotoCoreError as exc:
            raise CloudUnavailable(f"cannot close a recipient in the cloud: {_why(exc)}") from None
        return self.send_records(company_id, job_id, [recipient_id]).get(recipient_id)


def _record(item: dict[str, Any], now: int) -> SendRecord:
    if item.get("status", {}).get("S") == "COMPLETED":
        return SendRecord("completed", json.loads(item["result"]["S"]))
    return SendRecord("in_progress", lease_until=int((item.get("lease_until") or {}).get("N", "0")))


def cloud_records_from_config(config: Any) -> CloudRecords | None:
    """A ``CloudRecords`` for the configured table (``aws.idempotency_table``), or None."""
    table = getattr(config.aws, "idempotency_table", "")
    if not table:
        return None
    import boto3  # noqa: PLC0415
    from botocore.config import Config as BotoConfig  # noqa: PLC0415

    client = boto3.client(
        "dynamodb",
        region_name=config.aws.region,
        endpoint_url=config.aws.endpoint_url or None,
        config=BotoConfig(
            connect_timeout=5, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"}
        ),
    )
    return CloudRecords(client, table)
