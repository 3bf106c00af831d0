"""The dashboard's schedule pages in-process: list, detail, create, preview, pause, resume and
run-now, each through the CLI's own functions (sources/schedules/manage.py); company scope, CSRF,
read-only department managers and audit. SQLite, plus run-now on MariaDB and PostgreSQL; the
report's file goes to S3 in moto."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws
from starlette.testclient import TestClient

from moodle_bridge.commands.tick import attachment_uploader
from moodle_bridge.config import AwsConfig
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.schedules.manage import when
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.schedule_repo import ScheduleRepo
from tests.web.conftest import Site, with_campaign_sending
from tests.web.world import NOW

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
BUCKET = "offload-contents"

FORM = {
    "name": "Weekly mail report",
    "action_type": "report",
    "cloud_preference": "auto",
    "frequency": "weekly",
    "time": "07:30",
    "report": "mail_sent",
    "format": "csv",
    "days": "7",
    "send_if_empty": "1",
}


def _csrf(client: TestClient, path: str = "/schedules") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match
    return match.group(1)


def _audit(site: Site, action: str) -> list[Any]:
    a = site.world.tables.audit_log
    with site.engine.connect() as conn:
        return list(conn.execute(sa.select(a).where(a.c.action == action).order_by(a.c.id)).all())


def _schedule(site: Site, schedule_id: int) -> Any:
    with site.engine.connect() as conn:
        return ScheduleRepo(site.world.tables).get(conn, schedule_id)


def _count(site: Site, table: sa.Table) -> int:
    with site.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() or 0)


def _create(client: TestClient, **changes: str) -> int:
    response = client.post("/schedules/new", data={**FORM, **changes, "csrf": _csrf(client)})
    assert response.status_code == 303, response.text
    match = re.search(r"/schedules/(\d+)\?", response.headers["location"])
    assert match, response.headers["location"]
    return int(match.group(1))


def _follow(client: TestClient, response: Any) -> str:
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"].removeprefix("https://testserver"))
    assert page.status_code == 200
    return str(page.text)


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="eu-west-1")
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield client


def _route_to_cloud(site: Site, s3: Any) -> Site:
    """Both companies routed to AWS, with a content bucket (moto) for the report's file."""
    repo = BridgeRepo(site.world.tables)
    with site.engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        for company in site.world.companies:
            repo.save_settings(conn, CompanySettings(company, cloudenabled=True), "test")
    state = site.app.state.dashboard
    config = with_campaign_sending(state.config)
    config = replace(config, aws=replace(AwsConfig(), content_bucket=BUCKET, region="eu-west-1"))
    state.config = config
    state.attachment_upload = attachment_uploader(config, s3_client=s3)
    return site


@pytest.fixture
def cloud_site(site: Site, s3: Any) -> Site:
    return _route_to_cloud(site, s3)


def test_run_now_sends_the_report_by_reference_on_every_engine(site_on: Site, s3: Any) -> None:
    """Run now from the page: one run row for the slot, its job linked, the file in S3 (SQLite,
    MariaDB, PostgreSQL)."""
    site = _route_to_cloud(site_on, s3)
    w = site.world
    c1 = w.companies[0]
    manager = site.signed_in(w.managers[c1], c1)
    schedule = _create(manager)
    jobs_before = _count(site, w.tables.jobs)
    page = _follow(manager, manager.post(f"/schedules/{schedule}/run-now", data={"csrf": _csrf(manager)}))
    assert ": queued, job " in page and "the next tick submits it" in page
    with site.engine.connect() as conn:
        (run,) = ScheduleRepo(w.tables).runs(conn, schedule)
    assert (run.slot, run.outcome) == (NOW, "queued") and run.jobid is not None
    assert _count(site, w.tables.jobs) == jobs_before + 1
    assert f'<a href="/jobs/{run.jobid}">#{run.jobid}</a>' in page
    key = f"contents/company-{c1}/schedule-{schedule}/{NOW}.csv"
    lines = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8-sig").splitlines()
    # The seeded jobs of company 1: 5 delivered, 1 bounced, 2 failed (the queued ones are not mail sent).
    assert lines[0] == "time,job,template,address,outcome,error"
    assert run.rowcount == len(lines) - 1 == 8
    assert sorted(line.split(",")[4] for line in lines[1:]) == ["bounced"] + ["failed"] * 2 + ["sent"] * 5
    assert [r.actor for r in _audit(site, "schedule_run")] == [f"dashboard:{w.managers[c1]}"]


