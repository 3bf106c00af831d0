"""The dashboard: a Starlette app with server-rendered pages (docs/dashboard.md).

Sign-in only through a one-time token signed by Moodle's ``local_mrcloud`` plugin (or
``moodle-offload dashboard link``); rights come from Moodle's tables (``web/auth.py``). Every route
checks the session and the company scope on the server: a job, certificate or setting of another
company answers 404 exactly like one that does not exist. POSTs carry the session's CSRF token.
Pages work without JavaScript; ``static/app.js`` only refreshes progress figures by polling JSON.
Nothing rendered or exported contains a message body, template data or a temporary password: the
queries never select ``data``, ``secret`` or IOMAD's ``body``.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hmac
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.datastructures import FormData, MutableHeaders, UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moodle_bridge.certificate_templates import SAMPLE, PreviewUnavailable, render_preview, store_template
from moodle_bridge.certificates import RevocationError, VerificationRecords, change_revocation
from moodle_bridge.commands.certificates import RENDERER_MISSING
from moodle_bridge.commands.certificates import _store as template_store
from moodle_bridge.commands.company import cloudflare_refusal
from moodle_bridge.commands.tick import attachment_uploader
from moodle_bridge.config import BridgeConfig, ConfigError
from moodle_bridge.pipeline.routing import PROVIDERS
from moodle_bridge.results.iomad_link import IomadQueue
from moodle_bridge.results.job_control import (
    CancelReport,
    JobControlError,
    cancel_job,
    csv_safe,
    error_rows,
    retry_failed,
    write_error_csv,
)
from moodle_bridge.results.nonce_store import DatabaseNonceStore
from moodle_bridge.results.states import JOB_STATUSES  # the one list of job statuses (jobs filter)
from moodle_bridge.results.suppression import remove_suppression
from moodle_bridge.results.switches import CloudNotice, change_company, switch_global, tell_cloud
from moodle_bridge.sources.campaigns.manage import (
    create_campaign,
    report_line,
    run_and_audit,
    schedule_of,
    set_campaign_status,
    update_campaign,
)
from moodle_bridge.sources.campaigns.rules import RECIPIENTS, TRIGGERS, RuleError, rule_from_json
from moodle_bridge.sources.campaigns.runner import CampaignError, audience_count, preview
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound
from moodle_bridge.sources.schedules import reports as schedule_reports
from moodle_bridge.sources.schedules.manage import (
    ScheduleRequest,
    create_from_request,
    set_schedule_status,
)
from moodle_bridge.sources.schedules.manage import run_line as schedule_run_line
from moodle_bridge.sources.schedules.manage import run_now as schedule_run_now
from moodle_bridge.sources.schedules.manage import when as schedule_when
from moodle_bridge.sources.schedules.runner import (
    CLOUD_PREFERENCES,
    Preview,
    ScheduleError,
    Uploader,
    preview_schedule,
)
from moodle_bridge.sources.schedules.timing import FREQUENCIES, format_time_of_day
from moodle_bridge.storage import audit, certificate_repo
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.storage.campaign_repo import ACTIVE, PAUSED, CampaignRepo
from moodle_bridge.storage.dash_sessions import purge_sessions
from moodle_bridge.storage.schedule_repo import ScheduleRepo
from moodle_bridge.storage.settings_change import SettingsError
from moodle_bridge.transports.certificate_records import (
    CertificateCloudError,
    certificate_records_from_config,
    worker_certificate_records,
)
from moodle_bridge.transports.worker_objects import WorkerObjectError
from moodle_bridge.web import queries as q
from moodle_bridge.web.auth import (
    ROLE_LABELS,
    TOKEN_KEY_ID,
    AccessRefused,
    MoodleDirectory,
    Principal,
    Session,
    create_session,
    end_session,
    load_session,
    refresh_session,
)
from moodle_bridge.web.certificates import (
    CertificateStoreMissing,
    ObjectReader,
    S3Certificates,
    WorkerCertificates,
    file_name,
    zip_stream,
)
from offload_contract import dashboard_token

log = logging.getLogger("moodle_bridge.web")
HERE = Path(__file__).resolve().parent
COOKIE = "mrcloud_session"
DASH = "\u2013"  # shown for a missing value
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: The template preview's page only: its PNG is inline (a data: URL), served from memory.
CSP_INLINE_IMAGES = CSP.replace("img-src 'self'", "img-src 'self' data:")
# Audit actions written by the dashboard (besides job_control's and the settings' own).
SIGNED_IN = "dashboard_signed_in"
SIGNIN_REFUSED = "dashboard_signin_refused"
ACCESS_REVOKED = "dashboard_access_revoked"
RECIPIENTS_EXPORTED = "recipient_list_downloaded"
ERRORS_EXPORTED = "error_report_downloaded"
SUPPRESSIONS_EXPORTED = "suppressions_downloaded"
SUPPRESSION_REMOVED = "suppression_removed"
CERTIFICATE_DOWNLOADED = "certificate_downloaded"
CERTIFICATES_ZIPPED = "certificates_downloaded"
#: Certified recipients read per query while a job's ZIP streams.
ZIP_PAGE = 1000


class NotFound(Exception):
    pass


class SignedOut(Exception):
    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass
class DashboardState:
    engine: sa.Engine
    tables: BridgeTables
    directory: MoodleDirectory
    config: BridgeConfig
    queue: IomadQueue | None
    clock: Callable[[], float] = time.time
    templates: jinja2.Environment = field(init=False)
    base: str = field(init=False)
    secure_cookie: bool = True
    figures: q.FiguresCache = field(default_factory=q.FiguresCache)
    audience_counts: q.AudienceCounts = field(default_factory=q.AudienceCounts)
    certificate_store: ObjectReader | None = None
    #: Where a Cloudflare job's certificates are read (the Worker's R2); from the config when unset.
    worker_certificate_store: ObjectReader | None = None
    #: The cloud's verification records (revocation); from aws.idempotency_table when unset.
    verification_records: VerificationRecords | None = None

    #: Puts a scheduled report's file in the content bucket; from aws.content_bucket when unset.
    attachment_upload: Uploader | None = None

    def report_uploader(self) -> Uploader | None:
        if self.attachment_upload is None:
            self.attachment_upload = attachment_uploader(self.config)
        return self.attachment_upload

    def verification(self) -> VerificationRecords | None:
        if self.verification_records is None:
            self.verification_records = certificate_records_from_config(self.config)
        return self.verification_records

    def certificates(self, provider: str = "aws") -> ObjectReader:
        """The store a job's PDFs are in: the Worker's R2 for Cloudflare jobs, else S3."""
        if provider == "cloudflare":
            if self.worker_certificate_store is None:
                self.worker_certificate_store = WorkerCertificates(self.config)
            return self.worker_certificate_store
        if self.certificate_store is None:
            self.certificate_store = S3Certificates(self.config)
        return self.certificate_store

    def __post_init__(self) -> None:
        self.base = urlsplit(self.config.dashboard.public_url).path.rstrip("/")
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(HERE / "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["num"] = lambda n: f"{int(n):,}"
        self.templates.filters["pct"] = lambda x: DASH if x is None else f"{x:.2%}"

    def now(self) -> int:
        return int(self.clock())


# -- helpers ------------------------------------------------------------------------------------


def _state(request: Request) -> DashboardState:
    state: DashboardState = request.app.state.dashboard
    return state


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


def _fmt_time(tz: dt.tzinfo) -> Callable[[int | None], str]:
    def fmt(epoch: int | None) -> str:
        if not epoch:
            return DASH
        return dt.datetime.fromtimestamp(int(epoch), tz).strftime("%Y-%m-%d %H:%M:%S %Z")

    return fmt


def _duration(seconds: int | float | None) -> str:
    if seconds is None:
        return DASH
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _int(value: str | None, *, minimum: int = 0) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= minimum else None


def _session(request: Request) -> tuple[Session, str]:
    """The signed-in session, its rights re-read from Moodle when older than ``recheck_seconds``."""
    state = _state(request)
    sid = request.cookies.get(COOKIE, "")
    now = state.now()
    refused: AccessRefused | None = None
    with state.engine.begin() as conn:
        session = load_session(conn, state.tables, sid, now=now)
        if session is None:
            raise SignedOut("You are not signed in. Open the dashboard from Moodle.")
        if now - session.checked >= state.config.dashboard.recheck_seconds:
            try:
                principal = state.directory.resolve(conn, session.principal.user_id, session.company_hint)
            except AccessRefused as exc:
                refused = exc
                end_session(conn, state.tables, sid)
                audit.record(
                    conn,
                    state.tables,
                    actor=session.principal.actor,
                    action=ACCESS_REVOKED,
                    now=now,
                    companyid=session.principal.company_id,
                    source=_source(request),
                    detail={"reason": str(exc)},
                )
            else:
                refresh_session(conn, state.tables, sid, principal, now=now)
                session = Session(principal, session.csrf, session.company_hint, now, session.expires)
    if refused is not None:  # after the commit: the session is gone and the revocation audited
        raise SignedOut(f"Your access to the dashboard has ended: {refused}.")
    return session, sid


def _render(
    request: Request, session: Session | None, name: str, status: int = 200, **context: Any
) -> Response:
    state = _state(request)
    who = session.principal if session else None
    tz = who.tz() if who else dt.UTC
    template = state.templates.get_template(name)
    html = template.render(
        base=state.base,
        who=who,
        role_label=ROLE_LABELS.get(who.role, "") if who else "",
        csrf=session.csrf if session else "",
        t=_fmt_time(tz),
        duration=_duration,
        eta_text=_eta_text,
        qs=lambda **kw: urlencode({k: v for k, v in kw.items() if v not in (None, "")}),
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status)


async def _form(request: Request, session: Session) -> FormData:
    """The POSTed form, after its CSRF token matched the session's."""
    form = await request.form()
    token = str(form.get("csrf", ""))
    if not token or not hmac.compare_digest(token, session.csrf):
        raise PermissionError("the form is out of date or did not come from the dashboard; reload the page")
    return form


