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
    PENDING,
    QUEUED,
    REACHED_STATUSES,
    RENDERED,
    RESTORED,
    RETRYING,
    SENT,
    SKIPPED,
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
    "PENDING",
    "QUEUED",
    "REACHED_STATUSES",
    "RENDERED",
    "RESTORED",
    "RETRYING",
    "SENT",
    "SKIPPED",
]

# Job statuses.
JOB_PENDING: Final = "pending"
JOB_QUEUED: Final = "queued"
JOB_PROCESSING: Final = "processing"
JOB_COMPLETED: Final = "completed"
JOB_PARTIAL_FAILURE: Final = "partial_failure"
JOB_FAILED: Final = "failed"
JOB_CANCELLED: Final = "cancelled"
JOB_TERMINAL: Final = frozenset({JOB_COMPLETED, JOB_PARTIAL_FAILURE, JOB_FAILED, JOB_CANCELLED})

DISPATCH_RESULTS: Final = frozenset({"sent", "failed", "retrying", "rendered"})
EVENT_RESULTS: Final = frozenset({"delivered", "bounced", "complained", "rejected"})

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


def _error_fields(result: dict[str, Any]) -> dict[str, Any]:
    error = result.get("error") or {}
    return {"errorcode": error.get("code"), "errormessage": (error.get("message") or "")[:1000]}


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


def _decide_event(
    view: RecipientView, result: dict[str, Any], status: str, message_id: str | None
) -> Decision:
    current = view.status
    if current in CLOSED_STATUSES:
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


def job_status_for(counts: dict[str, int], current: str) -> str:
    """The job status after results were applied, from its recipient counts (``COUNTER_COLUMNS``,
    ``active``: still pending, queued or retrying, and ``restored``). Cancelled stays cancelled.

    A recipient that failed in the cloud and was handed back to IOMAD still counts as a failure of
    the job: the cloud did not deliver it.
    """
    if current == JOB_CANCELLED:
        return current
    if counts["active"] > 0:
        return JOB_PROCESSING
    failed = counts["recipientsfailed"] + counts["restored"]
    cancelled_only = counts["recipientscancelled"] - counts["restored"]
    considered = counts["recipientstotal"] - counts["recipientsskipped"] - cancelled_only
    if failed == 0:
        return JOB_COMPLETED
    if failed >= considered:
        return JOB_FAILED
    return JOB_PARTIAL_FAILURE