def test_manager_creates_previews_pauses_resumes_and_runs_a_schedule(cloud_site: Site) -> None:
    site = cloud_site
    w = site.world
    c1 = w.companies[0]
    manager = site.signed_in(w.managers[c1], c1)

    # Bad input: the form comes back with the reason naming the field and what was typed; nothing
    # is stored or audited.
    for changes, reason in (
        ({"days": "seven"}, "days (the report&#39;s period) must be a whole number"),
        ({"days": "0"}, "report days must be between 1 and 3650"),
        ({"time": "25:00"}, "time"),
        ({"timezone": "Mars/Olympus"}, "Mars/Olympus"),
        ({"report": "gossip"}, "report must be one of"),
        ({"action_type": "certificate"}, "a certificate schedule needs --course"),
        ({"action_type": "certificate", "course": "x"}, "course must be a whole number"),
        ({"action_type": "gossip"}, "action_type must be one of"),
        (
            {"action_type": "certificate", "course": "2", "cloud_preference": "local"},
            "cloud_preference local cannot issue certificates",
        ),
        ({"action_type": "email", "campaign": ""}, "campaign"),
        ({"frequency": "custom", "every_days": "0"}, "custom"),
    ):
        bad = manager.post("/schedules/new", data={**FORM, **changes, "csrf": _csrf(manager)})
        assert bad.status_code == 400, changes
        assert "Not saved: " in bad.text and reason in bad.text, (changes, bad.text)
        assert 'value="Weekly mail report"' in bad.text
    assert _count(site, w.tables.schedules) == 0 and not _audit(site, "schedule_created")

    schedule = _create(manager)
    row = _schedule(site, schedule)
    # The zone is the company's, else the creating manager's, else the site's (UTC here).
    assert (row.companyid, row.status, row.report, row.timeofday, row.skipifempty) == (
        c1,
        "active",
        "mail_sent",
        7 * 60 + 30,
        0,
    )
    created = _audit(site, "schedule_created")
    assert [(r.actor, r.companyid) for r in created] == [(f"dashboard:{w.managers[c1]}", c1)]
    assert created[0].sourceaddress is not None

    listing = manager.get("/schedules")
    assert f"/schedules/{schedule}" in listing.text and "Weekly mail report" in listing.text
    detail = manager.get(f"/schedules/{schedule}")
    assert detail.status_code == 200 and "Not run yet." in detail.text
    assert f'data-field="nextrun">{when(row.nextrun, str(row.timezone))}<' in detail.text

    # Preview: the report's row count, the managers and one rendered mail; nothing is recorded.
    jobs_before = _count(site, w.tables.jobs)
    shown = manager.get(f"/schedules/{schedule}/preview")
    assert shown.status_code == 200
    assert 'data-field="recipients">1<' in shown.text
    rows = int(re.search(r'data-field="count">(\d+)<', shown.text).group(1))  # type: ignore[union-attr]
    assert rows > 0 and f"mail_sent.csv: {rows} rows" in shown.text
    assert "Weekly mail report: " in shown.text and "{{" not in shown.text
    assert _count(site, w.tables.jobs) == jobs_before and _count(site, w.tables.schedule_runs) == 0

    # Pause: run-now is refused with the reason; resume, through the CLI's function, audited.
    assert manager.post(f"/schedules/{schedule}/pause", data={"csrf": _csrf(manager)}).status_code == 303
    assert _schedule(site, schedule).status == "paused"
    assert "none while paused" in manager.get(f"/schedules/{schedule}").text
    refused = manager.post(f"/schedules/{schedule}/run-now", data={"csrf": _csrf(manager)})
    assert "is+paused" in refused.headers["location"]
    assert manager.post(f"/schedules/{schedule}/resume", data={"csrf": _csrf(manager)}).status_code == 303
    assert _schedule(site, schedule).status == "active"
    assert len(_audit(site, "schedule_paused")) == len(_audit(site, "schedule_resumed")) == 1

    # Run now: the slot's run row with its job; a second run-now in the same second finds the slot
    # taken and sends nothing more.
    page = _follow(manager, manager.post(f"/schedules/{schedule}/run-now", data={"csrf": _csrf(manager)}))
    assert "job " in page and f"({rows} rows)" in page
    again = _follow(manager, manager.post(f"/schedules/{schedule}/run-now", data={"csrf": _csrf(manager)}))
    assert "already_fired" in again
    assert _count(site, w.tables.jobs) == jobs_before + 1
    assert _count(site, w.tables.schedule_runs) == 1


