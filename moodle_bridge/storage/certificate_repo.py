"""The bridge's certificate rows (``mrcloud_certificates``): look-ups by code and user, revocation.

A row is written for each certificate recipient when its job is created (bridge_repo.py); its
``verifycode`` is the code printed on the PDF, ``timerevoked`` is set while the certificate is
revoked. Revocation itself is a cloud write (moodle_bridge/transports/certificate_records.py)
followed by ``mark_revoked`` and an audit record in one transaction (moodle_bridge/certificates.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import BridgeTables


@dataclass(frozen=True)
class CertificateRow:
    id: int
    companyid: int
    userid: int | None
    recipientid: int
    jobid: int
    provider: str
    verifycode: str
    timerevoked: int | None


def _select(t: BridgeTables) -> sa.Select[Any]:
    c, r, j = t.certificates.c, t.recipients.c, t.jobs.c
    return sa.select(
        c.id, c.companyid, c.userid, c.recipientid, r.jobid, j.provider, c.verifycode, c.timerevoked
    ).select_from(t.certificates.join(t.recipients, r.id == c.recipientid).join(t.jobs, j.id == r.jobid))


def by_code(conn: sa.Connection, t: BridgeTables, code: str) -> CertificateRow | None:
    row = conn.execute(_select(t).where(t.certificates.c.verifycode == code)).first()
    return None if row is None else CertificateRow(*row)


def by_recipient(conn: sa.Connection, t: BridgeTables, recipientid: int) -> CertificateRow | None:
    row = conn.execute(_select(t).where(t.certificates.c.recipientid == recipientid)).first()
    return None if row is None else CertificateRow(*row)


def latest_certificate_data(conn: sa.Connection, t: BridgeTables, userid: int) -> dict[str, Any] | None:
    """The certificate data (name, course, date, grade, code) of the user's newest certificate."""
    c, r = t.certificates.c, t.recipients.c
    data = conn.execute(
        sa.select(r.data)
        .select_from(t.certificates.join(t.recipients, r.id == c.recipientid))
        .where(c.userid == userid, r.data.is_not(None))
        .order_by(c.id.desc())
        .limit(1)
    ).scalar()
    if data is None:
        return None
    certificate = json.loads(data).get("certificate")
    return dict(certificate) if isinstance(certificate, dict) else None


def mark_revoked(conn: sa.Connection, t: BridgeTables, certificateid: int, when: int | None) -> None:
    """Set (a time) or clear (None) the row's ``timerevoked``."""
    conn.execute(t.certificates.update().where(t.certificates.c.id == certificateid).values(timerevoked=when))
