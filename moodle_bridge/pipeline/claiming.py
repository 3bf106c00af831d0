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

import dataclasses
import secrets
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.batching import (
    JobHeader,
    email_content_key,
    reference_for,
    rendered_content,
    sealed_if_secret,
)
from moodle_bridge.pipeline.jobs import PlannedRecipient, add_recipients, skip_suppressed, target_for
from moodle_bridge.pipeline.outbox import BuildError, job_header_for
from moodle_bridge.pipeline.routing import CompanySettings, Decision, could_offload, decide
from moodle_bridge.sources.iomad.completions import COMPLETION_TEMPLATE, CourseCompletion, select_completions
from moodle_bridge.sources.iomad.moodle_lock import (
    HeldLock,
    LockLost,
    LockNotAcquired,
    lock_still_held,
    moodle_cron_lock,
)
from moodle_bridge.sources.iomad.passwords import (
    PASSWORD_TEMPLATES,
    Secret,
    find_password,
    load_temporary_passwords,
    password_from_template,
    redact,
)
from moodle_bridge.sources.iomad.queries import not_bridge_queued
from moodle_bridge.sources.iomad.queue import (
    PARKED_DUE_BASE,
    QueuedEmail,
    park_emails,
    restore_emails,
    select_due_emails,
    still_parked,
)
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
from moodle_bridge.storage.bridge_repo import OFFLOAD_ENABLED_KEY, BridgeRepo
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
    #: rows IOMAD's Resend made due again after the bridge had finished them (new generations)
    resends: int = 0
    #: Moodle's lock was lost mid-pass: the chunk being claimed was rolled back (I9)
    lock_lost: bool = False
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
        full_probe_seconds: float = 10.0,
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
        #: the probe's full look at IOMAD's queue: how often, and the highest id it saw
        self.full_probe_seconds = full_probe_seconds
        self._watermark: int | None = None
        self._next_full_probe = 0.0
        #: rows strict mode's trigger parked at insert, taken by this pass (no park needed)
        self._preparked: set[int] = set()
        #: emailid -> send generation of the rows IOMAD's Resend made due again (this pass)
        self._generations: dict[int, int] = {}
        #: The connection that holds Moodle's lock and commits the claims, during a pass.
        self.lock_connection: sa.Connection | None = None
        #: (company id, job type) -> why the Cloudflare Worker cannot take it, or None. Set by
        #: the tick; without it companies on the Cloudflare provider are routed unchecked.
        self.worker_check: Callable[[int, str], str | None] | None = None
        #: (company, certificate texts) -> code points the Worker cannot draw (the script rule)
        self.certificate_check: Callable[[int, Iterable[str]], list[str]] | None = None

    # -- the pass ----------------------------------------------------------------------------

    def anything_due(self, conn: sa.Connection) -> bool:
        """One statement: is any IOMAD row of a cloud-enabled company due, with the switch on?

        The idle pass of ``moodle-offload run`` is this and the outbox's due-batch query. A hint
        only (correctness never depends on it): a superset of what a pass would take, so a False
        answer means a full pass would claim nothing. IOMAD's queue table has no index but its
        primary key, so a full look is a table scan: a long-lived ClaimPass (the service) looks
        at the whole table every ``full_probe_seconds`` (that also finds rows IOMAD's Resend made
        due again) and between those only at rows with a higher id than the last full look saw,
        a primary-key range.
        """
        e, s, cfg, c = self.iomad.email, self.repo.t.company_settings, self.repo.t.config, self.repo.t.claims
        at = self.clock()
        due = sa.and_(
            e.c.sent.is_(None),
            not_bridge_queued(e),
            sa.or_(
                e.c.due < at,
                # parked at insert by strict mode's trigger, not claimed yet
                sa.and_(
                    e.c.due >= PARKED_DUE_BASE,
                    e.c.due < PARKED_DUE_BASE + at,
                    ~sa.exists().where(c.c.emailid == e.c.id),
                ),
            ),
            e.c.companyid.in_(sa.select(s.c.companyid).where(s.c.cloudenabled == 1)),
            sa.exists().where(cfg.c.name == OFFLOAD_ENABLED_KEY, cfg.c.value == "1"),
        )
        now = time.monotonic()
        if self._watermark is None or now >= self._next_full_probe:
            first = sa.select(e.c.id).where(due).limit(1).scalar_subquery()
            top = sa.select(sa.func.max(e.c.id)).scalar_subquery()
            # Rows queued but not due yet (IOMAD's emaildelay, or queued this very second) keep
            # the watermark below them, so the cheap look still sees them once they are due.
            waiting = (
                sa.select(sa.func.min(e.c.id))
                .where(
                    e.c.sent.is_(None),
                    sa.or_(
                        sa.and_(e.c.due >= at, e.c.due < PARKED_DUE_BASE),
                        # parked at insert by strict mode, not due yet, not claimed
                        sa.and_(e.c.due >= PARKED_DUE_BASE + at, ~sa.exists().where(c.c.emailid == e.c.id)),
                    ),
                )
                .scalar_subquery()
            )
            found, highest, lowest_waiting = conn.execute(sa.select(first, top, waiting)).one()
            self._watermark = int(highest or 0)
            if lowest_waiting is not None:
                self._watermark = min(self._watermark, int(lowest_waiting) - 1)
            self._next_full_probe = now + self.full_probe_seconds
            return found is not None
        probe = sa.select(e.c.id).where(e.c.id > self._watermark, due).limit(1)
        return conn.execute(probe).first() is not None

    def run(self, progress: Callable[[int, int], None] | None = None, *, probe: bool = True) -> ClaimReport:
        report = ClaimReport()
        with self.engine.connect() as conn:
            if probe and not self.anything_due(conn):
                return report
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
        # One connection holds Moodle's lock AND commits every claim: MySQL named locks and
        # PostgreSQL advisory locks belong to the session, so a claim can only ever commit
        # while the session that owns the lock is alive; each chunk also checks ownership
        # inside its own transaction before it commits (docs/sending.md, I9).
        with self.engine.connect() as conn:
            self.lock_connection = conn
            try:
                with moodle_cron_lock(
                    conn, self.iomad, dbname, self.iomad.email_cron_task, self.lock_timeout
                ) as held:
                    self._claim(conn, held, global_on, candidates, report, progress)
            except LockNotAcquired:
                report.lock_busy = True
            except LockLost:
                report.lock_lost = True
            finally:
                self.lock_connection = None
        return report

    def _claim(
        self,
        conn: sa.Connection,
        held: HeldLock,
        global_on: bool,
        settings: Mapping[int, CompanySettings],
        report: ClaimReport,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        at = self.clock()
        with conn.begin():
            rows = select_due_emails(conn, self.iomad, at, list(settings), None)
            rows += self._preparked_rows(conn, at, settings)
            # A row the bridge claimed before is looked at again only when IOMAD's Resend made a
            # finished row due again: a new, intended send, routed like a fresh row (I10).
            claimed = self.repo.claim_states(conn, [r.id for r in rows])
            self._generations = {
                r.id: claimed[r.id].generation + 1
                for r in rows
                if r.id in claimed and claimed[r.id].resent(r.modifiedtime)
            }
            rows = [r for r in rows if r.id not in claimed or r.id in self._generations]
            report.considered = len(rows)
            report.resends = len(self._generations)
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
        give_back: dict[int, int] = {}
        undrawable: dict[int, tuple[int, dict[str, None]]] = {}  # company -> (rows, code points)
        for plan in plans:
            reason = self._local_reason(plan, decisions)
            if reason is None and self.certificate_check is not None:
                company = settings.get(plan.email.companyid)
                if company is not None and company.provider == "cloudflare" and plan.completion is not None:
                    missing = self.certificate_check(plan.email.companyid, certificate_texts(plan))
                    if missing:
                        # The Worker cannot draw this learner's certificate: IOMAD keeps the row.
                        reason = "worker_script_unsupported"
                        count, points = undrawable.get(plan.email.companyid, (0, {}))
                        points.update(dict.fromkeys(missing))
                        undrawable[plan.email.companyid] = (count + 1, points)
            if reason is None:
                take.append(plan)
            else:
                report.left_local[reason] += 1
                if plan.email.id in self._preparked:
                    give_back[plan.email.id] = plan.email.due
        for cid, (count, points) in sorted(undrawable.items()):
            shown = " ".join(list(points)[:10]) + (" ..." if len(points) > 10 else "")
            report.refusals.append(
                f"company {cid}: the Cloudflare Worker's certificate fonts cannot draw {shown}"
                f" ({count} certificate row(s)); those rows stay with IOMAD"
            )
        if give_back:  # strict mode parked them at insert; IOMAD sends them as before
            with conn.begin():
                restore_emails(conn, self.iomad, give_back)
        jobs: dict[tuple[int, str], tuple[JobHeader, int]] = {}
        chunk = max(1, self.config.submit.claim_chunk_rows)
        for start in range(0, len(take), chunk):
            self._claim_chunk(conn, held, take[start : start + chunk], settings, jobs, report)
            if progress is not None:
                progress(min(start + chunk, len(take)), len(take))
        with conn.begin():
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

    def _preparked_rows(
        self, conn: sa.Connection, at: int, settings: Mapping[int, CompanySettings]
    ) -> list[QueuedEmail]:
        """Rows strict mode's trigger parked at insert that no claim holds yet, now due.

        Their ``due`` is given as IOMAD queued it (``due - 10**12``). Rows of a company that is
        no longer a candidate are handed back to IOMAD here (the trigger parked them earlier).
        One statement when there are none.
        """
        self._preparked = set()
        e, u, c = self.iomad.email, self.iomad.user, self.repo.t.claims
        query = (
            sa.select(e)
            .select_from(e.join(u, e.c.userid == u.c.id))
            .where(
                e.c.sent.is_(None),
                e.c.due >= PARKED_DUE_BASE,
                e.c.due < PARKED_DUE_BASE + at,
                u.c.deleted == 0,
                sa.or_(u.c.suspended == 0, e.c.templatename == "company_suspended"),
                not_bridge_queued(e),
                ~sa.exists().where(c.c.emailid == e.c.id),
            )
            .order_by(e.c.id)
        )
        rows = [QueuedEmail.from_row(r) for r in conn.execute(query).mappings()]
        rows = [dataclasses.replace(r, due=r.due - PARKED_DUE_BASE) for r in rows]
        orphans = {r.id: r.due for r in rows if r.companyid not in settings}
        if orphans:
            restore_emails(conn, self.iomad, orphans)
        mine = [r for r in rows if r.companyid in settings]
        self._preparked = {r.id for r in mine}
        return mine

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
            # IOMAD <= 5.0: the iomad_temporary preference; 5.1+ (no preference): the text at
            # {User_Newpassword} in the body, read against the row's own template (docs/iomad.md).
            secret = passwords.get(row.userid)
            if secret is None or not find_password(row.body, secret):
                tpl = expansion.headers.template if expansion.headers is not None else None
                template_body = str(tpl.raw.get("body") or "") if tpl is not None else ""
                secret = password_from_template(row.body, template_body)
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
        if plan.email.templatename in PASSWORD_TEMPLATES and self.config.keys.seal_root() is None:
            return "no_seal_key"
        return None

    # -- one chunk, one transaction ----------------------------------------------------------------

    def _claim_chunk(
        self,
        conn: sa.Connection,
        held: HeldLock,
        plans: list[RowPlan],
        settings: Mapping[int, CompanySettings],
        jobs: dict[tuple[int, str], tuple[JobHeader, int]],
        report: ClaimReport,
    ) -> None:
        at = self.clock()
        new_jobs: dict[tuple[int, str], tuple[JobHeader, int]] = {}
        with conn.begin():
            sendable = [p for p in plans if p.release_reason is None]
            fresh = [p.email.id for p in sendable if p.email.id not in self._preparked]
            parked = set(park_emails(conn, self.iomad, fresh))
            # Rows strict mode parked at insert: still parked and unsent (locked until commit)?
            parked |= set(
                still_parked(
                    conn, self.iomad, [p.email.id for p in sendable if p.email.id in self._preparked]
                )
            )
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
                            jobid = job_for(cid, jobtype)[0].jobid
                            bucket[rcp.contentkey] = self._content(plan, rcp.contentkey, jobid)
            preparked_released = {p.email.id: p.email.due for p in released if p.email.id in self._preparked}
            if preparked_released:  # strict mode parked them at insert: IOMAD's again, as queued
                restore_emails(conn, self.iomad, preparked_released)
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
            again = [c["emailid"] for c in claims if c["generation"] > 1]
            if again:
                self.repo.forget_claims(conn, again)
            self.repo.insert_claims(conn, claims)
            all_jobs = {**jobs, **new_jobs}
            for key, recipients in planned.items():
                header, seq = all_jobs[key]
                s = settings[key[0]]
                report.suppressed += skip_suppressed(conn, self.repo, key[0], recipients)
                offload = None
                if s.provider == "aws" and self.config.aws.content_bucket:
                    offload = reference_for(self.config.aws.content_bucket, key[0], header.jobid)
                elif s.provider == "cloudflare" and self.config.cloudflare.intake_url:
                    # The outbox puts it into the Worker's R2 through the signed object route.
                    offload = reference_for(None, key[0], header.jobid)
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
            # Ownership of Moodle's lock is a condition of this commit (I9): checked by this
            # transaction, so a lock lost to a dead session or an expiry rolls the chunk back.
            if not lock_still_held(conn, held):
                raise LockLost("Moodle's lock for IOMAD's email task was lost before the claim committed")
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

    def _claim_row(self, plan: RowPlan, state: str, jobid: int, at: int) -> dict[str, Any]:
        return {
            "generation": self._generations.get(plan.email.id, 1),
            "rowmodified": plan.email.modifiedtime if state == "released" else None,
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

    def _content(self, plan: RowPlan, key: str, jobid: int) -> dict[str, Any]:
        body = plan.email.body
        if key.endswith("r") and plan.password is not None:
            body = redact(body, plan.password)
        content = rendered_content(plan.email.subject, body, plan.sender.from_name, plan.sender.reply_to)
        return sealed_if_secret(
            content,
            holds_password=plan.email.templatename in PASSWORD_TEMPLATES and not key.endswith("r"),
            seal_root=self.config.keys.seal_root(),
            companyid=plan.email.companyid,
            jobid=jobid,
            content_key=key,
        )

    def _recipients(self, plan: RowPlan) -> list[PlannedRecipient]:
        out: list[PlannedRecipient] = []
        e = plan.email
        is_password_row = e.templatename in PASSWORD_TEMPLATES
        for rcp in plan.expansion.recipients:
            out.append(self._recipient(plan, rcp, is_password_row))
        # The user's own address is unusable (their row entry is a problem) but the copies go:
        # the password is then kept on that entry, so the redacted copies can be built at
        # submit time like any other (the bad row fails alone, at once; the batch goes on).
        user_secret = (
            plan.password.reveal()
            if plan.password is not None and not any(r.role == ROLE_USER for r in plan.expansion.recipients)
            else None
        )
        for n, problem in enumerate(plan.expansion.problems):
            own = problem.role == ROLE_USER and user_secret is not None
            out.append(
                PlannedRecipient(
                    dedupekey=f"e{e.id}:problem:{n}",
                    role=ROLE_USER if own else "problem",
                    address="",
                    userid=e.userid if own else None,
                    emailid=e.id,
                    status="skipped" if problem.code in _SKIP_CODES else "failed",
                    errorcode=problem.code,
                    errormessage=problem.detail[:1000],
                    secret=user_secret if own else None,
                )
            )
            if own:
                user_secret = None
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


def certificate_texts(plan: RowPlan) -> list[str]:
    """The course and learner names a completion row's certificate prints (as _recipient builds them)."""
    c = plan.completion
    if c is None:
        return []
    texts = [c.coursename or c.courseshortname or f"course {c.courseid}"]
    texts += [r.fullname or r.address for r in plan.expansion.recipients if r.role == ROLE_USER]
    return texts


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
