"""Read-side SQL for the dashboard's pages, scoped to what the signed-in person may see.

Every query here is bounded: pages read at most ``PAGE_SIZE + 1`` rows (the extra row says whether
there is a next page, so no COUNT over a large table is needed), and per-job figures come from the
job's counters or one ``GROUP BY status`` on the ``(jobid, status)`` index. Writes go through
``moodle_bridge.results.job_control`` and the bridge repository, never from here.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from moodle_bridge.results.eta import eta_seconds, unsent
from moodle_bridge.results.states import (
    ACTIVE_STATUSES,
    BOUNCED,
    COMPLAINED,
    COUNTER_BUCKETS,
    COUNTER_COLUMNS,
    DELIVERED,
    FAILED,
    JOB_TERMINAL,
    REACHED_STATUSES,
    RECIPIENT_STATUSES,
    RESTORED,
    SENT,
)
from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.web.auth import MoodleDirectory, Principal

PAGE_SIZE = 50
#: Job counter columns in a job row (re-exported for the app).
COUNTERS = COUNTER_BUCKETS
#: Statuses a recipient row can have, in the order the job page lists them.
STATUS_ORDER = RECIPIENT_STATUSES
JOB_TYPES = ("email", "certificate")
FAILURE_STATUSES = (FAILED, BOUNCED, COMPLAINED, RESTORED)

# Thresholds shown beside a job's rates (docs/dashboard.md "Deliverability").
SES_BOUNCE_LIMIT = 0.05  # SES puts an account under review at 5% bounces
SES_COMPLAINT_LIMIT = 0.001  # ... and at 0.1% complaints
MAILBOX_SPAM_LIMIT = 0.003  # Gmail/Yahoo bulk sender rule: stay below 0.3% spam reports

# Public list prices (us-east-1 / eu-west-1, 2026) used for the estimate; docs/dashboard.md.
SES_PER_1000 = 0.10
LAMBDA_PER_MILLION_REQUESTS = 0.20
LAMBDA_PER_GB_SECOND = 0.0000166667
LAMBDA_MEMORY_GB = 0.5
LAMBDA_SECONDS_PER_BATCH = 2.0


@dataclass(frozen=True)
class JobFilters:
    company: int | None = None
    jobtype: str | None = None
    status: str | None = None
    date_from: int | None = None  # unix seconds, inclusive
    date_to: int | None = None  # unix seconds, exclusive
    before_id: int | None = None  # keyset paging: jobs with a smaller id


@dataclass
class Progress:
    total: int
    done: int
    status: str
    rate_per_minute: float | None
    eta_seconds: int | None

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 1)

    @property
    def terminal(self) -> bool:
        return self.status in JOB_TERMINAL


def progress_of(row: Any, now: int, send_rate: float = 0.0) -> Progress:
    """Progress from the job's counters: done = recipients in a final status; the observed rate since
    submission; the ETA of the unsent recipients at the SES account's ``send_rate`` (``results/eta.py``,
    as ``jobs show``), None when the rate is unknown (0) or the job ended."""
    total = int(row.recipientstotal)
    done = min(total, sum(int(getattr(row, c)) for c in COUNTER_BUCKETS))
    start = row.timesubmitted or row.timecreated
    end = row.timecompleted if row.status in JOB_TERMINAL and row.timecompleted else now
    minutes = max((int(end) - int(start)) / 60.0, 1 / 60)
    rate = done / minutes if done else None
    eta = None
    if row.status not in JOB_TERMINAL:
        eta = eta_seconds(unsent({c: getattr(row, c) for c in COUNTER_COLUMNS}), send_rate)
    return Progress(total, done, str(row.status), rate, eta)


def list_jobs(
    conn: sa.Connection, tables: BridgeTables, who: Principal, f: JobFilters
) -> tuple[list[Any], bool]:
    j = tables.jobs
    query = sa.select(
        j.c.id,
        j.c.companyid,
        j.c.jobtype,
        j.c.source,
        j.c.status,
        j.c.templatename,
        j.c.attempt,
        *(j.c[c] for c in ("recipientstotal", *COUNTER_BUCKETS)),
        j.c.timecreated,
        j.c.timesubmitted,
        j.c.timecompleted,
    )
    company = who.company_id if who.company_id is not None else f.company
    if company is not None:
        query = query.where(j.c.companyid == company)
    if f.jobtype:
        query = query.where(j.c.jobtype == f.jobtype)
    if f.status:
        query = query.where(j.c.status == f.status)
    if f.date_from is not None:
        query = query.where(j.c.timecreated >= f.date_from)
    if f.date_to is not None:
        query = query.where(j.c.timecreated < f.date_to)
    if f.before_id is not None:
        query = query.where(j.c.id < f.before_id)
    rows = conn.execute(query.order_by(j.c.id.desc()).limit(PAGE_SIZE + 1)).all()
    return list(rows[:PAGE_SIZE]), len(rows) > PAGE_SIZE


def get_job(conn: sa.Connection, tables: BridgeTables, who: Principal, job_id: int) -> Any | None:
    """The job, or None when it does not exist or belongs to a company this person cannot see."""
    j = tables.jobs
    row = conn.execute(sa.select(j).where(j.c.id == job_id)).first()
    if row is None or not who.sees_company(int(row.companyid)):
        return None
    return row


def _recipient_scope(
    conn: sa.Connection, tables: BridgeTables, directory: MoodleDirectory, who: Principal, job: Any
) -> list[sa.ColumnElement[bool]]:
    r = tables.recipients
    where: list[sa.ColumnElement[bool]] = [r.c.jobid == int(job.id)]
    if who.role == "department_manager":
        users = directory.department_users(conn, int(job.companyid), who.department_ids)
        where.append(r.c.userid.in_(users) if users else sa.false())
    return where


def status_counts(
    conn: sa.Connection, tables: BridgeTables, directory: MoodleDirectory, who: Principal, job: Any
) -> dict[str, int]:
    r = tables.recipients
    rows = conn.execute(
        sa.select(r.c.status, sa.func.count())
        .where(*_recipient_scope(conn, tables, directory, who, job))
        .group_by(r.c.status)
    ).all()
    return {str(s): int(n) for s, n in rows}


@dataclass(frozen=True)
class JobFigures:
    counts: dict[str, int]
    groups: list[tuple[str, str, int]]
    batches: int


class FiguresCache:
    """Per-status counts, failure reasons and batch count of a job, for ``ttl`` seconds at most.

    The key holds the job's ``timemodified`` and counters, which every writer of its recipients
    rewrites (``refresh_jobs``), so a change shows on the next view; the TTL bounds what a change
    within the same second could hide. Reloading a 50,000-recipient job's page then costs no scan.
    """

    def __init__(self, ttl: float = 10.0, size: int = 256) -> None:
        self.ttl = ttl
        self.size = size
        self._items: dict[tuple[Any, ...], tuple[float, JobFigures]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        conn: sa.Connection,
        tables: BridgeTables,
        directory: MoodleDirectory,
        who: Principal,
        job: Any,
    ) -> JobFigures:
        scope = who.department_ids if who.role == "department_manager" else ()
        key = (
            int(job.id),
            int(job.timemodified),
            *(int(getattr(job, c)) for c in ("recipientstotal", *COUNTER_BUCKETS)),
            scope,
        )
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        figures = JobFigures(
            status_counts(conn, tables, directory, who, job),
            failure_groups(conn, tables, directory, who, job),
            batch_count(conn, tables, int(job.id)),
        )
        with self._lock:
            if len(self._items) >= self.size:
                self._items.clear()
            self._items[key] = (now, figures)
        return figures


@dataclass(frozen=True)
class CountedAudience:
    users: int
    #: when it was counted (the dashboard's clock, unix seconds)
    at: float


class AudienceCounts:
    """A campaign's audience count as its page shows it, kept ``ttl`` seconds at most.

    Counting runs the campaign's audience query over the company's users (docs/dashboard.md gives
    its time at 50,000 learners), so a reload within ``ttl`` shows the count already made, with
    the time it was made, and ``?count=now`` on the page counts again. The key holds the stored
    rule, the campaign's ``timelastrun`` (set by every run, the dashboard's or ``campaigns
    run-due``, in the transaction that writes the ledger) and the cycle: after a run, an edit or a
    new cycle the next view counts afresh. The TTL bounds how long changes in Moodle (a log-in, an
    enrolment) go unseen. A count that fails is not kept.
    """

    def __init__(self, ttl: float = 60.0, size: int = 256) -> None:
        self.ttl = ttl
        self.size = size
        self._items: dict[tuple[Any, ...], CountedAudience] = {}
        self._lock = threading.Lock()

    def get(
        self, key: tuple[Any, ...], now: float, count: Callable[[], int], *, fresh: bool = False
    ) -> CountedAudience:
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and not fresh and 0 <= now - hit.at < self.ttl:
            return hit
        counted = CountedAudience(count(), now)
        with self._lock:
            if len(self._items) >= self.size:
                self._items.clear()
            self._items[key] = counted
        return counted


@dataclass
class Deliverability:
    reached: int
    bounce_rate: float | None
    complaint_rate: float | None
    success_rate: float | None
    warnings: list[str] = field(default_factory=list)


def deliverability(counts: dict[str, int]) -> Deliverability:
    """Bounce and complaint rates over what the provider accepted, against the published limits."""
    reached = sum(counts.get(s, 0) for s in REACHED_STATUSES)
    attempted = reached + counts.get(FAILED, 0)
    bounced, complained = counts.get(BOUNCED, 0), counts.get(COMPLAINED, 0)
    bounce = bounced / reached if reached else None
    complaint = complained / reached if reached else None
    good = sum(counts.get(s, 0) for s in (SENT, DELIVERED, "rendered"))
    success = good / attempted if attempted else None
    warnings = []
    if bounce is not None and bounce >= SES_BOUNCE_LIMIT:
        warnings.append(f"bounce rate {bounce:.2%} is at or above SES's {SES_BOUNCE_LIMIT:.0%} review level")
    if complaint is not None and complaint >= MAILBOX_SPAM_LIMIT:
        warnings.append(
            f"complaint rate {complaint:.2%} is at or above the Gmail/Yahoo {MAILBOX_SPAM_LIMIT:.1%} limit"
        )
    elif complaint is not None and complaint >= SES_COMPLAINT_LIMIT:
        warnings.append(
            f"complaint rate {complaint:.2%} is at or above SES's {SES_COMPLAINT_LIMIT:.1%} level"
        )
    return Deliverability(reached, bounce, complaint, success, warnings)


@dataclass(frozen=True)
class Cost:
    ses_messages: int
    lambda_invocations: int
    ses_usd: float
    lambda_usd: float

    @property
    def total_usd(self) -> float:
        return self.ses_usd + self.lambda_usd


def cost_estimate(counts: dict[str, int], batches: int, jobtype: str) -> Cost:
    """SES charges per message handed to it (reached or rejected); Lambda per invocation and GB-second."""
    messages = (
        0
        if jobtype == "certificate" and not counts.get(SENT)
        else sum(counts.get(s, 0) for s in (SENT, DELIVERED, BOUNCED, COMPLAINED, FAILED))
    )
    ses = messages / 1000 * SES_PER_1000
    lam = batches * (
        LAMBDA_PER_MILLION_REQUESTS / 1_000_000
        + LAMBDA_SECONDS_PER_BATCH * LAMBDA_MEMORY_GB * LAMBDA_PER_GB_SECOND
    )
    return Cost(messages, batches, ses, lam)


def batch_count(conn: sa.Connection, tables: BridgeTables, job_id: int) -> int:
    b = tables.batches
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(b).where(b.c.jobid == job_id, b.c.status != "abandoned")
        ).scalar()
        or 0
    )


def failure_groups(
    conn: sa.Connection, tables: BridgeTables, directory: MoodleDirectory, who: Principal, job: Any
) -> list[tuple[str, str, int]]:
    """(status, error code, count) of recipients that did not get the mail, largest first."""
    r = tables.recipients
    rows = conn.execute(
        sa.select(r.c.status, r.c.errorcode, sa.func.count().label("n"))
        .where(*_recipient_scope(conn, tables, directory, who, job), r.c.status.in_(FAILURE_STATUSES))
        .group_by(r.c.status, r.c.errorcode)
        .order_by(sa.desc("n"))
        .limit(30)
    ).all()
    return [(str(s), str(code or "unknown"), int(n)) for s, code, n in rows]


RECIPIENT_COLUMNS = (
    "id",
    "address",
    "fullname",
    "role",
    "status",
    "errorcode",
    "errormessage",
    "attempts",
    "timecreated",
    "timemodified",
    "timefinal",
    "artifactkey",
)


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _starts_with(conn: sa.Connection, column: sa.ColumnElement[Any], text: str) -> sa.ColumnElement[bool]:
    """Case-insensitive "begins with" that MariaDB answers from an index (its collation ignores
    case; ``lower()`` would defeat the index). PostgreSQL: ILIKE; SQLite's LIKE ignores ASCII case."""
    pattern = _like(text)[1:]  # no leading wildcard
    if conn.dialect.name == "postgresql":
        return column.ilike(pattern, escape="\\")
    return column.like(pattern, escape="\\")


