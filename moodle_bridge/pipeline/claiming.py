"""The claim pass: take IOMAD's due rows of cloud-routed companies over (docs/sending.md).

Under Moodle's own cron lock for IOMAD's email task (so IOMAD's cron, which loads every due
row at its start and rewrites each one at its end, can never hold a row we take):

1. read every due row of the candidate companies, expand each into its recipients
   (the row's user plus IOMAD's fan-out), load temporary passwords and completions;
2. decide per company and job type with ``routing.decide`` on the recipient counts of this
   pass; decide per row whether the bridge takes it (every recipient's job is routed to the
   cloud, no attachment, a password key when the row carries a password);
3. per chunk of rows, in ONE transaction: park the rows (``due`` to the far-future
   sentinel, reversible), insert the claims (with the original due), create the pass's jobs,
   insert recipients (passwords sealed) and the outbox batches. A crash anywhere rolls the
   whole chunk back: the rows are still IOMAD's, untouched.

Rows the bridge cannot send as IOMAD would (unknown template, unparseable headers, template
disabled, company missing) are *released*: recorded with a clear outcome on a recipient row
and a claim in state ``released``, but never parked, so IOMAD keeps handling them exactly
as before and the bridge does not look at them again.
"""

from __future__ import annotations

import secrets
import string
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.batching import JobHeader, email_content_key, reference_for, rendered_content
from moodle_bridge.pipeline.jobs import PlannedRecipient, add_recipients, skip_suppressed, target_for
from moodle_bridge.pipeline.outbox import BuildError, job_header_for
from moodle_bridge.pipeline.routing import CompanySettings, Decision, could_offload, decide
from moodle_bridge.sources.iomad.completions import COMPLETION_TEMPLATE, CourseCompletion, select_completions
from moodle_bridge.sources.iomad.moodle_lock import LockNotAcquired, moodle_cron_lock
from moodle_bridge.sources.iomad.passwords import (
    PASSWORD_TEMPLATES,
    Secret,
    find_password,
    load_temporary_passwords,
    redact,
)
from moodle_bridge.sources.iomad.queue import QueuedEmail, park_emails, restore_emails, select_due_emails
from moodle_bridge.sources.iomad.recipients import (
    DUPLICATE_ADDRESS,
    RECIPIENT_UNAVAILABLE,
    ROLE_USER,
    ExpandedRecipient,
    Expansion,
    expand_emails,
)
from moodle_bridge.sources.iomad.schema import IomadTables
from moodle_bridge.sources.iomad.template_sender import TemplateSender, template_senders
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.database import now as unix_now
from moodle_bridge.storage.secrets_at_rest import SecretBox
from offload_contract.limits import QueueLimits

#: Non-fatal problems that mean "this copy is not needed" rather than "this copy failed".
_SKIP_CODES = frozenset({DUPLICATE_ADDRESS, RECIPIENT_UNAVAILABLE})
_CODE_ALPHABET = string.ascii_uppercase + string.digits


def verification_code() -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))


@dataclass
class RowPlan:
    email: QueuedEmail
    expansion: Expansion
    #: job type of the row's own user: certificate (completion with certificate) or email.
    user_jobtype: str = "email"
    completion: CourseCompletion | None = None
    password: Secret | None = field(default=None, repr=False)
    release_reason: str | None = None  # claimed only to record an outcome; stays IOMAD's
    #: the template's sender display name and Reply-To (From stays the verified sender)
    sender: TemplateSender = field(default_factory=TemplateSender)


@dataclass
class ClaimReport:
    considered: int = 0
    claimed: int = 0
    released: int = 0
    recipients: int = 0
    #: recipients created ``skipped`` because the company's suppression list holds the address
    suppressed: int = 0
    batches: int = 0
    jobs: list[int] = field(default_factory=list)
    left_local: Counter[str] = field(default_factory=Counter)
    lock_busy: bool = False
    #: rows given back to IOMAD at once because no recipient fitted the queue (fallback on)
    restored_too_large: int = 0
    decisions: dict[str, str] = field(default_factory=dict)
    #: one line per (company, job type) the Cloudflare Worker cannot process (rows stay with IOMAD)
    refusals: list[str] = field(default_factory=list)


