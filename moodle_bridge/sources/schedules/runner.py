"""Create, fire and preview schedules (docs/schedules.md).

A run fires one *slot* (``timing.Recurrence``). The slot's row in ``mrcloud_schedule_runs`` is
inserted first, in the transaction that does the run: for a report, builds it, uploads its file
and creates the job, its recipients and its outbox batches; for ``email``, runs the campaign
(its ledger and its job); for a run that stays local (``cloud_preference`` local, or auto with
the company's routing keeping it local), queues each recipient's rendered mail into IOMAD's own
queue. The unique key on (schedule, slot) makes a second bridge or an overlapping pass wait and
then give up, and a bridge killed before the commit leaves nothing (the next pass fires the slot
again; a report file's object key is the same, so the upload is simply repeated).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.claiming import verification_code
from moodle_bridge.pipeline.jobs import (
    PlannedRecipient,
    TemplateJob,
    create_template_job,
    fill_template_job,
)
from moodle_bridge.pipeline.local_mail import queue_template_locally
from moodle_bridge.pipeline.outbox import BuildError
from moodle_bridge.pipeline.routing import CompanySettings, decide
from moodle_bridge.sources.campaigns.audience import COMPANY_MANAGER
from moodle_bridge.sources.campaigns.rules import RuleError
from moodle_bridge.sources.campaigns.runner import CampaignError, moodle_tables_for, run_campaign_in
from moodle_bridge.sources.iomad.addresses import address_problem
from moodle_bridge.sources.iomad.headers import Attachment
from moodle_bridge.sources.iomad.schema import IomadTables, detect_iomad
from moodle_bridge.sources.schedules import local_reports, reports
from moodle_bridge.sources.schedules.timing import Recurrence, TimingError, format_time_of_day, zone
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.campaign_repo import CampaignRepo
from moodle_bridge.storage.schedule_repo import ScheduleRepo, SlotTaken
from moodle_bridge.transports.worker_objects import WorkerObjectError, worker_objects

ACTIONS = ("email", "certificate", "report")
CLOUD_PREFERENCES = ("auto", "cloud", "local")
MAX_REPORT_DAYS = 3650
#: A run that failed (no bucket, storage down, company not set up) is tried again this much later.
RETRY_SECONDS = 900
#: Uploads a report file: (object key, bytes, content type).
Uploader = Callable[[str, bytes, str], None]

REPORT_TEMPLATE = {
    "subject": "{{ schedule }}: {{ rows }} rows ({{ period }})",
    "html": (
        "<p>Hello {{ firstname }},</p><p>Attached is the scheduled report <strong>{{ schedule }}</strong>"
        " for {{ company }}: {{ description }}, {{ rows }} rows, as of {{ period }}.</p>"
    ),
    "text": (
        "Hello {{ firstname }},\n\nAttached is the scheduled report {{ schedule }} for {{ company }}: "
        "{{ description }}, {{ rows }} rows, as of {{ period }}."
    ),
}


class ScheduleError(RuntimeError):
    """The schedule cannot be created or run; the message says why and what to do."""


@dataclass
class ScheduleRunReport:
    scheduleid: int
    slot: int | None
    #: queued | queued_local | empty | not_sent | failed | already_fired | nothing_due
    outcome: str = "nothing_due"
    jobid: int | None = None
    rows: int = 0
    #: recipients of the job, or with ``queued_local`` the rows queued in IOMAD's queue
    recipients: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Preview:
    slot: int | None
    count: int  # report rows, or campaign audience
    recipients: list[str]
    sample: dict[str, str] | None
    unit: str = "rows"  # what ``count`` counts: report rows, or users (campaign, certificates)


def recurrence_of(row: Any) -> Recurrence:
    return Recurrence(
        frequency=str(row.frequency),
        start=dt.date.fromisoformat(str(row.startdate)),
        minute_of_day=int(row.timeofday),
        timezone=str(row.timezone),
        custom_interval=int(row.custom_interval or 0),
    )


# -- creating ------------------------------------------------------------------------------------


def _light_tables(prefix: str, iomad: IomadTables | None) -> tuple[sa.Table, sa.Table, sa.Table | None]:
    m = sa.MetaData()
    config = sa.Table(f"{prefix}config", m, sa.Column("name"), sa.Column("value"))
    user = sa.Table(f"{prefix}user", m, sa.Column("id", sa.BigInteger), sa.Column("timezone"))
    company = (
        sa.Table(iomad.company.name, m, sa.Column("id", sa.BigInteger), sa.Column("timezone"))
        if iomad is not None
        else None
    )
    return config, user, company


def resolve_timezone(
    conn: sa.Connection, prefix: str, iomad: IomadTables | None, companyid: int, creator: int | None
) -> str:
    """The company's zone, else the creating Moodle user's, else the site's, else UTC.

    Moodle writes ``99`` for "not set"; ``forcetimezone`` wins over a user's zone as in Moodle."""
    config, user, company = _light_tables(prefix, iomad)

    def usable(value: Any) -> str | None:
        text = str(value or "").strip()
        if not text or text == "99":
            return None
        try:
            zone(text)
        except TimingError:
            return None
        return text

    def setting(name: str) -> str | None:
        try:
            return usable(conn.execute(sa.select(config.c.value).where(config.c.name == name)).scalar())
        except sa.exc.DBAPIError:
            return None

    if company is not None:
        found = usable(conn.execute(sa.select(company.c.timezone).where(company.c.id == companyid)).scalar())
        if found:
            return found
    if creator is not None:
        found = setting("forcetimezone") or usable(
            conn.execute(sa.select(user.c.timezone).where(user.c.id == creator)).scalar()
        )
        if found:
            return found
    return setting("timezone") or "UTC"


