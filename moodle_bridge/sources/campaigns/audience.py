"""Every SQL statement a campaign runs on Moodle's tables: read-only, and only through indexes.

The audience is one SELECT. It starts from the company's users (``company_users`` by
``companyid``), reaches ``user`` by primary key, and tests each condition with an ``EXISTS`` on
a unique or indexed key (``user_enrolments (enrolid, userid)``, ``user_lastaccess (userid,
courseid)``, ``course_completions (userid, course)``, ``course_modules_completion (userid,
coursemoduleid)``, ``cohort_members (cohortid, userid)``). ``logstore_standard_log`` is never
read: ``user.lastaccess`` and ``user_lastaccess`` hold the same facts, indexed, and the log is
often tens of millions of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from moodle_bridge.sources.campaigns.moodle_tables import MoodleActivityTables
from moodle_bridge.sources.campaigns.rules import DAY, CampaignRule
from moodle_bridge.sources.iomad.schema import IomadTables
from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.storage.sqlutil import chunks

COMPANY_MANAGER = 1
DEPARTMENT_MANAGER = 2


@dataclass(frozen=True)
class AudienceMember:
    userid: int
    email: str
    firstname: str
    lastname: str
    lang: str
    lastaccess: int


@dataclass(frozen=True)
class Manager:
    userid: int
    email: str
    firstname: str
    lastname: str


def _enrolled(
    t: MoodleActivityTables, user_id: sa.ColumnElement[int], course: int, before: int | None
) -> sa.Exists:
    """An active enrolment in ``course`` (optionally one that started before ``before``)."""
    ue, e = t.user_enrolments, t.enrol
    start = sa.case((ue.c.timestart > 0, ue.c.timestart), else_=ue.c.timecreated)
    cond = [e.c.courseid == course, e.c.status == 0, ue.c.userid == user_id, ue.c.status == 0]
    if before is not None:
        cond.append(start <= before)
    return sa.exists().where(ue.c.enrolid == e.c.id, *cond)


def audience_query(
    moodle: MoodleActivityTables,
    iomad: IomadTables,
    bridge: BridgeTables,
    rule: CampaignRule,
    *,
    companyid: int,
    campaignid: int,
    now: int,
) -> sa.Select[int, str, str, str, str, int]:
    u = moodle.user
    cu = iomad.company_users
    trig = rule.trigger
    cutoff = now - trig.days * DAY
    members = sa.select(cu.c.userid).where(cu.c.companyid == companyid, cu.c.suspended == 0)
    if rule.audience.departments:
        members = members.where(cu.c.departmentid.in_(rule.audience.departments))
    conds: list[sa.ColumnElement[bool]] = [
        u.c.id.in_(members),
        u.c.deleted == 0,
        u.c.suspended == 0,
        u.c.email != "",
    ]
    if rule.audience.cohorts:
        cm = moodle.cohort_members
        conds.append(sa.exists().where(cm.c.userid == u.c.id, cm.c.cohortid.in_(rule.audience.cohorts)))
    if rule.audience.courses:
        conds.append(sa.or_(*[_enrolled(moodle, u.c.id, c, None) for c in rule.audience.courses]))

    ula, cc = moodle.user_lastaccess, moodle.course_completions
    if trig.kind == "inactive_site":
        conds.append(sa.case((u.c.lastaccess > 0, u.c.lastaccess), else_=u.c.timecreated) < cutoff)
    else:
        course = trig.course or 0  # parse_rule requires a course for every other trigger
        recent_access = sa.exists().where(
            ula.c.userid == u.c.id, ula.c.courseid == course, ula.c.timeaccess >= cutoff
        )
        completed = sa.exists().where(cc.c.userid == u.c.id, cc.c.course == course, cc.c.timecompleted > 0)
        if trig.kind == "inactive_course":
            conds += [_enrolled(moodle, u.c.id, course, cutoff), ~recent_access]
        elif trig.kind == "not_started":
            started = sa.exists().where(
                cc.c.userid == u.c.id,
                cc.c.course == course,
                sa.or_(cc.c.timestarted > 0, cc.c.timecompleted > 0),
            )
            any_access = sa.exists().where(ula.c.userid == u.c.id, ula.c.courseid == course)
            conds += [_enrolled(moodle, u.c.id, course, cutoff), ~started, ~any_access]
        else:  # not_completed
            conds += [_enrolled(moodle, u.c.id, course, None), ~completed]
            if trig.deadline is not None:
                if now < trig.deadline - trig.days * DAY:
                    conds.append(sa.false())
            else:
                lu, lic = iomad.license_users, moodle.license
                if lu is None:
                    conds.append(sa.false())  # no licence table: nobody's licence can expire
                else:
                    conds.append(
                        sa.exists().where(
                            lu.c.userid == u.c.id,
                            lu.c.licensecourseid == course,
                            lic.c.id == lu.c.licenseid,
                            lic.c.expirydate > now,
                            lic.c.expirydate <= now + trig.days * DAY,
                        )
                    )
    if rule.suppresstarget is not None:
        cmc = moodle.course_modules_completion
        conds.append(
            ~sa.exists().where(
                cmc.c.userid == u.c.id,
                cmc.c.coursemoduleid == rule.suppresstarget,
                cmc.c.completionstate > 0,
            )
        )
    if rule.suppress_course_completion and trig.course is not None:
        conds.append(
            ~sa.exists().where(cc.c.userid == u.c.id, cc.c.course == trig.course, cc.c.timecompleted > 0)
        )
    conds.append(u.c.id.not_in(_already_reminded(bridge, rule, campaignid, now)))
    return (
        sa.select(u.c.id, u.c.email, u.c.firstname, u.c.lastname, u.c.lang, u.c.lastaccess)
        .where(*conds)
        .order_by(u.c.id)
    )


def _already_reminded(bridge: BridgeTables, rule: CampaignRule, campaignid: int, now: int) -> sa.Select[Any]:
    """Users the ledger leaves out: reminded in this cycle, or as often as the cap allows.

    One pass over the campaign's ledger rows (its unique key leads with ``campaignid``), grouped
    by user, then an anti-join: the engines hash or materialise it once, where a correlated
    look-up per candidate user cost one index probe (two with a cap) per learner."""
    ledger = bridge.campaign_ledger
    reminded = sa.select(ledger.c.userid).where(ledger.c.campaignid == campaignid)
    if rule.cadence.every_days <= 0:
        return reminded  # a one-off campaign: every ledger row is of cycle 0
    return reminded.group_by(ledger.c.userid).having(
        sa.or_(
            sa.func.count() >= rule.cadence.max_reminders,
            sa.func.max(ledger.c.cycle) >= rule.cycle(now),
        )
    )


def audience(
    conn: sa.Connection,
    moodle: MoodleActivityTables,
    iomad: IomadTables,
    bridge: BridgeTables,
    rule: CampaignRule,
    *,
    companyid: int,
    campaignid: int,
    now: int,
) -> list[AudienceMember]:
    query = audience_query(moodle, iomad, bridge, rule, companyid=companyid, campaignid=campaignid, now=now)
    return [
        AudienceMember(
            int(uid), str(email or ""), str(first or ""), str(last or ""), str(lang or ""), int(seen or 0)
        )
        for uid, email, first, last, lang, seen in conn.execute(query)
    ]


def managers_of(
    conn: sa.Connection,
    moodle: MoodleActivityTables,
    iomad: IomadTables,
    companyid: int,
    userids: Sequence[int],
) -> dict[int, list[Manager]]:
    """Each user's IOMAD managers: the company's managers and their departments' managers.

    Two statements for the company (managers, then their users) plus one per 1,000 learners
    for the learners' departments; nothing per learner.
    """
    cu, u = iomad.company_users, moodle.user
    rows = conn.execute(
        sa.select(cu.c.userid, cu.c.managertype, cu.c.departmentid).where(
            cu.c.companyid == companyid,
            cu.c.managertype.in_((COMPANY_MANAGER, DEPARTMENT_MANAGER)),
            cu.c.suspended == 0,
        )
    ).all()
    if not rows:
        return {uid: [] for uid in userids}
    people = {
        int(r.id): Manager(int(r.id), str(r.email or ""), str(r.firstname or ""), str(r.lastname or ""))
        for r in conn.execute(
            sa.select(u.c.id, u.c.email, u.c.firstname, u.c.lastname).where(
                u.c.id.in_({int(r.userid) for r in rows}),
                u.c.deleted == 0,
                u.c.suspended == 0,
                u.c.email != "",
            )
        )
    }
    company_managers = sorted({int(r.userid) for r in rows if r.managertype == COMPANY_MANAGER})
    by_department: dict[int, set[int]] = {}
    for r in rows:
        if r.managertype == DEPARTMENT_MANAGER:
            by_department.setdefault(int(r.departmentid), set()).add(int(r.userid))
    departments: dict[int, set[int]] = {}
    for part in chunks(list(userids), 1000):
        for member in conn.execute(
            sa.select(cu.c.userid, cu.c.departmentid).where(
                cu.c.companyid == companyid, cu.c.userid.in_(part)
            )
        ):
            departments.setdefault(int(member.userid), set()).add(int(member.departmentid))
    out: dict[int, list[Manager]] = {}
    for uid in userids:
        ids = set(company_managers)
        for dept in departments.get(uid, ()):
            ids |= by_department.get(dept, set())
        ids.discard(uid)
        out[uid] = [people[i] for i in sorted(ids) if i in people]
    return out
