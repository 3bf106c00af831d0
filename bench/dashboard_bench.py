"""Benchmark: dashboard page times on MariaDB with 10,000 jobs and a 50,000-recipient job.

Run alone: ``python -m bench.dashboard_bench`` (writes ``bench/results/dashboard.json``).
Goal: every page at most 150 ms server time at p95.

Set-up (one scratch MariaDB database): the IOMAD stand-in (5 companies, a manager each, learners in
two departments, a department manager), 10,000 jobs spread over the companies, types, statuses and
90 days, one job of 50,000 recipients (mixed statuses and failure reasons), 30,000 audit rows and
5,000 suppressed addresses. For the pages added since (campaigns, schedules, certificates): 50,000
more learners of the first company in Moodle's activity tables (``campaigns_bench.seed_learners``,
no log rows: the audience query never reads the log), 200 campaigns over the five companies (each
its own template; the first, on the first company, ``inactive_site`` 30 days weekly, with six
cycles of 5,000 reminded users in its ledger), 200 schedules (reports and campaign emails, made
by ``create_from_request``) with 20 runs each and 730 for the first, a certificate job of 20,000
stored certificates, and the first company's certificate template (with its logo) in S3 (moto, in
this process: a real bucket adds its round trips to that page's figure).

Each page is requested ``REQUESTS`` times through the real app (Starlette, in-process, session
cookie, rights re-check on) and timed from request to last byte; p50/p95 are reported per page.
Pages slower than ``PAGE_BUDGET_S`` get fewer samples (``samples`` in each row); each row has
the host's 1-minute load average when it ended (2 cores, shared). The job pages run again with
the per-job figures cache off, and the campaign pages with the audience count kept for no time
(counted on every view). The naive baseline renders the same two heaviest pages the obvious way
(jobs list: progress counted from the recipients table with a COUNT for the page total and
OFFSET paging; job page: every recipient row read and counted in Python, OFFSET paging), timed
the same way in the same run.
"""

from __future__ import annotations

import io
import json
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import boto3
import sqlalchemy as sa
from moto import mock_aws
from PIL import Image
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from bench.campaigns_bench import COURSE, TRIGGERS, moodle_tables, seed_learners
from bench.common import write_results
from certificate_render.template import TemplateStore
from iomad_sim import scratch_databases
from iomad_sim.iomad_schema import create_iomad_schema, metadata_for
from iomad_sim.iomad_seed import ADMIN_ID, SeedSpec, seed_iomad
from moodle_bridge.config import BridgeConfig, DashboardConfig
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.campaigns.manage import create_campaign
from moodle_bridge.sources.schedules.manage import ScheduleRequest, create_from_request
from moodle_bridge.sources.schedules.reports import REPORTS
from moodle_bridge.sources.schedules.timing import FREQUENCIES
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.campaign_repo import CampaignRepo
from moodle_bridge.storage.database import create_bridge_engine
from moodle_bridge.storage.migrations import migrate
from moodle_bridge.web.app import create_app
from offload_contract import dashboard_token

SERVER_URL = os.environ.get("MRCO_BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/")
JOBS = 10_000
BIG = 50_000
AUDIT_ROWS = 30_000
SUPPRESSIONS = 5_000
#: the pages added since issue 13: campaigns, schedules, certificates
CAMPAIGN_LEARNERS = int(os.environ.get("MRCO_BENCH_DASH_CAMPAIGN_LEARNERS", "50000"))
CAMPAIGNS = 200
CYCLE_USERS = 5_000
SCHEDULES = 200
RUNS_PER_SCHEDULE = 20
BUSY_SCHEDULE_RUNS = 730
CERTIFICATES = 20_000
TEMPLATE_BUCKET = "bench-templates"
REQUESTS = int(os.environ.get("MRCO_BENCH_DASH_REQUESTS", "40"))
GOAL_MS = 150.0
PAGE_BUDGET_S = 30.0
MIN_SAMPLES = 3
KEY = "ZGFzaGJvYXJkLWJlbmNobWFyay1rZXktbm90LWEtc2VjcmV0LWF0LWFsbC0wMDAw"
STATUSES = ("completed",) * 6 + ("partial_failure", "failed", "cancelled", "processing", "queued")
RECIPIENT_MIX = (
    ("delivered", None, 0.80),
    ("sent", None, 0.05),
    ("bounced", "bounce_permanent", 0.02),
    ("complained", None, 0.002),
    ("failed", "MessageRejected", 0.02),
    ("failed", "Throttling", 0.008),
    ("queued", None, 0.08),
    ("skipped", "suppressed_bounce", 0.02),
)