def validate(values: Mapping[str, Any]) -> Recurrence:
    """Check a schedule's columns; raises ScheduleError naming the field. Returns its recurrence."""
    action, preference = values.get("action_type"), values.get("cloud_preference", "auto")
    if action not in ACTIONS:
        raise ScheduleError(f"action_type must be one of {', '.join(ACTIONS)}")
    if preference not in CLOUD_PREFERENCES:
        raise ScheduleError(f"cloud_preference must be one of {', '.join(CLOUD_PREFERENCES)}")
    if preference == "local" and action == "certificate":
        raise ScheduleError(
            "cloud_preference local cannot issue certificates: they are rendered in the cloud "
            "(use auto or cloud)"
        )
    if action == "report":
        if values.get("report") not in reports.REPORTS:
            raise ScheduleError(f"report must be one of {', '.join(reports.REPORTS)}")
        if values.get("format") not in reports.FORMATS:
            raise ScheduleError(f"format must be one of {', '.join(reports.FORMATS)}")
        days = values.get("reportdays")
        if not isinstance(days, int) or not 1 <= days <= MAX_REPORT_DAYS:
            raise ScheduleError(f"report days must be between 1 and {MAX_REPORT_DAYS}")
        if values.get("campaignid") is not None:
            raise ScheduleError("a report schedule has no campaign")
    elif action == "certificate":
        course, cohort = values.get("courseid"), values.get("cohortid")
        if not isinstance(course, int) or course <= 0:
            raise ScheduleError(
                "a certificate schedule needs --course (the course whose completions get one)"
            )
        if cohort is not None and (not isinstance(cohort, int) or cohort <= 0):
            raise ScheduleError("cohort must be a cohort id (empty: every completion of the course)")
        if values.get("campaignid") is not None or values.get("report") is not None:
            raise ScheduleError("a certificate schedule has no campaign and no report")
    else:
        if not isinstance(values.get("campaignid"), int):
            raise ScheduleError("an email schedule needs --campaign (the campaign it runs)")
        if values.get("report") is not None:
            raise ScheduleError("--report belongs to action_type report")
    if action != "certificate" and (values.get("courseid") is not None or values.get("cohortid") is not None):
        raise ScheduleError("--course and --cohort belong to action_type certificate")
    for name in ("suppresstarget",):
        if not isinstance(values.get(name, 0), int) or values.get(name, 0) < 0:
            raise ScheduleError(f"{name} must be a course module id (0: none)")
    try:
        return Recurrence(
            frequency=str(values.get("frequency")),
            start=dt.date.fromisoformat(str(values.get("startdate"))),
            minute_of_day=int(values.get("timeofday", -1)),
            timezone=str(values.get("timezone")),
            custom_interval=int(values.get("custom_interval", 0)),
        )
    except TimingError as exc:
        raise ScheduleError(str(exc)) from None
    except ValueError:
        raise ScheduleError("start date must be YYYY-MM-DD") from None


