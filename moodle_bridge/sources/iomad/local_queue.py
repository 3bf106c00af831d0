"""Queue already-rendered mail into IOMAD's own queue table, for IOMAD's cron to send.

Used by schedules whose run stays local (``cloud_preference`` local, or auto with the company's
routing keeping it local; docs/schedules.md). One row per recipient, with the columns IOMAD's
``queue_for_cron()`` writes (facts section 2.2): ``sent`` NULL, ``due`` now, the rendered
subject and HTML body, ``varsreplaced`` 1, company, user and course, ``senderid`` -20 (Moodle's
support user, IOMAD's default sender) and a PHP-serialized ``headers`` array.

Why IOMAD's cron sends these rows as stored, to the row's user only (read in IOMAD's source,
docs/iomad.md "Rows the bridge queues"):

- ``templatename`` is ``mrcloud_schedule``, which is none of IOMAD's templates and contains
  neither "manager" nor "supervisor": ``company::email_template_is_enabled()`` finds no
  ``email_template`` row for it and returns true (its default), so the cron sends the row
  rather than deleting it;
- ``send_to_user()`` mails the stored ``subject`` and ``body``; it re-renders nothing;
- the fan-out comes from the ``template`` object in ``headers`` (To/Cc ids and addresses, all
  empty here) and, for IOMAD's "user templates" only, the user's managers and supervisors:
  ``mrcloud_schedule`` is not one, so nobody else is mailed;
- ``headers['template']`` must be present: without it ``send_to_user()`` builds the template by
  name, and IOMAD throws "Email template 'mrcloud_schedule' not found", which stops the whole
  cron run;
- ``headers['attachment'] = {filepath, filename}`` is attached from ``filepath`` at send time.

The same ``templatename`` keeps the bridge's claim pass and strict mode's trigger off these rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from moodle_bridge.sources.iomad.headers import Attachment, serialize_headers
from moodle_bridge.sources.iomad.queries import LOCAL_SCHEDULE_TEMPLATE, chunks, unpark
from moodle_bridge.sources.iomad.schema import IomadTables

#: Moodle's ``core_user::SUPPORT_USER``: IOMAD's sender when ``email_senderisreal`` is off.
SUPPORT_USER = -20
#: Moodle's site course: IOMAD's ``courseid`` for mail about no course (facts section 2.2).
SITE_COURSE = 1
#: ``email.subject`` is char(255).
SUBJECT_LENGTH = 255


@dataclass(frozen=True)
class LocalMail:
    """One recipient's rendered mail for IOMAD to send."""

    userid: int
    subject: str
    html: str
    courseid: int | None = None
    attachment: Attachment | None = None


def template_object(companyid: int) -> dict[str, object]:
    """The ``headers['template']`` stdClass: the fields IOMAD's ``queue_for_cron()`` fills, every
    To/Cc/From setting empty (IOMAD then mails the row's user only, from its noreply address)."""
    return {
        "id": 0,
        "companyid": companyid,
        "name": LOCAL_SCHEDULE_TEMPLATE,
        "lang": "",
        "subject": "",
        "body": "",
        "signature": "",
        "disabled": 0,
        "disabledmanager": 0,
        "disabledsupervisor": 0,
        "emailto": "",
        "emailtoother": "",
        "emailcc": "",
        "emailccother": "",
        "emailfrom": "",
        "emailfromother": "",
        "emailfromothername": "",
        "emailreplyto": "",
        "emailreplytoother": "",
        "repeatperiod": 0,
        "repeatvalue": 0,
        "repeatday": 0,
    }


def queue_local_mails(
    conn: sa.Connection, iomad: IomadTables, companyid: int, mails: Sequence[LocalMail], *, at: int
) -> int:
    """Insert one unsent, due-now row per mail in the caller's transaction; returns the count.

    A strict-mode trigger installed before this version would park the rows at insert; they are
    handed straight back in the same transaction, so IOMAD's cron always sees them due."""
    if not mails:
        return 0
    e = iomad.email
    rows = [
        {
            "templatename": LOCAL_SCHEDULE_TEMPLATE,
            "modifiedtime": at,
            "sent": None,
            "subject": m.subject[:SUBJECT_LENGTH],
            "body": m.html,
            "varsreplaced": 1,
            "companyid": companyid,
            "courseid": m.courseid or SITE_COURSE,
            "userid": m.userid,
            "senderid": SUPPORT_USER,
            "headers": serialize_headers(template_object(companyid), m.attachment),
            "due": at,
        }
        for m in mails
    ]
    ids: list[int] = []
    for row in rows:  # one INSERT each: the new ids, for the check below (no scan of IOMAD's table)
        key = conn.execute(e.insert().values(**row)).inserted_primary_key
        if key is None:  # pragma: no cover - every engine returns the new id
            raise RuntimeError("no id for the queued row")
        ids.append(int(key[0]))
    for chunk in chunks(ids):
        conn.execute(unpark(iomad, chunk))
    return len(ids)
