"""Every SQL statement of the iomad package, in one place a reader can scan.

All are SQLAlchemy Core expressions built from ``IomadTables`` (so they follow the detected
generation's table and column names). Statements over id lists take one chunk (at most
``CHUNK`` ids); callers loop over ``chunks()``, so round trips grow with chunks, not rows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from moodle_bridge.sources.iomad.schema import IomadTables

#: Ids per IN list of the row-locking updates (park/restore/mark): short lock holds.
CHUNK = 1000
#: Ids per IN list of read-only batch loads (fan-out). Below every engine's bind-parameter
#: limit (SQLite 32766, MySQL/PostgreSQL 65535) and MySQL's default packet size.
READ_CHUNK = 5000

#: A parked row has ``due = PARKED_DUE_BASE + original due`` (see queue.py and docs/iomad.md).
#: 10**12 s is the year ~33658: no real due reaches it, and any due >= it is ours.
PARKED_DUE_BASE = 1_000_000_000_000

#: IOMAD's cron handles suspended users' rows only for this template (facts section 2.3).
COMPANY_SUSPENDED = "company_suspended"
#: 4.1.22/5.0 also send rows of these pseudo users (shop admin); 4.3.7 does not.
SPECIAL_USERS = (-999,)
#: ``templatename`` of the rows the bridge queues for IOMAD's own cron to send (schedules with
#: ``cloud_preference`` local, docs/schedules.md). Not one of IOMAD's templates: its cron sends
#: such a row as stored, to the row's user only (docs/iomad.md, "Rows the bridge queues"); the
#: claim pass and strict mode's trigger leave it alone.
LOCAL_SCHEDULE_TEMPLATE = "mrcloud_schedule"


def not_bridge_queued(e: sa.Table) -> sa.ColumnElement[bool]:
    """Rows IOMAD queued itself: everything but the bridge's own local rows."""
    return sa.or_(e.c.templatename.is_(None), e.c.templatename != LOCAL_SCHEDULE_TEMPLATE)


def chunks(ids: Iterable[int], size: int = CHUNK) -> Iterator[list[int]]:
    """Split ids into lists of at most ``size`` (order kept, duplicates dropped)."""
    batch: list[int] = []
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            continue
        seen.add(i)
        batch.append(int(i))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- queue selection -------------------------------------------------------------------------


def select_due(
    t: IomadTables,
    now: int,
    company_ids: Collection[int] | None,
    limit: int | None,
    after_id: int = 0,
) -> sa.Select[Any]:
    """IOMAD's cron query plus the company_suspended special case, ordered by id.

    ``sent IS NULL AND due < :now AND u.deleted = 0 AND (u.suspended = 0 OR
    templatename = 'company_suspended')``. Parked rows (due >= PARKED_DUE_BASE) are never
    due. ``company_ids=None`` means every company. Rows the bridge queued for IOMAD to send
    (``LOCAL_SCHEDULE_TEMPLATE``) are never selected.
    """
    e, u = t.email, t.user
    q = (
        sa.select(e)
        .select_from(e.join(u, e.c.userid == u.c.id))
        .where(
            e.c.sent.is_(None),
            e.c.due < now,
            u.c.deleted == 0,
            sa.or_(u.c.suspended == 0, e.c.templatename == COMPANY_SUSPENDED),
            not_bridge_queued(e),
        )
    )
    if company_ids is not None:
        q = q.where(e.c.companyid.in_(sorted({int(c) for c in company_ids})))
    if after_id:
        q = q.where(e.c.id > after_id)
    q = q.order_by(e.c.id)
    if limit is not None:
        q = q.limit(limit)
    return q


def iomad_cron_main(t: IomadTables, now: int) -> sa.Select[Any]:
    """Exactly IOMAD's ``email_cron()`` main query: no ORDER BY, no LIMIT."""
    e, u = t.email, t.user
    return (
        sa.select(e)
        .select_from(e.join(u, e.c.userid == u.c.id))
        .where(e.c.sent.is_(None), e.c.due < now, u.c.deleted == 0, u.c.suspended == 0)
    )


def iomad_cron_special_users(t: IomadTables, now: int) -> sa.Select[Any]:
    """IOMAD 4.1.22/5.0 second query: rows of pseudo users (no user row to join)."""
    e = t.email
    return sa.select(e).where(e.c.sent.is_(None), e.c.due < now, e.c.userid.in_(SPECIAL_USERS))


def iomad_cron_company_suspended(t: IomadTables, now: int) -> sa.Select[Any]:
    """IOMAD's third query: company_suspended rows also go to suspended users."""
    e, u = t.email, t.user
    return (
        sa.select(e)
        .select_from(e.join(u, e.c.userid == u.c.id))
        .where(
            e.c.sent.is_(None),
            e.c.due < now,
            e.c.templatename == COMPANY_SUSPENDED,
            u.c.deleted == 0,
        )
    )


def iomad_cron_purge(t: IomadTables, now: int, halfyearago: int) -> sa.Delete:
    """IOMAD's purge: ``modifiedtime < halfyearago AND due < now`` (sent or not)."""
    e = t.email
    return sa.delete(e).where(e.c.modifiedtime < halfyearago, e.c.due < now)