def recipients_page(
    conn: sa.Connection,
    tables: BridgeTables,
    directory: MoodleDirectory,
    who: Principal,
    job: Any,
    *,
    search: str = "",
    status: str = "",
    after_id: int = 0,
) -> tuple[list[Any], bool]:
    """One page of a job's recipients in id order. ``search``: address or name beginning with it
    (two index range scans on (jobid, address) / (jobid, fullname), merged)."""
    r = tables.recipients
    where = _recipient_scope(conn, tables, directory, who, job)
    if status:
        where.append(r.c.status == status)
    if after_id:
        where.append(r.c.id > after_id)
    columns = [r.c[c] for c in RECIPIENT_COLUMNS]
    term = search.strip()[:100]
    if term:
        by_address = sa.select(*columns).where(*where, _starts_with(conn, r.c.address, term))
        by_name = sa.select(*columns).where(*where, _starts_with(conn, r.c.fullname, term))
        parts = [q.order_by(r.c.id).limit(PAGE_SIZE + 1).subquery() for q in (by_address, by_name)]
        merged = sa.union(*(sa.select(part) for part in parts)).subquery()
        rows = conn.execute(sa.select(merged).order_by(merged.c.id).limit(PAGE_SIZE + 1)).all()
    else:
        rows = conn.execute(sa.select(*columns).where(*where).order_by(r.c.id).limit(PAGE_SIZE + 1)).all()
    return list(rows[:PAGE_SIZE]), len(rows) > PAGE_SIZE


