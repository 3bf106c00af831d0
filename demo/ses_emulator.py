"""A faithful stand-in for the two SESv2 calls moto lacks: SendBulkEmail and GetAccount.

Hooks on the real boto3 client (botocore events), so the code under test makes real calls
with real parameter validation. SendBulkEmail enforces SES's documented rules (template
required, 1-50 destinations, a verified sender, well-formed replacement data), renders the
inline template with SES's simple ``{{name}}`` substitution (no HTML escaping, as SES does),
and records each message in moto's SES backend ``sent_messages`` exactly like SendEmail.
It enforces the account's MaxSendRate as SES does: recipients are counted in the calendar
second the call arrives, and a call that would take that second over the rate is refused whole
with ``TooManyRequestsException`` ("Maximum sending rate exceeded."). Messages to SES's mailbox
simulator are not counted (SES: they "don't count toward your sending quota"). Emulators in
several processes (bench/pacing_bench.py runs each poller as its own process) share one account's
count through a ``SharedRateCount`` in shared memory.
It can also inject faults (throttling, rejections, lost connections) into any SESv2 call, and
publish a ``Send`` event for every message it accepts, shaped as the configuration set's
EventBridge destination delivers it (``publish``; the stack routes them to the ses-events queue).
Only ``Send`` is emulated: delivery, bounces and complaints happen beyond any emulator.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr
from multiprocessing.context import BaseContext
from typing import Any

from botocore.exceptions import ReadTimeoutError
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ses.models import Message, ses_backends
from moto.ses.utils import is_valid_address

_VAR = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")


class _Http:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}


def _error(status: int, code: str, message: str) -> tuple[_Http, dict[str, Any]]:
    return _Http(status), {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }


@dataclass
class BulkSent:
    message_id: str
    to: str
    subject: str
    html: str
    text: str
    headers: list[dict[str, str]]
    tags: dict[str, str]


class SharedRateCount:
    """SES's count of recipients per calendar second for one account, in shared memory, so that
    emulators in separate processes (forked or spawned with it as an argument) refuse together
    what is over the rate. Counts seconds from ``origin`` for ``seconds`` seconds."""

    def __init__(self, origin: int, seconds: int = 3600, context: BaseContext | None = None) -> None:
        ctx = context or multiprocessing.get_context()
        self.origin = origin
        self._lock = ctx.Lock()
        self._counts = ctx.Array("q", seconds, lock=False)
        self._throttled = ctx.Value("q", 0, lock=False)
        self._first_accepted = ctx.Value("d", 0.0, lock=False)

    def book(self, second: int, recipients: int, limit: int, now: float) -> bool:
        """Count ``recipients`` in ``second`` unless that takes it over ``limit`` (then count
        one refused call instead)."""
        index = second - self.origin
        if not 0 <= index < len(self._counts):
            raise ValueError(f"second {second} is outside the counted window")
        with self._lock:
            used = self._counts[index]
            if used + recipients > limit:
                self._throttled.value += 1
                return False
            self._counts[index] = used + recipients
            if not self._first_accepted.value:
                self._first_accepted.value = now
        return True

    def per_second(self) -> dict[int, int]:
        """Recipients accepted per calendar second (seconds with none left out)."""
        with self._lock:
            return {self.origin + i: n for i, n in enumerate(self._counts) if n}

    @property
    def rate_throttled(self) -> int:
        return int(self._throttled.value)

    @property
    def first_accepted(self) -> float | None:
        return float(self._first_accepted.value) or None


@dataclass
class FakeSes:
    region: str = "eu-west-1"
    max_send_rate: float = 14.0
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    bulk_sent: list[BulkSent] = field(default_factory=list)
    #: SendEmail calls SES accepted: (to, tags) per message, for exactly-once accounting.
    single_sent: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: fault(operation, params) -> None or an (http, parsed) error response / an exception.
    fault: Callable[[str, dict[str, Any]], Any] | None = None
    #: Called after SES accepted a SendEmail/SendBulkEmail call (a crash here loses the answer).
    accepted: Callable[[str, dict[str, Any]], None] | None = None
    #: Receives the EventBridge events (``Send``) of the messages of each accepted call.
    publish: Callable[[list[dict[str, Any]]], None] | None = None
    #: Refuse calls over ``max_send_rate`` recipients per calendar second (as SES does).
    enforce_rate: bool = True
    clock: Callable[[], float] = time.time
    #: Recipients accepted per calendar second (SES's count), and calls refused for the rate.
    per_second: dict[int, int] = field(default_factory=dict)
    rate_throttled: int = 0
    #: When SES first accepted a counted call (the start of a job, as SES sees it).
    first_accepted: float | None = None
    #: Count (and refuse) in this count shared with emulators in other processes instead of
    #: ``per_second``/``rate_throttled``/``first_accepted`` (which then stay empty).
    shared_count: SharedRateCount | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def install(self, sesv2_client: Any) -> None:
        events = sesv2_client.meta.events
        events.register("before-parameter-build.sesv2.*", self._capture)
        events.register("before-call.sesv2.*", self._before_call)
        events.register("after-call.sesv2.SendEmail", self._after_send_email)
        events.register("after-call.sesv2.SendBulkEmail", self._after_send_bulk)

    def _after_send_email(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        if getattr(http_response, "status_code", 500) != 200 or "MessageId" not in parsed:
            return
        params = context.get("fake_ses_params", {})
        to = (params.get("Destination") or {}).get("ToAddresses") or [""]
        tags = {t["Name"]: t["Value"] for t in params.get("EmailTags", [])}
        self.single_sent.append((to[0], tags))
        self._published([(str(parsed["MessageId"]), to[0], tags)], params)
        if self.accepted is not None:
            self.accepted("SendEmail", params)

    def _after_send_bulk(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        if getattr(http_response, "status_code", 500) != 200:
            return
        params = context.get("fake_ses_params", {})
        accepted: list[BulkSent] = context.get("fake_ses_bulk_accepted", [])  # this call's messages
        self._published([(b.message_id, b.to, b.tags) for b in accepted], params)
        if self.accepted is not None:
            self.accepted("SendBulkEmail", params)

    def _published(self, messages: list[tuple[str, str, dict[str, str]]], params: dict[str, Any]) -> None:
        if self.publish is None or not messages or not params.get("ConfigurationSetName"):
            return  # SES publishes events only for mail sent through a configuration set
        at = datetime.now(UTC)
        stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        events = []
        for message_id, to, tags in messages:
            all_tags = {
                **{name: [value] for name, value in tags.items()},
                "ses:configuration-set": [params["ConfigurationSetName"]],
            }
            events.append(
                {
                    "version": "0",
                    "id": str(uuid.uuid4()),
                    "detail-type": "Email Sent",
                    "source": "aws.ses",
                    "account": DEFAULT_ACCOUNT_ID,
                    "time": at.isoformat(timespec="seconds").replace("+00:00", "Z"),
                    "region": self.region,
                    "resources": [],
                    "detail": {
                        "eventType": "Send",
                        "mail": {
                            "timestamp": stamp,
                            "messageId": message_id,
                            "destination": [parseaddr(to)[1]],
                            "tags": all_tags,
                        },
                        "send": {},
                    },
                }
            )
        self.publish(events)

    def _capture(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        context["fake_ses_params"] = dict(params)

    def _backend(self) -> Any:
        return ses_backends[DEFAULT_ACCOUNT_ID][self.region]

    def _before_call(self, model: Any, params: Any, context: dict[str, Any], **_: Any) -> Any:
        name = model.name
        api_params = context.get("fake_ses_params", {})
        self.calls.append((name, api_params))
        if self.fault is not None:
            injected = self.fault(name, api_params)
            if isinstance(injected, Exception):
                raise injected
            if injected is not None:
                return injected
        if name == "GetAccount":
            return _Http(200), {
                "SendQuota": {
                    "Max24HourSend": 50000.0,
                    "MaxSendRate": self.max_send_rate,
                    "SentLast24Hours": 0.0,
                },
                "ProductionAccessEnabled": True,
                "SendingEnabled": True,
                "ResponseMetadata": {"HTTPStatusCode": 200},
            }
        if name in ("SendEmail", "SendBulkEmail"):
            refused = self._count(api_params)
            if refused is not None:
                return refused
        if name == "SendBulkEmail":
            accepted: list[BulkSent] = []
            context["fake_ses_bulk_accepted"] = accepted
            with self._lock:  # calls arrive side by side; message ids stay unique
                return self._send_bulk(api_params, accepted)
        return None  # moto handles it

    def _count(self, params: dict[str, Any]) -> Any:
        """Book the call's recipients in the second it arrives, or refuse it for the rate."""
        if "BulkEmailEntries" in params:
            addresses = [a for e in params["BulkEmailEntries"] for a in e["Destination"]["ToAddresses"]]
        else:
            d = params.get("Destination") or {}
            addresses = [*d.get("ToAddresses", []), *d.get("CcAddresses", []), *d.get("BccAddresses", [])]
        counted = sum(1 for a in addresses if not parseaddr(a)[1].endswith("@simulator.amazonses.com"))
        if not counted or not self.enforce_rate:
            return None
        second = math.floor(self.clock())
        if self.shared_count is not None:
            limit = math.floor(self.max_send_rate)
            return None if self.shared_count.book(second, counted, limit, self.clock()) else throttle()
        with self._lock:
            used = self.per_second.get(second, 0)
            if used + counted > math.floor(self.max_send_rate):
                self.rate_throttled += 1
                return throttle()
            self.per_second[second] = used + counted
            if self.first_accepted is None:
                self.first_accepted = self.clock()
        return None

    def _send_bulk(self, p: dict[str, Any], accepted: list[BulkSent]) -> Any:
        template = p.get("DefaultContent", {}).get("Template")
        if not template or not (template.get("TemplateContent") or template.get("TemplateName")):
            return _error(400, "BadRequestException", "DefaultContent.Template is required")
        if "TemplateName" in template:
            return _error(404, "NotFoundException", "stored templates are not emulated")
        entries = p.get("BulkEmailEntries", [])
        if not 1 <= len(entries) <= 50:
            return _error(400, "BadRequestException", "between 1 and 50 BulkEmailEntries are allowed")
        backend = self._backend()
        source = parseaddr(p["FromEmailAddress"])[1]
        if not backend._is_verified_address(source):
            return _error(400, "MessageRejected", f"Email address is not verified: {source}")
        content = template["TemplateContent"]
        default_data = json.loads(template.get("TemplateData") or "{}")
        default_tags = {t["Name"]: t["Value"] for t in p.get("DefaultEmailTags", [])}
        results = []
        for entry in entries:
            replacement = entry.get("ReplacementEmailContent", {}).get("ReplacementTemplate", {})
            try:
                data = {**default_data, **json.loads(replacement.get("ReplacementTemplateData") or "{}")}
            except ValueError:
                results.append(
                    {"Status": "INVALID_PARAMETER", "Error": "ReplacementTemplateData is not JSON"}
                )
                continue
            to = entry["Destination"]["ToAddresses"]
            if not to or any(is_valid_address(parseaddr(a)[1]) is not None for a in to):
                results.append({"Status": "INVALID_PARAMETER", "Error": "Illegal address"})
                continue

            def fill(text: str, data: dict[str, Any] = data) -> str:
                return _VAR.sub(lambda m: str(data.get(m.group(1), "")), text)

            subject, html, text = (
                fill(content["Subject"]),
                fill(content.get("Html", "")),
                fill(content.get("Text", "")),
            )
            message = Message(
                message_id=f"bulk-{len(self.bulk_sent):06d}-{len(backend.sent_messages):06d}",
                source=p["FromEmailAddress"],
                subject=subject,
                body=html or text,
                destinations={"ToAddresses": list(to)},
            )
            backend.sent_messages.append(message)
            backend.sent_message_count += len(to)
            tags = {**default_tags, **{t["Name"]: t["Value"] for t in entry.get("ReplacementTags", [])}}
            sent = BulkSent(message.id, to[0], subject, html, text, entry.get("ReplacementHeaders", []), tags)
            self.bulk_sent.append(sent)
            accepted.append(sent)
            results.append({"Status": "SUCCESS", "MessageId": message.id})
        return _Http(200), {"BulkEmailEntryResults": results, "ResponseMetadata": {"HTTPStatusCode": 200}}

    # -- fault helpers ----------------------------------------------------------------------
    def peak_second(self) -> int:
        """The most recipients SES accepted in any one calendar second."""
        with self._lock:
            return max(self.per_second.values(), default=0)

    def sent_count(self) -> int:
        return len(self._backend().sent_messages)

    def sent_messages(self) -> list[Any]:
        return list(self._backend().sent_messages)

    def sends_by_tags(self) -> list[tuple[str, dict[str, str]]]:
        """(to, tags) of every message SES accepted, bulk or single: the exactly-once oracle."""
        return [(b.to, b.tags) for b in self.bulk_sent] + list(self.single_sent)


