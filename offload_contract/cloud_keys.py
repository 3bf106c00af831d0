"""Item keys of the email sender's records in DynamoDB (``aws.idempotency_table``).

The table crosses a boundary: the sender (lambdas/common/idempotency.py) claims and completes
``send#`` items, and the bridge (moodle_bridge/transports/cloud_records.py) reads them after a
job's deadline and closes the ones nobody claimed. Both must name an item the same way, or the
bridge's closing record is one the sender never reads (and a late batch is sent after its rows
went back to IOMAD), so the key format lives here, once.
"""

from __future__ import annotations


def send_key(company_id: int, job_id: int | str, recipient_id: int | str) -> str:
    """One (job, recipient)'s item, scoped by company: ``send#c<company>#<job>#<recipient>``."""
    return f"send#c{int(company_id)}#{job_id}#{recipient_id}"


def cancel_key(job_id: int | str) -> str:
    """The job's cancel record, written by the bridge and read by the sender before each SES call."""
    return f"cancel#{job_id}"


def verification_key(code: str) -> str:
    """A certificate's verification record, written by the renderer and read by the public verify
    route; the bridge marks it revoked (moodle_bridge/transports/certificate_records.py)."""
    return f"cert#{code}"