def test_runs_show_not_sent_reasons_and_a_failed_run_says_why(cloud_site: Site) -> None:
    site = cloud_site
    w = site.world
    c1 = w.companies[0]
    manager = site.signed_in(w.managers[c1], c1)
    schedule = _create(manager)
    # Routing keeps the company local: the run is recorded as not_sent with the routing reason.
    repo = BridgeRepo(w.tables)
    with site.engine.begin() as conn:
        repo.save_settings(conn, CompanySettings(c1, cloudenabled=False), "test")
    page = _follow(manager, manager.post(f"/schedules/{schedule}/run-now", data={"csrf": _csrf(manager)}))
    assert ": not_sent" in page
    assert '<span class="status s-not_sent">not_sent</span>' in page
    assert (
        "kept local (company_cloud_disabled); a report for Moodle&#39;s own mail needs moodle_dataroot"
        in page
    )
    # No content bucket: the run fails, records no slot, and the page says why.
    with site.engine.begin() as conn:
        repo.save_settings(conn, CompanySettings(c1, cloudenabled=True), "test")
    state = site.app.state.dashboard
    state.attachment_upload = None
    state.config = replace(state.config, aws=replace(state.config.aws, content_bucket=""))
    site.clock.now += 1
    failed = manager.post(f"/schedules/{schedule}/run-now", data={"csrf": _csrf(manager)})
    assert "err=Not+sent" in failed.headers["location"] and "content+bucket" in failed.headers["location"]
    assert _count(site, w.tables.schedule_runs) == 1
    last = json.loads(_audit(site, "schedule_run")[-1].detail)
    assert (last["outcome"], last["slot"]) == ("failed", NOW + 1) and "content bucket" in last["reason"]


def test_an_email_schedule_runs_its_campaign(cloud_site: Site) -> None:
    site = cloud_site
    w = site.world
    c1, c2 = w.companies
    manager = site.signed_in(w.managers[c1], c1)
    from tests.web.test_campaign_pages import FORM as CAMPAIGN_FORM

    made = manager.post(
        "/campaigns/new",
        data={**CAMPAIGN_FORM, "every_days": "0", "max_reminders": "1", "csrf": _csrf(manager, "/campaigns")},
    )
    assert made.status_code == 303, made.text
    campaign = int(re.search(r"/campaigns/(\d+)", made.headers["location"]).group(1))  # type: ignore[union-attr]
    # Another company's campaign is refused by the shared validation, naming it.
    other = site.signed_in(w.managers[c2], c2)
    bad = other.post(
        "/schedules/new",
        data={**FORM, "action_type": "email", "campaign": str(campaign), "csrf": _csrf(other)},
    )
    assert bad.status_code == 400 and f"campaign {campaign} does not exist in company {c2}" in bad.text
    schedule = _create(manager, action_type="email", campaign=str(campaign), suppress_course_completion="1")
    row = _schedule(site, schedule)
    assert (row.action_type, row.campaignid, row.report, row.suppress_course_completion) == (
        "email",
        campaign,
        None,
        1,
    )
    preview = manager.get(f"/schedules/{schedule}/preview")
    members = len(w.learners[c1]) + 2
    assert f'data-field="count">{members}<' in preview.text and "users" in preview.text
    page = _follow(manager, manager.post(f"/schedules/{schedule}/run-now", data={"csrf": _csrf(manager)}))
    assert f"with {members} recipients" in page
    assert f'<a href="/campaigns/{campaign}">#{campaign}</a>' in page