def iter_recipients(
    conn: sa.Connection,
    tables: BridgeTables,
    directory: MoodleDirectory,
    who: Principal,
    job: Any,
    *,
    statuses: tuple[str, ...] = (),
    with_artifact: bool = False,
    chunk: int = 2000,
) -> Iterator[Any]:
    """Every recipient the person may see, in id order, read in chunks (for CSV exports)."""
    r = tables.recipients
    last = 0
    while True:
        where = [*_recipient_scope(conn, tables, directory, who, job), r.c.id > last]
        if statuses:
            where.append(r.c.status.in_(statuses))
        if with_artifact:
            where.append(r.c.artifactkey.is_not(None))
        rows = conn.execute(
            sa.select(*(r.c[c] for c in RECIPIENT_COLUMNS), r.c.emailid)
            .where(*where)
            .order_by(r.c.id)
            .limit(chunk)
        ).all()
        yield from rows
        if len(rows) < chunk:
            return
        last = int(rows[-1].id)


def certificates_page(
    conn: sa.Connection,
    tables: BridgeTables,
    directory: MoodleDirectory,
    who: Principal,
    job: Any,
    *,
    after_id: int = 0,
    limit: int = PAGE_SIZE,
) -> tuple[list[Any], bool]:
    """Recipients of the job whose certificate was stored, in id order."""
    r, c = tables.recipients, tables.certificates
    where = [*_recipient_scope(conn, tables, directory, who, job), r.c.artifactkey.is_not(None)]
    if after_id:
        where.append(r.c.id > after_id)
    rows = conn.execute(
        sa.select(
            r.c.id,
            r.c.address,
            r.c.fullname,
            r.c.status,
            r.c.timefinal,
            r.c.artifactkey,
            c.c.verifycode,
            c.c.timerevoked,
        )
        .select_from(r.outerjoin(c, c.c.recipientid == r.c.id))
        .where(*where)
        .order_by(r.c.id)
        .limit(limit + 1)
    ).all()
    return list(rows[:limit]), len(rows) > limit


