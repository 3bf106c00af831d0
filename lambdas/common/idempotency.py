"""Exactly-once bookkeeping per (job, recipient) in DynamoDB (design: docs/lambdas.md).

One item per recipient, ``id = send#c<company_id>#<job_id>#<recipient_id>`` (the format is
``offload_contract.cloud_keys``, shared with the bridge, which reads and closes these items): scoped
by company, so one company's batch can never pre-claim (or read the outcome of) another company's
recipient:

* ``INPROGRESS`` is written with a conditional put *before* the SES call. It carries the
  owner's token and a lease (``lease_until``) tied to the function timeout.
* ``COMPLETED`` replaces it right after the call, holding the exact result that was
  reported (``sent`` with the SES message id, or a final ``failed``), so a redelivery
  reports the same result again instead of sending.
* A retryable failure *before* SES accepted anything deletes the claim (conditioned on the
  owner's token), so the re-queued recipient can be claimed again.
* An INPROGRESS item whose lease has expired is *stale*: its owner died in the crash window
  between the SES call and the completion write. The SES ``Send`` event (``ses_events``)
  completes it with the message id when SES did accept it. A stale item may be *taken over*
  (claimed again, conditioned on the dead owner's token and lease) only once the events
  processor has proved that no such event is coming: ``lambdas/email/crash_window.py``.
* ``cancel#<job_id>`` is written by the bridge when a person (or the global/company switch)
  cancels the job; the sender reads it before every SES call and closes the job's remaining
  recipients as ``failed``/``job_cancelled`` instead of sending them.
* ``watermark#ses-send`` holds the newest ``mail.timestamp`` of the SES ``Send`` events the
  events processor has fully handled; ``probe#ses-send`` spaces out the probe messages that
  move it on when no other mail is being sent.

The sender first looks every recipient up (read-only BatchGetItem) to report completed ones
again, then claims each SES unit's recipients (per-item conditional puts) right before that
unit's SES call, so a claim exists only for recipients whose SES call is about to start.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from botocore.exceptions import ClientError

from offload_contract.cloud_keys import cancel_key

RETENTION_SECONDS = 35 * 24 * 3600  # longer than any bridge job lifetime and the SQS retention
BATCH_WRITE_CHUNK = 25
BATCH_GET_CHUNK = 100  # BatchGetItem's limit per call
#: Marks a claim completed by the SES events processor rather than by the sender.
SETTLED_BY_SEND_EVENT = "ses_event"
SEND_WATERMARK_KEY = "watermark#ses-send"
SEND_PROBE_KEY = "probe#ses-send"


class ClaimState(Enum):
    CLAIMED = "claimed"  # we own it: send
    COMPLETED = "completed"  # already done: report the stored result again
    IN_FLIGHT = "in_flight"  # another invocation holds a live lease: do not send, look again later
    STALE = "stale"  # lease expired without completion: outcome unknown until proven (crash_window)


@dataclass(frozen=True)
class Claim:
    key: str
    state: ClaimState
    result: dict[str, Any] | None = None
    #: For IN_FLIGHT / STALE: the holder's token, claim time and lease end (a takeover's condition).
    owner: str = ""
    claimed_at: int = 0
    lease_until: int = 0
    #: For COMPLETED: True when the SES ``Send`` event settled it (not the sender).
    settled_by_event: bool = False


def job_key(company_id: int, job_id: str) -> str:
    return f"job#c{int(company_id)}#{job_id}"


def _is_condition_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in {
        "ConditionalCheckFailedException",
        "TransactionCanceledException",
    }


class IdempotencyStore:
    def __init__(self, dynamodb: Any, table: str, *, clock: Any = time.time) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock
        self.token = uuid.uuid4().hex

    # -- read-only look-up -----------------------------------------------------------------
    def lookup_many(self, keys: Sequence[str], attempt: int = 1) -> dict[str, Claim]:
        """Classify existing items without writing anything (consistent BatchGetItem reads).

        Returns COMPLETED/IN_FLIGHT/STALE for the keys that have an item; keys without an
        item are absent from the result (free to claim right before their SES call).
        """
        now = int(self._clock())
        unique = list(dict.fromkeys(keys))
        found: dict[str, Claim] = {}
        for start in range(0, len(unique), BATCH_GET_CHUNK):
            pending: dict[str, Any] = {
                self._table: {
                    "Keys": [{"id": {"S": key}} for key in unique[start : start + BATCH_GET_CHUNK]],
                    "ConsistentRead": True,
                }
            }
            for retry in range(8):
                response = self._db.batch_get_item(RequestItems=pending)
                for item in response.get("Responses", {}).get(self._table, []):
                    key = item["id"]["S"]
                    claim = self._classify(key, item, now, attempt)
                    if claim is not None:
                        found[key] = claim
                pending = response.get("UnprocessedKeys") or {}
                if not pending:
                    break
                time.sleep(min(0.05 * 2**retry, 1.0))
            if pending:
                raise RuntimeError("DynamoDB kept keys unprocessed; recipients not looked up")
        return found

    # -- claims ---------------------------------------------------------------------------
    def _claim_item(self, key: str, lease_until: int, now: int) -> dict[str, Any]:
        return {
            "id": {"S": key},
            "status": {"S": "INPROGRESS"},
            "token": {"S": self.token},
            "lease_until": {"N": str(lease_until)},
            "claimed_at": {"N": str(now)},
            "expiration": {"N": str(now + RETENTION_SECONDS)},
        }

    def claim_many(
        self,
        keys: Sequence[str],
        lease_seconds: int,
        attempt: int = 1,
        takeovers: Mapping[str, Claim] | None = None,
        mapper: Callable[..., Iterable[Claim]] = map,
    ) -> dict[str, Claim]:
        """Claim each key with its own conditional put (``takeovers``: stale claims to replace;
        ``mapper``: e.g. a thread pool's ``map``, to make the puts side by side).

        Not TransactWriteItems: DynamoDB bills a transactional write at twice the units of a
        plain one, a transaction fails as a whole when one recipient was already claimed,
        and moto's implementation copies the whole table per call, which made the sender
        untestable at demo scale. A put costs a few milliseconds, well inside the pacing
        budget of a send.
        """
        now = int(self._clock())
        lease_until = now + max(1, lease_seconds)
        stale = takeovers or {}
        unique = list(dict.fromkeys(keys))
        claims = mapper(lambda key: self.claim_one(key, lease_until, now, attempt, stale.get(key)), unique)
        return dict(zip(unique, claims, strict=True))

    def claim_one(
        self, key: str, lease_until: int, now: int, attempt: int = 1, takeover: Claim | None = None
    ) -> Claim:
        """Claim ``key`` if nobody holds it. A record of a *final failure* from an earlier
        attempt may be claimed again by a later one (the bridge's retry): nothing was sent for
        it, so sending now is the first send. A record of a send is never claimed again.

        ``takeover`` replaces a stale claim that ``crash_window`` proved unsent: only that very
        claim (same owner token and lease), so a Send event or another invocation that got
        there first wins."""
        if takeover is not None:
            condition = "#s = :p AND #t = :owner AND lease_until = :lease"
            values = {
                ":p": {"S": "INPROGRESS"},
                ":owner": {"S": takeover.owner},
                ":lease": {"N": str(takeover.lease_until)},
            }
            names: dict[str, str] | None = {"#s": "status", "#t": "token"}
        else:
            condition = "attribute_not_exists(id) OR failed_attempt < :attempt"
            values = {":attempt": {"N": str(attempt)}}
            names = None
        for _ in range(2):  # the item may be released between our put and our read
            try:
                self._db.put_item(
                    TableName=self._table,
                    Item=self._claim_item(key, lease_until, now),
                    ConditionExpression=condition,
                    ExpressionAttributeValues=values,
                    **({"ExpressionAttributeNames": names} if names else {}),
                )
                return Claim(key, ClaimState.CLAIMED)
            except ClientError as exc:
                if not _is_condition_failure(exc):
                    raise
            item = self._db.get_item(TableName=self._table, Key={"id": {"S": key}}, ConsistentRead=True).get(
                "Item"
            )
            if item is not None:
                claim = self._classify(key, item, now, attempt)
                if claim is not None:
                    return claim
        return Claim(key, ClaimState.IN_FLIGHT)

    @staticmethod
    def _classify(key: str, item: dict[str, Any], now: int, attempt: int = 1) -> Claim | None:
        """The state of an existing record; None when a later attempt may claim it."""
        if "failed_attempt" in item and int(item["failed_attempt"]["N"]) < attempt:
            return None
        if item["status"]["S"] == "COMPLETED":
            by_event = (item.get("settled_by") or {}).get("S") == SETTLED_BY_SEND_EVENT
            return Claim(
                key, ClaimState.COMPLETED, json.loads(item["result"]["S"]), settled_by_event=by_event
            )
        lease_until = int(item["lease_until"]["N"])
        return Claim(
            key,
            ClaimState.IN_FLIGHT if lease_until > now else ClaimState.STALE,
            owner=(item.get("token") or {}).get("S", ""),
            claimed_at=int((item.get("claimed_at") or {}).get("N", "0")),
            lease_until=lease_until,
        )

    # -- completion -----------------------------------------------------------------------
    def complete_many(self, results: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Store final results (``sent`` or final ``failed``); unconditional: we own the claim."""
        now = int(self._clock())
        requests = [
            {
                "PutRequest": {
                    "Item": {
                        "id": {"S": key},
                        "status": {"S": "COMPLETED"},
                        "result": {"S": json.dumps(result, separators=(",", ":"))},
                        "expiration": {"N": str(now + RETENTION_SECONDS)},
                        # A final failure sent nothing: a later attempt (the bridge's retry)
                        # may claim the recipient again. Sends carry no such attribute.
                        **(
                            {"failed_attempt": {"N": str(int(result.get("attempts", 1)))}}
                            if result.get("status") == "failed"
                            else {}
                        ),
                    }
                }
            }
            for key, result in results
        ]
        for start in range(0, len(requests), BATCH_WRITE_CHUNK):
            pending: dict[str, Any] = {self._table: requests[start : start + BATCH_WRITE_CHUNK]}
            for attempt in range(8):
                response = self._db.batch_write_item(RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 1.0))
            if pending:
                raise RuntimeError("DynamoDB kept items unprocessed; completion records not written")

    def release_many(self, keys: Iterable[str]) -> None:
        """Drop our claims on recipients that SES did not accept (safe to send again later)."""
        for key in keys:
            try:
                self._db.delete_item(
                    TableName=self._table,
                    Key={"id": {"S": key}},
                    ConditionExpression="#s = :p AND #t = :t",
                    ExpressionAttributeNames={"#s": "status", "#t": "token"},
                    ExpressionAttributeValues={":p": {"S": "INPROGRESS"}, ":t": {"S": self.token}},
                )
            except ClientError as exc:
                if not _is_condition_failure(exc):
                    raise

    def complete_if_in_progress(self, key: str, result: dict[str, Any]) -> dict[str, Any] | None:
        """Resolve a claim left INPROGRESS (crash window) from SES's own Send event.

        Returns the result to report: ``result`` when this call settled the claim, the stored
        result when an earlier Send event settled it (its report may not have reached the
        results queue: the event is then redelivered and must report again), else None (the
        sender completed the claim itself and reported it).
        """
        now = int(self._clock())
        try:
            self._db.update_item(
                TableName=self._table,
                Key={"id": {"S": key}},
                UpdateExpression=(
                    "SET #s = :c, #r = :r, expiration = :e, settled_by = :by REMOVE lease_until, #t"
                ),
                ConditionExpression="#s = :p",
                ExpressionAttributeNames={"#s": "status", "#r": "result", "#t": "token"},
                ExpressionAttributeValues={
                    ":c": {"S": "COMPLETED"},
                    ":p": {"S": "INPROGRESS"},
                    ":r": {"S": json.dumps(result, separators=(",", ":"))},
                    ":e": {"N": str(now + RETENTION_SECONDS)},
                    ":by": {"S": SETTLED_BY_SEND_EVENT},
                },
                # The current item comes back with a failed condition, without a second read.
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return result
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise
            old = exc.response.get("Item") or {}
            if (old.get("settled_by") or {}).get("S") == SETTLED_BY_SEND_EVENT and "result" in old:
                stored: dict[str, Any] = json.loads(old["result"]["S"])
                return stored
            return None

    # -- the Send-event watermark and its probe (docs/lambdas.md, "The crash window") ---------
    def advance_send_watermark(self, mail_timestamp: int) -> None:
        """Record that every Send event up to ``mail_timestamp`` handled so far is settled."""
        now = int(self._clock())
        try:
            self._db.update_item(
                TableName=self._table,
                Key={"id": {"S": SEND_WATERMARK_KEY}},
                UpdateExpression="SET mail_ts = :t, seen_at = :now",
                ConditionExpression="attribute_not_exists(mail_ts) OR mail_ts < :t",
                ExpressionAttributeValues={":t": {"N": str(mail_timestamp)}, ":now": {"N": str(now)}},
            )
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise

    def send_watermark(self) -> int:
        """The newest fully handled Send event's ``mail.timestamp`` (0 before any)."""
        item = self._db.get_item(
            TableName=self._table, Key={"id": {"S": SEND_WATERMARK_KEY}}, ConsistentRead=True
        ).get("Item")
        return int(item["mail_ts"]["N"]) if item and "mail_ts" in item else 0

    def take_probe_slot(self, interval_seconds: int) -> bool:
        """True for at most one caller per ``interval_seconds`` across all invocations."""
        now = int(self._clock())
        try:
            self._db.put_item(
                TableName=self._table,
                Item={
                    "id": {"S": SEND_PROBE_KEY},
                    "sent_at": {"N": str(now)},
                    "expiration": {"N": str(now + RETENTION_SECONDS)},
                },
                ConditionExpression="attribute_not_exists(id) OR sent_at <= :before",
                ExpressionAttributeValues={":before": {"N": str(now - max(1, interval_seconds))}},
            )
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise
            return False
        return True

    # -- cancellation (written by the bridge: moodle_bridge/transports/cloud_records.py) -----
    def job_cancelled(self, job_id: str) -> bool:
        """True once the bridge wrote ``cancel#<job_id>``: no further SES call for the job."""
        item = self._db.get_item(
            TableName=self._table, Key={"id": {"S": cancel_key(job_id)}}, ConsistentRead=True
        ).get("Item")
        return item is not None

    # -- job routing (where results of a job go; used by the SES event processor) ----------
    def remember_job(self, job_id: str, company_id: int, callback_url: str, key_id: str) -> None:
        now = int(self._clock())
        self._db.put_item(
            TableName=self._table,
            Item={
                "id": {"S": job_key(company_id, job_id)},
                "company_id": {"N": str(company_id)},
                "callback_url": {"S": callback_url},
                "key_id": {"S": key_id},
                "expiration": {"N": str(now + RETENTION_SECONDS)},
            },
        )

    def job_route(self, company_id: int, job_id: str) -> tuple[int, str, str] | None:
        key = {"id": {"S": job_key(company_id, job_id)}}
        item = self._db.get_item(TableName=self._table, Key=key).get("Item")
        if item is None:
            return None
        return int(item["company_id"]["N"]), item["callback_url"]["S"], item["key_id"]["S"]

    def put_item(self, key: str, attributes: dict[str, Any]) -> None:
        now = int(self._clock())
        item = {"id": {"S": key}, "expiration": {"N": str(now + RETENTION_SECONDS)}}
        item.update(attributes)
        self._db.put_item(TableName=self._table, Item=item)

    def put_record(self, key: str, attributes: dict[str, Any]) -> None:
        """An item without ``expiration``: the table's TTL never removes it (verify records)."""
        self._db.put_item(TableName=self._table, Item={"id": {"S": key}, **attributes})

    def put_company_item(self, key: str, company_id: int, attributes: dict[str, Any]) -> bool:
        """Write ``key`` for ``company_id`` unless another company already holds it (then False).

        For keys in a namespace shared by every company (certificate verification codes). Like
        ``put_record``, the item has no ``expiration``: the table's TTL never removes it."""
        item = {"id": {"S": key}, "company_id": {"N": str(int(company_id))}}
        item.update(attributes)
        try:
            self._db.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(id) OR company_id = :company",
                ExpressionAttributeValues={":company": {"N": str(int(company_id))}},
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def add_failure(self, key: str, window_seconds: int) -> int:
        """Count one failure under ``key`` (kept for ``window_seconds``); the new count."""
        now = int(self._clock())
        answer = self._db.update_item(
            TableName=self._table,
            Key={"id": {"S": key}},
            UpdateExpression="ADD failures :one SET expiration = if_not_exists(expiration, :exp)",
            ExpressionAttributeValues={":one": {"N": "1"}, ":exp": {"N": str(now + window_seconds)}},
            ReturnValues="UPDATED_NEW",
        )
        return int(answer["Attributes"]["failures"]["N"])

    def failures(self, key: str) -> int:
        item = self.get_item(key)
        return int(item["failures"]["N"]) if item is not None and "failures" in item else 0

    def get_item(self, key: str) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self._db.get_item(TableName=self._table, Key={"id": {"S": key}}).get(
            "Item"
        )
        return item
