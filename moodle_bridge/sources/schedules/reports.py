"""The reports a schedule mails (``action_type = report``), and their CSV / XLSX files.

Every query is read-only and starts from an indexed key: the company's users
(``company_users.companyid``), ``course_completions (userid, course)`` and its
``timecompleted`` index, ``user_enrolments.userid``, ``user_lastaccess (userid, courseid)``,
the company's licences and ``companylicense_users.licenseid``, and the bridge's own
``mrcloud_jobs (companyid, ...)`` and ``mrcloud_recipients (jobid, status)``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import xlsxwriter

from moodle_bridge.sources.campaigns.moodle_tables import MoodleActivityTables
from moodle_bridge.sources.iomad.schema import IomadTables
from moodle_bridge.storage.bridge_tables import BridgeTables

DAY = 86400
#: Report name -> what it lists (shown by ``schedules create --help`` and the docs).
REPORTS = {
    "completions": "course completions in the last N days",
    "not_started": "learners enrolled at least N days ago who have not started the course",
    "licences_expiring": "licence allocations whose licence expires within N days",
    "mail_sent": "the mail the offload sent in the last N days: sent, failed, bounced",
}
FORMATS = ("csv", "xlsx")
CONTENT_TYPES = {
    "csv": "text/csv",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
#: A report larger than this is cut, and says so in its last row (SES takes 40 MB per message).
MAX_ROWS = 100_000
#: Bridge statuses per outcome of the ``mail_sent`` report.
MAIL_OUTCOMES = {
    "sent": "sent",
    "delivered": "sent",
    "failed": "failed",
    "bounced": "bounced",
    "complained": "bounced",
}


@dataclass(frozen=True)
class ReportTable:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    truncated: bool = False


@dataclass(frozen=True)
class ReportContext:
    moodle: MoodleActivityTables
    iomad: IomadTables
    bridge: BridgeTables
    companyid: int
    zone: dt.tzinfo


def _when(ctx: ReportContext, value: Any) -> str:
    seconds = int(value or 0)
    if seconds <= 0:
        return ""
    return dt.datetime.fromtimestamp(seconds, ctx.zone).strftime("%Y-%m-%d %H:%M")


def _company_users(ctx: ReportContext) -> sa.Select[tuple[int]]:
    cu = ctx.iomad.company_users
    return sa.select(cu.c.userid).where(cu.c.companyid == ctx.companyid, cu.c.suspended == 0)


def _live(u: sa.Table) -> list[sa.ColumnElement[bool]]:
    return [u.c.deleted == 0, u.c.suspended == 0]


def completions(conn: sa.Connection, ctx: ReportContext, *, at: int, days: int) -> ReportTable:
    u, cc, c = ctx.moodle.user, ctx.moodle.course_completions, ctx.moodle.course
    query = (
        sa.select(u.c.id, u.c.firstname, u.c.lastname, u.c.email, c.c.fullname, cc.c.timecompleted)
        .select_from(cc.join(u, u.c.id == cc.c.userid).join(c, c.c.id == cc.c.course))
        .where(
            cc.c.timecompleted >= at - days * DAY,
            cc.c.timecompleted < at,
            cc.c.userid.in_(_company_users(ctx)),
            *_live(u),
        )
        .order_by(cc.c.timecompleted, u.c.id)
        .limit(MAX_ROWS + 1)
    )
    rows = [(r[0], r[1], r[2], r[3], r[4], _when(ctx, r[5])) for r in conn.execute(query)]
    return _table(("user id", "first name", "last name", "email", "course", "completed"), rows)


def not_started(conn: sa.Connection, ctx: ReportContext, *, at: int, days: int) -> ReportTable:
    m = ctx.moodle
    u, ue, e, c = m.user, m.user_enrolments, m.enrol, m.course
    cc, ula = m.course_completions, m.user_lastaccess
    since = sa.case((ue.c.timestart > 0, ue.c.timestart), else_=ue.c.timecreated)
    started = sa.exists().where(
        cc.c.userid == ue.c.userid,
        cc.c.course == e.c.courseid,
        sa.or_(cc.c.timestarted > 0, cc.c.timecompleted > 0),
    )
    accessed = sa.exists().where(ula.c.userid == ue.c.userid, ula.c.courseid == e.c.courseid)
    query = (
        sa.select(u.c.id, u.c.firstname, u.c.lastname, u.c.email, c.c.fullname, since)
        .select_from(
            ue.join(e, e.c.id == ue.c.enrolid).join(u, u.c.id == ue.c.userid).join(c, c.c.id == e.c.courseid)
        )
        .where(
            ue.c.userid.in_(_company_users(ctx)),
            ue.c.status == 0,
            e.c.status == 0,
            since <= at - days * DAY,
            ~started,
            ~accessed,
            *_live(u),
        )
        .order_by(u.c.id, c.c.id)
        .limit(MAX_ROWS + 1)
    )
    rows = [(r[0], r[1], r[2], r[3], r[4], _when(ctx, r[5])) for r in conn.execute(query)]
    return _table(("user id", "first name", "last name", "email", "course", "enrolled"), rows)


def licences_expiring(conn: sa.Connection, ctx: ReportContext, *, at: int, days: int) -> ReportTable:
    lu, lic = ctx.iomad.license_users, ctx.moodle.license
    if lu is None:
        return _table(("user id", "first name", "last name", "email", "licence", "course", "expires"), [])
    u, c = ctx.moodle.user, ctx.moodle.course
    licences = sa.select(lic.c.id).where(
        lic.c.companyid == ctx.companyid, lic.c.expirydate > at, lic.c.expirydate <= at + days * DAY
    )
    query = (
        sa.select(u.c.id, u.c.firstname, u.c.lastname, u.c.email, lic.c.name, c.c.fullname, lic.c.expirydate)
        .select_from(
            lu.join(lic, lic.c.id == lu.c.licenseid)
            .join(u, u.c.id == lu.c.userid)
            .outerjoin(c, c.c.id == lu.c.licensecourseid)
        )
        .where(lu.c.licenseid.in_(licences), *_live(u))
        .order_by(lic.c.expirydate, u.c.id)
        .limit(MAX_ROWS + 1)
    )
    rows = [(r[0], r[1], r[2], r[3], r[4], r[5] or "", _when(ctx, r[6])) for r in conn.execute(query)]
    return _table(("user id", "first name", "last name", "email", "licence", "course", "expires"), rows)


def mail_sent(conn: sa.Connection, ctx: ReportContext, *, at: int, days: int) -> ReportTable:
    j, r = ctx.bridge.jobs, ctx.bridge.recipients
    jobs = sa.select(j.c.id).where(
        j.c.companyid == ctx.companyid, j.c.timecreated >= at - days * DAY, j.c.timecreated < at
    )
    query = (
        sa.select(r.c.timemodified, r.c.jobid, j.c.templatename, r.c.address, r.c.status, r.c.errorcode)
        .select_from(r.join(j, j.c.id == r.c.jobid))
        .where(r.c.jobid.in_(jobs), r.c.status.in_(sorted(MAIL_OUTCOMES)))
        .order_by(r.c.jobid, r.c.id)
        .limit(MAX_ROWS + 1)
    )
    rows = [
        (_when(ctx, x[0]), x[1], x[2] or "", x[3], MAIL_OUTCOMES[str(x[4])], x[5] or "")
        for x in conn.execute(query)
    ]
    return _table(("time", "job", "template", "address", "outcome", "error"), rows)


_BUILDERS = {
    "completions": completions,
    "not_started": not_started,
    "licences_expiring": licences_expiring,
    "mail_sent": mail_sent,
}


def build_report(conn: sa.Connection, name: str, ctx: ReportContext, *, at: int, days: int) -> ReportTable:
    return _BUILDERS[name](conn, ctx, at=at, days=days)


def _table(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> ReportTable:
    if len(rows) > MAX_ROWS:
        return ReportTable(columns, rows[:MAX_ROWS], truncated=True)
    return ReportTable(columns, rows)


def _cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula is prefixed with ' (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _lines(table: ReportTable) -> list[Sequence[Any]]:
    out: list[Sequence[Any]] = [table.columns]
    out.extend(tuple(_cell(v) for v in row) for row in table.rows)
    if table.truncated:
        out.append((f"(cut at {MAX_ROWS} rows)",))
    return out


def render(table: ReportTable, fmt: str) -> bytes:
    """The report as a file: UTF-8 CSV (RFC 4180) or an XLSX workbook with one sheet."""
    if fmt == "csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows(_lines(table))
        return buffer.getvalue().encode("utf-8")
    if fmt != "xlsx":
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    raw = io.BytesIO()
    book = xlsxwriter.Workbook(
        raw, {"in_memory": True, "strings_to_formulas": False, "strings_to_urls": False}
    )
    sheet = book.add_worksheet("report")
    bold = book.add_format({"bold": True})
    for r, line in enumerate(_lines(table)):
        for c, value in enumerate(line):
            if isinstance(value, int | float) and not isinstance(value, bool):
                sheet.write_number(r, c, value)
            else:
                sheet.write_string(r, c, "" if value is None else str(value), bold if r == 0 else None)
    book.close()
    return raw.getvalue()
