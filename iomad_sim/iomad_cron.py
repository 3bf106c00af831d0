"""IOMAD's email cron (``\\local_email\\task\\cron_task`` -> ``email_cron()``), reproduced.

Written independently of the bridge's fan-out code (moodle_bridge.sources.iomad.recipients), the way
the PHP does it: per-row and per-recipient ``get_record`` calls, so tests can compare the
two. Steps, as in facts section 2.3:

1. take Moodle's task lock (timeout 0 like the cron runner: skip the run if it is held);
2. purge ``modifiedtime < now - 180 days AND due < now``;
3. load ALL due rows (``sent IS NULL AND due < now AND u.deleted = 0 AND u.suspended = 0``, no
   ORDER BY, no LIMIT) into memory;
4. (test hook: ``after_load`` runs here: IOMAD's race window)
5. per row: delete it if the template is disabled for the company; else send to every
   recipient of the fan-out, then ``update_record`` the WHOLE row from the copy loaded in
   step 3 with ``sent = modifiedtime = time()``, whatever the send returned;
6. special users (4.1.22/5.0 only, off by default like 4.3.7), then ``company_suspended`` rows
   of suspended users.

A row whose ``templatename`` is none of IOMAD's templates (the bridge's ``mrcloud_schedule``)
is sent like any other: ``email_template_is_enabled()`` finds no template row and says yes, the
stored subject and body go to the row's user, the To/Cc lists come from ``headers['template']``
and managers/supervisors only for IOMAD's user templates. Without a ``template`` in its headers
IOMAD looks the template up by name and throws (``IomadCronCrash`` here): the run stops there.
The attachment (``headers['attachment']``) is read from its ``filepath`` at send time; a file
that cannot be read is left off and the mail still goes (PHPMailer's ``addAttachment`` fails).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from iomad_sim.smtp_sink import RecordingSmtpSink
from moodle_bridge.sources.iomad import queries
from moodle_bridge.sources.iomad.addresses import is_valid_address
from moodle_bridge.sources.iomad.headers import HeadersError, TemplateSettings, parse_headers
from moodle_bridge.sources.iomad.moodle_lock import LockNotAcquired, moodle_cron_lock
from moodle_bridge.sources.iomad.recipients import template_check_type
from moodle_bridge.sources.iomad.schema import IomadTables, detect_iomad
from moodle_bridge.sources.iomad.templates import ALL_TEMPLATES

HALF_YEAR = 6 * 30 * 24 * 60 * 60

#: IOMAD's ``EmailTemplate::is_user_template()`` array as PHP sees it (4.3.7 and 5.x alike):
#: string keys are user templates; the microlearning entries have numeric keys, so
#: ``!empty($usertemplates[$name])`` never matches them. Kept apart from the bridge's own list
#: so the tests compare two readings of IOMAD.
_IS_USER_TEMPLATE_ARRAY: dict[object, str] = {
    "completion_course_user": "completion_course_user",
    "course_not_started_warning": "course_not_started_warning",
    "completion_warn_user": "completion_warn_user",
    "expiry_warn_user": "expiry_warn_user",
    "license_allocated": "license_allocated",
    "license_removed": "license_removed",
    0: "microlearning_nugget_scheduled",
    1: "microlearning_nugget_reminder1",
    2: "microlearning_nugget_reminder2",
    "password_update": "password_update",
    "user_added_to_course": "user_added_to_course",
    "user_create": "user_create",
    "user_deleted": "user_deleted",
    "user_programcompleted": "user_programcompleted",
    "user_promoted": "user_promoted",
    "user_removed_from_event": "user_removed_from_event",
    "user_reset": "user_reset",
    "user_signed_up_for_event": "user_signed_up_for_event",
    "user_signed_up_to_waitlist": "user_signed_up_to_waitlist",
    "user_suspended": "user_suspended",
    "user_unsuspended": "user_unsuspended",
}


def is_user_template(name: str) -> bool:
    """``!empty($usertemplates[$templatename])``."""
    return bool(_IS_USER_TEMPLATE_ARRAY.get(name))


class IomadCronCrash(RuntimeError):
    """What IOMAD throws for a row it cannot send (``Email template '<name>' not found``): the
    task stops, the rows after it in this run stay unsent."""


@dataclass
class CronRun:
    ran: bool
    purged: int = 0
    loaded: int = 0
    sent_rows: list[int] = field(default_factory=list)
    deleted_rows: list[int] = field(default_factory=list)
    messages: int = 0
    failed_sends: int = 0


def run_iomad_email_cron(
    engine: sa.Engine,
    prefix: str,
    dbname: str,
    smtp_sink: RecordingSmtpSink,
    now: int | None = None,
    *,
    tables: IomadTables | None = None,
    after_load: Callable[[list[int]], None] | None = None,
    clock: Callable[[], int] | None = None,
    special_users: bool = False,
    lock_timeout: float = 0,
) -> CronRun:
    """One run of IOMAD's email cron against ``engine``; returns what it did.

    ``after_load(ids)`` is called between loading the due rows and processing them, so a
    test can run the bridge inside IOMAD's race window. ``clock`` gives ``time()`` for the
    sent stamps (default: ``now``, else the wall clock).
    """
    with engine.connect() as probe:
        t = tables or detect_iomad(probe, prefix)
    start = int(time.time()) if now is None else now
    stamp: Callable[[], int] = clock or (lambda: start)
    try:
        with moodle_cron_lock(engine, t, dbname, t.email_cron_task, lock_timeout):
            return _run(engine, t, smtp_sink, start, stamp, after_load, special_users)
    except LockNotAcquired:
        return CronRun(ran=False)


def _run(
    engine: sa.Engine,
    t: IomadTables,
    sink: RecordingSmtpSink,
    now: int,
    stamp: Callable[[], int],
    after_load: Callable[[list[int]], None] | None,
    special_users: bool,
) -> CronRun:
    run = CronRun(ran=True)
    # Moodle's $DB outside a transaction: every statement commits on its own.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        run.purged = conn.execute(queries.iomad_cron_purge(t, now, now - HALF_YEAR)).rowcount or 0
        batches = [queries.iomad_cron_main(t, now)]
        if special_users:
            batches.append(queries.iomad_cron_special_users(t, now))
        batches.append(queries.iomad_cron_company_suspended(t, now))
        for n, query in enumerate(batches):
            rows = {int(r["id"]): dict(r) for r in conn.execute(query).mappings()}  # get_records_sql
            run.loaded += len(rows)
            if n == 0 and after_load is not None:
                after_load(sorted(rows))
            for email_id, email in rows.items():
                name = str(email["templatename"] or "")
                if not _template_enabled(conn, t, int(email["companyid"]), name, template_check_type(name)):
                    conn.execute(sa.delete(t.email).where(t.email.c.id == email_id))
                    run.deleted_rows.append(email_id)
                    continue
                sent, failed = _send_to_user(conn, t, email, sink)
                run.messages += sent
                run.failed_sends += failed
                when = stamp()
                email["sent"] = when
                email["modifiedtime"] = when
                # update_record(): every column of the loaded copy is written back
                values = {k: v for k, v in email.items() if k != "id"}
                conn.execute(sa.update(t.email).where(t.email.c.id == email_id).values(**values))
                run.sent_rows.append(email_id)
    return run


def _template_enabled(
    conn: sa.Connection, t: IomadTables, companyid: int, name: str, managertype: int
) -> bool:
    """company::email_template_is_enabled(): any row (any language) with the flag set disables."""
    et = t.email_template
    base = sa.select(sa.func.count()).select_from(et).where(et.c.companyid == companyid, et.c.name == name)
    if conn.execute(base.where(et.c.disabled == 1)).scalar_one():
        return False
    if managertype == 1 and conn.execute(base.where(et.c.disabledmanager == 1)).scalar_one():
        return False
    return not (managertype == 2 and conn.execute(base.where(et.c.disabledsupervisor == 1)).scalar_one())


def _get_user(conn: sa.Connection, t: IomadTables, userid: int, active_only: bool) -> dict[str, Any] | None:
    u = t.user
    q = sa.select(u).where(u.c.id == userid)
    if active_only:
        q = q.where(u.c.deleted == 0, u.c.suspended == 0)
    row = conn.execute(q).mappings().first()
    return dict(row) if row is not None else None


def _send_to_user(
    conn: sa.Connection, t: IomadTables, email: dict[str, Any], sink: RecordingSmtpSink
) -> tuple[int, int]:
    """EmailTemplate::send_to_user(): returns (messages sent, failed sends).

    Like IOMAD it stops at the first failed send (the caller still marks the row sent).
    """
    user = _get_user(conn, t, int(email["userid"]), active_only=False)
    if user is None:
        return 0, 0
    try:
        parsed = parse_headers(email["headers"])
    except HeadersError:  # PHP unserialize() gives false: no template, defaults apply
        parsed = None
    name = str(email["templatename"] or "")
    template = parsed.template if parsed else None
    if template is None:
        if name not in ALL_TEMPLATES:  # new EmailTemplate($name) -> get_template() throws
            raise IomadCronCrash(f"Email template '{name}' not found")
        template = TemplateSettings(name=name)
    attachment, attachment_sha256 = None, None
    if parsed and parsed.attachment:
        try:  # PHPMailer addAttachment() reads the file; it fails quietly on an unreadable one
            with open(parsed.attachment.filepath, "rb") as f:
                attachment_sha256 = hashlib.sha256(f.read()).hexdigest()
            attachment = parsed.attachment.filename
        except OSError:
            attachment = None
    sent = 0

    def direct(address: str) -> bool:
        nonlocal sent
        ok = sink.send(
            address,
            str(email["subject"]),
            str(email["body"]),
            email_id=int(email["id"]),
            attachment=attachment,
            attachment_sha256=attachment_sha256,
        )
        sent += ok
        return ok

    targets: list[Callable[[], list[str]]] = [lambda: [str(user["email"])]]

    def users_of(ids: Sequence[int]) -> list[str]:
        out = []
        for uid in ids:
            rec = _get_user(conn, t, uid, active_only=True)
            if rec is not None:
                out.append(str(rec["email"]))
        return out

    targets.append(lambda: users_of(template.emailto_ids))
    targets.append(lambda: users_of(template.emailcc_ids))
    targets.append(lambda: [a for a in template.emailtoother_addresses if is_valid_address(a)])
    targets.append(lambda: [a for a in template.emailccother_addresses if is_valid_address(a)])
    if is_user_template(str(email["templatename"])):
        if not template.disabledmanager:
            targets.append(lambda: users_of(_get_my_managers(conn, t, int(email["userid"]))))
        if not template.disabledsupervisor:
            targets.append(lambda: _get_usersupervisor(conn, t, int(email["userid"])))
    for target in targets:
        for address in target():
            if not direct(address):
                return sent, 1
    return sent, 0


def _first_admin(conn: sa.Connection, t: IomadTables) -> int | None:
    value = conn.execute(sa.select(t.config.c.value).where(t.config.c.name == "siteadmins")).scalar()
    first = str(value or "").split(",")[0].strip()
    return int(first) if first.isdigit() else None


def _get_my_managers(conn: sa.Connection, t: IomadTables, userid: int) -> list[int]:
    """company::get_my_managers($userid, 1): managertype 1 in the user's department and its parents."""
    cu, d = t.company_users, t.department
    member = conn.execute(sa.select(cu).where(cu.c.userid == userid).order_by(cu.c.id)).mappings().first()
    if member is None:
        return []
    departments: list[int] = []
    dept = int(member["departmentid"])
    while dept and dept not in departments:
        departments.append(dept)
        parent = conn.execute(sa.select(d.c.parent).where(d.c.id == dept)).scalar()
        dept = int(parent or 0)
    if not departments:
        return []
    cron_user = _first_admin(conn, t)  # $USER in cron is the main admin
    q = sa.select(cu.c.userid).where(cu.c.managertype == 1, cu.c.departmentid.in_(departments))
    if cron_user is not None:
        q = q.where(cu.c.userid != cron_user)
    return [int(x) for x in conn.execute(q.order_by(cu.c.id)).scalars()]


def _get_usersupervisor(conn: sa.Connection, t: IomadTables, userid: int) -> list[str]:
    """company::get_usersupervisor(): addresses in the company's (or site's) profile field."""
    cu, c, uid = t.company_users, t.company, t.user_info_data
    companyid = conn.execute(
        sa.select(cu.c.companyid).where(cu.c.userid == userid).order_by(cu.c.id).limit(1)
    ).scalar()
    fieldid = None
    if companyid is not None:
        fieldid = conn.execute(sa.select(c.c.emailprofileid).where(c.c.id == companyid)).scalar()
    if not fieldid:
        value = conn.execute(
            sa.select(t.config.c.value).where(t.config.c.name == "companyemailprofileid")
        ).scalar()
        fieldid = int(value) if value and str(value).isdigit() else None
    if not fieldid:
        return []
    data = conn.execute(
        sa.select(uid.c.data).where(uid.c.userid == userid, uid.c.fieldid == fieldid)
    ).scalar()
    if not data:
        return []
    return [a.strip() for a in str(data).split(",") if a.strip() and is_valid_address(a.strip())]
