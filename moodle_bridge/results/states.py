"""The recipient state machine: which result moves a recipient where, and which is ignored.

Pure functions, no database. ``decide`` is the single place that says what a result does to a
recipient; ``ingest`` applies its decisions in bulk, and the property tests drive it directly.
The full table is in docs/results.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from moodle_bridge.storage.statuses import (
    ACTIVE_STATUSES,
    BOUNCED,
    CANCELLED,
    CLOSED_STATUSES,
    COMPLAINED,
    COUNTER_BUCKETS,
    COUNTER_COLUMNS,
    DELIVERED,
    FAILED,
    FINAL_STATUSES,
    JOB_CANCEL_STATES,
    JOB_CANCELLED,
    JOB_CANCELLING,
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_FELL_BACK,
    JOB_PARTIAL_FAILURE,
    JOB_PENDING,
    JOB_PROCESSING,
    JOB_QUEUED,
    JOB_STATUSES,
    JOB_TERMINAL,
    PENDING,
    QUEUED,
    REACHED_STATUSES,
    RECIPIENT_STATUSES,
    RENDERED,
    RESTORED,
    RETRYING,
    SENT,
    SKIPPED,
    job_status_for,
)

#: The recipient vocabulary lives in ``moodle_bridge.storage.statuses`` (shared with bridge core);
#: it is re-exported here so the state machine reads as one module.
__all__ = [
    "ACTIVE_STATUSES",
    "BOUNCED",
    "CANCELLED",
    "CLOSED_STATUSES",
    "COMPLAINED",
    "COUNTER_BUCKETS",
    "COUNTER_COLUMNS",
    "DELIVERED",
    "FAILED",
    "FINAL_STATUSES",
    "JOB_CANCELLED",
    "JOB_CANCELLING",
    "JOB_CANCEL_STATES",
    "JOB_COMPLETED",
    "JOB_FAILED",
    "JOB_FELL_BACK",
    "JOB_PARTIAL_FAILURE",
    "JOB_PENDING",
    "JOB_PROCESSING",
    "JOB_QUEUED",
    "JOB_STATUSES",
    "JOB_TERMINAL",
    "PENDING",
    "QUEUED",
    "REACHED_STATUSES",
    "RECIPIENT_STATUSES",
    "RENDERED",
    "RESTORED",
    "RETRYING",
    "SENT",
    "SKIPPED",
    "job_status_for",
]

#: The sender's error code for a recipient it did not send because its job was cancelled
#: (lambdas/email/sender.py); the bridge records such a recipient ``cancelled``, not failed.
CANCELLED_IN_CLOUD: Final = "job_cancelled"
#: Reconciliation's code for a recipient the cloud accepted but never claimed by the deadline:
#: the bridge wrote a closing record in the cloud first (the sender replays it, never sends),
#: so the recipient is failed and its IOMAD row goes back to IOMAD by the fallback rule.
NEVER_PROCESSED: Final = "never_processed"
#: Closed statuses a provider's word can still overturn: a recipient cancelled (or given back
#: to IOMAD) while its batch was in the cloud may have been sent before the cancel arrived.
#: ``skipped`` recipients were never handed to anyone, so nothing can be reported for them.
#: Only a recipient the bridge closed on its own can be reopened (``reopens_on_send``).
SENDABLE_AFTER_CLOSE: Final = frozenset({CANCELLED, RESTORED})
#: Error codes the bridge writes when it closes a recipient without the cloud's word on that
#: attempt, while the cloud may still hold it: a cancel racing a submitter that holds its batch
#: (job control), a batch the queue may have accepted though the bridge saw no answer (outbox).
#: A recipient closed on the cloud's word (a failure, the sender's own cancel, a never-processed
#: closing record) or one that already has a message id (sent, then rejected, then given back)
#: is not reopened by a later or replayed report: that would contradict what the cloud said.
CLOSED_BY_BRIDGE_CODES: Final = frozenset({"job_cancelled", "submit_abandoned"})

DISPATCH_RESULTS: Final = frozenset({"sent", "failed", "retrying", "rendered"})
EVENT_RESULTS: Final = frozenset({"delivered", "bounced", "complained", "rejected"})

#: A recipient confirmed the campaign's one-click unsubscribe (offload_contract/unsubscribe.py). It
#: is about the address, not the message: ``decide_unsubscribe`` says what it does, ``decide`` never
#: sees it, and the recipient's delivery status is left as it is.
UNSUBSCRIBED: Final = "unsubscribed"

#: Provider-event precedence: a later event only moves a recipient "up" this ladder.
_EVENT_RANK: Final = {SENT: 1, RENDERED: 1, DELIVERED: 2, BOUNCED: 3, COMPLAINED: 4}


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already in the state this result describes
    IGNORED = "ignored"  # stale, conflicting, or for a recipient that is closed


@dataclass(frozen=True)
class RecipientView:
    """What ``decide`` needs to know about a recipient row."""

    status: str
    batchid: int | None
    providermessageid: str | None
    artifactkey: str | None = None
    errorcode: str | None = None


def reopens_on_send(view: RecipientView) -> bool:
    """A provider's word that it sent the mail reopens this closed recipient (see above)."""
    return (
        view.status in SENDABLE_AFTER_CLOSE
        and view.providermessageid is None
        and view.errorcode in CLOSED_BY_BRIDGE_CODES
    )


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str = ""
    #: Column values to write when ``outcome`` is APPLIED (status always included).
    changes: tuple[tuple[str, Any], ...] = ()

    @property
    def new_status(self) -> str | None:
        return dict(self.changes).get("status")