def _job_or_404(conn: sa.Connection, state: DashboardState, who: Principal, job_id: int) -> Any:
    job = q.get_job(conn, state.tables, who, job_id)
    if job is None:
        raise NotFound()
    return job


def _redirect(state: DashboardState, path: str, message: str = "", error: str = "") -> RedirectResponse:
    params = urlencode({k: v for k, v in (("msg", message), ("err", error)) if v})
    return RedirectResponse(f"{state.base}{path}" + (f"?{params}" if params else ""), status_code=303)


# -- sign-in ------------------------------------------------------------------------------------


def signin(request: Request) -> Response:
    state = _state(request)
    token = request.query_params.get("token", "")
    now = state.now()
    key = state.config.dashboard.shared_key
    try:
        if not key:
            raise dashboard_token.TokenError("not_configured", "the dashboard has no shared key configured")
        signin_data = dashboard_token.verify(key, token, now=now)
        burnt = DatabaseNonceStore(state.engine, state.tables).remember(
            TOKEN_KEY_ID, signin_data.jti, signin_data.expires + 120
        )
        if not burnt:
            raise dashboard_token.TokenError("replayed", "this sign-in link was already used")
        with state.engine.begin() as conn:
            purge_sessions(conn, state.tables, now=now)  # expired ones, on the timeexpires index
            principal = state.directory.resolve(conn, signin_data.user_id, signin_data.company_id)
            sid, session = create_session(
                conn,
                state.tables,
                principal,
                company_hint=signin_data.company_id,
                now=now,
                lifetime=state.config.dashboard.session_seconds,
                source=_source(request),
            )
            audit.record(
                conn,
                state.tables,
                actor=principal.actor,
                action=SIGNED_IN,
                now=now,
                companyid=principal.company_id,
                source=_source(request),
                detail={"role": principal.role},
            )
    except (dashboard_token.TokenError, AccessRefused) as exc:
        code = exc.code if isinstance(exc, dashboard_token.TokenError) else "no_rights"
        message = exc.detail if isinstance(exc, dashboard_token.TokenError) else str(exc)
        with state.engine.begin() as conn:
            audit.record(
                conn,
                state.tables,
                actor="dashboard:anonymous",
                action=SIGNIN_REFUSED,
                now=now,
                source=_source(request),
                detail={"reason": code},
            )
        return _render(request, None, "refused.html", status=403, message=message, code=code)
    # A same-site page, so the SameSite=Strict cookie is sent on the next request; the token leaves
    # the address bar at once and is never sent as a Referer (Referrer-Policy: no-referrer).
    response = _render(request, session, "signed_in.html")
    response.set_cookie(
        COOKIE,
        sid,
        max_age=state.config.dashboard.session_seconds,
        path=state.base or "/",
        secure=state.secure_cookie,
        httponly=True,
        samesite="strict",
    )
    return response


async def signout(request: Request) -> Response:
    state = _state(request)
    session, sid = _session(request)
    await _form(request, session)
    with state.engine.begin() as conn:
        end_session(conn, state.tables, sid)
    response = _render(request, None, "refused.html", status=200, message="You are signed out.", code="")
    response.delete_cookie(COOKIE, path=state.base or "/")
    return response


# -- jobs ---------------------------------------------------------------------------------------


def _job_filters(request: Request, who: Principal) -> tuple[q.JobFilters, dict[str, str]]:
    p = request.query_params
    raw = {k: p.get(k, "").strip() for k in ("company", "type", "status", "from", "to", "before")}
    tz = who.tz()
    date_from = date_to = None
    try:
        if raw["from"]:
            date_from = q.day_bounds(raw["from"], tz)[0]
        if raw["to"]:
            date_to = q.day_bounds(raw["to"], tz)[1]
    except ValueError:
        raw["from"] = raw["to"] = ""
    filters = q.JobFilters(
        company=_int(raw["company"]),
        jobtype=raw["type"] if raw["type"] in q.JOB_TYPES else None,
        status=raw["status"] if raw["status"] in JOB_STATUSES else None,
        date_from=date_from,
        date_to=date_to,
        before_id=_int(raw["before"], minimum=1),
    )
    return filters, raw