def create_schedule(
    conn: sa.Connection,
    repo: BridgeRepo,
    values: Mapping[str, Any],
    *,
    actor: str,
    at: int,
    source: str | None = None,
) -> int:
    """Validate and store a schedule, audited; its first run is the first slot after ``at``."""
    recurrence = validate(values)
    companyid = int(values["companyid"])
    settings = repo.get_settings(conn, companyid)
    if settings is None:
        raise ScheduleError(
            f"company {companyid} has no settings; run `moodle-offload company set {companyid}`"
        )
    if values["action_type"] == "certificate" and settings.provider == "cloudflare":
        raise ScheduleError("certificate schedules go through AWS only (docs/schedules.md, 'Not built')")
    if values["action_type"] == "email":
        campaign = CampaignRepo(repo.t).get(conn, int(values["campaignid"]))
        if campaign is None or int(campaign.companyid) != companyid:
            raise ScheduleError(f"campaign {values['campaignid']} does not exist in company {companyid}")
    name = " ".join(str(values.get("name") or "").split())[:255]
    if not name:
        raise ScheduleError("--name must not be empty")
    stored = {
        **values,
        "skipifempty": int(bool(values.get("skipifempty", True))),
        "suppress_course_completion": int(bool(values.get("suppress_course_completion", False))),
        "name": name,
        "createdby": actor,
        "timecreated": at,
        "timemodified": at,
        "nextrun": recurrence.next_slot(at),
    }
    scheduleid = ScheduleRepo(repo.t).create(conn, stored)
    audit.record(
        conn,
        repo.t,
        actor=actor,
        action=audit.SCHEDULE_CREATED,
        now=at,
        companyid=companyid,
        source=source,
        detail={
            "schedule": scheduleid,
            "action_type": values["action_type"],
            "frequency": recurrence.frequency,
            "time": format_time_of_day(recurrence.minute_of_day),
            "timezone": recurrence.timezone,
            "report": values.get("report"),
            "campaign": values.get("campaignid"),
            "course": values.get("courseid"),
            "cohort": values.get("cohortid"),
        },
    )
    return scheduleid


# -- running -------------------------------------------------------------------------------------


def _managers(conn: sa.Connection, iomad: IomadTables, companyid: int) -> list[tuple[int, str, str, str]]:
    """The company's managers (``company_users.managertype`` 1): (userid, email, first, last)."""
    cu, u = iomad.company_users, iomad.user
    rows = conn.execute(
        sa.select(u.c.id, u.c.email, u.c.firstname, u.c.lastname)
        .where(
            u.c.id.in_(
                sa.select(cu.c.userid).where(
                    cu.c.companyid == companyid, cu.c.managertype == COMPANY_MANAGER, cu.c.suspended == 0
                )
            ),
            u.c.deleted == 0,
            u.c.suspended == 0,
        )
        .order_by(u.c.id)
    )
    return [(int(r.id), str(r.email or ""), str(r.firstname or ""), str(r.lastname or "")) for r in rows]


def _company_name(conn: sa.Connection, iomad: IomadTables, companyid: int) -> str:
    c = iomad.company
    return str(
        conn.execute(sa.select(c.c.name).where(c.c.id == companyid)).scalar() or f"company {companyid}"
    )


def _report_table(
    conn: sa.Connection, repo: BridgeRepo, iomad: IomadTables, row: Any, slot: int
) -> reports.ReportTable:
    ctx = reports.ReportContext(
        moodle_tables_for(iomad), iomad, repo.t, int(row.companyid), zone(str(row.timezone))
    )
    return reports.build_report(conn, str(row.report), ctx, at=slot, days=int(row.reportdays))


def _period(row: Any, slot: int) -> str:
    return dt.datetime.fromtimestamp(slot, zone(str(row.timezone))).strftime("%Y-%m-%d %H:%M %Z")


def _report_data(
    row: Any, slot: int, company: str, rows: int, manager: tuple[int, str, str, str]
) -> dict[str, Any]:
    return {
        "firstname": manager[2],
        "lastname": manager[3],
        "schedule": str(row.name),
        "company": company,
        "description": reports.REPORTS[str(row.report)].replace(" N ", f" {int(row.reportdays)} "),
        "rows": rows,
        "period": _period(row, slot),
    }


def attachment_key(row: Any, slot: int) -> str:
    return f"contents/company-{int(row.companyid)}/schedule-{int(row.id)}/{slot}.{row.format}"


#: The most a Cloudflare Worker mail may carry attached (MAX_ATTACHMENT_BYTES, cloudflare/src/contents.js).
WORKER_ATTACHMENT_BYTES = 4_000_000


