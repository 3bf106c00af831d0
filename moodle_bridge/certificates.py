"""Revoking and reinstating a certificate: one path for the CLI and the dashboard.

The cloud's verification record is changed first (AWS: the DynamoDB record; Cloudflare: the
Worker's, through its signed revocation route), then the bridge's row and an audit record, in one
transaction. A code the bridge does not know, a record the cloud does not hold for that company, or a provider
without revocation is refused with a clear message and nothing is changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from moodle_bridge.storage import audit, certificate_repo
from moodle_bridge.storage.bridge_tables import BridgeTables

MAX_REASON = 500


class RevocationError(Exception):
    """Why the certificate's status was not changed (one line, safe to show)."""


class VerificationRecords(Protocol):
    def set_revoked(self, code: str, company_id: int, reason: str | None) -> bool: ...


@dataclass(frozen=True)
class Revocation:
    code: str
    companyid: int
    jobid: int
    revoked: bool


def change_revocation(
    engine: sa.Engine,
    tables: BridgeTables,
    records: VerificationRecords | None,
    *,
    code: str,
    revoke: bool,
    reason: str,
    actor: str,
    now: int,
    company_scope: frozenset[int] | None = None,
    source: str | None = None,
    worker_records: VerificationRecords | None = None,
) -> Revocation:
    """Revoke (``revoke``) or reinstate the certificate with this code; audited with ``reason``.

    ``company_scope`` limits which companies' certificates the caller may change (the dashboard's
    company manager); None means any (the CLI)."""
    reason = reason.strip()
    if not reason:
        raise RevocationError("a reason is required (it goes to the audit log)")
    code = code.strip().upper()
    with engine.connect() as conn:
        row = certificate_repo.by_code(conn, tables, code)
    if row is None or (company_scope is not None and row.companyid not in company_scope):
        raise RevocationError(f"no certificate with code {code} in the bridge's records")
    if row.provider == "cloudflare":
        if worker_records is None:
            raise RevocationError(
                "the Cloudflare Worker URL (cloudflare.intake_url, MRCO_CLOUDFLARE_INTAKE_URL) or the "
                "current key set is not configured: the Worker's verification record cannot be changed"
            )
        records = worker_records
    elif row.provider != "aws":
        raise RevocationError(f"certificates of provider {row.provider!r} cannot be revoked")
    elif records is None:
        raise RevocationError(
            "aws.idempotency_table is not configured: the verification record cannot be changed"
        )
    if not records.set_revoked(code, row.companyid, reason[:MAX_REASON] if revoke else None):
        raise RevocationError(
            f"the cloud holds no verification record {code} for company {row.companyid} "
            "(not rendered yet, or it failed): nothing was changed"
        )
    with engine.begin() as conn:
        certificate_repo.mark_revoked(conn, tables, row.id, now if revoke else None)
        audit.record(
            conn,
            tables,
            actor=actor,
            action=audit.CERTIFICATE_REVOKED if revoke else audit.CERTIFICATE_REINSTATED,
            now=now,
            companyid=row.companyid,
            jobid=row.jobid,
            source=source,
            detail={"code": code, "recipient_id": row.recipientid, "reason": reason[:MAX_REASON]},
        )
    return Revocation(code=code, companyid=row.companyid, jobid=row.jobid, revoked=revoke)