def _dedupe(emailid: int, role: str, address: str) -> str:
    return f"e{emailid}:{role}:{address.strip().lower()}"


class ClaimPass:
    def __init__(
        self,
        engine: sa.Engine,
        repo: BridgeRepo,
        iomad: IomadTables,
        config: BridgeConfig,
        *,
        box: SecretBox | None = None,
        clock: Callable[[], int] = unix_now,
        lock_timeout: float = 0,
        after_park: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.repo = repo
        self.iomad = iomad
        self.config = config
        self.box = box
        self.clock = clock
        self.lock_timeout = lock_timeout
        #: Test hook: called inside the chunk transaction after parking (fault injection).
        self.after_park = after_park
        #: (company id, job type) -> why the Cloudflare Worker cannot take it, or None. Set by
        #: the tick; without it companies on the Cloudflare provider are routed unchecked.
        self.worker_check: Callable[[int, str], str | None] | None = None

    # -- the pass ----------------------------------------------------------------------------

    def run(self, progress: Callable[[int, int], None] | None = None) -> ClaimReport:
        report = ClaimReport()
        with self.engine.connect() as conn:
            global_on = self.repo.offload_enabled(conn)
            settings = self.repo.all_settings(conn)
        candidates = {
            cid: s
            for cid, s in settings.items()
            if could_offload(global_on, s, "email") or could_offload(global_on, s, "certificate")
        }
        if not candidates:
            return report
        dbname = self.config.database.moodle_dbname or (self.engine.url.database or "")
        try:
            with moodle_cron_lock(
                self.engine, self.iomad, dbname, self.iomad.email_cron_task, self.lock_timeout
            ):
                self._claim(global_on, candidates, report, progress)
        except LockNotAcquired:
            report.lock_busy = True
        return report

    def _claim(
        self,
        global_on: bool,
        settings: Mapping[int, CompanySettings],
        report: ClaimReport,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        at = self.clock()
        with self.engine.connect() as conn:
            rows = select_due_emails(conn, self.iomad, at, list(settings), None)
            seen = self.repo.already_claimed(conn, [r.id for r in rows])
            rows = [r for r in rows if r.id not in seen]
            report.considered = len(rows)
            if not rows:
                return
            expansions = expand_emails(conn, self.iomad, rows)
            password_users = [r.userid for r in rows if r.templatename in PASSWORD_TEMPLATES]
            passwords = load_temporary_passwords(conn, self.iomad, password_users) if password_users else {}
            completions = self._completions(conn, rows, settings, global_on, at)
            senders = template_senders(
                conn, self.iomad, ((r.id, r.companyid, expansions[r.id].headers) for r in rows)
            )
        plans = [self._plan(r, expansions[r.id], passwords, completions, settings, global_on) for r in rows]
        for plan in plans:
            plan.sender = senders.get(plan.email.id, plan.sender)

        # Routing: recipient counts per company and job type over this pass's rows.
        counts: Counter[tuple[int, str]] = Counter()
        for plan in plans:
            if plan.release_reason is None and plan.expansion.sendable:
                for rcp in plan.expansion.recipients:
                    counts[(plan.email.companyid, routing_type(plan, rcp.role))] += 1
        decisions = {
            (cid, jt): decide(global_on, settings.get(cid), jt, counts[(cid, jt)])
            for cid in settings
            for jt in ("email", "certificate")
        }
        if self.worker_check is not None:
            # Never park a row for a Worker that cannot process it: it would be accepted and never sent.
            for (cid, jt), decision in list(decisions.items()):
                s = settings.get(cid)
                if decision.offload and counts[(cid, jt)] and s is not None and s.provider == "cloudflare":
                    line = self.worker_check(cid, jt)
                    if line is not None:
                        decisions[(cid, jt)] = Decision(False, "worker_cannot_process")
                        report.refusals.append(f"{line}; {jt} jobs stay with IOMAD")
        report.decisions = {
            f"{cid}:{jt}": d.reason for (cid, jt), d in decisions.items() if counts[(cid, jt)]
        }
        take: list[RowPlan] = []
        for plan in plans:
            reason = self._local_reason(plan, decisions)
            if reason is None:
                take.append(plan)
            else:
                report.left_local[reason] += 1
        jobs: dict[tuple[int, str], tuple[JobHeader, int]] = {}
        chunk = max(1, self.config.submit.claim_chunk_rows)
        for start in range(0, len(take), chunk):
            self._claim_chunk(take[start : start + chunk], settings, jobs, report)
            if progress is not None:
                progress(min(start + chunk, len(take)), len(take))
        with self.engine.begin() as conn:
            self.repo.refresh_job_totals(conn, [h.jobid for h, _ in jobs.values()])
            for (cid, jobtype), (header, _seq) in jobs.items():
                audit.record(
                    conn,
                    self.repo.t,
                    actor="cron",
                    action=audit.JOB_CREATED,
                    now=self.clock(),
                    companyid=cid,
                    jobid=header.jobid,
                    detail={
                        "source": "iomad",
                        "jobtype": jobtype,
                        "decision": decisions[(cid, jobtype)].reason,
                    },
                )
        report.jobs = [h.jobid for h, _ in jobs.values()]

    # -- planning ------------------------------------------------------------------------------

    def _completions(
        self,
        conn: sa.Connection,
        rows: list[QueuedEmail],
        settings: Mapping[int, CompanySettings],
        global_on: bool,
        at: int,
    ) -> dict[int, CourseCompletion]:
        wanted = [
            r
            for r in rows
            if r.templatename == COMPLETION_TEMPLATE
            and could_offload(global_on, settings.get(r.companyid), "certificate")
        ]
        if not wanted:
            return {}
        since = max(0, min(r.due for r in wanted) - 7 * 86400)
        found = select_completions(
            conn,
            self.iomad,
            sorted({r.companyid for r in wanted}),
            (since, 0),
            at,
            limit=len(wanted) * 4 + 1000,
        )
        return {c.emailid: c for c in found if c.emailid is not None}

    def _plan(
        self,
        row: QueuedEmail,
        expansion: Expansion,
        passwords: Mapping[int, Secret],
        completions: Mapping[int, CourseCompletion],
        settings: Mapping[int, CompanySettings],
        global_on: bool,
    ) -> RowPlan:
        plan = RowPlan(row, expansion)
        fatal = [p for p in expansion.problems if p.fatal]
        if fatal:
            plan.release_reason = fatal[0].code
            return plan
        completion = completions.get(row.id)
        if completion is not None:
            plan.user_jobtype, plan.completion = "certificate", completion
        if row.templatename in PASSWORD_TEMPLATES:
            secret = passwords.get(row.userid)
            if secret is not None and find_password(row.body, secret):
                plan.password = secret
        return plan

    def _local_reason(self, plan: RowPlan, decisions: Mapping[tuple[int, str], Any]) -> str | None:
        """Why the row stays with IOMAD untouched, or None when the bridge takes it."""
        if plan.release_reason is not None:
            return None  # recorded and released below
        cid = plan.email.companyid
        jobtypes = {routing_type(plan, r.role) for r in plan.expansion.recipients}
        for jobtype in sorted(jobtypes) or ["email"]:
            decision = decisions.get((cid, jobtype))
            if decision is None or not decision.offload:
                return decision.reason if decision is not None else "no_company_settings"
        headers = plan.expansion.headers
        if headers is not None and headers.attachment is not None and plan.completion is None:
            return "has_attachment"
        if plan.email.templatename in PASSWORD_TEMPLATES and self.box is None:
            return "no_password_key"
        return None

    # -- one chunk, one transaction ----------------------------------------------------------------

    def _claim_chunk(
        self,
        plans: list[RowPlan],
        settings: Mapping[int, CompanySettings],
        jobs: dict[tuple[int, str], tuple[JobHeader, int]],
        report: ClaimReport,
    ) -> None:
        at = self.clock()
        new_jobs: dict[tuple[int, str], tuple[JobHeader, int]] = {}
        with self.engine.begin() as conn:
            sendable = [p for p in plans if p.release_reason is None]
            parked = set(park_emails(conn, self.iomad, [p.email.id for p in sendable]))
            if self.after_park is not None:
                self.after_park(sorted(parked))
            taken = [p for p in sendable if p.email.id in parked]
            released = [p for p in plans if p.release_reason is not None]

            def job_for(cid: int, jobtype: str) -> tuple[JobHeader, int]:
                key = (cid, jobtype)
                if key in new_jobs:
                    return new_jobs[key]
                if key in jobs:
                    return jobs[key]
                s = settings[cid]
                jobid = self.repo.create_job(
                    conn,
                    companyid=cid,
                    jobtype=jobtype,
                    source="iomad",
                    category="transactional",
                    provider=s.provider,
                    status="pending",
                    createdby="cron",
                    timedeadline=at + self.config.job_deadline_seconds,
                )
                row = self.repo.job(conn, jobid)
                if row is None:  # pragma: no cover - inserted just above
                    raise RuntimeError("job vanished")
                try:
                    header = job_header_for(row, s, self.config)
                except BuildError as exc:
                    raise ClaimError(str(exc)) from None
                new_jobs[key] = (header, 0)
                return new_jobs[key]

            planned: dict[tuple[int, str], list[PlannedRecipient]] = {}
            contents: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
            claims: list[dict[str, Any]] = []
            for plan in taken:
                cid = plan.email.companyid
                user_job = job_for(cid, plan.user_jobtype)[0].jobid
                claims.append(self._claim_row(plan, "claimed", user_job, at))
                for rcp in self._recipients(plan):
                    # The row's user (and its recorded problems) go to the user's job: a
                    # certificate job for completions; fan-out copies always to the email job.
                    jobtype = plan.user_jobtype if rcp.role in (ROLE_USER, "problem") else "email"
                    key = (cid, jobtype)
                    job_for(cid, jobtype)
                    planned.setdefault(key, []).append(rcp)
                    if rcp.contentkey and rcp.status == "pending":
                        bucket = contents.setdefault(key, {})
                        if rcp.contentkey not in bucket:
                            bucket[rcp.contentkey] = self._content(plan, rcp.contentkey)
            for plan in released:
                cid = plan.email.companyid
                if cid not in settings:
                    continue
                header = job_for(cid, "email")[0]
                claims.append(self._claim_row(plan, "released", header.jobid, at))
                problem = next(p for p in plan.expansion.problems if p.fatal)
                planned.setdefault((cid, "email"), []).append(
                    PlannedRecipient(
                        dedupekey=f"e{plan.email.id}:released",
                        role=ROLE_USER,
                        address="",
                        userid=plan.email.userid,
                        emailid=plan.email.id,
                        status="restored",
                        errorcode=problem.code,
                        errormessage=f"left to IOMAD: {problem.detail}"[:1000],
                    )
                )
            self.repo.insert_claims(conn, claims)
            all_jobs = {**jobs, **new_jobs}
            for key, recipients in planned.items():
                header, seq = all_jobs[key]
                s = settings[key[0]]
                report.suppressed += skip_suppressed(conn, self.repo, key[0], recipients)
                offload = (
                    reference_for(self.config.aws.content_bucket, key[0], header.jobid)
                    if s.provider == "aws" and self.config.aws.content_bucket
                    else None
                )
                created = add_recipients(
                    conn,
                    self.repo,
                    header,
                    recipients,
                    contents.get(key, {}),
                    QueueLimits.for_provider(s.provider, self.config.submit.max_recipients),
                    target=target_for(s.provider, self.config.submit.aws_mode),
                    first_seq=seq,
                    offload=offload,
                    box=self.box,
                )
                all_jobs[key] = (header, created.next_seq)
                if key[1] == "certificate":
                    emailids = [r.emailid for r in recipients if r.emailid is not None and r.data]
                    self.repo.record_certificates(conn, header.jobid, key[0], emailids)
                report.recipients += created.recipients
                report.batches += created.batches
                if created.rejected and s.fallbacklocal:
                    report.restored_too_large += self._give_back_too_large(
                        conn, header.jobid, recipients, created.rejected, taken
                    )
            new_jobs.update(all_jobs)
        jobs.update(new_jobs)
        report.claimed += len(taken)
        report.released += len(released)

    def _give_back_too_large(
        self,
        conn: sa.Connection,
        jobid: int,
        planned: list[PlannedRecipient],
        rejected: list[PlannedRecipient],
        taken: list[RowPlan],
    ) -> int:
        """Rows whose every recipient was too large for the queue go back to IOMAD (fallback on).

        Rows with some recipients in batches keep their too-large ones ``failed`` (I3).
        """
        rejected_ids = {id(p) for p in rejected}
        by_row: dict[int, list[bool]] = {}
        for p in planned:
            if p.emailid is not None and (p.status == "pending" or id(p) in rejected_ids):
                by_row.setdefault(p.emailid, []).append(id(p) in rejected_ids)
        whole = sorted(e for e, flags in by_row.items() if all(flags))
        if not whole:
            return 0
        dues = {p.email.id: p.email.due for p in taken if p.email.id in set(whole)}
        restored = restore_emails(conn, self.iomad, dues)
        self.repo.set_claims_state(conn, restored, "released")
        self.repo.restore_recipients_of_rows(
            conn,
            jobid,
            restored,
            "too_large",
            "too large for the queue and no content bucket; IOMAD sends it",
        )
        return len(restored)

    @staticmethod
    def _claim_row(plan: RowPlan, state: str, jobid: int, at: int) -> dict[str, Any]:
        return {
            "emailid": plan.email.id,
            "companyid": plan.email.companyid,
            "jobid": jobid,
            "templatename": plan.email.templatename[:100],
            "state": state,
            "originaldue": plan.email.due,
            "timeclaimed": at,
            "timereleased": at if state == "released" else None,
            **plan.sender.columns(),
        }

    def _content(self, plan: RowPlan, key: str) -> dict[str, Any]:
        body = plan.email.body
        if key.endswith("r") and plan.password is not None:
            body = redact(body, plan.password)
        return rendered_content(plan.email.subject, body, plan.sender.from_name, plan.sender.reply_to)

    def _recipients(self, plan: RowPlan) -> list[PlannedRecipient]:
        out: list[PlannedRecipient] = []
        e = plan.email
        is_password_row = e.templatename in PASSWORD_TEMPLATES
        for rcp in plan.expansion.recipients:
            out.append(self._recipient(plan, rcp, is_password_row))
        for n, problem in enumerate(plan.expansion.problems):
            out.append(
                PlannedRecipient(
                    dedupekey=f"e{e.id}:problem:{n}",
                    role="problem",
                    address="",
                    emailid=e.id,
                    status="skipped" if problem.code in _SKIP_CODES else "failed",
                    errorcode=problem.code,
                    errormessage=problem.detail[:1000],
                )
            )
        return out

    def _recipient(self, plan: RowPlan, rcp: ExpandedRecipient, is_password_row: bool) -> PlannedRecipient:
        e = plan.email
        redacted = rcp.redact_password and is_password_row
        p = PlannedRecipient(
            dedupekey=_dedupe(e.id, rcp.role, rcp.address),
            role=rcp.role,
            address=rcp.address,
            fullname=rcp.fullname,
            userid=rcp.userid,
            emailid=e.id,
            contentkey=email_content_key(e.id, redacted),
        )
        if redacted and plan.password is None:
            p.status, p.errorcode = "skipped", "password_not_redactable"
            p.errormessage = (
                "copy of a password email whose password is unknown; not sent, to avoid leaking it"
            )
            return p
        if rcp.role == ROLE_USER and plan.password is not None:
            p.secret = plan.password.reveal()
        if rcp.role == ROLE_USER and plan.user_jobtype == "certificate" and plan.completion is not None:
            c = plan.completion
            p.data = {
                "certificate": {
                    "learner_name": (rcp.fullname or rcp.address)[:256],
                    "course_name": (c.coursename or c.courseshortname or f"course {c.courseid}")[:512],
                    "completed_at": c.timecompleted,
                    "grade": None if c.finalscore is None else f"{c.finalscore.normalize():f}"[:64],
                    "verification_code": verification_code(),
                },
                "courseid": c.courseid,
                "completionid": c.completion_id,
            }
        return p


def routing_type(plan: RowPlan, role: str) -> str:
    """The job type a recipient counts as when routing its row (docs/sending.md, "Threshold
    counting"): every recipient of a completion row whose certificate the company offloads
    counts as ``certificate``: the managers' and To/Cc copies are copies of the same completion
    mail, so a company with the cloud on for certificates only offloads its completions whole.
    Every other recipient counts as ``email``."""
    if plan.user_jobtype == "certificate" or role == ROLE_USER:
        return plan.user_jobtype
    return "email"


class ClaimError(RuntimeError):
    """The pass cannot claim (configuration); nothing was changed."""
