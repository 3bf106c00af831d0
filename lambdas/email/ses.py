"""SESv2 calls and what their errors mean for exactly-once sending."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

#: SendBulkEmail destinations per call (documented for v1, applied to v2 by the SDKs).
MAX_BULK_DESTINATIONS = 50

RETRYABLE_CODES = {
    "TooManyRequestsException",
    "ThrottlingException",
    "Throttling",
    "LimitExceededException",
    "SendingPausedException",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
}
THROTTLE_CODES = {"TooManyRequestsException", "ThrottlingException", "Throttling", "LimitExceededException"}
#: SendBulkEmail per-entry statuses that mean "not sent, try again later".
RETRYABLE_BULK_STATUSES = {
    "ACCOUNT_THROTTLED",
    "ACCOUNT_DAILY_QUOTA_EXCEEDED",
    "TRANSIENT_FAILURE",
    "ACCOUNT_SENDING_PAUSED",
    "CONFIGURATION_SET_SENDING_PAUSED",
}
THROTTLE_BULK_STATUSES = {"ACCOUNT_THROTTLED", "ACCOUNT_DAILY_QUOTA_EXCEEDED"}
#: Codes that mean "over the per-second rate" (a second later there is room again), unless the
#: message names the daily quota ("Daily message quota exceeded.").
RATE_CODES = {"TooManyRequestsException", "ThrottlingException", "Throttling"}
RATE_BULK_STATUSES = {"ACCOUNT_THROTTLED"}


def is_rate_throttle(code: str, message: str) -> bool:
    """Refused for the per-second send rate: worth another try in about a second."""
    return (code in RATE_CODES or code in RATE_BULK_STATUSES) and "daily" not in message.lower()


@dataclass(frozen=True)
class Outcome:
    """What happened to one destination of an SES call.

    kind: ``sent`` (message_id set), ``final`` (permanent failure), ``retry`` (SES did not
    accept it: safe to send again), ``unknown`` (the request may have reached SES: never
    send again automatically).
    """

    kind: str
    message_id: str | None = None
    code: str = ""
    message: str = ""
    throttled: bool = False

    @property
    def rate_throttled(self) -> bool:
        """Refused for the per-second rate only (retried after about a second)."""
        return self.throttled and is_rate_throttle(self.code, self.message)


@dataclass
class SesCallStats:
    send_email: int = 0
    send_bulk_email: int = 0
    destinations: int = 0
    by_code: dict[str, int] = field(default_factory=dict)


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Name": k, "Value": v} for k, v in tags.items()]


def error_outcome(exc: Exception) -> Outcome:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "ClientError")
        # SES error messages describe the request (address, quota), never the body.
        message = str(error.get("Message") or code)[:500]
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in RETRYABLE_CODES or status >= 500:
            return Outcome("retry", code=code, message=message, throttled=code in THROTTLE_CODES)
        return Outcome("final", code=code, message=message)
    if isinstance(exc, ConnectTimeoutError | EndpointConnectionError):
        return Outcome("retry", code="connect_failed", message="could not connect to SES")
    if isinstance(exc, ReadTimeoutError | ConnectionClosedError):
        return Outcome(
            "unknown", code="outcome_unknown", message="SES connection lost after the request was sent"
        )
    raise exc


class SesSender:
    def __init__(self, sesv2: Any, configuration_set: str) -> None:
        self._ses = sesv2
        self._configuration_set = configuration_set
        self.stats = SesCallStats()
        self._lock = threading.Lock()  # the sender makes calls side by side

    def _count(self, operation: str, destinations: int) -> None:
        with self._lock:
            if operation == "SendEmail":
                self.stats.send_email += 1
            else:
                self.stats.send_bulk_email += 1
            self.stats.destinations += destinations

    def _count_error(self, code: str, n: int) -> None:
        with self._lock:
            self.stats.by_code[code] = self.stats.by_code.get(code, 0) + n

    def _common(self, tenant: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self._configuration_set:
            params["ConfigurationSetName"] = self._configuration_set
        if tenant:
            params["TenantName"] = tenant
        return params

    def send_raw(self, raw: bytes, destination: str, tags: dict[str, str], tenant: str | None) -> Outcome:
        self._count("SendEmail", 1)
        try:
            response = self._ses.send_email(
                Destination={"ToAddresses": [destination]},
                Content={"Raw": {"Data": raw}},
                EmailTags=_tags(tags),
                **self._common(tenant),
            )
        except Exception as exc:
            outcome = error_outcome(exc)
            self._count_error(outcome.code, 1)
            return outcome
        return Outcome("sent", message_id=str(response["MessageId"]))

    def send_probe(self, from_address: str, destination: str, tags: dict[str, str]) -> Outcome:
        """A plain message through the configuration set (so SES publishes its events)."""
        try:
            response = self._ses.send_email(
                FromEmailAddress=from_address,
                Destination={"ToAddresses": [destination]},
                Content={
                    "Simple": {
                        "Subject": {"Data": "ManiReports Cloud Offload: SES event pipeline probe"},
                        "Body": {"Text": {"Data": "Sent to confirm that SES Send events are flowing."}},
                    }
                },
                EmailTags=_tags(tags),
                **self._common(None),
            )
        except Exception as exc:
            return error_outcome(exc)
        return Outcome("sent", message_id=str(response["MessageId"]))

    def send_bulk(
        self,
        *,
        from_address: str,
        reply_to: Sequence[str],
        subject: str,
        html: str,
        text: str,
        entries: Sequence[dict[str, Any]],
        default_tags: dict[str, str],
        tenant: str | None,
    ) -> list[Outcome]:
        """One SendBulkEmail call; ``entries`` are ready BulkEmailEntry dicts (at most 50)."""
        if not 1 <= len(entries) <= MAX_BULK_DESTINATIONS:
            raise ValueError(f"SendBulkEmail takes 1-{MAX_BULK_DESTINATIONS} destinations")
        self._count("SendBulkEmail", len(entries))
        params: dict[str, Any] = {
            "FromEmailAddress": from_address,
            "DefaultContent": {
                "Template": {
                    "TemplateContent": {"Subject": subject, "Html": html, "Text": text},
                    "TemplateData": "{}",
                }
            },
            "BulkEmailEntries": list(entries),
            "DefaultEmailTags": _tags(default_tags),
            **self._common(tenant),
        }
        if reply_to:
            params["ReplyToAddresses"] = list(reply_to)
        try:
            response = self._ses.send_bulk_email(**params)
        except Exception as exc:
            outcome = error_outcome(exc)
            self._count_error(outcome.code, len(entries))
            return [outcome] * len(entries)
        results = response.get("BulkEmailEntryResults", [])
        outcomes: list[Outcome] = []
        for index in range(len(entries)):
            if index >= len(results):
                outcomes.append(
                    Outcome("unknown", code="outcome_unknown", message="SES returned no entry result")
                )
                continue
            entry = results[index]
            status = str(entry.get("Status", "FAILED"))
            if status == "SUCCESS":
                outcomes.append(Outcome("sent", message_id=str(entry["MessageId"])))
            elif status in RETRYABLE_BULK_STATUSES:
                outcomes.append(
                    Outcome(
                        "retry",
                        code=status,
                        message=str(entry.get("Error") or status)[:500],
                        throttled=status in THROTTLE_BULK_STATUSES,
                    )
                )
            else:
                outcomes.append(
                    Outcome("final", code=status, message=str(entry.get("Error") or status)[:500])
                )
        return outcomes


def replacement_data_json(values: dict[str, str]) -> str:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))