def certificate_count(
    conn: sa.Connection, tables: BridgeTables, directory: MoodleDirectory, who: Principal, job: Any
) -> int:
    """How many of the job's stored certificates the person may download."""
    r = tables.recipients
    where = [*_recipient_scope(conn, tables, directory, who, job), r.c.artifactkey.is_not(None)]
    return int(conn.execute(sa.select(sa.func.count()).select_from(r).where(*where)).scalar() or 0)


def certificate_of(
    conn: sa.Connection, tables: BridgeTables, directory: MoodleDirectory, who: Principal, job: Any, rid: int
) -> Any | None:
    r = tables.recipients
    return conn.execute(
        sa.select(r.c.id, r.c.address, r.c.artifactkey).where(
            *_recipient_scope(conn, tables, directory, who, job), r.c.id == rid, r.c.artifactkey.is_not(None)
        )
    ).first()


def is_active(status: str) -> bool:
    return status in ACTIVE_STATUSES


# -- suppressions and audit -------------------------------------------------------------------


def suppressions_page(
    conn: sa.Connection,
    tables: BridgeTables,
    who: Principal,
    *,
    company: int | None,
    search: str = "",
    reason: str = "",
    after_id: int = 0,
    limit: int = PAGE_SIZE,
) -> tuple[list[Any], bool]:
    s = tables.suppressions
    where: list[sa.ColumnElement[bool]] = []
    scope = who.company_id if who.company_id is not None else company
    if scope is not None:
        where.append(s.c.companyid == scope)
    if search:
        where.append(s.c.address.like(_like(search.strip().lower()[:100]), escape="\\"))
    if reason:
        where.append(s.c.reason == reason)
    if after_id:
        where.append(s.c.id > after_id)
    rows = conn.execute(sa.select(s).where(*where).order_by(s.c.id).limit(limit + 1)).all()
    return list(rows[:limit]), len(rows) > limit


