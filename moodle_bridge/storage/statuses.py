"""Recipient statuses and the job counters over them: the vocabulary bridge core (job creation,
the outbox) and the results part (``moodle_bridge.results.states``, the state machine) share.

Kept here, beside the tables, so ``storage`` never imports ``results``.
"""

from __future__ import annotations

from typing import Final

# Recipient statuses.
PENDING: Final = "pending"  # created, or reset by a retry; not yet handed to the cloud
QUEUED: Final = "queued"  # its batch was submitted
RETRYING: Final = "retrying"  # the worker re-queued it after a transient failure (stays in the cloud)
SENT: Final = "sent"  # accepted by the provider (has a provider message id)
RENDERED: Final = "rendered"  # certificate stored (download-only delivery ends here)
DELIVERED: Final = "delivered"  # provider event
BOUNCED: Final = "bounced"  # provider event; the address is suppressed for the company
COMPLAINED: Final = "complained"  # provider event; the address is suppressed for the company
FAILED: Final = "failed"  # final failure in the cloud (worker gave up, or the provider rejected)
SKIPPED: Final = "skipped"  # never sent: suppressed address (set at job creation)
CANCELLED: Final = "cancelled"  # job control cancelled it before it was sent
RESTORED: Final = "restored"  # failed in the cloud, handed back to IOMAD's local path

#: Every recipient status, in the order a recipient can pass through them (listings, filters).
RECIPIENT_STATUSES: Final = (
    PENDING,
    QUEUED,
    RETRYING,
    SENT,
    RENDERED,
    DELIVERED,
    BOUNCED,
    COMPLAINED,
    FAILED,
    SKIPPED,
    CANCELLED,
    RESTORED,
)
ACTIVE_STATUSES: Final = frozenset({PENDING, QUEUED, RETRYING})
FINAL_STATUSES: Final = frozenset(
    {SENT, RENDERED, DELIVERED, BOUNCED, COMPLAINED, FAILED, SKIPPED, CANCELLED, RESTORED}
)
#: Statuses that mean the provider accepted (and so the person may have received) the mail.
REACHED_STATUSES: Final = frozenset({SENT, RENDERED, DELIVERED, BOUNCED, COMPLAINED})
#: A dispatch result for an inactive recipient is never applied (cancel/restore/skip are final).
CLOSED_STATUSES: Final = frozenset({SKIPPED, CANCELLED, RESTORED})

#: Job counter column -> recipient statuses it counts. ``recipientstotal`` counts every row.
#: Used by bridge core's ``BridgeRepo.refresh_job_totals`` and by results ingestion alike.
#: The buckets are disjoint and cover every final status, so the eight counts plus the
#: recipients still in flight (pending, queued, retrying) always add up to the total. A
#: recipient handed back to IOMAD (``restored``) is "fell back", never "cancelled".
COUNTER_BUCKETS: Final[dict[str, frozenset[str]]] = {
    "recipientssent": frozenset({SENT, RENDERED}),
    "recipientsdelivered": frozenset({DELIVERED}),
    "recipientsfailed": frozenset({FAILED}),
    "recipientsbounced": frozenset({BOUNCED}),
    "recipientscomplained": frozenset({COMPLAINED}),
    "recipientsskipped": frozenset({SKIPPED}),
    "recipientsfellback": frozenset({RESTORED}),
    "recipientscancelled": frozenset({CANCELLED}),
}
COUNTER_COLUMNS: Final = ("recipientstotal", *COUNTER_BUCKETS)
#: Statuses from which a recipient's copy may still be (re)built and sent: ``failed`` can be
#: retried by a person (``jobs retry``).
RESENDABLE_STATUSES: Final = ACTIVE_STATUSES | {FAILED}

# Job statuses.
JOB_PENDING: Final = "pending"  # created; no batch accepted by the queue yet
JOB_QUEUED: Final = "queued"  # a batch was accepted
JOB_PROCESSING: Final = "processing"  # results are arriving
#: A person (or the global/company switch) cancelled it while some recipients were in the cloud:
#: the cloud was told, and their results (sent, or cancelled by the sender) are still awaited.
JOB_CANCELLING: Final = "cancelling"
JOB_COMPLETED: Final = "completed"
JOB_PARTIAL_FAILURE: Final = "partial_failure"
JOB_FAILED: Final = "failed"
#: Every recipient to be sent went back to IOMAD (an automatic fallback): IOMAD's cron sends them.
JOB_FELL_BACK: Final = "fell_back"
JOB_CANCELLED: Final = "cancelled"
JOB_TERMINAL: Final = frozenset(
    {JOB_COMPLETED, JOB_PARTIAL_FAILURE, JOB_FAILED, JOB_FELL_BACK, JOB_CANCELLED}
)
JOB_CANCEL_STATES: Final = frozenset({JOB_CANCELLING, JOB_CANCELLED})
#: Every job status, in the order a job can pass through them (filters and listings use this).
JOB_STATUSES: Final = (
    JOB_PENDING,
    JOB_QUEUED,
    JOB_PROCESSING,
    JOB_CANCELLING,
    JOB_COMPLETED,
    JOB_PARTIAL_FAILURE,
    JOB_FAILED,
    JOB_FELL_BACK,
    JOB_CANCELLED,
)


def job_status_for(counts: dict[str, int], current: str) -> str:
    """The job status from its recipient counts (``COUNTER_COLUMNS`` plus ``active``: still
    pending, queued or retrying). The one rule for every writer (docs/results.md):

    * recipients still in flight: ``processing`` (``cancelling`` stays ``cancelling``);
    * none in flight: a cancelled/cancelling job is ``cancelled``; otherwise, over the recipients
      that were to be sent (not skipped, not cancelled): ``completed`` when none failed and not
      all of them went back to IOMAD, ``fell_back`` when all went back to IOMAD (its cron sends
      them; nothing failed), ``failed`` when all failed, else ``partial_failure``.
    """
    if counts.get("active", 0) > 0:
        return JOB_CANCELLING if current in JOB_CANCEL_STATES else JOB_PROCESSING
    if current in JOB_CANCEL_STATES:
        return JOB_CANCELLED
    failed = counts.get("recipientsfailed", 0)
    fell_back = counts.get("recipientsfellback", 0)
    considered = (
        counts.get("recipientstotal", 0)
        - counts.get("recipientsskipped", 0)
        - counts.get("recipientscancelled", 0)
    )
    if failed == 0:
        return JOB_FELL_BACK if 0 < considered <= fell_back else JOB_COMPLETED
    if failed >= considered:
        return JOB_FAILED
    return JOB_PARTIAL_FAILURE