def _insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], chunk: int = 2000) -> None:
    for start in range(0, len(rows), chunk):
        conn.execute(table.insert(), rows[start : start + chunk])


def build(engine: sa.Engine, now: int) -> dict[str, Any]:
    rng = random.Random(7)
    iomad = create_iomad_schema(engine)
    seeded = seed_iomad(engine, iomad, SeedSpec(companies=5, users_per_company=200, child_departments=1))
    migrate(engine, "mdl_")
    t = build_bridge_tables("mdl_")
    meta = metadata_for(iomad)
    cu, user = meta.tables[iomad.company_users.name], meta.tables["mdl_user"]
    companies = seeded.company_ids
    c1, child = companies[0], seeded.department_ids[companies[0]][1]
    with engine.begin() as conn:
        dept_manager = int(conn.execute(sa.select(sa.func.max(user.c.id))).scalar() or 0) + 1
        conn.execute(
            user.insert().values(
                id=dept_manager,
                username="dm",
                firstname="D",
                lastname="M",
                email="dm@example.org",
                mnethostid=1,
                timezone="Europe/London",
            )
        )
        conn.execute(cu.insert().values(companyid=c1, userid=dept_manager, managertype=2, departmentid=child))
        conn.execute(user.update().values(timezone="Europe/Paris"))
        learners = [
            int(x) for x in conn.execute(sa.select(cu.c.userid).where(cu.c.companyid == c1)).scalars()
        ]
        jobs = []
        for i in range(JOBS - 1):
            status = rng.choice(STATUSES)
            total = rng.randint(1, 400)
            sent = total if status == "completed" else rng.randint(0, total)
            failed = total - sent if status in ("partial_failure", "failed") else 0
            created = now - rng.randint(0, 90 * 86400)
            jobs.append(
                {
                    "companyid": companies[i % len(companies)],
                    "jobtype": "email" if i % 5 else "certificate",
                    "source": "iomad",
                    "provider": "aws",
                    "status": status,
                    "templatename": "user_create",
                    "recipientstotal": total,
                    "recipientssent": sent,
                    "recipientsfailed": failed,
                    "timecreated": created,
                    "timemodified": created + 60,
                    "timesubmitted": created + 30,
                    "timecompleted": created + 600
                    if status in ("completed", "partial_failure", "failed")
                    else None,
                }
            )
        _insert(conn, t.jobs, jobs)
        big = int(
            conn.execute(
                t.jobs.insert().values(
                    companyid=c1,
                    jobtype="email",
                    source="iomad",
                    provider="aws",
                    status="processing",
                    templatename="user_create",
                    recipientstotal=BIG,
                    timecreated=now - 3600,
                    timemodified=now,
                    timesubmitted=now - 3500,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
        )
        batches = [
            {
                "jobid": big,
                "companyid": c1,
                "batchkey": f"j{big}-a1-{n}",
                "attempt": 1,
                "status": "submitted",
                "target": "sqs",
                "recipientcount": 200,
                "timecreated": now - 3500,
            }
            for n in range(BIG // 200)
        ]
        _insert(conn, t.batches, batches)
        weights = [w for _, _, w in RECIPIENT_MIX]
        recipients = []
        for i in range(BIG):
            status, code, _ = rng.choices(RECIPIENT_MIX, weights)[0]
            uid = learners[i % len(learners)]
            recipients.append(
                {
                    "jobid": big,
                    "companyid": c1,
                    "userid": uid,
                    "role": "user",
                    "address": f"learner{i}@example.org",
                    "fullname": f"Learner {i}",
                    "dedupekey": f"d{i}",
                    "status": status,
                    "attempts": 1,
                    "errorcode": code,
                    "timecreated": now - 3500,
                    "timemodified": now - 60,
                    "timefinal": None if status == "queued" else now - 60,
                }
            )
        _insert(conn, t.recipients, recipients)
        from moodle_bridge.results.ingest import lock_jobs, refresh_jobs  # noqa: PLC0415

        refresh_jobs(conn, t, lock_jobs(conn, t, [big]), now=now, actor="bench", recompute_status=False)
        actions = ("job_created", "job_submitted", "job_completed", "company_settings_changed")
        _insert(
            conn,
            t.audit_log,
            [
                {
                    "timecreated": now - rng.randint(0, 90 * 86400),
                    "actor": rng.choice(("cron", "cli:root", "dashboard:2")),
                    "action": rng.choice(actions),
                    "companyid": companies[i % len(companies)],
                    "jobid": i % JOBS + 1,
                }
                for i in range(AUDIT_ROWS)
            ],
        )
        _insert(
            conn,
            t.suppressions,
            [
                {
                    "companyid": companies[i % len(companies)],
                    "address": f"gone{i}@example.org",
                    "reason": rng.choice(("bounce", "complaint", "unsubscribe")),
                    "source": "ses",
                    "timecreated": now,
                }
                for i in range(SUPPRESSIONS)
            ],
        )
    return {
        "big": big,
        "company": c1,
        "manager": seeded.manager_ids[0],
        "dept_manager": dept_manager,
        "companies": companies,
        "iomad": iomad,
    }


def build_campaigns_and_schedules(
    engine: sa.Engine, config: BridgeConfig, world: dict[str, Any], now: int
) -> dict[str, Any]:
    """The pages added since issue 13, on the same database: ``CAMPAIGN_LEARNERS`` more learners of
    the bench's company in Moodle's activity tables (the campaign audience bench's seeding),
    ``CAMPAIGNS`` campaigns and ``SCHEDULES`` schedules made through the CLI's own functions, each
    schedule's per-slot runs, and a certificate job of ``CERTIFICATES`` stored certificates."""
    rng = random.Random(11)
    t = build_bridge_tables("mdl_")
    repo = BridgeRepo(t)
    moodle = moodle_tables(world["iomad"])
    companies, c1 = world["companies"], world["company"]
    with engine.begin() as conn:
        first = int(conn.execute(sa.select(sa.func.max(moodle["user"].c.id))).scalar() or 0) + 1
        seed_learners(
            conn, moodle, company=c1, ids=range(first, first + CAMPAIGN_LEARNERS), log_rows=0, now=now
        )
        for company in companies:
            repo.save_settings(conn, CompanySettings(company, cloudenabled=True), "bench")
        campaign_ids: list[int] = []
        triggers = list(TRIGGERS.values())
        for i in range(CAMPAIGNS):
            company = c1 if i == 0 else companies[i % len(companies)]
            trigger = dict(triggers[0] if i == 0 else triggers[i % len(triggers)])
            if trigger.get("deadline"):
                trigger["deadline"] = now + 14 * 86400
            rule = {
                "trigger": trigger,
                "template": {  # each campaign its own text, as a site's campaigns have
                    "subject": f"Come back, {{{{ firstname }}}} ({i})",
                    "html": f"<p>Hello {{{{ firstname }}}},</p><p>Campaign {i}: your courses wait.</p>",
                },
                "cadence": {"every_days": 7, "max_reminders": 4} if i % 3 == 0 else {},
                "start": now - 42 * 86400,
            }
            campaign_ids.append(
                create_campaign(
                    conn,
                    repo,
                    companyid=company,
                    name=f"Re-engagement {i}",
                    rule_text=json.dumps(rule),
                    actor="cli:bench",
                    at=now - 42 * 86400,
                )
            )
        big_campaign = campaign_ids[0]
        # Six weekly cycles of the big campaign: a job each and the users it reminded (the ledger).
        ledger = CampaignRepo(t)
        learners = list(range(first, first + CAMPAIGN_LEARNERS))
        for cycle in range(6):
            at = now - (42 - 7 * cycle) * 86400
            reminded = learners[cycle * CYCLE_USERS % len(learners) :][:CYCLE_USERS]
            job = int(
                conn.execute(
                    t.jobs.insert().values(
                        companyid=c1,
                        jobtype="email",
                        source="campaign",
                        provider="aws",
                        status="completed",
                        templatename="campaign",
                        recipientstotal=len(reminded),
                        recipientssent=len(reminded),
                        timecreated=at,
                        timemodified=at + 600,
                        timesubmitted=at + 30,
                        timecompleted=at + 600,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
            )
            ledger.record_ledger(conn, big_campaign, cycle, job, reminded, at)
        schedule_ids: list[int] = []
        for i in range(SCHEDULES):
            company = companies[i % len(companies)]
            email = i % 4 == 3
            request = ScheduleRequest(
                companyid=company,
                name=f"Schedule {i}",
                action_type="email" if email else "report",
                frequency=FREQUENCIES[i % 5],
                time=f"{6 + i % 12:02d}:{i % 4 * 15:02d}",
                start=time.strftime("%Y-%m-%d", time.gmtime(now - 730 * 86400)),
                report=None if email else sorted(REPORTS)[i % len(REPORTS)],
                campaignid=campaign_ids[i % CAMPAIGNS] if email else None,  # same company as i
                reportdays=7,
            )
            schedule_ids.append(create_from_request(conn, repo, config, request, actor="cli:bench", at=now))
        busy = schedule_ids[0]
        runs = []
        for sid in schedule_ids:
            for n in range(BUSY_SCHEDULE_RUNS if sid == busy else RUNS_PER_SCHEDULE):
                outcome = rng.choice(("queued",) * 6 + ("empty", "not_sent", "failed"))
                runs.append(
                    {
                        "scheduleid": sid,
                        "slot": now - (n + 1) * 86400,
                        "outcome": outcome,
                        "jobid": rng.randint(1, JOBS) if outcome == "queued" else None,
                        "rowcount": rng.randint(0, 5000) if outcome == "queued" else 0,
                        "detail": "SES answered Throttling" if outcome == "failed" else "",
                        "timecreated": now - (n + 1) * 86400 + 5,
                    }
                )
        _insert(conn, t.schedule_runs, runs)
        cert_job = int(
            conn.execute(
                t.jobs.insert().values(
                    companyid=c1,
                    jobtype="certificate",
                    source="schedule",
                    provider="aws",
                    status="completed",
                    templatename="certificate",
                    recipientstotal=CERTIFICATES,
                    recipientssent=CERTIFICATES,
                    timecreated=now - 7200,
                    timemodified=now - 600,
                    timesubmitted=now - 7100,
                    timecompleted=now - 600,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
        )
        _insert(
            conn,
            t.recipients,
            [
                {
                    "jobid": cert_job,
                    "companyid": c1,
                    "userid": learners[i % len(learners)],
                    "role": "user",
                    "address": f"u{learners[i % len(learners)]}@example.com",
                    "fullname": f"Learner {learners[i % len(learners)]}",
                    "dedupekey": f"c{i}",
                    "status": "rendered",
                    "attempts": 1,
                    "timecreated": now - 7100,
                    "timemodified": now - 600,
                    "timefinal": now - 600,
                }
                for i in range(CERTIFICATES)
            ],
        )
        r = t.recipients
        key = sa.func.concat(f"certificates/c{c1}/{cert_job}/", r.c.id, ".pdf")
        conn.execute(r.update().where(r.c.jobid == cert_job).values(artifactkey=key))
        issued = conn.execute(
            sa.select(r.c.id, r.c.userid, r.c.artifactkey).where(r.c.jobid == cert_job)
        ).all()
        _insert(
            conn,
            t.certificates,
            [
                {
                    "companyid": c1,
                    "userid": row.userid,
                    "courseid": COURSE,
                    "recipientid": row.id,
                    "verifycode": f"{row.id:032x}",
                    "artifactkey": row.artifactkey,
                    "sha256": "0" * 64,
                    "timeissued": now - 600,
                    "timerevoked": now - 300 if row.id % 97 == 0 else None,
                }
                for row in issued
            ],
        )
    return {
        "campaign": big_campaign,
        "campaigns": campaign_ids,
        "schedule": busy,
        "certificate_job": cert_job,
    }


def template_with_logo() -> tuple[dict[str, Any], dict[str, bytes]]:
    """A company's certificate template as a manager uploads it: a document and its logo."""
    logo = io.BytesIO()
    Image.new("RGB", (240, 120), (31, 78, 121)).save(logo, format="PNG")
    document = {
        "page": {"size": "A4", "orientation": "landscape"},
        "language": "en",
        "logo": {"image": "logo.png", "x": 136.5, "y": 16, "w": 24},
        "elements": [
            {"field": "static", "text": "Certificate of Completion", "y": 48, "size": 30, "bold": True},
            {"field": "learner_name", "y": 80, "h": 18, "size": 34, "bold": True},
            {"field": "course_name", "y": 114, "h": 14, "size": 22},
        ],
    }
    return document, {"logo.png": logo.getvalue()}


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def _time(client: TestClient, path: str, n: int) -> dict[str, float]:
    """Server time (the app's ``Server-Timing: app;dur=``) and the in-process round trip. A page
    slower than ``PAGE_BUDGET_S`` in all is sampled fewer times (at least ``MIN_SAMPLES``), and
    the row says how many samples it has."""
    server: list[float] = []
    round_trip: list[float] = []
    began = time.perf_counter()
    while len(server) < n and (len(server) < MIN_SAMPLES or time.perf_counter() - began < PAGE_BUDGET_S):
        start = time.perf_counter()
        response = client.get(path)
        round_trip.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}")
        server.append(float(response.headers["server-timing"].split("dur=")[1]))
    return {
        "p50_ms": round(statistics.median(server), 1),
        "p95_ms": _p(server, 0.95),
        "round_trip_p95_ms": _p(round_trip, 0.95),
        "samples": len(server),
    }


def naive_pages(engine: sa.Engine, t: BridgeTables, big: int) -> dict[str, Callable[[], Any]]:
    """The same two heaviest pages written the obvious way (the baseline)."""
    j, r = t.jobs, t.recipients

    def jobs_list() -> Any:
        with engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(j)).scalar()
            page = conn.execute(sa.select(j).order_by(j.c.id.desc()).limit(50).offset(0)).all()
            ids = [row.id for row in page]
            counts = conn.execute(
                sa.select(r.c.jobid, r.c.status, sa.func.count())
                .where(r.c.jobid.in_(ids))
                .group_by(r.c.jobid, r.c.status)
            ).all()
        return total, page, counts

    def job_page() -> Any:
        with engine.connect() as conn:
            job = conn.execute(sa.select(j).where(j.c.id == big)).one()
            rows = conn.execute(sa.select(r).where(r.c.jobid == big)).all()
            page = conn.execute(
                sa.select(r).where(r.c.jobid == big).order_by(r.c.id).limit(50).offset(25_000)
            ).all()
        counts = Counter(row.status for row in rows)
        reasons = Counter(row.errorcode for row in rows if row.errorcode)
        return job, counts, reasons, page

    return {"jobs_list": jobs_list, "job_page_50k": job_page}


def _time_fn(fn: Callable[[], Any], n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(statistics.median(samples), 1), "p95_ms": _p(samples, 0.95)}


def main() -> int:
    url: URL = scratch_databases.create_database("mariadb", "bench_dash", SERVER_URL)
    engine = create_bridge_engine(url)
    aws: Any = None
    try:
        now = int(time.time())
        start = time.perf_counter()
        world = build(engine, now)
        build_s = time.perf_counter() - start
        base = BridgeConfig()
        config = replace(
            base,
            database=replace(base.database, url=url.render_as_string(hide_password=False)),
            dashboard=DashboardConfig(shared_key=KEY, public_url="https://bench", recheck_seconds=60),
            aws=replace(base.aws, content_bucket=TEMPLATE_BUCKET, region="eu-west-1"),
        )
        start = time.perf_counter()
        added = build_campaigns_and_schedules(engine, config, world, now)
        added_s = time.perf_counter() - start
        tables = build_bridge_tables("mdl_")
        app = create_app(engine, tables, config)
        # The certificate template page reads the company's stored template from the bucket (moto,
        # in this process: a real bucket adds its round trips to the figure).
        for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
            os.environ.setdefault(name, value)
        aws = mock_aws()
        aws.start()
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(
            Bucket=TEMPLATE_BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        TemplateStore(s3, TEMPLATE_BUCKET).put(world["company"], "default", *template_with_logo())

        def client(user: int, company: int) -> TestClient:
            c = TestClient(app, base_url="https://bench", follow_redirects=False)
            token = dashboard_token.sign(KEY, user, company, now=int(time.time()))
            if c.get("/signin", params={"token": token}).status_code != 200:
                raise RuntimeError("sign-in failed")
            return c

        admin = client(ADMIN_ID, 0)
        manager = client(world["manager"], world["company"])
        dept = client(world["dept_manager"], world["company"])
        big = world["big"]
        day = time.strftime("%Y-%m-%d", time.gmtime(now - 30 * 86400))
        ids = ",".join(str(i) for i in range(big - 49, big + 1))
        pages = {
            "jobs (admin, all companies)": (admin, "/"),
            "jobs filtered (company, type, status, dates)": (
                admin,
                f"/?company={world['company']}&type=email&status=completed&from={day}&to={day}",
            ),
            "jobs (company manager)": (manager, "/"),
            "jobs, page 20 (keyset)": (admin, f"/?before={big - 1000}"),
            "progress.json (50 jobs)": (admin, f"/progress.json?ids={ids}"),
            "job 50k recipients": (manager, f"/jobs/{big}"),
            "job 50k, search address": (manager, f"/jobs/{big}?q=learner4999"),
            "job 50k, failed only": (manager, f"/jobs/{big}?rstatus=failed"),
            "job 50k, deep page": (manager, f"/jobs/{big}?after=40000"),
            "job 50k (department manager)": (dept, f"/jobs/{big}"),
            "settings (admin)": (admin, f"/settings?company={world['company']}"),
            "suppressions, search": (manager, "/suppressions?q=gone12"),
            "audit (admin)": (admin, "/audit"),
            "audit filtered (action, company)": (
                admin,
                f"/audit?action=job_completed&company={world['company']}",
            ),
            f"campaigns ({CAMPAIGNS}, admin)": (admin, "/campaigns"),
            "campaigns (company manager)": (manager, "/campaigns"),
            f"campaign, audience over {CAMPAIGN_LEARNERS + 200:,} learners": (
                manager,
                f"/campaigns/{added['campaign']}",
            ),
            "campaign, audience over 200 learners": (admin, f"/campaigns/{added['campaigns'][1]}"),
            f"schedules ({SCHEDULES}, admin)": (admin, "/schedules"),
            "schedules (company manager)": (manager, "/schedules"),
            f"schedule with {BUSY_SCHEDULE_RUNS} runs": (manager, f"/schedules/{added['schedule']}"),
            "certificate template (stored, S3 in moto)": (manager, "/certificate-template"),
            f"certificates of a job ({CERTIFICATES:,})": (
                manager,
                f"/jobs/{added['certificate_job']}/certificates",
            ),
            f"certificates of a job ({CERTIFICATES:,}), deep page": (
                manager,
                f"/jobs/{added['certificate_job']}/certificates?after={CERTIFICATES * 9 // 10}",
            ),
            f"certificates of a job ({CERTIFICATES:,}) (department manager)": (
                dept,
                f"/jobs/{added['certificate_job']}/certificates",
            ),
        }
        for c, path in pages.values():  # warm caches once
            c.get(path)
        figures: dict[str, Any] = {
            "pages": [],
            "setup_seconds": round(build_s, 1),
            "setup_seconds_campaigns_schedules_certificates": round(added_s, 1),
            "campaign_learners": CAMPAIGN_LEARNERS,
            "campaigns": CAMPAIGNS,
            "schedules": SCHEDULES,
            "schedule_runs": (SCHEDULES - 1) * RUNS_PER_SCHEDULE + BUSY_SCHEDULE_RUNS,
            "certificates": CERTIFICATES,
            "requests_per_page": REQUESTS,
        }
        worst = 0.0
        for name, (c, path) in pages.items():
            stats = _time(c, path, REQUESTS)
            worst = max(worst, stats["p95_ms"])  # every page here, figures cache on
            figures["pages"].append({"name": name, **stats, "load_average_1m": round(os.getloadavg()[0], 2)})
            print(
                f"{name:48s} p50 {stats['p50_ms']:7.1f} ms  p95 {stats['p95_ms']:7.1f} ms"
                f"  (round trip p95 {stats['round_trip_p95_ms']:.1f} ms)",
                flush=True,
            )
        # The same job pages with the per-job figures cache off: every view scans the job's index.
        app.state.dashboard.figures.ttl = 0.0
        for name, (c, path) in pages.items():
            if not name.startswith("job 50k"):
                continue
            stats = _time(c, path, REQUESTS)
            label = f"{name}, no figures cache"
            figures["pages"].append({"name": label, **stats, "load_average_1m": round(os.getloadavg()[0], 2)})
            print(f"{label:48s} p50 {stats['p50_ms']:7.1f} ms  p95 {stats['p95_ms']:7.1f} ms")
        # The campaign pages with the audience count kept for no time: every view counts.
        app.state.dashboard.audience_counts.ttl = 0.0
        for name, (c, path) in pages.items():
            if not name.startswith("campaign,"):
                continue
            stats = _time(c, path, REQUESTS)
            label = f"{name}, counted every view"
            figures["pages"].append({"name": label, **stats, "load_average_1m": round(os.getloadavg()[0], 2)})
            print(f"{label:48s} p50 {stats['p50_ms']:7.1f} ms  p95 {stats['p95_ms']:7.1f} ms")
        start = time.perf_counter()
        csv_size = len(manager.get(f"/jobs/{big}/recipients.csv").content)
        figures["recipients_csv_50k"] = {"seconds": round(time.perf_counter() - start, 2), "bytes": csv_size}
        naive = naive_pages(engine, tables, big)
        figures["baseline_naive"] = [{"name": k, **_time_fn(fn, REQUESTS)} for k, fn in naive.items()]
        for row in figures["baseline_naive"]:
            print(f"naive {row['name']:42s} p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms")
        cold = max(p["p95_ms"] for p in figures["pages"] if p["name"].endswith("no figures cache"))
        figures["worst_p95_ms"] = worst
        figures["worst_p95_ms_no_figures_cache"] = cold
        figures["goal_p95_ms"] = GOAL_MS
        figures["goal_met_with_cache"] = worst <= GOAL_MS
        figures["goal_met_without_cache"] = cold <= GOAL_MS
        counted = max(p["p95_ms"] for p in figures["pages"] if p["name"].endswith("counted every view"))
        figures["worst_p95_ms_audience_counted_every_view"] = counted
        figures["goal_met_audience_counted_every_view"] = counted <= GOAL_MS
        figures["load_average"] = os.getloadavg()[0]
        written = write_results("dashboard", figures)
        print(
            f"worst p95 {worst:.1f} ms, {cold:.1f} ms without the figures cache (goal {GOAL_MS} ms); "
            f"{written}"
        )
        return 0
    finally:
        if aws is not None:
            aws.stop()
        engine.dispose()
        scratch_databases.drop_database("mariadb", url, SERVER_URL)


if __name__ == "__main__":
    raise SystemExit(main())