def to_sqs(sqs: Any, queue_url: str) -> Callable[[list[dict[str, Any]]], None]:
    """An EventBridge rule whose target is an SQS queue: one message per event."""

    def publish(events: list[dict[str, Any]]) -> None:
        for start in range(0, len(events), 10):
            chunk = events[start : start + 10]
            response = sqs.send_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "MessageBody": json.dumps(e)} for i, e in enumerate(chunk)],
            )
            if response.get("Failed"):
                raise RuntimeError(f"EventBridge could not deliver to SQS: {response['Failed']}")

    return publish


def throttle(status: int = 429) -> tuple[_Http, dict[str, Any]]:
    return _error(status, "TooManyRequestsException", "Maximum sending rate exceeded.")


def daily_quota(status: int = 429) -> tuple[_Http, dict[str, Any]]:
    """The 24-hour sending quota is used up (SES's wording; not the per-second rate)."""
    return _error(status, "TooManyRequestsException", "Daily message quota exceeded.")


def rejected(message: str = "Email address is not verified.") -> tuple[_Http, dict[str, Any]]:
    return _error(400, "MessageRejected", message)


def bad_address() -> tuple[_Http, dict[str, Any]]:
    return _error(400, "BadRequestException", "Illegal address")


def lost_connection() -> Exception:
    error: Exception = ReadTimeoutError(endpoint_url="https://email.eu-west-1.amazonaws.com")
    return error