def test_another_company_manager_cannot_see_or_change_a_schedule(cloud_site: Site) -> None:
    site = cloud_site
    w = site.world
    c1, c2 = w.companies
    schedule = _create(site.signed_in(w.managers[c1], c1))
    other = site.signed_in(w.managers[c2], c2)
    assert f"/schedules/{schedule}" not in other.get("/schedules").text
    for path in ("", "/preview"):
        assert other.get(f"/schedules/{schedule}{path}").status_code == 404
    token = _csrf(other)
    for action in ("pause", "resume", "run-now"):
        assert other.post(f"/schedules/{schedule}/{action}", data={"csrf": token}).status_code == 404
    assert _schedule(site, schedule).status == "active"
    assert _count(site, w.tables.schedule_runs) == 0
    # A company manager creates for their own company whatever the form says.
    mine = _create(other, company=str(c1))
    assert _schedule(site, mine).companyid == c2
    assert not _audit(site, "schedule_paused") and not _audit(site, "schedule_run")


def test_a_forged_csrf_token_is_refused_and_changes_nothing(cloud_site: Site) -> None:
    site = cloud_site
    w = site.world
    c1 = w.companies[0]
    manager = site.signed_in(w.managers[c1], c1)
    schedule = _create(manager)
    for data in ({"csrf": "forged"}, {}):
        for action in ("pause", "run-now"):
            assert manager.post(f"/schedules/{schedule}/{action}", data=data).status_code == 403
        assert manager.post("/schedules/new", data={**FORM, **data}).status_code == 403
    token = _csrf(site.signed_in(w.admin))  # another session's valid token
    assert manager.post(f"/schedules/{schedule}/pause", data={"csrf": token}).status_code == 403
    assert _schedule(site, schedule).status == "active"
    assert _count(site, w.tables.schedules) == 1 and _count(site, w.tables.schedule_runs) == 0


def test_department_manager_reads_and_admin_sees_every_company(cloud_site: Site) -> None:
    site = cloud_site
    w = site.world
    c1, c2 = w.companies
    schedule = _create(site.signed_in(w.managers[c1], c1))
    dept = site.signed_in(w.department_manager, c1)
    assert f"/schedules/{schedule}" in dept.get("/schedules").text
    page = dept.get(f"/schedules/{schedule}")
    assert page.status_code == 200 and "Run now" not in page.text and "Pause" not in page.text
    assert dept.get(f"/schedules/{schedule}/preview").status_code == 404
    assert dept.get("/schedules/new").status_code == 404
    assert dept.post(f"/schedules/{schedule}/pause", data={"csrf": _csrf(dept)}).status_code == 404
    assert dept.post("/schedules/new", data={**FORM, "csrf": _csrf(dept)}).status_code == 404
    assert _schedule(site, schedule).status == "active"

    admin = site.signed_in(w.admin)
    bad = admin.post("/schedules/new", data={**FORM, "company": "77", "csrf": _csrf(admin)})
    assert bad.status_code == 400 and "company 77 has no settings" in bad.text
    theirs = _create(admin, company=str(c2))
    # Neither company has a zone: the creating admin's (Europe/Paris) is stored, while the manager
    # (Moodle's "99", not set) got the site's.
    assert (_schedule(site, theirs).timezone, _schedule(site, schedule).timezone) == ("Europe/Paris", "UTC")
    listing = admin.get("/schedules").text
    assert f"/schedules/{schedule}" in listing and f"/schedules/{theirs}" in listing
    only_c2 = admin.get("/schedules", params={"company": c2}).text
    assert f"/schedules/{theirs}" in only_c2 and f'/schedules/{schedule}"' not in only_c2
    assert admin.post(f"/schedules/{schedule}/pause", data={"csrf": _csrf(admin)}).status_code == 303
    paused = _audit(site, "schedule_paused")
    assert [(r.actor, r.companyid) for r in paused] == [(f"dashboard:{w.admin}", c1)]