# --- parking / restoring / marking sent (one chunk each) ---------------------------------------


def parkable_ids(t: IomadTables, ids: Sequence[int]) -> sa.Select[Any]:
    """Rows of ``ids`` that are unsent and not parked, locked for update where the engine can."""
    e = t.email
    return (
        sa.select(e.c.id)
        .where(e.c.id.in_(ids), e.c.sent.is_(None), e.c.due < PARKED_DUE_BASE)
        .with_for_update()
    )


def park(t: IomadTables, ids: Sequence[int]) -> sa.Update:
    """Move ``due`` into the parked range; subject, body and sent stay untouched."""
    e = t.email
    return (
        sa.update(e)
        .where(e.c.id.in_(ids), e.c.sent.is_(None), e.c.due < PARKED_DUE_BASE)
        .values(due=e.c.due + PARKED_DUE_BASE)
    )


def parked_ids(t: IomadTables, ids: Sequence[int]) -> sa.Select[Any]:
    """Rows of ``ids`` that are parked and unsent, locked for update where the engine can."""
    e = t.email
    return (
        sa.select(e.c.id)
        .where(e.c.id.in_(ids), e.c.sent.is_(None), e.c.due >= PARKED_DUE_BASE)
        .with_for_update()
    )


def unpark(t: IomadTables, ids: Sequence[int]) -> sa.Update:
    """Put the original due back (``due - PARKED_DUE_BASE``); sent stays NULL so IOMAD sends it."""
    e = t.email
    return (
        sa.update(e)
        .where(e.c.id.in_(ids), e.c.sent.is_(None), e.c.due >= PARKED_DUE_BASE)
        .values(due=e.c.due - PARKED_DUE_BASE)
    )


def unsent_ids(t: IomadTables, ids: Sequence[int]) -> sa.Select[Any]:
    e = t.email
    return sa.select(e.c.id).where(e.c.id.in_(ids), e.c.sent.is_(None)).with_for_update()


def mark_sent(t: IomadTables, ids: Sequence[int], now: int) -> sa.Update:
    """``sent = modifiedtime = now`` as IOMAD's cron writes, and the original due restored."""
    e = t.email
    return (
        sa.update(e)
        .where(e.c.id.in_(ids), e.c.sent.is_(None))
        .values(
            sent=now,
            modifiedtime=now,
            due=sa.case((e.c.due >= PARKED_DUE_BASE, e.c.due - PARKED_DUE_BASE), else_=e.c.due),
        )
    )


def parked_dues(t: IomadTables, ids: Sequence[int]) -> sa.Select[Any]:
    """(id, due) of the parked rows among ``ids``."""
    e = t.email
    return sa.select(e.c.id, e.c.due).where(e.c.id.in_(ids), e.c.due >= PARKED_DUE_BASE)


def rendered_contents(t: IomadTables, ids: Sequence[int]) -> sa.Select[Any]:
    """(id, subject, body) of the given rows: the outbox rebuilds each mail from IOMAD's row."""
    e = t.email
    return sa.select(e.c.id, e.c.subject, e.c.body).where(e.c.id.in_(ids))


def rows_for_send(t: IomadTables, ids: Sequence[int]) -> sa.Select[Any]:
    """(id, subject, body, sent, due) of the given rows: the outbox sends only parked unsent rows."""
    e = t.email
    return sa.select(e.c.id, e.c.subject, e.c.body, e.c.sent, e.c.due).where(e.c.id.in_(ids))


def parked_rows(t: IomadTables, company_ids: Collection[int] | None = None) -> sa.Select[Any]:
    """(id, original due) of every parked unsent row: recovery when the claims table is lost."""
    e = t.email
    q = sa.select(e.c.id, (e.c.due - PARKED_DUE_BASE).label("originaldue")).where(
        e.c.sent.is_(None), e.c.due >= PARKED_DUE_BASE
    )
    if company_ids is not None:
        q = q.where(e.c.companyid.in_(sorted(company_ids)))
    return q.order_by(e.c.id)


# --- batch loads for the fan-out ---------------------------------------------------------------


def users_by_ids(t: IomadTables, ids: Sequence[int]) -> sa.Select[Any]:
    u = t.user
    return sa.select(
        u.c.id, u.c.email, u.c.firstname, u.c.lastname, u.c.deleted, u.c.suspended, u.c.lang
    ).where(u.c.id.in_(ids))


def company_users_of(t: IomadTables, userids: Sequence[int]) -> sa.Select[Any]:
    """Company memberships of users, lowest id first (IOMAD's get_record takes the first)."""
    cu = t.company_users
    return (
        sa.select(cu.c.id, cu.c.userid, cu.c.companyid, cu.c.departmentid, cu.c.managertype)
        .where(cu.c.userid.in_(userids))
        .order_by(cu.c.userid, cu.c.id)
    )


