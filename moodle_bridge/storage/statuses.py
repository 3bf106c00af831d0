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

ACTIVE_STATUSES: Final = frozenset({PENDING, QUEUED, RETRYING})
FINAL_STATUSES: Final = frozenset(
    {SENT, RENDERED, DELIVERED, BOUNCED, COMPLAINED, FAILED, SKIPPED, CANCELLED, RESTORED}
)
#: Statuses that mean the provider accepted (and so the person may have received) the mail.
REACHED_STATUSES: Final = frozenset({SENT, RENDERED, DELIVERED, BOUNCED, COMPLAINED})
#: A dispatch result for an inactive recipient is never applied (cancel/restore/skip are final).
CLOSED_STATUSES: Final = frozenset({SKIPPED, CANCELLED, RESTORED})

#: Job counter column -> recipient statuses it counts. ``recipientstotal`` counts every row.
#: Used by bridge core's ``BridgeRepo.refresh_job_totals`` and by results ingestion alike:
#: a restored recipient was handed back to IOMAD, so it counts with the cancelled ones.
COUNTER_BUCKETS: Final[dict[str, frozenset[str]]] = {
    "recipientssent": frozenset({SENT, RENDERED, DELIVERED}),
    "recipientsfailed": frozenset({FAILED}),
    "recipientsbounced": frozenset({BOUNCED}),
    "recipientscomplained": frozenset({COMPLAINED}),
    "recipientsskipped": frozenset({SKIPPED}),
    "recipientscancelled": frozenset({CANCELLED, RESTORED}),
}
COUNTER_COLUMNS: Final = ("recipientstotal", *COUNTER_BUCKETS)
#: Statuses from which a recipient's copy may still be (re)built and sent: ``failed`` can be
#: retried by a person (``jobs retry``).
RESENDABLE_STATUSES: Final = ACTIVE_STATUSES | {FAILED}