def test_a_certificate_schedule_from_the_form(cloud_site: Site) -> None:
    """Action certificate: the course and cohort fields, the detail and the preview (who would get
    one); routing and sending are tested end to end in tests/lambdas/test_scheduled_certificates_e2e.py."""
    from iomad_sim.iomad_schema import metadata_for

    site = cloud_site
    w = site.world
    c1 = w.companies[0]
    tables = metadata_for(w.iomad).tables
    course, done = 7001, w.learners[c1][:2]
    with site.engine.begin() as conn:
        conn.execute(tables["mdl_course"].insert().values(id=course, fullname="Fire drill", shortname="fd"))
        conn.execute(
            tables["mdl_course_completions"].insert(),
            [{"userid": u, "course": course, "timecompleted": NOW - 86400} for u in done],
        )
    manager = site.signed_in(w.managers[c1], c1)
    schedule = _create(manager, action_type="certificate", course=str(course))
    row = _schedule(site, schedule)
    assert (row.action_type, row.courseid, row.cohortid, row.report) == ("certificate", course, None, None)
    detail = manager.get(f"/schedules/{schedule}").text
    assert f"<dt>Course</dt><dd>{course}</dd>" in detail
    shown = manager.get(f"/schedules/{schedule}/preview").text
    assert "Certificates it would issue now" in shown
    assert 'data-field="count">2</strong> users' in shown and 'data-field="recipients">2<' in shown
    assert "Your certificate: Fire drill" in shown
    assert _count(site, w.tables.jobs) == 3  # the seeded jobs only: a preview creates nothing


def test_a_local_report_schedule_from_the_form_goes_to_iomads_queue(cloud_site: Site, tmp_path: Any) -> None:
    """cloud_preference local from the form: run now queues the managers' rendered mail in IOMAD's
    queue with the file under the dataroot; the page shows queued_local and what was queued."""
    site = cloud_site
    w = site.world
    c1 = w.companies[0]
    state = site.app.state.dashboard
    state.config = replace(
        state.config, database=replace(state.config.database, moodle_dataroot=str(tmp_path))
    )
    manager = site.signed_in(w.managers[c1], c1)
    form = manager.get("/schedules/new").text
    assert ">local</option>" in form
    schedule = _create(manager, cloud_preference="local")
    assert _schedule(site, schedule).cloud_preference == "local"
    jobs_before = _count(site, w.tables.jobs)
    page = _follow(manager, manager.post(f"/schedules/{schedule}/run-now", data={"csrf": _csrf(manager)}))
    assert '<span class="status s-queued_local">queued_local</span>' in page
    assert "rows in IOMAD&#39;s queue for Moodle&#39;s own mail" in page
    assert "kept local (cloud_preference local): " in page and " rows queued in IOMAD&#39;s" in page
    assert _count(site, w.tables.jobs) == jobs_before
    email = w.iomad.email
    with site.engine.connect() as conn:
        rows = conn.execute(
            sa.select(email.c.userid, email.c.headers).where(email.c.templatename == "mrcloud_schedule")
        ).all()
    assert w.managers[c1] in [r.userid for r in rows]
    assert str(tmp_path / "temp" / "mrcloud_reports" / str(schedule)) in rows[0].headers