def _store_report(
    config: BridgeConfig, provider: str, upload: Uploader | None, key: str, body: bytes, content_type: str
) -> dict[str, Any]:
    """Put the report file where the company's sender reads it, and return its reference: the
    content bucket (AWS) or the Worker's R2 through its signed object route (Cloudflare)."""
    digest = {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body), "content_type": content_type}
    if provider == "cloudflare":
        objects = worker_objects(config)
        if objects is None:
            raise ScheduleError(
                "a report for a Cloudflare company needs the Worker URL (cloudflare.intake_url, "
                "MRCO_CLOUDFLARE_INTAKE_URL) and the current key set"
            )
        if len(body) > WORKER_ATTACHMENT_BYTES:
            raise ScheduleError(
                f"the report file is {len(body)} bytes; the Worker mails at most {WORKER_ATTACHMENT_BYTES}"
            )
        try:
            objects.put(key, body, content_type)
        except WorkerObjectError as exc:  # nothing is recorded, the next pass retries
            raise ScheduleError(str(exc)) from None
        return {"store": "r2", "key": key, **digest}
    if provider != "aws":
        raise ScheduleError(f"provider {provider!r} has no store for report attachments")
    if upload is None or not config.aws.content_bucket:
        raise ScheduleError("a report needs the content bucket (aws.content_bucket, MRCO_CONTENT_BUCKET)")
    try:
        upload(key, body, content_type)
    except Exception as exc:  # any storage failure: nothing is recorded, the next pass retries
        code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
        raise ScheduleError(f"content bucket: {code or type(exc).__name__}") from None
    return {"store": "s3", "bucket": config.aws.content_bucket, "key": key, **digest}


def _route(
    conn: sa.Connection, repo: BridgeRepo, row: Any, kind: str, count: int
) -> tuple[CompanySettings | None, str]:
    """The company's settings when this run goes to the cloud (``cloud`` ignores the threshold),
    else None and the reason it stays local (``local``: always)."""
    if str(row.cloud_preference) == "local":
        return None, "cloud_preference local"
    settings = repo.get_settings(conn, int(row.companyid))
    wanted = 2**62 if str(row.cloud_preference) == "cloud" else count
    decision = decide(repo.offload_enabled(conn), settings, kind, wanted)
    if decision.offload and settings is not None:
        return settings, decision.reason
    return None, decision.reason


def _schedule_job(
    conn: sa.Connection,
    repo: BridgeRepo,
    config: BridgeConfig,
    settings: CompanySettings,
    row: Any,
    template_json: str,
    *,
    actor: str,
    at: int,
    jobtype: str = "email",
) -> TemplateJob:
    """The run's job (``schedule:<id>``); a company that cannot make a batch header refuses it."""
    try:
        return create_template_job(
            conn,
            repo,
            config,
            settings,
            companyid=int(row.companyid),
            source="schedule",
            category="transactional",
            templatename=f"schedule:{int(row.id)}",
            template_json=template_json,
            actor=actor,
            at=at,
            jobtype=jobtype,
        )
    except BuildError as exc:
        raise ScheduleError(str(exc)) from None


def _fire_report(
    conn: sa.Connection,
    repo: BridgeRepo,
    config: BridgeConfig,
    iomad: IomadTables,
    row: Any,
    slot: int,
    report: ScheduleRunReport,
    *,
    upload: Uploader | None,
    actor: str,
    at: int,
    runid: int,
) -> None:
    companyid = int(row.companyid)
    table = _report_table(conn, repo, iomad, row, slot)
    report.rows = len(table.rows)
    if not table.rows and bool(row.skipifempty):
        report.outcome = "empty"
        report.notes.append("the report is empty and the schedule says don't send if empty")
        return
    managers = _managers(conn, iomad, companyid)
    if not managers:
        report.outcome = "not_sent"
        report.notes.append(f"company {companyid} has no company manager to mail")
        return
    settings, reason = _route(conn, repo, row, "email", len(managers))
    body = reports.render(table, str(row.format))
    local_day = dt.datetime.fromtimestamp(slot, zone(str(row.timezone))).strftime("%Y-%m-%d")
    filename = f"{row.report}-{local_day}.{row.format}"
    company = _company_name(conn, iomad, companyid)
    if settings is None and str(row.cloud_preference) == "cloud":
        report.outcome = "not_sent"
        report.notes.append(f"cloud_preference cloud, but not routed to the cloud ({reason})")
        return
    if settings is None:
        _queue_report_locally(
            conn, repo, config, iomad, row, slot, report, body, filename, managers, company, reason, runid, at
        )
        return
    key = attachment_key(row, slot)
    content_type = reports.CONTENT_TYPES[str(row.format)]
    ref = _store_report(config, settings.provider, upload, key, body, content_type)
    attachment = {
        "filename": filename,
        "content_type": content_type,
        "ref": ref,
    }
    template_json = json.dumps({**REPORT_TEMPLATE, "attachments": [attachment]})
    new_job = _schedule_job(conn, repo, config, settings, row, template_json, actor=actor, at=at)
    jobid, contentkey = new_job.jobid, new_job.contentkey
    planned = _report_recipients(row, slot, company, report.rows, managers, contentkey)
    created = fill_template_job(conn, repo, config, new_job, planned)
    audit.record(
        conn,
        repo.t,
        actor=actor,
        action=audit.JOB_CREATED,
        now=at,
        companyid=companyid,
        jobid=jobid,
        detail={
            "source": "schedule",
            "schedule": int(row.id),
            "slot": slot,
            "recipients": created.recipients,
        },
    )
    report.outcome, report.jobid, report.recipients = "queued", jobid, created.recipients