def _applied(**changes: Any) -> Decision:
    return Decision(Outcome.APPLIED, "", tuple(sorted(changes.items())))


def storable_text(value: str | None) -> str | None:
    """Provider text made storable on every engine: NUL (PostgreSQL refuses it in text) and lone
    surrogates (not encodable as UTF-8, so MariaDB's driver refuses them) become U+FFFD."""
    if value is None:
        return None
    if "\x00" not in value and not any("\ud800" <= ch <= "\udfff" for ch in value):
        return value
    return "".join("\ufffd" if ch == "\x00" or "\ud800" <= ch <= "\udfff" else ch for ch in value)


def _error_fields(result: dict[str, Any]) -> dict[str, Any]:
    error = result.get("error") or {}
    return {
        "errorcode": storable_text(error.get("code")),
        "errormessage": storable_text((error.get("message") or "")[:1000]),
    }


def decide(view: RecipientView, result: dict[str, Any], result_batch_rowid: int | None) -> Decision:
    """What ``result`` does to a recipient currently in ``view``.

    ``result_batch_rowid`` is the bridge's batch row named by the report's ``batch_id`` (None when the
    report names no batch). A dispatch result for another batch than the recipient's current one comes
    from an older attempt and is ignored; provider events are matched by provider message id instead.
    """
    status = result["status"]
    current = view.status
    message_id = result.get("provider_message_id")

    if status in EVENT_RESULTS:
        if message_id is not None and view.providermessageid is not None:
            if message_id != view.providermessageid:
                return Decision(Outcome.IGNORED, "other_message")
        elif result_batch_rowid is not None and result_batch_rowid != view.batchid:
            return Decision(Outcome.IGNORED, "stale_attempt")
        return _decide_event(view, result, status, message_id)

    if result_batch_rowid is not None and result_batch_rowid != view.batchid:
        return Decision(Outcome.IGNORED, "stale_attempt")
    if current in CLOSED_STATUSES:
        if status == "sent" and reopens_on_send(view):
            # The cloud sent it before the cancel reached it: what was sent is recorded as sent
            # (with its message id, so its bounces still reach the suppression list).
            return _applied(status=SENT, providermessageid=message_id)
        return Decision(Outcome.IGNORED, f"recipient_{current}")
    if status == "sent":
        if current in (PENDING, QUEUED, RETRYING, RENDERED):
            return _applied(status=SENT, providermessageid=message_id, errorcode=None, errormessage=None)
        if current in REACHED_STATUSES and view.providermessageid in (None, message_id):
            return Decision(Outcome.DUPLICATE)
        return Decision(Outcome.IGNORED, "conflicts_with_" + current)
    if status == "rendered":
        artifact = result["artifact"]["key"]
        if current in (PENDING, QUEUED, RETRYING):
            if view.artifactkey is not None:  # already rendered; the mail part is what is pending
                return Decision(Outcome.DUPLICATE)
            return _applied(status=RENDERED, artifactkey=artifact)
        if current in REACHED_STATUSES:
            if view.artifactkey is None:
                return _applied(status=current, artifactkey=artifact)
            return Decision(Outcome.DUPLICATE)
        return Decision(Outcome.IGNORED, "conflicts_with_" + current)
    if status == "failed":
        code = (result.get("error") or {}).get("code")
        if current in (PENDING, QUEUED, RETRYING, RENDERED) and code == CANCELLED_IN_CLOUD:
            # The cloud did not send it because the job was cancelled before its SES call.
            return _applied(status=CANCELLED, **_error_fields(result))
        if current in (PENDING, QUEUED, RETRYING, RENDERED):
            return _applied(status=FAILED, **_error_fields(result))
        if current == FAILED:
            return Decision(Outcome.DUPLICATE)
        return Decision(Outcome.IGNORED, "conflicts_with_" + current)
    if status == "retrying":
        # Progress only moves forward: a (re-delivered) retrying never undoes a rendered certificate.
        if current in (PENDING, QUEUED):
            return _applied(status=RETRYING, **_error_fields(result))
        if current == RETRYING:
            return Decision(Outcome.DUPLICATE)
        return Decision(Outcome.IGNORED, "conflicts_with_" + current)
    return Decision(Outcome.IGNORED, "unknown_status")  # pragma: no cover - the schema forbids it


