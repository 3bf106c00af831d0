"""SES events (EventBridge -> SQS) mapped back to (job, recipient) by the tags we sent.

Every message carries SES tags ``job_id``, ``recipient_id`` and ``company_id``; the job's
callback (URL and key id) was recorded by the sender as ``job#<job_id>``. A ``Send`` event
also settles a claim left INPROGRESS by a sender that stopped in the crash window; once a
whole SQS batch is handled, the newest ``Send`` time in it becomes the *Send watermark* that
lets the sender resend crash-window claims no event settled (``lambdas/email/crash_window.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lambdas.common.idempotency import Claim, ClaimState, IdempotencyStore
from lambdas.email.sender import untag_value
from lambdas.results.builder import recipient_result, result_batches
from lambdas.results.queue import ResultsQueue
from offload_contract.cloud_keys import send_key

IGNORED = {"Open", "Click", "DeliveryDelay", "Subscription"}


def _timestamp(value: Any, default: int) -> int:
    if not isinstance(value, str):
        return default
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return default


def _tag(tags: dict[str, Any], name: str) -> str | None:
    values = tags.get(name)
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return None


@dataclass
class EventReport:
    mapped: int = 0
    ignored: int = 0
    unroutable: int = 0
    settled: int = 0
    #: The Send watermark written after this batch (0: not moved).
    watermark: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    #: result_batch messages written to the results queue.
    messages: int = 0
    #: Ids of the records to report as batch item failures (SQS redelivers them).
    failed: list[str] = field(default_factory=list)


def tagged_recipient(detail: dict[str, Any]) -> tuple[str, str, int] | None:
    """(job_id, recipient_id, company_id) from the tags the sender put on the message, or None."""
    tags = (detail.get("mail") or {}).get("tags") or {}
    job, recipient, company = _tag(tags, "job_id"), _tag(tags, "recipient_id"), _tag(tags, "company_id")
    if not (job and recipient and company and company.isdigit()):
        return None
    return untag_value(job), untag_value(recipient), int(company)


def map_event(detail: dict[str, Any], now: int) -> tuple[str, str, int, dict[str, Any]] | None:
    """(job_id, recipient_id, company_id, result) for an SES event detail, or None."""
    event_type = detail.get("eventType") or detail.get("notificationType")
    tagged = tagged_recipient(detail)
    if not event_type or tagged is None:
        return None
    job_id, recipient_id, company_id = tagged
    mail = detail.get("mail") or {}
    message_id = mail.get("messageId")
    at = _timestamp(mail.get("timestamp"), now)

    def result(status: str, **kw: Any) -> dict[str, Any]:
        return recipient_result(job_id, recipient_id, status, 1, provider_message_id=message_id, **kw)

    if event_type == "Send":
        out = result("sent", occurred_at=at)
    elif event_type == "Delivery":
        out = result("delivered", occurred_at=_timestamp((detail.get("delivery") or {}).get("timestamp"), at))
    elif event_type == "Bounce":
        bounce = detail.get("bounce") or {}
        kind, sub = str(bounce.get("bounceType", "Undetermined")), str(bounce.get("bounceSubType", "General"))
        diagnostics = [str(r.get("diagnosticCode", "")) for r in bounce.get("bouncedRecipients", [])]
        out = result(
            "bounced",
            occurred_at=_timestamp(bounce.get("timestamp"), at),
            error_code=f"bounce.{kind}.{sub}",
            error_message="; ".join(d for d in diagnostics if d)[:1000] or f"{kind} bounce",
            permanent=kind == "Permanent",
        )
    elif event_type == "Complaint":
        complaint = detail.get("complaint") or {}
        feedback = str(complaint.get("complaintFeedbackType") or "unspecified")
        out = result(
            "complained",
            occurred_at=_timestamp(complaint.get("timestamp"), at),
            error_code=f"complaint.{feedback}",
            error_message="recipient marked the message as spam",
            permanent=True,
        )
    elif event_type == "Reject":
        reason = str((detail.get("reject") or {}).get("reason") or "rejected by SES")
        out = result(
            "rejected", occurred_at=at, error_code="ses_reject", error_message=reason, permanent=True
        )
    elif event_type == "Rendering Failure":
        failure = detail.get("failure") or detail.get("renderingFailure") or {}
        out = result(
            "failed",
            occurred_at=at,
            error_code="rendering_failure",
            error_message=str(failure.get("errorMessage") or "SES could not render the template"),
            permanent=True,
        )
    else:
        return None
    return job_id, recipient_id, company_id, out


def _send_detail(event: Any) -> dict[str, Any] | None:
    """The detail of an SES ``Send`` event (ours, a probe or any other), else None."""
    if not isinstance(event, dict) or event.get("source") != "aws.ses":
        return None
    detail = event.get("detail")
    if not isinstance(detail, dict) or detail.get("eventType") != "Send":
        return None
    return detail


def _send_time(event: Any) -> int:
    """``mail.timestamp`` of a Send event, else 0."""
    detail = _send_detail(event)
    return 0 if detail is None else _timestamp((detail.get("mail") or {}).get("timestamp"), 0)


class SesEventProcessor:
    def __init__(self, store: IdempotencyStore, results: ResultsQueue, clock: Callable[[], float]) -> None:
        self.store = store
        self.results = results
        self.clock = clock
        self._routes: dict[tuple[int, str], tuple[int, str, str] | None] = {}

    def route(self, company_id: int, job_id: str) -> tuple[int, str, str] | None:
        key = (company_id, job_id)
        if key not in self._routes or self._routes[key] is None:
            if len(self._routes) > 10_000:
                self._routes.clear()
            self._routes[key] = self.store.job_route(company_id, job_id)
        return self._routes[key]

    def process(self, records: Sequence[tuple[str, Any]]) -> EventReport:
        """Map a whole SQS batch of events, ``(record id, EventBridge event)`` each.

        Results are aggregated per (callback_url, key_id, company_id) into as few result_batch
        messages as the contract allows, instead of one message per event. A record fails
        (and is redelivered) when its own processing raises or when a message holding one of
        its results could not be written; the bridge ingests a repeated result idempotently.
        """
        report = EventReport()
        grouped: dict[tuple[str, str, int], list[tuple[str, dict[str, Any]]]] = {}
        failed: set[str] = set()
        now = int(self.clock())
        newest_send = 0
        try:
            # One consistent read for the batch's Send events instead of a conditional write
            # each: nearly all of them are for claims the sender completed itself.
            claims = self.store.lookup_many(self._send_keys(records))
        except Exception:  # the whole batch is retried
            return EventReport(failed=[record_id for record_id, _ in records])
        for record_id, event in records:
            try:
                outcome = self._map(event, now, report, claims)
                newest_send = max(newest_send, _send_time(event))
            except Exception:  # whatever one record hits fails that record only
                failed.add(record_id)
                continue
            if outcome is not None:
                route, result = outcome
                grouped.setdefault(route, []).append((record_id, result))
                report.mapped += 1
                report.by_status[result["status"]] = report.by_status.get(result["status"], 0) + 1
        for (url, key_id, company_id), entries in grouped.items():
            batches = result_batches("ses_events", company_id, [result for _, result in entries])
            try:
                self.results.publish(batches, url, key_id)
            except Exception:  # the records behind it are redelivered
                failed.update(record_id for record_id, _ in entries)
                continue
            report.messages += len(batches)
        report.failed = [record_id for record_id, _ in records if record_id in failed]
        if newest_send and not failed:
            # Only a batch handled whole may move it: a failed record could be the Send event
            # of a crash-window claim, which must settle before the sender may resend it.
            self.store.advance_send_watermark(newest_send)
            report.watermark = newest_send
        return report

    @staticmethod
    def _send_keys(records: Sequence[tuple[str, Any]]) -> list[str]:
        keys = []
        for _, event in records:
            detail = _send_detail(event)
            tagged = None if detail is None else tagged_recipient(detail)
            if tagged is not None:
                keys.append(send_key(tagged[2], tagged[0], tagged[1]))
        return keys

    def _map(
        self, event: Any, now: int, report: EventReport, claims: dict[str, Claim]
    ) -> tuple[tuple[str, str, int], dict[str, Any]] | None:
        """((callback_url, key_id, company_id), result) for one event, or None to drop it."""
        if not isinstance(event, dict):
            report.ignored += 1
            return None
        detail = event.get("detail") if event.get("source") == "aws.ses" else None
        if not isinstance(detail, dict) or (detail.get("eventType") or "") in IGNORED:
            report.ignored += 1
            return None
        mapped = map_event(detail, now)
        if mapped is None:
            report.ignored += 1
            return None
        job_id, recipient_id, company_id, result = mapped
        if result["status"] == "sent":
            # Normally the sender already reported it; only a claim left in the crash window
            # is settled (and reported) from here.
            key = send_key(company_id, job_id, recipient_id)
            claim = claims.get(key)
            if claim is None or (claim.state is ClaimState.COMPLETED and not claim.settled_by_event):
                return None  # completed and reported by the sender (or not ours to settle)
            settled = self.store.complete_if_in_progress(key, result)
            if settled is None:
                return None
            report.settled += 1
            result = settled
        route = self.route(company_id, job_id)
        if route is None or route[0] != company_id:
            report.unroutable += 1
            return None
        return (route[1], route[2], company_id), result