def _report_recipients(
    row: Any,
    slot: int,
    company: str,
    rows: int,
    managers: list[tuple[int, str, str, str]],
    contentkey: str | None,
) -> list[PlannedRecipient]:
    planned: list[PlannedRecipient] = []
    for manager in managers:
        p = PlannedRecipient(
            dedupekey=f"manager:{manager[0]}",
            role="manager",
            address=manager[1][:254],
            fullname=f"{manager[2]} {manager[3]}".strip(),
            userid=manager[0],
            contentkey=contentkey,
            data=_report_data(row, slot, company, rows, manager),
        )
        problem = address_problem(manager[1])
        if problem:
            p.status, p.errorcode, p.errormessage = "failed", problem, "no usable email address"
        planned.append(p)
    return planned


def _queue_report_locally(
    conn: sa.Connection,
    repo: BridgeRepo,
    config: BridgeConfig,
    iomad: IomadTables,
    row: Any,
    slot: int,
    report: ScheduleRunReport,
    body: bytes,
    filename: str,
    managers: list[tuple[int, str, str, str]],
    company: str,
    reason: str,
    runid: int,
    at: int,
) -> None:
    """The run stays local: the file goes under Moodle's dataroot (IOMAD attaches it from there)
    and each manager's rendered mail into IOMAD's queue, in the slot's transaction."""
    dataroot = config.database.moodle_dataroot
    if not dataroot:
        report.outcome = "not_sent"
        report.notes.append(
            f"kept local ({reason}); a report for Moodle's own mail needs moodle_dataroot "
            "(MRCO_MOODLE_DATAROOT: Moodle's $CFG->dataroot, where IOMAD reads the attachment)"
        )
        return
    try:
        path = local_reports.write_report_file(dataroot, int(row.id), runid, filename, body)
    except local_reports.LocalReportError as exc:
        raise ScheduleError(str(exc)) from None
    planned = _report_recipients(row, slot, company, report.rows, managers, None)
    queued = queue_template_locally(
        conn,
        repo,
        iomad,
        planned,
        companyid=int(row.companyid),
        category="transactional",
        template_json=json.dumps(REPORT_TEMPLATE),
        at=at,
        attachment=Attachment(filepath=str(path), filename=filename),
    )
    report.outcome, report.recipients = "queued_local", queued.rows
    report.notes.append(queued.note(reason, iomad))


CERTIFICATE_TEMPLATE = {
    "subject": "Your certificate: {{ course_name }}",
    "html": (
        "<p>Hello {{ learner_name }},</p><p>Attached is your certificate for <strong>{{ course_name }}"
        '</strong>. Anyone can check it at <a href="{{ certificate_url }}">{{ certificate_url }}</a>.</p>'
    ),
    "text": (
        "Hello {{ learner_name }},\n\nAttached is your certificate for {{ course_name }}. "
        "Anyone can check it at {{ certificate_url }}."
    ),
}


@dataclass(frozen=True)
class CertificateHolder:
    userid: int
    email: str
    fullname: str
    completionid: int
    timecompleted: int


