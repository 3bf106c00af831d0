"""Bounce and complaint memory, per company.

Bounced and complained addresses are recorded (lower-cased) when their result is ingested. Job
creation calls ``filter_suppressed`` and creates those recipients as ``skipped`` with the reason
as their error code, so the job's report says how many were skipped and why.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.storage.sqlutil import chunks, insert_ignore

REASON_BOUNCE = "bounce"
REASON_COMPLAINT = "complaint"
REASON_UNSUBSCRIBE = "unsubscribe"
#: Recipient error code used for a skipped recipient, by suppression reason.
SKIP_CODES = {
    REASON_BOUNCE: "suppressed_bounce",
    REASON_COMPLAINT: "suppressed_complaint",
    REASON_UNSUBSCRIBE: "suppressed_unsubscribe",
}


def normalise(address: str) -> str:
    return address.strip().lower()


def filter_suppressed(
    conn: sa.Connection, tables: BridgeTables, company_id: int, addresses: Iterable[str]
) -> dict[str, str]:
    """The addresses (as given) that the company must not mail, with the reason for each."""
    by_normal: dict[str, list[str]] = {}
    for address in addresses:
        by_normal.setdefault(normalise(address), []).append(address)
    if not by_normal:
        return {}
    table = tables.suppressions
    out: dict[str, str] = {}
    for part in chunks(sorted(by_normal)):
        rows = conn.execute(
            sa.select(table.c.address, table.c.reason).where(
                table.c.companyid == company_id, table.c.address.in_(part)
            )
        )
        for address, reason in rows:
            for original in by_normal.get(address, ()):
                out[original] = reason
    return out


def record_suppressions(
    conn: sa.Connection,
    tables: BridgeTables,
    entries: Iterable[tuple[int, str, str]],
    *,
    source: str,
    now: int,
) -> int:
    """Remember (company, address, reason) entries. An address already suppressed keeps its first
    reason, except that a bounce or complaint replaces an unsubscribe: an unsubscribe stops only
    campaign mail, a hard bounce or complaint stops all of it."""
    unique: dict[tuple[int, str], str] = {}
    for company_id, address, reason in entries:
        key = (company_id, normalise(address))
        if unique.get(key) in (None, REASON_UNSUBSCRIBE):
            unique[key] = reason
    rows = [
        {"companyid": c, "address": a, "reason": r, "source": source[:100], "timecreated": now}
        for (c, a), r in sorted(unique.items())
    ]
    inserted = insert_ignore(conn, tables.suppressions, rows)
    table = tables.suppressions
    hard: dict[tuple[int, str], list[str]] = {}
    for (company_id, address), reason in unique.items():
        if reason != REASON_UNSUBSCRIBE:
            hard.setdefault((company_id, reason), []).append(address)
    for (company_id, reason), addresses in sorted(hard.items()):
        for part in chunks(sorted(addresses)):
            conn.execute(
                table.update()
                .where(
                    table.c.companyid == company_id,
                    table.c.address.in_(part),
                    table.c.reason == REASON_UNSUBSCRIBE,
                )
                .values(reason=reason, source=source[:100], timecreated=now)
            )
    return inserted


def suppression_counts(conn: sa.Connection, tables: BridgeTables, job_id: int) -> dict[str, int]:
    """How many recipients of a job were skipped, by reason code (for the job's report)."""
    r = tables.recipients
    rows = conn.execute(
        sa.select(r.c.errorcode, sa.func.count())
        .where(r.c.jobid == job_id, r.c.status == "skipped")
        .group_by(r.c.errorcode)
    )
    return {str(code or "unknown"): int(n) for code, n in rows}


def remove_suppression(
    conn: sa.Connection, tables: BridgeTables, company_id: int, address: str
) -> str | None:
    """Forget a suppressed address of a company; returns the reason it had, or None if it had none."""
    table = tables.suppressions
    where = (table.c.companyid == company_id, table.c.address == normalise(address))
    reason = conn.execute(sa.select(table.c.reason).where(*where)).scalar()
    if reason is None:
        return None
    conn.execute(table.delete().where(*where))
    return str(reason)