@dataclass(frozen=True)
class AuditFilters:
    actor: str = ""
    action: str = ""
    company: int | None = None
    job: int | None = None
    date_from: int | None = None
    date_to: int | None = None
    before_id: int | None = None


def audit_page(
    conn: sa.Connection, tables: BridgeTables, who: Principal, f: AuditFilters
) -> tuple[list[Any], bool]:
    a = tables.audit_log
    where: list[sa.ColumnElement[bool]] = []
    scope = who.company_id if who.company_id is not None else f.company
    if scope is not None:
        where.append(a.c.companyid == scope)
    if f.actor:
        where.append(a.c.actor == f.actor)
    if f.action:
        where.append(a.c.action == f.action)
    if f.job is not None:
        where.append(a.c.jobid == f.job)
    if f.date_from is not None:
        where.append(a.c.timecreated >= f.date_from)
    if f.date_to is not None:
        where.append(a.c.timecreated < f.date_to)
    if f.before_id is not None:
        where.append(a.c.id < f.before_id)
    rows = conn.execute(sa.select(a).where(*where).order_by(a.c.id.desc()).limit(PAGE_SIZE + 1)).all()
    return list(rows[:PAGE_SIZE]), len(rows) > PAGE_SIZE


def day_bounds(day: str, tz: dt.tzinfo) -> tuple[int, int]:
    """Unix seconds of the start of ``day`` (YYYY-MM-DD) and of the next day, in ``tz``."""
    date = dt.date.fromisoformat(day)
    start = dt.datetime.combine(date, dt.time(), tzinfo=tz)
    end = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return int(start.timestamp()), int(end.timestamp())