def certificate_holders(conn: sa.Connection, iomad: IomadTables, row: Any) -> list[CertificateHolder]:
    """The company's active users who completed the schedule's course (``course_completions`` by
    course), and, with a cohort, only that cohort's members (``cohort_members``)."""
    t = moodle_tables_for(iomad)
    cc, cu, u = t.course_completions, iomad.company_users, iomad.user
    query = (
        sa.select(cc.c.id, cc.c.userid, cc.c.timecompleted, u.c.email, u.c.firstname, u.c.lastname)
        .select_from(cc.join(u, u.c.id == cc.c.userid))
        .where(
            cc.c.course == int(row.courseid),
            cc.c.timecompleted.is_not(None),
            cc.c.timecompleted > 0,
            cc.c.userid.in_(sa.select(cu.c.userid).where(cu.c.companyid == int(row.companyid))),
            u.c.deleted == 0,
            u.c.suspended == 0,
        )
        .order_by(cc.c.userid)
    )
    if row.cohortid is not None:
        cm = t.cohort_members
        query = query.where(cc.c.userid.in_(sa.select(cm.c.userid).where(cm.c.cohortid == int(row.cohortid))))
    return [
        CertificateHolder(
            int(r.userid),
            str(r.email or ""),
            f"{r.firstname or ''} {r.lastname or ''}".strip(),
            int(r.id),
            int(r.timecompleted),
        )
        for r in conn.execute(query)
    ]


def _course_name(conn: sa.Connection, iomad: IomadTables, courseid: int) -> str:
    course = sa.Table(
        f"{iomad.prefix}course",
        sa.MetaData(),
        sa.Column("id", sa.BigInteger),
        sa.Column("fullname"),
        sa.Column("shortname"),
    )
    found = conn.execute(
        sa.select(course.c.fullname, course.c.shortname).where(course.c.id == courseid)
    ).first()
    if found is None:
        raise ScheduleError(f"course {courseid} does not exist")
    return str(found.fullname or found.shortname or f"course {courseid}")


def _fire_certificates(
    conn: sa.Connection,
    repo: BridgeRepo,
    config: BridgeConfig,
    iomad: IomadTables,
    row: Any,
    slot: int,
    report: ScheduleRunReport,
    *,
    actor: str,
    at: int,
) -> None:
    """One certificate job for the slot: one certificate (new verification code) per holder, the
    same job path as IOMAD's completions (a ``certificate_batch`` the renderer turns into PDFs
    mailed with this schedule's template). The slot's run row, taken in this transaction, keeps
    it to once per (schedule, slot, user)."""
    companyid = int(row.companyid)
    holders = certificate_holders(conn, iomad, row)
    report.rows = len(holders)
    if not holders:
        report.outcome = "empty"
        report.notes.append("nobody has completed the course" + (" in the cohort" if row.cohortid else ""))
        return
    settings, reason = _route(conn, repo, row, "certificate", len(holders))
    if settings is None:
        report.outcome = "not_sent"
        report.notes.append(
            f"not routed to the cloud ({reason}); certificates are rendered in the cloud only"
        )
        return
    if settings.provider != "aws":
        raise ScheduleError("certificate schedules go through AWS only (docs/schedules.md, 'Not built')")
    course = _course_name(conn, iomad, int(row.courseid))
    template_json = json.dumps(CERTIFICATE_TEMPLATE)
    new_job = _schedule_job(
        conn, repo, config, settings, row, template_json, actor=actor, at=at, jobtype="certificate"
    )
    planned: list[PlannedRecipient] = []
    for h in holders:
        p = PlannedRecipient(
            dedupekey=f"user:{h.userid}",
            role="user",
            address=h.email[:254],
            fullname=h.fullname,
            userid=h.userid,
            contentkey=new_job.contentkey,
            data={
                "certificate": {
                    "learner_name": (h.fullname or h.email)[:256],
                    "course_name": course[:512],
                    "completed_at": h.timecompleted,
                    "grade": None,
                    "verification_code": verification_code(),
                },
                "courseid": int(row.courseid),
                "completionid": h.completionid,
            },
        )
        problem = address_problem(h.email)
        if problem:
            p.status, p.errorcode, p.errormessage = "failed", problem, "no usable email address"
        planned.append(p)
    created = fill_template_job(conn, repo, config, new_job, planned)
    repo.record_job_certificates(conn, new_job.jobid, companyid)
    audit.record(
        conn,
        repo.t,
        actor=actor,
        action=audit.JOB_CREATED,
        now=at,
        companyid=companyid,
        jobid=new_job.jobid,
        detail={
            "source": "schedule",
            "schedule": int(row.id),
            "slot": slot,
            "recipients": created.recipients,
        },
    )
    report.outcome, report.jobid, report.recipients = "queued", new_job.jobid, created.recipients