def jobs_page(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    filters, raw = _job_filters(request, who)
    now = state.now()
    with state.engine.connect() as conn:
        rows, more = q.list_jobs(conn, state.tables, who, filters)
    jobs = [(row, q.progress_of(row, now, state.config.aws.ses_send_rate)) for row in rows]
    return _render(
        request,
        session,
        "jobs.html",
        jobs=jobs,
        more=more,
        next_before=rows[-1].id if rows and more else None,
        f=raw,
        statuses=JOB_STATUSES,
        types=q.JOB_TYPES,
        msg=request.query_params.get("msg", ""),
    )


def _progress_json(row: Any, now: int, send_rate: float) -> dict[str, Any]:
    p = q.progress_of(row, now, send_rate)
    return {
        "id": int(row.id),
        "status": p.status,
        "total": p.total,
        "done": p.done,
        "percent": p.percent,
        "rate_per_minute": None if p.rate_per_minute is None else round(p.rate_per_minute, 1),
        "eta_seconds": p.eta_seconds,
        "eta": _eta_text(p),
        "terminal": p.terminal,
        "counters": {c: int(getattr(row, c)) for c in ("recipientstotal", *q.COUNTERS)},
    }


def progress(request: Request) -> Response:
    """JSON progress of up to 50 jobs (``?ids=1,2,3``) the person may see, for the polling script."""
    state = _state(request)
    session, _ = _session(request)
    ids = [int(x) for x in request.query_params.get("ids", "").split(",") if x.strip().isdigit()][:50]
    now = state.now()
    out = []
    if ids:
        j = state.tables.jobs
        with state.engine.connect() as conn:
            rows = conn.execute(sa.select(j).where(j.c.id.in_(ids))).all()
        rate = state.config.aws.ses_send_rate
        out = [_progress_json(r, now, rate) for r in rows if session.principal.sees_company(int(r.companyid))]
    return JSONResponse({"jobs": out}, headers={"Cache-Control": "no-store"})


def job_page(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    job_id = int(request.path_params["job_id"])
    p = request.query_params
    search = p.get("q", "").strip()[:100]
    status = p.get("rstatus", "") if p.get("rstatus", "") in q.STATUS_ORDER else ""
    after = _int(p.get("after"), minimum=1) or 0
    now = state.now()
    with state.engine.connect() as conn:
        job = _job_or_404(conn, state, who, job_id)
        figures = state.figures.get(conn, state.tables, state.directory, who, job)
        counts, groups, batches = figures.counts, figures.groups, figures.batches
        recipients, more = q.recipients_page(
            conn, state.tables, state.directory, who, job, search=search, status=status, after_id=after
        )
        a = state.tables.audit_log
        events = conn.execute(
            sa.select(a.c.timecreated, a.c.actor, a.c.action)
            .where(a.c.jobid == job_id)
            .order_by(a.c.id.desc())
            .limit(10)
        ).all()
    prog = q.progress_of(job, now, state.config.aws.ses_send_rate)
    start = job.timesubmitted or job.timecreated
    end = job.timecompleted or now
    elapsed = max(int(end) - int(start), 0)
    return _render(
        request,
        session,
        "job.html",
        job=job,
        prog=prog,
        counts=[(s, counts.get(s, 0)) for s in q.STATUS_ORDER if counts.get(s, 0)],
        counted=sum(counts.values()),
        dlv=q.deliverability(counts),
        cost=q.cost_estimate(counts, batches, str(job.jobtype)),
        groups=groups,
        recipients=recipients,
        more=more,
        next_after=recipients[-1].id if recipients and more else None,
        search=search,
        rstatus=status,
        statuses=q.STATUS_ORDER,
        elapsed=elapsed,
        throughput=(prog.done / (elapsed / 60)) if elapsed and prog.done else None,
        limits={
            "bounce": q.SES_BOUNCE_LIMIT,
            "complaint": q.SES_COMPLAINT_LIMIT,
            "spam": q.MAILBOX_SPAM_LIMIT,
        },
        prices={
            "ses": q.SES_PER_1000,
            "req": q.LAMBDA_PER_MILLION_REQUESTS,
            "gbs": q.LAMBDA_PER_GB_SECOND,
            "mem": q.LAMBDA_MEMORY_GB,
            "sec": q.LAMBDA_SECONDS_PER_BATCH,
        },
        events=events,
        msg=p.get("msg", ""),
        err=p.get("err", ""),
        department_view=bool(who.role == "department_manager"),
    )


async def job_action(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    job_id = int(request.path_params["job_id"])
    action = request.path_params["action"]
    form = await _form(request, session)
    if not who.can_act:
        raise NotFound()
    now = state.now()
    try:
        with state.engine.begin() as conn:
            _job_or_404(conn, state, who, job_id)
            if action == "retry":
                report = retry_failed(
                    conn,
                    state.tables,
                    job_id,
                    actor=who.actor,
                    now=now,
                    max_recipients=state.config.submit.max_recipients,
                    include_permanent=form.get("include_permanent") == "1",
                    source=_source(request),
                )
                message = (
                    f"Attempt {report.attempt}: {report.recipients} failed recipients go out again "
                    f"in {len(report.batches)} batches with the next tick."
                )
                if report.left_failed:
                    message += (
                        f" {report.left_failed} failed recipients were left as they are: their failure "
                        'is permanent (see the error report); tick "also permanent failures" to retry '
                        "them too."
                    )
            elif action == "cancel":
                cancelled = cancel_job(
                    conn,
                    state.tables,
                    job_id,
                    actor=who.actor,
                    now=now,
                    queue=state.queue,
                    source=_source(request),
                )
                message = (
                    f"Cancelled: {cancelled.recipients_cancelled} recipients, {cancelled.batches_abandoned} "
                    f"batches not sent, {cancelled.rows_restored} IOMAD rows given back to IOMAD."
                )
            else:
                raise NotFound()
    except JobControlError as exc:
        return _redirect(state, f"/jobs/{job_id}", error=str(exc))
    if action == "cancel":
        # Like `jobs cancel`: the cancel record is written in the cloud now, after the commit.
        notice = tell_cloud([cancelled], state.engine, state.tables, state.config, now)
        message = " ".join(filter(None, [message, _cloud_text([cancelled], notice)]))
        if notice.problem:
            return _redirect(state, f"/jobs/{job_id}", message=message, error=f"Note: {notice.problem}.")
    return _redirect(state, f"/jobs/{job_id}", message=message)


def _cloud_text(reports: list[CancelReport], notice: CloudNotice) -> str:
    """One sentence on what the cloud was told about cancelled jobs with recipients in it."""
    in_cloud = sum(r.in_cloud for r in reports)
    if notice.told:
        return (
            f"The cloud was told at once: {in_cloud} recipients already there are not sent from now on; "
            "those it sent before are recorded as sent when its records come in."
        )
    if notice.not_told:
        return (
            f"The cloud was not told yet: every tick tries again; {in_cloud} recipients already there "
            "may still be sent and are then recorded as sent."
        )
    if in_cloud:
        return f"{in_cloud} recipients already in the cloud are recorded as the cloud reports them."
    return ""


def _eta_text(p: q.Progress) -> str:
    """The ETA at the account's SES rate; "rate unknown" when ``aws.ses_send_rate`` is not set."""
    if p.terminal or p.total <= p.done:
        return DASH
    if p.eta_seconds is None:
        return "rate unknown"
    return _duration(p.eta_seconds)


def _csv_stream(rows: Iterator[dict[str, Any]], columns: tuple[str, ...]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_safe(v) for k, v in row.items()})
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


RECIPIENT_CSV = (
    "recipient_id",
    "job_id",
    "address",
    "name",
    "role",
    "status",
    "error_code",
    "error_message",
    "attempts",
    "iomad_email_id",
    "time_created",
    "time_final",
)


def job_csv(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    job_id = int(request.path_params["job_id"])
    kind = request.path_params["kind"]
    if kind not in ("errors", "recipients"):
        raise NotFound()
    now = state.now()
    iso = _fmt_iso(who.tz())
    conn = state.engine.connect()
    try:
        job = _job_or_404(conn, state, who, job_id)
        if kind == "errors" and who.role != "department_manager":
            rows = list(error_rows(conn, state.tables, job_id))
            buffer = io.StringIO()
            write_error_csv(rows, buffer)
            body: Any = [buffer.getvalue().encode("utf-8")]
            count = len(rows)
            action = ERRORS_EXPORTED
        else:
            statuses = (*q.FAILURE_STATUSES, "skipped", "cancelled") if kind == "errors" else ()
            recipients = list(
                q.iter_recipients(conn, state.tables, state.directory, who, job, statuses=statuses)
            )
            count = len(recipients)
            body = _csv_stream(
                (
                    {
                        "recipient_id": r.id,
                        "job_id": job_id,
                        "address": r.address,
                        "name": r.fullname,
                        "role": r.role,
                        "status": r.status,
                        "error_code": r.errorcode or "",
                        "error_message": r.errormessage or "",
                        "attempts": r.attempts,
                        "iomad_email_id": r.emailid if r.emailid is not None else "",
                        "time_created": iso(r.timecreated),
                        "time_final": iso(r.timefinal),
                    }
                    for r in recipients
                ),
                RECIPIENT_CSV,
            )
            action = ERRORS_EXPORTED if kind == "errors" else RECIPIENTS_EXPORTED
    finally:
        conn.close()
    with state.engine.begin() as wconn:
        audit.record(
            wconn,
            state.tables,
            actor=who.actor,
            action=action,
            now=now,
            companyid=int(job.companyid),
            jobid=job_id,
            source=_source(request),
            detail={"rows": count},
        )
    name = f"job-{job_id}-{'errors' if kind == 'errors' else 'recipients'}.csv"
    return StreamingResponse(
        iter(body),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _fmt_iso(tz: dt.tzinfo) -> Callable[[int | None], str]:
    def fmt(epoch: int | None) -> str:
        return dt.datetime.fromtimestamp(int(epoch), tz).isoformat() if epoch else ""

    return fmt


# -- certificates -------------------------------------------------------------------------------


def certificates_page(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    job_id = int(request.path_params["job_id"])
    after = _int(request.query_params.get("after"), minimum=1) or 0
    with state.engine.connect() as conn:
        job = _job_or_404(conn, state, who, job_id)
        rows, more = q.certificates_page(conn, state.tables, state.directory, who, job, after_id=after)
    return _render(
        request,
        session,
        "certificates.html",
        job=job,
        rows=rows,
        more=more,
        next_after=rows[-1].id if rows and more else None,
        configured=bool(state.certificate_store or state.config.aws.content_bucket),
        msg=request.query_params.get("msg", ""),
        err=request.query_params.get("err", ""),
    )


def _audit_download(request: Request, who: Principal, job: Any, action: str, detail: dict[str, Any]) -> None:
    state = _state(request)
    with state.engine.begin() as conn:
        audit.record(
            conn,
            state.tables,
            actor=who.actor,
            action=action,
            now=state.now(),
            companyid=int(job.companyid),
            jobid=int(job.id),
            source=_source(request),
            detail=detail,
        )


def certificate_download(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    job_id = int(request.path_params["job_id"])
    rid = int(request.path_params["recipient_id"])
    with state.engine.connect() as conn:
        job = _job_or_404(conn, state, who, job_id)
        row = q.certificate_of(conn, state.tables, state.directory, who, job, rid)
    if row is None:
        raise NotFound()
    try:
        chunks = state.certificates(str(job.provider)).open(str(row.artifactkey))
        first = next(chunks, b"")  # fetch now, so a missing object answers an error page, not half a file
    except CertificateStoreMissing as exc:
        return _render(request, session, "error.html", status=503, title="Not configured", message=str(exc))
    except Exception as exc:  # botocore ClientError and connection errors: name them, no traceback
        log.warning("certificate %s of job %s unavailable: %s", rid, job_id, type(exc).__name__)
        return _render(
            request, session, "error.html", status=502, title="Unavailable",
            message="The certificate could not be read from the certificate store.",
        )  # fmt: skip
    _audit_download(request, who, job, CERTIFICATE_DOWNLOADED, {"recipient": rid})

    def body() -> Iterator[bytes]:
        yield first
        yield from chunks

    return StreamingResponse(
        body(),
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{file_name(row)}"'},
    )


async def certificate_revocation(request: Request) -> Response:
    """Revoke or reinstate one certificate of the job (company managers and admins, with a reason)."""
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    job_id = int(request.path_params["job_id"])
    rid = int(request.path_params["recipient_id"])
    form = await _form(request, session)
    if not who.can_act:
        raise NotFound()
    with state.engine.connect() as conn:
        job = _job_or_404(conn, state, who, job_id)
        visible = q.certificate_of(conn, state.tables, state.directory, who, job, rid)
        row = certificate_repo.by_recipient(conn, state.tables, rid) if visible is not None else None
    if row is None:
        raise NotFound()
    revoke = form.get("action") == "revoke"
    try:
        done = change_revocation(
            state.engine,
            state.tables,
            state.verification(),
            worker_records=worker_certificate_records(state.config),
            code=row.verifycode,
            revoke=revoke,
            reason=str(form.get("reason", "")),
            actor=who.actor,
            now=state.now(),
            company_scope=frozenset({int(job.companyid)}),
            source=_source(request),
        )
    except (RevocationError, CertificateCloudError) as exc:
        return _redirect(state, f"/jobs/{job_id}/certificates", error=str(exc))
    state_text = "revoked: the verify page says so now" if done.revoked else "valid again"
    return _redirect(
        state, f"/jobs/{job_id}/certificates", message=f"Certificate {done.code} is {state_text}."
    )


def certificates_zip(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    job_id = int(request.path_params["job_id"])
    with state.engine.connect() as conn:
        job = _job_or_404(conn, state, who, job_id)
        count = q.certificate_count(conn, state.tables, state.directory, who, job)
    if not count:
        raise NotFound()
    try:
        store = state.certificates(str(job.provider))
    except CertificateStoreMissing as exc:
        return _render(request, session, "error.html", status=503, title="Not configured", message=str(exc))
    _audit_download(request, who, job, CERTIFICATES_ZIPPED, {"certificates": count})

    def rows() -> Iterator[Any]:
        """The certified recipients a page at a time, each page on a short connection, so
        neither the list nor a connection is held while a slow client reads the ZIP."""
        after = 0
        while True:
            with state.engine.connect() as conn:
                page, more = q.certificates_page(
                    conn, state.tables, state.directory, who, job, after_id=after, limit=ZIP_PAGE
                )
            yield from page
            if not more or not page:
                return
            after = int(page[-1].id)

    return StreamingResponse(
        zip_stream(store, rows()),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="job-{job_id}-certificates.zip"'},
    )


# -- certificate template -----------------------------------------------------------------------


class _Refused(Exception):
    """An uploaded template or a preview request that cannot be used; the page says why (and the
    text box shows ``text``, the template JSON that was sent, when there is one)."""

    def __init__(self, message: str, text: str | None = None) -> None:
        super().__init__(message)
        self.text = text


def _template_id(state: DashboardState, company: int) -> str:
    """The template id the company's certificates are rendered with (Company settings)."""
    with state.engine.connect() as conn:
        settings = BridgeRepo(state.tables).get_settings(conn, company)
    return settings.certtemplate if settings is not None else "default"


def _stored_template(
    state: DashboardState, company: int, template_id: str
) -> tuple[Any, dict[str, bytes]] | None:
    """The company's stored template (document, images), or None; ``_Refused`` naming the problem."""
    try:
        from certificate_render.template import TemplateError  # noqa: PLC0415
    except ImportError:
        raise _Refused(RENDERER_MISSING) from None
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        found: tuple[Any, dict[str, bytes]] | None = template_store(state.config, company).stored(
            company, template_id
        )
    except (ConfigError, TemplateError) as exc:
        raise _Refused(str(exc)) from None
    except (BotoCoreError, ClientError, WorkerObjectError) as exc:  # named in the log, no traceback
        log.warning("template of company %s unreadable: %s", company, type(exc).__name__)
        raise _Refused("The stored template could not be read from the certificate store.") from None
    return found


async def _uploaded_template(form: FormData) -> tuple[Any, dict[str, bytes], str] | None:
    """The template sent with the form (a JSON file, else the text box) and its images by file
    name, with the JSON text to show again; None when neither was given."""
    from certificate_render.template import MAX_IMAGE_BYTES  # noqa: PLC0415

    upload = form.get("template_file")
    raw: bytes | None = None
    if isinstance(upload, UploadFile) and upload.filename:
        raw = await upload.read(MAX_IMAGE_BYTES + 1)
    elif str(form.get("template_json", "")).strip():
        raw = str(form.get("template_json")).encode()
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused("template_invalid: the template file is not UTF-8 text") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise _Refused(f"template_invalid: the template is not valid JSON ({exc})", text) from None
    try:
        images = await _with_images(form, document)
    except _Refused as exc:
        raise _Refused(str(exc), text) from None
    return document, images, text


async def _with_images(form: FormData, document: Any) -> dict[str, bytes]:
    """The uploaded images the template names, by file name; ``_Refused`` naming one missing."""
    from certificate_render.template import MAX_IMAGE_BYTES, TemplateError, image_names  # noqa: PLC0415

    sent: dict[str, bytes] = {}
    for item in form.getlist("images"):
        if isinstance(item, UploadFile) and item.filename:
            name = Path(item.filename).name
            data = await item.read(MAX_IMAGE_BYTES + 1)
            if len(data) > MAX_IMAGE_BYTES:
                raise _Refused(f"template_invalid: image {name!r} is larger than {MAX_IMAGE_BYTES} bytes")
            sent[name] = data
    try:
        wanted = image_names(document)
    except TemplateError as exc:
        raise _Refused(f"{exc.code}: {exc}") from None
    images: dict[str, bytes] = {}
    for section, name in wanted:
        if name not in sent:
            raise _Refused(
                f"template_invalid: the {section} image {name!r} was not uploaded with the template"
            )
        images[name] = sent[name]
    return images


def _template_view(
    request: Request, session: Session, company: int | None, *, status: int = 200, **extra: Any
) -> Response:
    state = _state(request)
    context: dict[str, Any] = {
        "company": company, "template_id": "default", "document_text": "", "stored": False,
        "problem": "", "form_json": "", "preview_png": "", "preview_pdf": "", "preview_name": "",
        "preview_language": "", "msg": request.query_params.get("msg", ""),
        "err": request.query_params.get("err", ""),
    }  # fmt: skip
    if company is not None:
        context["template_id"] = template_id = _template_id(state, company)
        try:
            found = _stored_template(state, company, template_id)
        except _Refused as exc:
            context["problem"] = str(exc)
        else:
            if found is not None:
                context["stored"] = True
                context["document_text"] = json.dumps(found[0], ensure_ascii=False, indent=2)
            elif template_id == "default":
                from certificate_render.template import default_document  # noqa: PLC0415

                context["document_text"] = json.dumps(default_document(), ensure_ascii=False, indent=2)
    context.update(extra)
    response = _render(request, session, "certificate_template.html", status=status, **context)
    if context["preview_png"]:
        response.headers["Content-Security-Policy"] = CSP_INLINE_IMAGES
    return response


def certificate_template_page(request: Request) -> Response:
    """The company's certificate template: shown to every role, changed by managers and admins."""
    session, _ = _session(request)
    return _template_view(request, session, _settings_company(request, session.principal))


async def certificate_template_post(request: Request) -> Response:
    """Store an uploaded template (validated by the renderer's ``parse_template`` first), or preview
    the uploaded or the stored one for a typed name; a preview sends and stores nothing."""
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    form = await _form(request, session)
    if not who.can_act:
        raise NotFound()
    company = _int(str(request.path_params["company"]))
    if company is None or not who.sees_company(company):
        raise NotFound()
    storing = form.get("action") == "store"
    form_json = str(form.get("template_json", ""))
    name = str(form.get("name", "")).strip()
    language = str(form.get("language", "")).strip()
    try:
        try:
            from certificate_render.template import TemplateError, default_template, parse_template  # noqa: PLC0415
        except ImportError:
            raise _Refused(RENDERER_MISSING) from None
        try:
            uploaded = await _uploaded_template(form)
            if uploaded is not None:
                form_json = uploaded[2]
            if storing:
                return _store_uploaded(request, who, company, uploaded)
            if uploaded is not None:
                template = parse_template(uploaded[0], uploaded[1])
            else:
                template_id = _template_id(state, company)
                found = _stored_template(state, company, template_id)
                if found is None and template_id != "default":
                    raise _Refused(f"company {company} has no stored template {template_id!r}")
                template = default_template() if found is None else parse_template(*found)
        except TemplateError as exc:
            raise _Refused(f"{'Not stored: ' if storing else ''}{exc.code}: {exc}") from None
        pdf, png = _preview(state, template, name, language)
    except _Refused as exc:
        return _template_view(
            request, session, company, status=400, err=str(exc),
            form_json=form_json if exc.text is None else exc.text,
            preview_name=name, preview_language=language,
        )  # fmt: skip
    return _template_view(
        request, session, company, form_json=form_json, preview_name=name, preview_language=language,
        preview_png=base64.b64encode(png).decode(), preview_pdf=base64.b64encode(pdf).decode(),
    )  # fmt: skip


def _store_uploaded(
    request: Request, who: Principal, company: int, uploaded: tuple[Any, dict[str, bytes], str] | None
) -> Response:
    state = _state(request)
    if uploaded is None:
        raise _Refused("Not stored: choose a template JSON file or paste the template into the text box.")
    template_id = _template_id(state, company)
    try:
        store = template_store(state.config, company)
    except ConfigError as exc:
        raise _Refused(f"Not stored: {exc}") from None
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:  # a TemplateError (refused before anything is written) goes to the caller
        store_template(
            store, state.engine, state.tables, company_id=company, template_id=template_id,
            document=uploaded[0], images=uploaded[1], actor=who.actor, now=state.now(),
            source=_source(request),
        )  # fmt: skip
    except (BotoCoreError, ClientError, WorkerObjectError) as exc:
        log.warning("template of company %s not stored: %s", company, type(exc).__name__)
        raise _Refused("Not stored: the certificate store could not be written.") from None
    message = f"Template {template_id!r} of company {company} stored ({len(uploaded[1])} images)."
    return RedirectResponse(
        f"{state.base}/certificate-template?{urlencode({'company': company, 'msg': message})}",
        status_code=303,
    )


def _preview(state: DashboardState, template: Any, name: str, language: str) -> tuple[bytes, bytes]:
    """The PDF and PNG of ``template`` for the typed name (sample data otherwise), in memory."""
    from certificate_render.fonts import FontsMissing, font_library  # noqa: PLC0415
    from certificate_render.values import CertificateDataError  # noqa: PLC0415

    data: dict[str, Any] = {**SAMPLE, "completed_at": state.now()}
    if name:
        data["learner_name"] = name
    if language:
        data["language"] = language
    verify_url = (state.config.submit.verify_url_base or "") + str(data["verification_code"])
    try:
        return render_preview(template, data, verify_url, font_library())
    except FontsMissing as exc:
        raise _Refused(str(exc)) from None
    except CertificateDataError as exc:
        detail = f" ({' '.join(exc.detail)})" if exc.detail else ""
        raise _Refused(f"No preview: {exc.code}: {exc}{detail}") from None
    except PreviewUnavailable as exc:
        raise _Refused(f"No preview: {exc}") from None


# -- company settings ---------------------------------------------------------------------------


def _settings_company(request: Request, who: Principal) -> int | None:
    if who.company_id is not None:
        return who.company_id
    return _int(request.query_params.get("company"))


def settings_page(request: Request, *, error: str = "", status: int = 200) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    company = _settings_company(request, who)
    repo = BridgeRepo(state.tables)
    with state.engine.connect() as conn:
        global_on = repo.offload_enabled(conn)
        current = repo.get_settings(conn, company) if company is not None else None
        others = repo.all_settings(conn) if who.is_admin else {}
    return _render(
        request,
        session,
        "settings.html",
        status=status,
        company=company,
        current=current,
        global_on=global_on,
        others=others,
        providers=PROVIDERS,
        msg=request.query_params.get("msg", ""),
        err=error or request.query_params.get("err", ""),
    )


def _onoff(form: FormData, name: str) -> bool:
    return form.get(name) == "1"


async def settings_save(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    form = await _form(request, session)
    if not who.can_act:
        raise NotFound()
    company = _int(str(request.path_params["company"]))
    if company is None or not who.sees_company(company):
        raise NotFound()
    threshold_raw = str(form.get("threshold", "")).strip()
    try:
        threshold = int(threshold_raw)
        if threshold < 0:
            raise ValueError
    except ValueError:
        return settings_page_error(request, "Not saved: the threshold must be a whole number of 0 or more.")
    changes = {
        "cloudenabled": _onoff(form, "cloud"),
        "allowemail": _onoff(form, "emails"),
        "allowcertificates": _onoff(form, "certificates"),
        "fallbacklocal": _onoff(form, "fallback"),
        "threshold": threshold,
        "provider": str(form.get("provider", "")),
        "senderaddress": str(form.get("sender_address", "")),
        "sendername": str(form.get("sender_name", "")),
        "sesstenant": str(form.get("ses_tenant", "")),
        "certtemplate": str(form.get("cert_template", "")).strip() or "default",
    }
    now = state.now()
    try:
        with state.engine.begin() as conn:
            _, stopped = change_company(
                conn,
                BridgeRepo(state.tables),
                company,
                changes,
                actor=who.actor,
                now=now,
                queue=state.queue,
                source=_source(request),
                check=lambda settings: cloudflare_refusal(settings, state.config),
            )
    except SettingsError as exc:
        return settings_page_error(request, f"Not saved: {exc}.")
    message, problem = _stopped_text(state, stopped, now)
    suffix = f"?company={company}&" if who.is_admin else "?"
    params = {"msg": " ".join(filter(None, ["Settings saved.", message]))}
    if problem:
        params["err"] = problem
    return RedirectResponse(f"{state.base}/settings{suffix}{urlencode(params)}", status_code=303)


def _stopped_text(state: DashboardState, stopped: list[CancelReport], now: int) -> tuple[str, str]:
    """What turning a switch off did to open jobs (as `company set --cloud off` prints), and the
    cloud's problem if it could not be told."""
    if not stopped:
        return "", ""
    notice = tell_cloud(stopped, state.engine, state.tables, state.config, now)
    text = (
        f"{len(stopped)} open jobs cancelled: {sum(r.recipients_cancelled for r in stopped)} recipients "
        f"not yet in the cloud cancelled, {sum(r.rows_restored for r in stopped)} IOMAD rows given back."
    )
    return " ".join(filter(None, [text, _cloud_text(stopped, notice)])), (
        f"Note: {notice.problem}." if notice.problem else ""
    )


def settings_page_error(request: Request, message: str) -> Response:
    return settings_page(request, error=message, status=400)


async def global_switch(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    form = await _form(request, session)
    if not who.is_admin:
        raise NotFound()
    enabled = form.get("enabled") == "1"
    now = state.now()
    with state.engine.begin() as conn:
        stopped = switch_global(
            conn,
            BridgeRepo(state.tables),
            enabled,
            actor=who.actor,
            now=now,
            queue=state.queue,
            source=_source(request),
        )
    message, problem = _stopped_text(state, stopped, now)
    return _redirect(
        state,
        "/settings",
        message=" ".join(filter(None, [f"Global switch is {'on' if enabled else 'off'}.", message])),
        error=problem,
    )


# -- suppressions -------------------------------------------------------------------------------


def suppressions_page(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    p = request.query_params
    search, reason = p.get("q", "").strip()[:100], p.get("reason", "")
    company = _int(p.get("company"))
    with state.engine.connect() as conn:
        rows, more = q.suppressions_page(
            conn,
            state.tables,
            who,
            company=company,
            search=search,
            reason=reason,
            after_id=_int(p.get("after"), minimum=1) or 0,
        )
    return _render(
        request,
        session,
        "suppressions.html",
        rows=rows,
        more=more,
        next_after=rows[-1].id if rows and more else None,
        search=search,
        reason=reason,
        company=company,
        msg=p.get("msg", ""),
        err=p.get("err", ""),
    )


def suppressions_csv(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    p = request.query_params
    company = _int(p.get("company"))
    iso = _fmt_iso(who.tz())
    out: list[dict[str, Any]] = []
    with state.engine.connect() as conn:
        after = 0
        while True:
            rows, more = q.suppressions_page(
                conn,
                state.tables,
                who,
                company=company,
                search=p.get("q", ""),
                reason=p.get("reason", ""),
                after_id=after,
                limit=5000,
            )
            out.extend(
                {
                    "company_id": r.companyid,
                    "address": r.address,
                    "reason": r.reason,
                    "source": r.source,
                    "time": iso(r.timecreated),
                }
                for r in rows
            )
            if not more:
                break
            after = int(rows[-1].id)
    with state.engine.begin() as conn:
        audit.record(
            conn,
            state.tables,
            actor=who.actor,
            action=SUPPRESSIONS_EXPORTED,
            now=state.now(),
            companyid=who.company_id,
            source=_source(request),
            detail={"rows": len(out)},
        )
    return StreamingResponse(
        _csv_stream(iter(out), ("company_id", "address", "reason", "source", "time")),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="suppressions.csv"'},
    )


async def suppression_remove(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    form = await _form(request, session)
    if not who.can_act:
        raise NotFound()
    company = _int(str(form.get("company", "")))
    address = str(form.get("address", "")).strip()
    why = str(form.get("why", "")).strip()
    if company is None or not who.sees_company(company):
        raise NotFound()
    if not why or len(why) > 200:
        return _redirect(
            state, "/suppressions", error="Say why the address may be mailed again (up to 200 characters)."
        )
    with state.engine.begin() as conn:
        had = remove_suppression(conn, state.tables, company, address)
        if had is not None:
            audit.record(
                conn,
                state.tables,
                actor=who.actor,
                action=SUPPRESSION_REMOVED,
                now=state.now(),
                companyid=company,
                source=_source(request),
                detail={"address": address.lower(), "was": had, "reason": why},
            )
    if had is None:
        return _redirect(state, "/suppressions", error=f"{address} is not on the list.")
    return _redirect(state, "/suppressions", message=f"{address} removed from the suppression list.")


# -- campaigns ----------------------------------------------------------------------------------
# The pages call the same functions as ``moodle-offload campaigns`` (sources/campaigns/manage.py,
# runner.py): validation, storage and audit live there; here only form fields become a rule
# document, and errors become messages.

CAMPAIGN_FIELDS = (
    "name", "company", "trigger_kind", "days", "course", "deadline", "licence_expiry", "departments",
    "courses", "cohorts", "suppresstarget", "suppress_course_completion", "subject", "html", "text",
    "recipients", "every_days", "max_reminders", "start",
)  # fmt: skip


def _campaign_or_404(conn: sa.Connection, state: DashboardState, who: Principal, campaign_id: int) -> Any:
    """The campaign if this person may see it: another company's answers 404 like a missing one."""
    row = CampaignRepo(state.tables).get(conn, campaign_id)
    if row is None or not who.sees_company(int(row.companyid)):
        raise NotFound()
    return row


def _number_or_text(value: str) -> Any:
    """A whole number, or the text as typed so the rule's validation names the field."""
    value = value.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _date_field(value: str, name: str, tz: dt.tzinfo) -> int | None:
    value = value.strip()
    if not value:
        return None
    try:
        return q.day_bounds(value, tz)[0]
    except ValueError:
        raise RuleError(f"{name} must be a date (YYYY-MM-DD)") from None


def _rule_document(v: dict[str, str], tz: dt.tzinfo) -> dict[str, Any]:
    """The form's fields as the rule document ``campaigns create --rule`` takes (docs/campaigns.md)."""
    trigger: dict[str, Any] = {"kind": v["trigger_kind"], "days": _number_or_text(v["days"])}
    if v["course"].strip():
        trigger["course"] = _number_or_text(v["course"])
    deadline = _date_field(v["deadline"], "trigger.deadline", tz)
    if deadline is not None:
        trigger["deadline"] = deadline
    if v["licence_expiry"] == "1":
        trigger["licence_expiry"] = True
    audience = {
        key: [_number_or_text(x) for x in v[key].replace(",", " ").split()]
        for key in ("departments", "courses", "cohorts")
        if v[key].strip()
    }
    doc: dict[str, Any] = {
        "trigger": trigger,
        "audience": audience,
        "template": {"subject": v["subject"], "html": v["html"], "text": v["text"]},
        "recipients": v["recipients"],
        "suppress_course_completion": v["suppress_course_completion"] == "1",
        "cadence": {
            "every_days": _number_or_text(v["every_days"]) if v["every_days"].strip() else 0,
            "max_reminders": _number_or_text(v["max_reminders"]) if v["max_reminders"].strip() else 1,
        },
    }
    if v["suppresstarget"].strip():
        doc["suppresstarget"] = _number_or_text(v["suppresstarget"])
    start = _date_field(v["start"], "start", tz)
    if start is not None:
        doc["start"] = start
    return doc


def _form_values(row: Any, tz: dt.tzinfo) -> dict[str, str]:
    """A stored campaign as the form's fields (for editing)."""
    rule = rule_from_json(str(row.rule))

    def day(epoch: int | None) -> str:
        return dt.datetime.fromtimestamp(epoch, tz).date().isoformat() if epoch else ""

    return {
        "name": str(row.name),
        "company": str(row.companyid),
        "trigger_kind": rule.trigger.kind,
        "days": str(rule.trigger.days),
        "course": "" if rule.trigger.course is None else str(rule.trigger.course),
        "deadline": day(rule.trigger.deadline),
        "licence_expiry": "1" if rule.trigger.licence_expiry else "",
        "departments": ", ".join(map(str, rule.audience.departments)),
        "courses": ", ".join(map(str, rule.audience.courses)),
        "cohorts": ", ".join(map(str, rule.audience.cohorts)),
        "suppresstarget": "" if rule.suppresstarget is None else str(rule.suppresstarget),
        "suppress_course_completion": "1" if rule.suppress_course_completion else "",
        "subject": rule.template.subject,
        "html": rule.template.html,
        "text": rule.template.text,
        "recipients": rule.recipients,
        "every_days": str(rule.cadence.every_days),
        "max_reminders": str(rule.cadence.max_reminders),
        "start": day(rule.start),
    }


def _blank_values(who: Principal) -> dict[str, str]:
    values = dict.fromkeys(CAMPAIGN_FIELDS, "")
    values.update(
        trigger_kind="inactive_site", days="30", recipients="user", every_days="0", max_reminders="1"
    )
    if who.company_id is not None:
        values["company"] = str(who.company_id)
    return values


def _campaign_form(
    request: Request,
    session: Session,
    values: dict[str, str],
    campaign: Any,
    error: str = "",
    status: int = 200,
) -> Response:
    return _render(
        request,
        session,
        "campaign_form.html",
        status=status,
        v=values,
        campaign=campaign,
        triggers=TRIGGERS,
        recipient_choices=RECIPIENTS,
        err=error,
    )


def campaigns_page(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    company = who.company_id if who.company_id is not None else _int(request.query_params.get("company"))
    now = state.now()
    with state.engine.connect() as conn:
        rows = CampaignRepo(state.tables).list(conn, company)
    campaigns = []
    for row in rows:
        rule = rule_from_json(str(row.rule), compile_check=False)  # validated when stored
        campaigns.append((row, rule, schedule_of(row, rule, now)))
    return _render(
        request,
        session,
        "campaigns.html",
        campaigns=campaigns,
        company=company,
        msg=request.query_params.get("msg", ""),
    )


def campaign_page(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    campaign_id = int(request.path_params["campaign_id"])
    now = state.now()
    repo = BridgeRepo(state.tables)
    with state.engine.connect() as conn:
        row = _campaign_or_404(conn, state, who, campaign_id)
        cycles = CampaignRepo(state.tables).cycles(conn, campaign_id)
    rule = rule_from_json(str(row.rule), compile_check=False)  # validated when stored
    counted: q.CountedAudience | None = None
    count_error = ""
    key = (campaign_id, str(row.rule), row.timelastrun, rule.cycle(now))
    try:
        counted = state.audience_counts.get(
            key,
            state.clock(),
            lambda: audience_count(state.engine, repo, state.config, campaign_id, at=now),
            fresh=request.query_params.get("count") == "now",
        )
    except (CampaignError, RuleError, IomadSchemaNotFound) as exc:
        count_error = str(exc)
    return _render(
        request,
        session,
        "campaign.html",
        campaign=row,
        rule=rule,
        rule_json=json.dumps(json.loads(rule.to_json()), indent=2),
        schedule=schedule_of(row, rule, now),
        audience=None if counted is None else counted.users,
        audience_counted=None if counted is None else int(counted.at),
        audience_error=count_error,
        cycles=cycles,
        msg=request.query_params.get("msg", ""),
        err=request.query_params.get("err", ""),
    )


def campaign_preview(request: Request) -> Response:
    """Audience count and one rendered sample mail (as ``campaigns preview``); sends nothing. The
    HTML part is shown as source, never rendered into the dashboard's page."""
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    if not who.can_act:
        raise NotFound()
    campaign_id = int(request.path_params["campaign_id"])
    user = _int(request.query_params.get("user"), minimum=1)
    with state.engine.connect() as conn:
        row = _campaign_or_404(conn, state, who, campaign_id)
    count: int | None = None
    sample: dict[str, str] | None = None
    error = ""
    try:
        count, sample = preview(
            state.engine, BridgeRepo(state.tables), state.config, campaign_id, at=state.now(), userid=user
        )
    except (CampaignError, RuleError, IomadSchemaNotFound) as exc:
        error = str(exc)
    except jinja2.TemplateError as exc:
        error = f"The template cannot be rendered for this user: {type(exc).__name__}: {str(exc)[:200]}"
    return _render(
        request,
        session,
        "campaign_preview.html",
        campaign=row,
        count=count,
        sample=sample,
        user=user,
        err=error,
    )


def campaign_new(request: Request) -> Response:
    session, _ = _session(request)
    if not session.principal.can_act:
        raise NotFound()
    return _campaign_form(request, session, _blank_values(session.principal), None)


def campaign_edit(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    if not who.can_act:
        raise NotFound()
    with state.engine.connect() as conn:
        row = _campaign_or_404(conn, state, who, int(request.path_params["campaign_id"]))
    return _campaign_form(request, session, _form_values(row, who.tz()), row)


async def campaign_save(request: Request) -> Response:
    """Create (``/campaigns/new``) or change (``/campaigns/{id}/edit``) a campaign; on an error the
    form comes back with what was typed and the reason, and nothing is stored."""
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    form = await _form(request, session)
    if not who.can_act:
        raise NotFound()
    campaign_id = request.path_params.get("campaign_id")
    values = {k: str(form.get(k, "")) for k in CAMPAIGN_FIELDS}
    now = state.now()
    repo = BridgeRepo(state.tables)
    existing = None
    try:
        with state.engine.begin() as conn:
            if campaign_id is None:
                company = who.company_id if who.company_id is not None else _int(values["company"])
                if company is None or not who.sees_company(company):
                    raise RuleError("company: give the id of a company")
                rule_text = json.dumps(_rule_document(values, who.tz()))
                campaign_id = create_campaign(
                    conn,
                    repo,
                    companyid=company,
                    name=values["name"],
                    rule_text=rule_text,
                    actor=who.actor,
                    at=now,
                    source=_source(request),
                )
                message = f"Campaign {campaign_id} created (active). Preview it to see who it reaches."
            else:
                existing = _campaign_or_404(conn, state, who, int(campaign_id))
                rule_text = json.dumps(_rule_document(values, who.tz()))
                update_campaign(
                    conn,
                    repo,
                    int(campaign_id),
                    name=values["name"],
                    rule_text=rule_text,
                    actor=who.actor,
                    at=now,
                    source=_source(request),
                )
                message = "Campaign saved."
    except (RuleError, CampaignError) as exc:
        return _campaign_form(request, session, values, existing, error=f"Not saved: {exc}.", status=400)
    return _redirect(state, f"/campaigns/{campaign_id}", message=message)


async def _pause_resume_run(request: Request, id_param: str) -> tuple[DashboardState, Principal, int, str]:
    """The checks every pause/resume/run-now POST shares: session, CSRF, the right to act, and
    a known action. Scope (the object is the caller's company's) is the caller's to check."""
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    await _form(request, session)
    if not who.can_act:
        raise NotFound()
    action = request.path_params["action"]
    if action not in ("pause", "resume", "run-now"):
        raise NotFound()
    return state, who, int(request.path_params[id_param]), action


async def campaign_action(request: Request) -> Response:
    """Pause, resume or run now, through the CLI's own functions (audited there)."""
    state, who, campaign_id, action = await _pause_resume_run(request, "campaign_id")
    now = state.now()
    repo = BridgeRepo(state.tables)
    with state.engine.connect() as conn:
        _campaign_or_404(conn, state, who, campaign_id)
    try:
        if action == "run-now":
            report = run_and_audit(
                state.engine,
                repo,
                state.config,
                campaign_id,
                actor=who.actor,
                at=now,
                source=_source(request),
            )
            message = report_line(report).capitalize() + (
                "; the next tick submits it." if report.jobid is not None else "."
            )
        else:
            status = PAUSED if action == "pause" else ACTIVE
            with state.engine.begin() as conn:
                set_campaign_status(
                    conn, repo, campaign_id, status, actor=who.actor, at=now, source=_source(request)
                )
            message = f"Campaign {campaign_id} is {status}."
    except (CampaignError, RuleError, IomadSchemaNotFound) as exc:
        return _redirect(state, f"/campaigns/{campaign_id}", error=f"Not done: {exc}.")
    return _redirect(state, f"/campaigns/{campaign_id}", message=message)


# -- schedules ----------------------------------------------------------------------------------
# The pages call the same functions as ``moodle-offload schedules`` (sources/schedules/manage.py,
# runner.py): validation, storage and audit live there; here only form fields become a request.

SCHEDULE_FIELDS = (
    "name", "company", "action_type", "cloud_preference", "frequency", "every_days", "time", "start",
    "timezone", "report", "format", "days", "send_if_empty", "campaign", "suppresstarget",
    "suppress_course_completion", "course", "cohort",
)  # fmt: skip
#: What the form offers; anything else posted is refused by the shared validation with its reason.
SCHEDULE_ACTIONS = ("report", "email", "certificate")
SCHEDULE_CLOUD = CLOUD_PREFERENCES


def _schedule_or_404(conn: sa.Connection, state: DashboardState, who: Principal, schedule_id: int) -> Any:
    """The schedule if this person may see it: another company's answers 404 like a missing one."""
    row = ScheduleRepo(state.tables).get(conn, schedule_id)
    if row is None or not who.sees_company(int(row.companyid)):
        raise NotFound()
    return row


def _whole(value: str, name: str, default: int | None = None) -> int | None:
    """A form field as a whole number (empty: ``default``); otherwise an error naming the field."""
    value = value.strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ScheduleError(f"{name} must be a whole number") from None


def _schedule_request(v: dict[str, str], company: int, creator: int) -> ScheduleRequest:
    """The form's fields as the request ``schedules create`` builds from its flags."""
    return ScheduleRequest(
        companyid=company,
        name=v["name"],
        action_type=v["action_type"],
        cloud_preference=v["cloud_preference"] or "auto",
        frequency=v["frequency"],
        custom_interval=_whole(v["every_days"], "every_days (custom interval)", 0) or 0,
        time=v["time"].strip() or "07:00",
        start=v["start"].strip() or None,
        timezone=v["timezone"].strip() or None,
        creator=creator,
        report=(v["report"] or None) if v["action_type"] == "report" else None,
        format=v["format"] or "csv",
        reportdays=_whole(v["days"], "days (the report's period)", 7) or 0,
        send_if_empty=v["send_if_empty"] == "1",
        campaignid=_whole(v["campaign"], "campaign") if v["action_type"] == "email" else None,
        courseid=_whole(v["course"], "course") if v["action_type"] == "certificate" else None,
        cohortid=_whole(v["cohort"], "cohort") if v["action_type"] == "certificate" else None,
        suppresstarget=_whole(v["suppresstarget"], "suppresstarget", 0) or 0,
        suppress_course_completion=v["suppress_course_completion"] == "1",
    )


def _schedule_blank(who: Principal) -> dict[str, str]:
    values = dict.fromkeys(SCHEDULE_FIELDS, "")
    values.update(
        action_type="report",
        cloud_preference="auto",
        frequency="weekly",
        time="07:00",
        report="completions",
        format="csv",
        days="7",
        every_days="",
    )
    if who.company_id is not None:
        values["company"] = str(who.company_id)
    return values


def _schedule_form(
    request: Request, session: Session, values: dict[str, str], error: str = "", status: int = 200
) -> Response:
    return _render(
        request,
        session,
        "schedule_form.html",
        status=status,
        v=values,
        actions=SCHEDULE_ACTIONS,
        clouds=SCHEDULE_CLOUD,
        frequencies=FREQUENCIES,
        report_choices=schedule_reports.REPORTS,
        formats=schedule_reports.FORMATS,
        err=error,
    )


def schedules_page(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    company = who.company_id if who.company_id is not None else _int(request.query_params.get("company"))
    with state.engine.connect() as conn:
        rows = ScheduleRepo(state.tables).list(conn, company)
    return _render(
        request,
        session,
        "schedules.html",
        schedules=rows,
        company=company,
        when=schedule_when,
        hhmm=lambda minutes: format_time_of_day(int(minutes)),
        msg=request.query_params.get("msg", ""),
    )


def schedule_page(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    schedule_id = int(request.path_params["schedule_id"])
    with state.engine.connect() as conn:
        row = _schedule_or_404(conn, state, who, schedule_id)
        runs = ScheduleRepo(state.tables).runs(conn, schedule_id)
    return _render(
        request,
        session,
        "schedule.html",
        schedule=row,
        runs=runs,
        when=schedule_when,
        hhmm=lambda minutes: format_time_of_day(int(minutes)),
        report_text=schedule_reports.REPORTS.get(str(row.report or ""), ""),
        msg=request.query_params.get("msg", ""),
        err=request.query_params.get("err", ""),
    )


def schedule_preview(request: Request) -> Response:
    """Row count (or audience), recipients and one rendered sample (as ``schedules preview``);
    sends, uploads and records nothing. The HTML part is shown as source."""
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    if not who.can_act:
        raise NotFound()
    schedule_id = int(request.path_params["schedule_id"])
    with state.engine.connect() as conn:
        row = _schedule_or_404(conn, state, who, schedule_id)
    found: Preview | None = None
    error = ""
    try:
        found = preview_schedule(
            state.engine, BridgeRepo(state.tables), state.config, schedule_id, at=state.now()
        )
    except (ScheduleError, CampaignError, RuleError, IomadSchemaNotFound) as exc:
        error = str(exc)
    except jinja2.TemplateError as exc:
        error = f"The template cannot be rendered: {type(exc).__name__}: {str(exc)[:200]}"
    return _render(request, session, "schedule_preview.html", schedule=row, found=found, err=error)


def schedule_new(request: Request) -> Response:
    session, _ = _session(request)
    if not session.principal.can_act:
        raise NotFound()
    return _schedule_form(request, session, _schedule_blank(session.principal))


async def schedule_save(request: Request) -> Response:
    """Create a schedule through the CLI's function; on an error the form comes back with what was
    typed and the reason (naming the field), and nothing is stored."""
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    form = await _form(request, session)
    if not who.can_act:
        raise NotFound()
    values = {k: str(form.get(k, "")) for k in SCHEDULE_FIELDS}
    now = state.now()
    try:
        company = who.company_id if who.company_id is not None else _int(values["company"], minimum=1)
        if company is None or not who.sees_company(company):
            raise ScheduleError("company: give the id of a company")
        schedule_request = _schedule_request(values, company, who.user_id)
        with state.engine.begin() as conn:
            schedule_id = create_from_request(
                conn,
                BridgeRepo(state.tables),
                state.config,
                schedule_request,
                actor=who.actor,
                at=now,
                source=_source(request),
            )
    except (ScheduleError, IomadSchemaNotFound) as exc:
        return _schedule_form(request, session, values, error=f"Not saved: {exc}.", status=400)
    return _redirect(
        state, f"/schedules/{schedule_id}", message=f"Schedule {schedule_id} created (active). Preview it."
    )


async def schedule_action(request: Request) -> Response:
    """Pause, resume or run now, through the CLI's own functions (audited there)."""
    state, who, schedule_id, action = await _pause_resume_run(request, "schedule_id")
    now = state.now()
    repo = BridgeRepo(state.tables)
    with state.engine.connect() as conn:
        row = _schedule_or_404(conn, state, who, schedule_id)
    try:
        if action == "run-now":
            report = schedule_run_now(
                state.engine,
                repo,
                state.config,
                schedule_id,
                actor=who.actor,
                at=now,
                upload=state.report_uploader(),
                source=_source(request),
            )
            line = schedule_run_line(report, str(row.timezone))
            line = line[0].upper() + line[1:]
            if report.outcome == "failed":
                return _redirect(state, f"/schedules/{schedule_id}", error=f"Not sent: {line}.")
            suffix = "; the next tick submits it." if report.jobid is not None else "."
            message = line + suffix
        else:
            status = PAUSED if action == "pause" else ACTIVE
            with state.engine.begin() as conn:
                set_schedule_status(
                    conn, repo, schedule_id, status, actor=who.actor, at=now, source=_source(request)
                )
            message = f"Schedule {schedule_id} is {status}."
    except (ScheduleError, CampaignError, RuleError, IomadSchemaNotFound) as exc:
        return _redirect(state, f"/schedules/{schedule_id}", error=f"Not done: {exc}.")
    return _redirect(state, f"/schedules/{schedule_id}", message=message)


# -- audit --------------------------------------------------------------------------------------


def audit_page(request: Request) -> Response:
    state = _state(request)
    session, _ = _session(request)
    who = session.principal
    p = request.query_params
    raw = {k: p.get(k, "").strip() for k in ("actor", "action", "company", "job", "from", "to", "before")}
    tz = who.tz()
    try:
        date_from = q.day_bounds(raw["from"], tz)[0] if raw["from"] else None
        date_to = q.day_bounds(raw["to"], tz)[1] if raw["to"] else None
    except ValueError:
        date_from = date_to = None
        raw["from"] = raw["to"] = ""
    filters = q.AuditFilters(
        actor=raw["actor"][:100],
        action=raw["action"][:64],
        company=_int(raw["company"]),
        job=_int(raw["job"], minimum=1),
        date_from=date_from,
        date_to=date_to,
        before_id=_int(raw["before"], minimum=1),
    )
    with state.engine.connect() as conn:
        rows, more = q.audit_page(conn, state.tables, who, filters)
    entries = [(r, _detail_text(r.detail)) for r in rows]
    return _render(
        request,
        session,
        "audit.html",
        entries=entries,
        more=more,
        next_before=rows[-1].id if rows and more else None,
        f=raw,
    )


def _detail_text(detail: str | None) -> str:
    if not detail:
        return ""
    try:
        data = json.loads(detail)
    except ValueError:
        return ""
    if isinstance(data, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(data.items()))
    return str(data)


# -- app ----------------------------------------------------------------------------------------


class SecurityHeaders:
    """Pure ASGI middleware: security headers on every response, and ``Server-Timing: app;dur=``
    (milliseconds from the request to the response head, i.e. the handler's whole work for a page;
    the benchmark reads it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)  # the preview page sets its own
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "DENY"
                headers["Cross-Origin-Opener-Policy"] = "same-origin"
                if not static:
                    headers["Cache-Control"] = "no-store"
                headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _errors(app: Starlette) -> None:
    async def not_found(request: Request, exc: Exception) -> Response:
        try:
            session, _ = _session(request)
        except SignedOut:
            session = None
        return _render(
            request,
            session,
            "error.html",
            status=404,
            title="Not found",
            message="There is no such page, or it is not yours to see.",
        )

    async def signed_out(request: Request, exc: Exception) -> Response:
        message = exc.message if isinstance(exc, SignedOut) else "You are not signed in."
        response = _render(request, None, "refused.html", status=401, message=message, code="signed_out")
        response.delete_cookie(COOKIE, path=_state(request).base or "/")
        return response

    async def forbidden(request: Request, exc: Exception) -> Response:
        return _render(request, None, "error.html", status=403, title="Refused", message=str(exc))

    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(404, not_found)
    app.add_exception_handler(SignedOut, signed_out)
    app.add_exception_handler(PermissionError, forbidden)


def healthz(request: Request) -> Response:
    state = _state(request)
    try:
        with state.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


def create_app(
    engine: sa.Engine,
    tables: BridgeTables,
    config: BridgeConfig,
    *,
    queue: IomadQueue | None = None,
    directory: MoodleDirectory | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    state = DashboardState(
        engine=engine,
        tables=tables,
        directory=directory or MoodleDirectory(engine, config.database.prefix),
        config=config,
        queue=queue,
        clock=clock,
    )
    routes = [
        Route("/signin", signin),
        Route("/signout", signout, methods=["POST"]),
        Route("/", jobs_page),
        Route("/progress.json", progress),
        Route("/jobs/{job_id:int}", job_page),
        Route("/jobs/{job_id:int}/certificates", certificates_page),
        Route("/jobs/{job_id:int}/certificates.zip", certificates_zip),
        Route("/jobs/{job_id:int}/certificates/{recipient_id:int}.pdf", certificate_download),
        Route(
            "/jobs/{job_id:int}/certificates/{recipient_id:int}/revocation",
            certificate_revocation,
            methods=["POST"],
        ),
        Route("/jobs/{job_id:int}/{action:str}", job_action, methods=["POST"]),
        Route("/jobs/{job_id:int}/{kind:str}.csv", job_csv),
        Route("/certificate-template", certificate_template_page),
        Route("/certificate-template/{company:int}", certificate_template_post, methods=["POST"]),
        Route("/settings", settings_page),
        Route("/settings/global", global_switch, methods=["POST"]),
        Route("/settings/{company:int}", settings_save, methods=["POST"]),
        Route("/suppressions", suppressions_page),
        Route("/suppressions.csv", suppressions_csv),
        Route("/suppressions/remove", suppression_remove, methods=["POST"]),
        Route("/campaigns", campaigns_page),
        Route("/campaigns/new", campaign_new),
        Route("/campaigns/new", campaign_save, methods=["POST"]),
        Route("/campaigns/{campaign_id:int}", campaign_page),
        Route("/campaigns/{campaign_id:int}/preview", campaign_preview),
        Route("/campaigns/{campaign_id:int}/edit", campaign_edit),
        Route("/campaigns/{campaign_id:int}/edit", campaign_save, methods=["POST"]),
        Route("/campaigns/{campaign_id:int}/{action:str}", campaign_action, methods=["POST"]),
        Route("/schedules", schedules_page),
        Route("/schedules/new", schedule_new),
        Route("/schedules/new", schedule_save, methods=["POST"]),
        Route("/schedules/{schedule_id:int}", schedule_page),
        Route("/schedules/{schedule_id:int}/preview", schedule_preview),
        Route("/schedules/{schedule_id:int}/{action:str}", schedule_action, methods=["POST"]),
        Route("/audit", audit_page),
        Route("/healthz", healthz),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])
    app.state.dashboard = state
    _errors(app)
    return app
