"""New course completions of offloaded companies, with grade, certificate and queued mail.

IOMAD queues ``completion_course_user`` from its course_completed observer *before* the
certificate exists (facts section 4, iomad/iomad#2526), so the row has no attachment. The
bridge reads completions itself, and matches each to its queued row (same user and course,
unsent) so the mail can go out together with the certificate the cloud renders.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

import sqlalchemy as sa

from moodle_bridge.sources.iomad import queries
from moodle_bridge.sources.iomad.queries import chunks
from moodle_bridge.sources.iomad.schema import IomadTables

COMPLETION_TEMPLATE = "completion_course_user"


@dataclass(frozen=True)
class CourseCompletion:
    completion_id: int  # course_completions.id
    userid: int
    courseid: int
    companyid: int
    timecompleted: int
    coursename: str
    courseshortname: str
    finalscore: Decimal | None = None  # local_iomad_track.finalscore when a track row exists
    trackid: int | None = None
    certificate_filename: str | None = None  # local_iomad_track_certs.filename (IOMAD's own PDF)
    emailid: int | None = None  # the unsent completion_course_user row, when queued

    @property
    def watermark(self) -> tuple[int, int]:
        """Pass as ``after`` to continue after this completion."""
        return (self.timecompleted, self.completion_id)


def select_completions(
    conn: sa.Connection,
    tables: IomadTables,
    company_ids: Collection[int],
    after: tuple[int, int],
    until: int,
    limit: int = 1000,
) -> list[CourseCompletion]:
    """Completions after the ``(timecompleted, id)`` watermark up to ``until``, oldest first.

    Grade, IOMAD track/certificate and the matching queued row are filled in with a few
    set-based queries (see ``attach_tracks`` and ``match_completion_emails``).
    """
    completions = select_completions_only(conn, tables, company_ids, after, until, limit)
    return match_completion_emails(conn, tables, attach_tracks(conn, tables, completions))


def select_completions_only(
    conn: sa.Connection,
    tables: IomadTables,
    company_ids: Collection[int],
    after: tuple[int, int],
    until: int,
    limit: int = 1000,
) -> list[CourseCompletion]:
    """The completions of ``select_completions`` without track or queued mail (one query)."""
    if not company_ids:
        return []
    since, after_id = after
    rows = conn.execute(
        queries.completions_since(tables, company_ids, since, after_id, until, limit)
    ).mappings()
    return [
        CourseCompletion(
            completion_id=int(r["id"]),
            userid=int(r["userid"]),
            courseid=int(r["course"]),
            companyid=int(r["companyid"]),
            timecompleted=int(r["timecompleted"]),
            coursename=str(r["fullname"] or ""),
            courseshortname=str(r["shortname"] or ""),
        )
        for r in rows
    ]


def attach_tracks(
    conn: sa.Connection, tables: IomadTables, completions: Sequence[CourseCompletion]
) -> list[CourseCompletion]:
    """Add finalscore and certificate file name from IOMAD's completion track."""
    by_key: dict[tuple[int, int, int], tuple[int, Decimal | None]] = {}
    userids = sorted({c.userid for c in completions})
    for chunk in chunks(userids):
        for r in conn.execute(queries.tracks_for(tables, chunk)).mappings():
            key = (int(r["userid"]), int(r["courseid"]), int(r["companyid"]))
            score = r["finalscore"]
            by_key[key] = (int(r["id"]), None if score is None else Decimal(str(score)))  # latest id wins
    certs: dict[int, str] = {}
    for chunk in chunks(sorted({v[0] for v in by_key.values()})):
        for trackid, filename in conn.execute(queries.certs_for(tables, chunk)):
            certs.setdefault(int(trackid), str(filename))
    out = []
    for c in completions:
        track = by_key.get((c.userid, c.courseid, c.companyid))
        if track is None:
            out.append(c)
        else:
            out.append(
                replace(c, trackid=track[0], finalscore=track[1], certificate_filename=certs.get(track[0]))
            )
    return out


def match_completion_emails(
    conn: sa.Connection, tables: IomadTables, completions: Sequence[CourseCompletion]
) -> list[CourseCompletion]:
    """Fill ``emailid`` with the unsent completion_course_user row of the same user+course.

    Each row is matched at most once (lowest id first), so two completions of one course
    (re-completion after a reset) take two rows.
    """
    queued: dict[tuple[int, int], list[int]] = defaultdict(list)
    for chunk in chunks(sorted({c.userid for c in completions})):
        for r in conn.execute(queries.completion_rows(tables, chunk, COMPLETION_TEMPLATE)).mappings():
            queued[(int(r["userid"]), int(r["courseid"] or 0))].append(int(r["id"]))
    out = []
    for c in completions:
        ids = queued.get((c.userid, c.courseid))
        out.append(replace(c, emailid=ids.pop(0)) if ids else c)
    return out


#: A completion mail queued this long before the completion still counts as its mail (clocks of
#: web nodes differ a little; IOMAD queues the mail in the same request as the completion).
MAIL_SLACK_SECONDS = 60


def mailed_completions(
    conn: sa.Connection, tables: IomadTables, completions: Sequence[CourseCompletion]
) -> set[int]:
    """Ids of the completions that IOMAD queued a ``completion_course_user`` mail for.

    A completion counts as mailed when a row for the same user and course, sent or not, was
    queued (``due`` or ``modifiedtime``) at or after its ``timecompleted`` (less a minute).
    Such a completion gets its certificate with that mail (the claim pass) or from IOMAD; the
    others are the store-only path's (``pipeline/store_only.py``)."""
    queued: dict[tuple[int, int], list[int]] = defaultdict(list)
    for chunk in chunks(sorted({c.userid for c in completions})):
        for r in conn.execute(queries.completion_mails(tables, chunk, COMPLETION_TEMPLATE)).mappings():
            latest = max(int(r["due"] or 0), int(r["modifiedtime"] or 0))
            queued[(int(r["userid"]), int(r["courseid"] or 0))].append(latest)
    return {
        c.completion_id
        for c in completions
        if any(t >= c.timecompleted - MAIL_SLACK_SECONDS for t in queued.get((c.userid, c.courseid), ()))
    }