def run_schedule(
    engine: sa.Engine,
    repo: BridgeRepo,
    config: BridgeConfig,
    scheduleid: int,
    *,
    at: int,
    actor: str,
    upload: Uploader | None,
    iomad: IomadTables | None = None,
    now_slot: bool = False,
    source: str | None = None,
) -> ScheduleRunReport:
    """Fire the schedule's latest slot not yet fired (``now_slot``: a manual run, slot ``at``).

    A bridge that was down fires the latest missed slot once; the slots before it are skipped."""
    schedules = ScheduleRepo(repo.t)
    with engine.connect() as conn:
        row = schedules.get(conn, scheduleid)
        if row is None:
            raise ScheduleError(f"schedule {scheduleid} does not exist (see `moodle-offload schedules list`)")
        iomad = iomad or detect_iomad(conn, config.database.prefix)
    recurrence = recurrence_of(row)
    slot = at if now_slot else recurrence.latest_slot(at, row.lastslot)
    report = ScheduleRunReport(scheduleid, slot)
    if slot is None:
        with engine.begin() as conn:
            schedules.set_next(conn, scheduleid, lastslot=None, nextrun=recurrence.next_slot(at))
        return report
    if str(row.status) != "active":
        raise ScheduleError(
            f"schedule {scheduleid} is paused (`moodle-offload schedules resume {scheduleid}`)"
        )
    missed = _missed(recurrence, row.lastslot, slot)
    if missed:
        report.notes.append(f"{missed} earlier missed slot(s) skipped: a missed run fires once")
    try:
        # The slot, what the run creates (a job, or rows in IOMAD's queue, and the campaign's
        # ledger) and the run's record commit together: a crash leaves none of them.
        with engine.begin() as conn:
            runid = schedules.take_slot(conn, scheduleid, slot, at)
            if str(row.action_type) == "certificate":
                _fire_certificates(conn, repo, config, iomad, row, slot, report, actor=actor, at=at)
            elif str(row.action_type) == "report":
                _fire_report(
                    conn,
                    repo,
                    config,
                    iomad,
                    row,
                    slot,
                    report,
                    upload=upload,
                    actor=actor,
                    at=at,
                    runid=runid,
                )
            else:
                _fire_campaign(conn, repo, config, iomad, row, report, actor=actor, at=at)
            _finish(
                conn, repo, row, recurrence, report, runid, actor=actor, at=at, manual=now_slot, source=source
            )
    except SlotTaken:
        report.outcome = "already_fired"
        report.notes.append("this slot was already fired (another bridge or an earlier pass)")
    except (ScheduleError, CampaignError, RuleError) as exc:
        report.outcome = "failed"
        report.notes.append(str(exc))
        with engine.begin() as conn:
            # The slot stays unfired: it is tried again after RETRY_SECONDS, not every pass.
            schedules.set_next(conn, scheduleid, lastslot=None, nextrun=at + RETRY_SECONDS)
            audit.record(
                conn,
                repo.t,
                actor=actor,
                action=audit.SCHEDULE_RUN,
                now=at,
                companyid=int(row.companyid),
                source=source,
                detail={"schedule": scheduleid, "slot": slot, "outcome": "failed", "reason": str(exc)},
            )
    return report


def _missed(recurrence: Recurrence, lastslot: Any, slot: int) -> int:
    if lastslot is None:
        return 0
    count, cursor = 0, recurrence.next_slot(int(lastslot))
    while cursor is not None and cursor < slot and count < 10_000:
        count += 1
        cursor = recurrence.next_slot(cursor)
    return count


def _fire_campaign(
    conn: sa.Connection,
    repo: BridgeRepo,
    config: BridgeConfig,
    iomad: IomadTables,
    row: Any,
    report: ScheduleRunReport,
    *,
    actor: str,
    at: int,
) -> None:
    changes: dict[str, Any] = {}
    if int(row.suppresstarget or 0) > 0:
        changes["suppresstarget"] = int(row.suppresstarget)
    if bool(row.suppress_course_completion):
        changes["suppress_course_completion"] = True
    ran = run_campaign_in(
        conn,
        repo,
        config,
        int(row.campaignid),
        at=at,
        actor=actor,
        iomad=iomad,
        rule_changes=changes,
        cloud_preference=str(row.cloud_preference),
    )
    report.rows, report.jobid, report.recipients = ran.audience, ran.jobid, ran.recipients
    if ran.jobid is not None:
        report.outcome = "queued"
    elif ran.local_rows or ran.recipients:
        report.outcome, report.recipients = "queued_local", ran.local_rows
    else:
        report.outcome = "empty"
    report.notes.extend(ran.notes)