def departments_of_companies(t: IomadTables, companyids: Sequence[int]) -> sa.Select[Any]:
    d = t.department
    return sa.select(d.c.id, d.c.company, d.c.parent).where(d.c.company.in_(companyids))


def managers_in(t: IomadTables, departmentids: Sequence[int], managertype: int) -> sa.Select[Any]:
    cu = t.company_users
    return sa.select(cu.c.id, cu.c.userid, cu.c.departmentid).where(
        cu.c.departmentid.in_(departmentids), cu.c.managertype == managertype
    )


def companies_by_ids(t: IomadTables, ids: Sequence[int]) -> sa.Select[Any]:
    c = t.company
    return sa.select(c.c.id, c.c.name, c.c.suspended, c.c.emailprofileid).where(c.c.id.in_(ids))


def profile_data(t: IomadTables, userids: Sequence[int], fieldids: Sequence[int]) -> sa.Select[Any]:
    d = t.user_info_data
    return (
        sa.select(d.c.userid, d.c.fieldid, d.c.data)
        .where(d.c.userid.in_(userids), d.c.fieldid.in_(fieldids))
        .order_by(d.c.id)
    )


def templates_for(t: IomadTables, companyids: Sequence[int], names: Sequence[str]) -> sa.Select[Any]:
    """Template control rows (enable flags) of the given companies and template names."""
    et = t.email_template
    cols = [
        et.c.id,
        et.c.companyid,
        et.c.name,
        et.c.disabled,
        et.c.disabledmanager,
        et.c.disabledsupervisor,
    ]
    if t.template_has_lang:
        cols.append(et.c.lang)
    return sa.select(*cols).where(et.c.companyid.in_(companyids), et.c.name.in_(names))


def preferences(t: IomadTables, userids: Sequence[int], name: str) -> sa.Select[Any]:
    p = t.user_preferences
    return sa.select(p.c.userid, p.c.value).where(p.c.userid.in_(userids), p.c.name == name)


def config_values(t: IomadTables, names: Sequence[str]) -> sa.Select[Any]:
    c = t.config
    return sa.select(c.c.name, c.c.value).where(c.c.name.in_(names))


# --- completions ---------------------------------------------------------------------------------


def completions_since(
    t: IomadTables, company_ids: Collection[int], since: int, after_id: int, until: int, limit: int
) -> sa.Select[Any]:
    """Completions after the watermark ``(since, after_id)`` and ``timecompleted <= until``.

    Ordered by (timecompleted, id) so the watermark can page without gaps. A user in several
    departments has several company_users rows, hence DISTINCT on (completion, company).
    """
    cc, cu, co = t.course_completions, t.company_users, t.course
    return (
        sa.select(
            cc.c.id,
            cc.c.userid,
            cc.c.course,
            cc.c.timecompleted,
            cu.c.companyid,
            co.c.fullname,
            co.c.shortname,
        )
        .distinct()
        .select_from(cc.join(cu, cu.c.userid == cc.c.userid).join(co, co.c.id == cc.c.course))
        .where(
            cc.c.timecompleted.is_not(None),
            sa.or_(cc.c.timecompleted > since, sa.and_(cc.c.timecompleted == since, cc.c.id > after_id)),
            cc.c.timecompleted <= until,
            cu.c.companyid.in_(sorted({int(c) for c in company_ids})),
        )
        .order_by(cc.c.timecompleted, cc.c.id)
        .limit(limit)
    )


def tracks_for(t: IomadTables, userids: Sequence[int]) -> sa.Select[Any]:
    tr = t.track
    return (
        sa.select(tr.c.id, tr.c.userid, tr.c.courseid, tr.c.companyid, tr.c.timecompleted, tr.c.finalscore)
        .where(tr.c.userid.in_(userids), tr.c.timecompleted.is_not(None))
        .order_by(tr.c.id)
    )


def certs_for(t: IomadTables, trackids: Sequence[int]) -> sa.Select[Any]:
    tc = t.track_certs
    return sa.select(tc.c.trackid, tc.c.filename).where(tc.c.trackid.in_(trackids)).order_by(tc.c.id)


def completion_mails(
    t: IomadTables, userids: Sequence[int], templatename: str = "completion_course_user"
) -> sa.Select[Any]:
    """Every queued completion row of the users, sent or not (parked rows included).

    On IOMAD 4.x the email table has only its primary key, so this reads the table once per
    call; callers ask for up to ``CHUNK`` users at a time, and only for new completions."""
    e = t.email
    return sa.select(e.c.userid, e.c.courseid, e.c.due, e.c.modifiedtime).where(
        e.c.userid.in_(userids), e.c.templatename == templatename
    )


def completion_rows(
    t: IomadTables, userids: Sequence[int], templatename: str = "completion_course_user"
) -> sa.Select[Any]:
    """Unsent queued completion rows of the users (parked or not)."""
    e = t.email
    return (
        sa.select(e.c.id, e.c.userid, e.c.courseid, e.c.companyid, e.c.due)
        .where(e.c.userid.in_(userids), e.c.templatename == templatename, e.c.sent.is_(None))
        .order_by(e.c.id)
    )