def decide_unsubscribe(job_category: str, suppressed_as: str | None) -> Decision:
    """What an ``unsubscribed`` result does. It never changes the recipient row: it is *applied* by
    suppressing the address for the company's campaign mail (reason ``unsubscribe``), a
    *duplicate* when the address is already suppressed (for any reason: a bounce or complaint
    already stops everything), and *ignored* for a job that is not campaign mail (only campaign
    jobs carry unsubscribe links, so a transactional job can never be the source)."""
    if job_category != "campaign":
        return Decision(Outcome.IGNORED, "not_campaign")
    if suppressed_as is not None:
        return Decision(Outcome.DUPLICATE)
    return Decision(Outcome.APPLIED)


def _decide_event(
    view: RecipientView, result: dict[str, Any], status: str, message_id: str | None
) -> Decision:
    current = view.status
    if current in CLOSED_STATUSES and not (reopens_on_send(view) and status != "rejected"):
        return Decision(Outcome.IGNORED, f"recipient_{current}")
    extra: dict[str, Any] = {}
    if message_id is not None and view.providermessageid is None:
        extra["providermessageid"] = message_id
    if status == "rejected":
        # SES refused the message (e.g. a virus): a final failure, unless it was already delivered.
        if current in (PENDING, QUEUED, RETRYING, SENT, RENDERED):
            return _applied(status=FAILED, **_error_fields(result), **extra)
        if current == FAILED:
            return Decision(Outcome.DUPLICATE)
        return Decision(Outcome.IGNORED, "conflicts_with_" + current)
    if current == FAILED:
        # The provider reports on a message we recorded as failed: only a later send could produce it,
        # and that send belongs to a retry the recipient is not in. Keep the failure visible.
        return Decision(Outcome.IGNORED, "conflicts_with_failed")
    new_rank = _EVENT_RANK[status]
    current_rank = _EVENT_RANK.get(current, 0)  # pending/queued/retrying: the event implies "sent"
    if new_rank == current_rank:
        return Decision(Outcome.DUPLICATE)
    if new_rank < current_rank:
        return Decision(Outcome.IGNORED, "superseded_by_" + current)
    if status == DELIVERED:
        return _applied(status=DELIVERED, **extra)
    return _applied(status=status, **_error_fields(result) if result.get("error") else {}, **extra)