def _finish(
    conn: sa.Connection,
    repo: BridgeRepo,
    row: Any,
    recurrence: Recurrence,
    report: ScheduleRunReport,
    runid: int,
    *,
    actor: str,
    at: int,
    manual: bool,
    source: str | None = None,
) -> None:
    schedules = ScheduleRepo(repo.t)
    schedules.finish_run(
        conn,
        runid,
        outcome=report.outcome,
        jobid=report.jobid,
        rowcount=report.rows,
        detail="; ".join(report.notes),
    )
    if not manual:
        schedules.set_next(
            conn, int(row.id), lastslot=report.slot, nextrun=recurrence.next_slot(max(at, report.slot or at))
        )
    audit.record(
        conn,
        repo.t,
        actor=actor,
        action=audit.SCHEDULE_RUN,
        now=at,
        companyid=int(row.companyid),
        jobid=report.jobid,
        source=source,
        detail={
            "schedule": int(row.id),
            "slot": report.slot,
            "outcome": report.outcome,
            "rows": report.rows,
            "recipients": report.recipients,
            "manual": manual,
        },
    )


def run_due(
    engine: sa.Engine,
    repo: BridgeRepo,
    config: BridgeConfig,
    *,
    at: int,
    upload: Uploader | None,
    actor: str = "schedule",
    iomad: IomadTables | None = None,
) -> list[ScheduleRunReport]:
    """Fire every active schedule whose next run has come (the tick and the service call this)."""
    with engine.connect() as conn:
        due = ScheduleRepo(repo.t).due(conn, at)
    return [
        run_schedule(engine, repo, config, scheduleid, at=at, actor=actor, upload=upload, iomad=iomad)
        for scheduleid in due
    ]


# -- preview -------------------------------------------------------------------------------------


def preview_schedule(
    engine: sa.Engine, repo: BridgeRepo, config: BridgeConfig, scheduleid: int, *, at: int
) -> Preview:
    """What the schedule would send if it fired now: row count (or audience), recipients, and one
    rendered sample mail; sends, uploads and records nothing."""
    from moodle_bridge.sources.campaigns.runner import preview as campaign_preview  # noqa: PLC0415

    with engine.connect() as conn:
        row = ScheduleRepo(repo.t).get(conn, scheduleid)
        if row is None:
            raise ScheduleError(f"schedule {scheduleid} does not exist")
        iomad = detect_iomad(conn, config.database.prefix)
        slot = recurrence_of(row).latest_slot(at) or at
        if str(row.action_type) == "certificate":
            return _certificate_preview(conn, iomad, row, at)
        if str(row.action_type) != "report":
            count, sample = campaign_preview(engine, repo, config, int(row.campaignid), at=at)
            return Preview(slot, count, [sample["to"]] if sample else [], sample, unit="users")
        table = _report_table(conn, repo, iomad, row, at)
        managers = _managers(conn, iomad, int(row.companyid))
        company = _company_name(conn, iomad, int(row.companyid))
    if not managers:
        return Preview(at, len(table.rows), [], None)
    import jinja2.sandbox  # noqa: PLC0415

    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)
    data = _report_data(row, at, company, len(table.rows), managers[0])
    sample = {k: env.from_string(v).render(**data) for k, v in REPORT_TEMPLATE.items()}
    sample["to"] = managers[0][1]
    sample["attachment"] = f"{row.report}.{row.format}: {len(table.rows)} rows" + (
        " (empty: not sent)" if not table.rows and bool(row.skipifempty) else ""
    )
    return Preview(at, len(table.rows), [m[1] for m in managers], sample)


def _certificate_preview(conn: sa.Connection, iomad: IomadTables, row: Any, at: int) -> Preview:
    holders = certificate_holders(conn, iomad, row)
    if not holders:
        return Preview(at, 0, [], None, unit="users")
    import jinja2.sandbox  # noqa: PLC0415

    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)
    first = holders[0]
    data = {
        "learner_name": first.fullname or first.email,
        "course_name": _course_name(conn, iomad, int(row.courseid)),
        "certificate_url": "(the certificate's verification link)",
    }
    sample = {k: env.from_string(v).render(**data) for k, v in CERTIFICATE_TEMPLATE.items()}
    sample["to"] = first.email
    sample["attachment"] = f"certificate.pdf for each of {len(holders)} users (rendered by the cloud)"
    return Preview(at, len(holders), [h.email for h in holders], sample, unit="users")
