"""Settle IOMAD queue rows once every recipient of the row is final.

One IOMAD row becomes several mails (the user plus the template's To/Cc and the managers and
supervisors). The rule, per row, once none of its recipients is pending, queued or retrying:

* nobody was reached (no sent/delivered/bounced/complained/rendered recipient) and either some
  recipient was cancelled, or some failed and the company's ``fallbacklocal`` is on
  -> **restore** the row: IOMAD's own cron sends it (to everybody) as if we had never claimed it;
  the failed and cancelled recipients become ``restored`` ("fell back to IOMAD"), the claim
  ``released``.
* otherwise -> **mark the row sent**: the claim is ``completed``. If some recipients failed while
  others were reached, restoring would mail the reached ones twice, so the failures stay visible
  (job counters, error CSV) and a ``fallback_withheld`` audit entry says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa

from moodle_bridge.results.iomad_link import IomadQueue
from moodle_bridge.results.states import ACTIVE_STATUSES, CANCELLED, FAILED, REACHED_STATUSES, RESTORED
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.storage.sqlutil import chunks, update_where_in

CLAIM_CLAIMED = "claimed"
CLAIM_RELEASED = "released"
CLAIM_COMPLETED = "completed"


@dataclass
class SettleReport:
    marked_sent: list[int] = field(default_factory=list)
    restored: list[int] = field(default_factory=list)
    withheld: list[int] = field(default_factory=list)
    #: job id -> recipients moved failed -> restored (the caller refreshes those jobs' counters)
    restored_recipients: dict[int, int] = field(default_factory=dict)


def fallback_enabled(
    conn: sa.Connection, tables: BridgeTables, company_ids: Iterable[int]
) -> dict[int, bool]:
    """``fallbacklocal`` per company; a company without a settings row falls back (the default)."""
    ids = sorted(set(company_ids))
    out = dict.fromkeys(ids, True)
    s = tables.company_settings
    for part in chunks(ids):
        for companyid, flag in conn.execute(
            sa.select(s.c.companyid, s.c.fallbacklocal).where(s.c.companyid.in_(part))
        ):
            out[int(companyid)] = bool(flag)
    return out


def settle_rows(
    conn: sa.Connection,
    tables: BridgeTables,
    queue: IomadQueue | None,
    email_ids: Iterable[int],
    *,
    now: int,
    actor: str,
) -> SettleReport:
    """Mark sent or restore every still-claimed IOMAD row in ``email_ids`` whose recipients are final."""
    report = SettleReport()
    ids = sorted(set(email_ids))
    if not ids:
        return report
    c, r = tables.claims, tables.recipients
    claims: dict[int, tuple[int, int | None, int]] = {}
    for part in chunks(ids):
        for emailid, companyid, jobid, originaldue in conn.execute(
            sa.select(c.c.emailid, c.c.companyid, c.c.jobid, c.c.originaldue).where(
                c.c.emailid.in_(part), c.c.state == CLAIM_CLAIMED
            )
        ):
            claims[int(emailid)] = (int(companyid), jobid, int(originaldue))
    if not claims:
        return report
    # Only the statuses that stop a row from simply being marked sent: in the common case (every
    # recipient reached) this query returns nothing. ``email_ids`` always name rows with recipients.
    problem_statuses = sorted(ACTIVE_STATUSES | {FAILED, CANCELLED})
    problems: dict[int, set[str]] = defaultdict(set)
    for part in chunks(sorted(claims)):
        for emailid, status in conn.execute(
            sa.select(r.c.emailid, r.c.status)
            .where(r.c.emailid.in_(part), r.c.status.in_(problem_statuses))
            .group_by(r.c.emailid, r.c.status)
        ):
            problems[int(emailid)].add(str(status))
    troubled = sorted(e for e, found in problems.items() if not found & ACTIVE_STATUSES)
    reached_rows: set[int] = set()
    for part in chunks(troubled):
        reached_rows.update(
            int(e)
            for e in conn.execute(
                sa.select(r.c.emailid)
                .where(r.c.emailid.in_(part), r.c.status.in_(sorted(REACHED_STATUSES)))
                .distinct()
            ).scalars()
        )
    fallback = fallback_enabled(conn, tables, (v[0] for v in claims.values())) if troubled else {}
    to_restore: dict[int, int] = {}
    for emailid, (companyid, _jobid, originaldue) in sorted(claims.items()):
        found = problems.get(emailid, set())
        if found & ACTIVE_STATUSES:
            continue
        reached = emailid in reached_rows
        failed = FAILED in found
        if found and not reached and (CANCELLED in found or (failed and fallback[companyid])):
            to_restore[emailid] = originaldue
        else:
            report.marked_sent.append(emailid)
            if failed and reached and fallback[companyid]:
                report.withheld.append(emailid)
    if to_restore:
        report.restored = sorted(to_restore)
        released = {"state": CLAIM_RELEASED, "timereleased": now, "timefinal": now}
        update_where_in(conn, c, c.c.emailid, report.restored, released, c.c.state == CLAIM_CLAIMED)
        for part in chunks(report.restored):
            # IOMAD's cron now sends the row to all of them: failed and cancelled recipients
            # alike "fell back to IOMAD" (their error code keeps why).
            for (jobid,) in conn.execute(
                sa.select(r.c.jobid).where(r.c.emailid.in_(part), r.c.status.in_((FAILED, CANCELLED)))
            ):
                report.restored_recipients[int(jobid)] = report.restored_recipients.get(int(jobid), 0) + 1
            conn.execute(
                r.update()
                .where(r.c.emailid.in_(part), r.c.status.in_((FAILED, CANCELLED)))
                .values(status=RESTORED, timemodified=now, secret=None)
            )
        if queue is not None:
            queue.restore(conn, to_restore)
    if report.marked_sent:
        completed = {"state": CLAIM_COMPLETED, "timefinal": now}
        update_where_in(conn, c, c.c.emailid, report.marked_sent, completed, c.c.state == CLAIM_CLAIMED)
        if queue is not None:
            queue.mark_sent(conn, report.marked_sent, now)
    by_job: dict[tuple[int, int | None], list[int]] = defaultdict(list)
    for emailid in report.restored:
        by_job[(claims[emailid][0], claims[emailid][1])].append(emailid)
    for (companyid, jobid), emailids in sorted(by_job.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        audit.record(
            conn,
            tables,
            actor=actor,
            action=audit.ROWS_RESTORED,
            now=now,
            companyid=companyid,
            jobid=jobid,
            detail={"rows": len(emailids), "email_ids": emailids[:50]},
        )
    withheld_by_job: dict[tuple[int, int | None], list[int]] = defaultdict(list)
    for emailid in report.withheld:
        withheld_by_job[(claims[emailid][0], claims[emailid][1])].append(emailid)
    for (companyid, jobid), emailids in sorted(
        withheld_by_job.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)
    ):
        audit.record(
            conn,
            tables,
            actor=actor,
            action=audit.FALLBACK_WITHHELD,
            now=now,
            companyid=companyid,
            jobid=jobid,
            detail={
                "rows": len(emailids),
                "email_ids": emailids[:50],
                "why": "other recipients of the row were reached",
            },
        )
    return report
