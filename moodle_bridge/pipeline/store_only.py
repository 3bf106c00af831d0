"""Store-only certificates: completions that IOMAD does not mail still get a certificate.

The claim pass gives a completion its certificate together with IOMAD's queued
``completion_course_user`` mail. Some completions have no such mail: the template is disabled
for the company, IOMAD 4.3.7 queued none (its enrolment-time check, docs/iomad.md), or the
completion came from an import. For companies with cloud certificates on, this pass reads
Moodle's ``course_completions`` (read-only, by its ``timecompleted`` index) and makes one
certificate job per company with ``delivery = store_only``: the renderer stores the PDF and
its verification record and reports ``rendered``; nobody is mailed.

Exactly once per (user, course, completion):
- only completions older than ``GRACE_SECONDS`` are read, so IOMAD's own mail (queued in the
  same request as the completion) is already there and the completion is left to it;
- ``mrcloud_completion_certs`` has a unique key on (user, course, completion); its rows, the
  job, its recipients, its outbox batches and the watermark commit in one transaction. A
  bridge killed before the commit leaves nothing (the next pass plans the same completions);
  two bridges planning the same completions cannot both commit (the loser rolls back whole
  and the next pass skips what the winner recorded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.batching import STORE_ONLY_SOURCE
from moodle_bridge.pipeline.claiming import verification_code
from moodle_bridge.pipeline.jobs import PlannedRecipient, add_recipients, target_for
from moodle_bridge.pipeline.outbox import BuildError, job_header_for
from moodle_bridge.pipeline.routing import CompanySettings, could_offload
from moodle_bridge.sources.iomad import queries
from moodle_bridge.sources.iomad.completions import (
    CourseCompletion,
    attach_tracks,
    mailed_completions,
    select_completions_only,
)
from moodle_bridge.sources.iomad.queries import chunks
from moodle_bridge.sources.iomad.schema import IomadTables
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.completion_ledger import CompletionLedger, LedgerEntry
from offload_contract.limits import QueueLimits

log = logging.getLogger(__name__)

#: Completions younger than this are not read yet: IOMAD queues its completion mail in the
#: same request, and the claim pass takes it (with the certificate) within a tick or two.
GRACE_SECONDS = 600
#: Completions older than this are never read (the watermark is not older): a company that turns
#: cloud certificates on gets store-only certificates for the unmailed completions of the last
#: week, not of years; a bridge stopped for longer leaves older completions uncertified.
LOOKBACK_SECONDS = 7 * 86_400
#: Completions read per page (one transaction each) and at most per pass.
PAGE = 500
MAX_PER_PASS = 5_000


@dataclass
class StoreOnlyReport:
    considered: int = 0
    mailed: int = 0  # left to the completion mail (IOMAD's or the claim pass's)
    already: int = 0  # already in the ledger
    unusable: int = 0  # deleted user, or no such course any more
    certificates: int = 0
    jobs: list[int] = field(default_factory=list)
    #: Another bridge committed some of the same completions first: this page rolled back.
    raced: bool = False
    notes: list[str] = field(default_factory=list)


class StoreOnlyPass:
    def __init__(
        self,
        engine: sa.Engine,
        repo: BridgeRepo,
        iomad: IomadTables,
        config: BridgeConfig,
    ) -> None:
        self.engine = engine
        self.repo = repo
        self.iomad = iomad
        self.config = config
        self.ledger = CompletionLedger(repo.t)

    def run(self, at: int) -> StoreOnlyReport:
        report = StoreOnlyReport()
        until = at - GRACE_SECONDS
        while report.considered < MAX_PER_PASS:
            try:
                done = self._page(until, at, report)
            except sa.exc.IntegrityError:
                report.raced = True
                report.notes.append("store-only certificates: another bridge recorded the same completions")
                return report
            if done:
                break
        return report

    def _companies(self, conn: sa.Connection) -> dict[int, CompanySettings]:
        global_on = self.repo.offload_enabled(conn)
        out: dict[int, CompanySettings] = {}
        for cid, s in self.repo.all_settings(conn).items():
            if not could_offload(global_on, s, "certificate"):
                continue
            # AWS only: the Worker draws only some scripts, and this pass does not apply the
            # claim pass's script rule (docs/bridge.md, "Store-only certificates").
            if s.provider != "aws":
                continue
            out[cid] = s
        return out

    def _page(self, until: int, at: int, report: StoreOnlyReport) -> bool:
        """One page in one transaction; True when nothing is left to read."""
        with self.engine.begin() as conn:
            companies = self._companies(conn)
            if not companies:
                return True
            floor = (until - LOOKBACK_SECONDS, 0)
            mark = max(self.ledger.watermark(conn) or floor, floor)
            page = select_completions_only(conn, self.iomad, sorted(companies), mark, until, PAGE)
            if not page:
                return True
            report.considered += len(page)
            unique = _one_company_each(page)
            mailed = mailed_completions(conn, self.iomad, unique)
            issued = self.ledger.issued(conn, [c.completion_id for c in unique])
            report.mailed += len(mailed)
            report.already += len(issued - mailed)
            wanted = [c for c in unique if c.completion_id not in mailed and c.completion_id not in issued]
            wanted = attach_tracks(conn, self.iomad, wanted)
            users = _users(conn, self.iomad, [c.userid for c in wanted])
            by_company: dict[int, list[tuple[CourseCompletion, sa.RowMapping]]] = {}
            for c in wanted:
                user = users.get(c.userid)
                if user is None or int(user["deleted"] or 0):
                    report.unusable += 1
                    continue
                by_company.setdefault(c.companyid, []).append((c, user))
            for cid, items in sorted(by_company.items()):
                self._job(conn, cid, companies[cid], items, at, report)
            self.ledger.set_watermark(conn, page[-1].watermark, at)
            return len(page) < PAGE

    def _job(
        self,
        conn: sa.Connection,
        companyid: int,
        settings: CompanySettings,
        items: list[tuple[CourseCompletion, sa.RowMapping]],
        at: int,
        report: StoreOnlyReport,
    ) -> None:
        provider = settings.provider
        jobid = self.repo.create_job(
            conn,
            companyid=companyid,
            jobtype="certificate",
            source=STORE_ONLY_SOURCE,
            category="transactional",
            provider=provider,
            status="pending",
            templatename="course_completed",
            createdby="cron",
            timedeadline=at + self.config.job_deadline_seconds,
        )
        job = self.repo.job(conn, jobid)
        if job is None:  # pragma: no cover - inserted just above in this transaction
            raise RuntimeError("job vanished")
        try:
            header = job_header_for(job, settings, self.config)
        except BuildError as exc:
            raise StoreOnlyError(str(exc)) from None
        planned = [_recipient(c, user) for c, user in items]
        created = add_recipients(
            conn,
            self.repo,
            header,
            planned,
            {},
            QueueLimits.for_provider(provider, self.config.submit.max_recipients),
            target=target_for(provider, self.config.submit.aws_mode),
        )
        self.repo.refresh_job_totals(conn, [jobid])
        self.ledger.record(
            conn,
            jobid,
            [
                LedgerEntry(companyid, c.userid, c.courseid, c.completion_id, c.timecompleted)
                for c, _ in items
            ],
            at,
        )
        self.ledger.register_certificates(conn, jobid, companyid)
        audit.record(
            conn,
            self.repo.t,
            actor="cron",
            action=audit.JOB_CREATED,
            now=at,
            companyid=companyid,
            jobid=jobid,
            detail={"source": STORE_ONLY_SOURCE, "delivery": "store_only", "recipients": created.recipients},
        )
        report.jobs.append(jobid)
        report.certificates += created.pending


class StoreOnlyError(RuntimeError):
    """The pass cannot create jobs (configuration); nothing of the page was kept."""


def _one_company_each(page: list[CourseCompletion]) -> list[CourseCompletion]:
    """A learner in two companies appears once per company: the lowest company id takes it."""
    best: dict[int, CourseCompletion] = {}
    for c in page:
        if c.completion_id not in best or c.companyid < best[c.completion_id].companyid:
            best[c.completion_id] = c
    return sorted(best.values(), key=lambda c: c.watermark)


def _users(conn: sa.Connection, iomad: IomadTables, userids: list[int]) -> dict[int, sa.RowMapping]:
    out: dict[int, sa.RowMapping] = {}
    for chunk in chunks(sorted(set(userids))):
        for row in conn.execute(queries.users_by_ids(iomad, chunk)).mappings():
            out[int(row["id"])] = row
    return out


def _recipient(c: CourseCompletion, user: sa.RowMapping) -> PlannedRecipient:
    fullname = f"{user['firstname'] or ''} {user['lastname'] or ''}".strip()
    address = str(user["email"] or "")
    return PlannedRecipient(
        dedupekey=f"c{c.completion_id}:store_only",
        role="user",
        address=address[:254],
        fullname=fullname,
        userid=c.userid,
        data={
            "certificate": {
                "learner_name": (fullname or address or f"user {c.userid}")[:256],
                "course_name": (c.coursename or c.courseshortname or f"course {c.courseid}")[:512],
                "completed_at": c.timecompleted,
                "grade": None if c.finalscore is None else f"{c.finalscore.normalize():f}"[:64],
                "verification_code": verification_code(),
            },
            "courseid": c.courseid,
            "completionid": c.completion_id,
        },
    )
