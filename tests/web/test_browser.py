"""The dashboard in a real browser: Playwright (Python) driving Debian's Chromium.

The dashboard runs on uvicorn on loopback, over the seeded site; results arrive through the same
ingestion code the callback receiver uses while the page is open. Screenshots of the main pages are
taken on every run (see ``IMG``). Playwright's own browser downloads are never
used: the browser is /usr/bin/chromium (scripts/bootstrap.sh installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
import uvicorn
from moto import mock_aws

from moodle_bridge.config import AwsConfig, DashboardConfig
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.results.ingest import ingest_result_batch
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.web.app import create_app
from moodle_bridge.web.certificates import S3Certificates
from offload_contract import dashboard_token
from tests.web.conftest import make_config, with_campaign_sending
from tests.web.world import SHARED_KEY, World, add_job, build_world

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MRCO_CHROMIUM", "/usr/bin/chromium")
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
#: Screenshots go to build/screenshots/ on every run; MRCO_UPDATE_SCREENSHOTS=1 refreshes the
#: committed set in docs/img/ (shown in docs/dashboard.md) instead.
IMG = ROOT / "docs" / "img" if os.environ.get("MRCO_UPDATE_SCREENSHOTS") else ROOT / "build" / "screenshots"

if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():  # pragma: no cover - bootstrap installs it
    pytest.skip("Debian's chromium is not installed (scripts/bootstrap.sh)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, engine: sa.Engine, world: World) -> None:
        self.engine = engine
        self.world = world
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        base = make_config(engine)
        self.config = with_campaign_sending(
            replace(base, dashboard=DashboardConfig(shared_key=SHARED_KEY, public_url=self.url))
        )
        app = create_app(engine, world.tables, self.config)
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def link(self, user: int, company: int = 0, **kw: Any) -> str:
        now = kw.pop("now", int(time.time()))
        token = dashboard_token.sign(SHARED_KEY, user, company, now=now, **kw)
        return f"{self.url}/signin?token={token}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("dash") / "site.sqlite3"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
    world = build_world(engine, now=int(time.time()))
    with Served(engine, world) as s:
        yield s
    engine.dispose()


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


#: Requests a page made to any other host (refused by ``_page``); a test that leaves one fails.
OFFSITE: list[str] = []


@pytest.fixture(autouse=True)
def nothing_from_other_hosts() -> Iterator[None]:
    OFFSITE.clear()
    yield
    assert OFFSITE == [], f"the dashboard asked another host (a CDN?) for: {OFFSITE}"


def _refuse_offsite(route: Any) -> None:
    OFFSITE.append(route.request.url)
    route.abort()


def _page(browser: Any, **kw: Any) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, **kw)
    context.set_default_timeout(15_000)
    # Nothing but the dashboard itself may be loaded (no CDN): every other host is refused and
    # recorded, and the autouse fixture above fails the test that asked for one.
    context.route(re.compile(r"^(?!http://127\.0\.0\.1:)"), _refuse_offsite)
    return context.new_page()


def _shot(page: Any, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMG / f"dashboard-{name}.png"), full_page=False)


def _sign_in(browser: Any, served: Served, user: int, company: int = 0) -> Any:
    page = _page(browser)
    page.goto(served.link(user, company))
    page.wait_for_url(re.compile(r"/$"))
    return page


def test_sign_in_watch_progress_and_act(browser: Any, served: Served) -> None:
    w = served.world
    c1 = w.companies[0]
    with served.engine.begin() as conn:
        job = add_job(conn, w.tables, c1, w.learners[c1], ["queued"] * 40, now=int(time.time()))
    page = _sign_in(browser, served, w.managers[c1], c1)
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["mrcloud_session"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
    assert page.get_by_role("heading", name="Jobs").is_visible()
    assert page.get_by_role("link", name=f"#{w.jobs['other']}").count() == 0
    page.get_by_role("link", name=f"#{job}").click()
    page.wait_for_url(re.compile(rf"/jobs/{job}$"))
    percent = page.locator(f'.progress[data-job="{job}"] [data-field="percent"]')
    assert percent.inner_text() == "0.0%"

    # Results arrive (through the receiver's ingestion code) while the page is open.
    r, b = w.tables.recipients, w.tables.batches
    with served.engine.connect() as conn:
        ids = [
            int(x) for x in conn.execute(sa.select(r.c.id).where(r.c.jobid == job).order_by(r.c.id)).scalars()
        ]
        batch_key = conn.execute(sa.select(b.c.batchkey).where(b.c.jobid == job)).scalar()

    def feed() -> None:
        for n, start in enumerate(range(0, len(ids), 8)):
            time.sleep(1.0)
            results = [
                {
                    "job_id": str(job),
                    "recipient_id": str(i),
                    "status": "sent",
                    "attempts": 1,
                    "occurred_at": int(time.time()),
                    "provider_message_id": f"ses-{i}",
                }
                for i in ids[start : start + 8]
            ]
            batch = {
                "type": "result_batch",
                "contract_version": 1,
                "report_id": f"browser-{job}-{n}",
                "company_id": c1,
                "reporter": "email_sender",
                "created_at": int(time.time()),
                "batch_id": batch_key,
                "results": results,
            }
            with served.engine.begin() as conn:
                ingest_result_batch(conn, w.tables, batch, company_id=c1, now=int(time.time()), actor="test")

    feeder = threading.Thread(target=feed)
    feeder.start()
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen.add(percent.inner_text())
        if percent.inner_text() == "100.0%":
            break
        time.sleep(0.3)
    feeder.join()
    assert percent.inner_text() == "100.0%", seen
    assert len(seen - {"0.0%", "100.0%"}) >= 1, f"no intermediate progress seen: {seen}"
    page.wait_for_function(
        f"document.querySelector('[data-job-status=\"{job}\"]').textContent === 'completed'"
    )
    assert page.url.endswith(f"/jobs/{job}")  # never reloaded: the script updated the figures

    # The job with failures: screenshot, retry, CSV, cancel.
    page.goto(f"{served.url}/jobs/{w.jobs['sending']}")
    _shot(page, "job")
    with page.expect_download() as download:
        page.get_by_role("link", name="All recipients (CSV)").click()
    text = Path(download.value.path()).read_text("utf-8")
    assert text.startswith("recipient_id,job_id,address") and text.count("\n") == 9
    # Both failures are permanent (MessageRejected): retried only with the box ticked (issue 12).
    page.get_by_label("also permanent failures").check()
    page.get_by_role("button", name="Retry failed recipients").click()
    assert "failed recipients go out again" in page.get_by_role("status").inner_text()
    page.get_by_role("button", name="Cancel the job").click()
    assert "Cancelled:" in page.get_by_role("status").inner_text()
    # Three recipients are in the cloud: cancelling until its records settle them (issue 12).
    assert page.locator(f'[data-job-status="{w.jobs["sending"]}"]').first.inner_text() == "cancelling"

    # Company settings.
    page.get_by_role("link", name="Company settings").click()
    page.get_by_label("Offload this company's mail to the cloud").check()
    page.get_by_label("Threshold (minimum recipients per pass to offload)").fill("5")
    page.get_by_label("From address").fill("training@acme.example")
    page.get_by_role("button", name="Save settings").click()
    assert page.get_by_role("status").inner_text() == "Settings saved."
    assert page.get_by_label("From address").input_value() == "training@acme.example"
    _shot(page, "settings")

    # Another company's job: refused like a page that does not exist.
    response = page.goto(f"{served.url}/jobs/{w.jobs['other']}")
    assert response is not None and response.status == 404
    page.context.close()


def test_expired_and_replayed_links_are_refused(browser: Any, served: Served) -> None:
    w = served.world
    page = _page(browser)
    link = served.link(w.admin)
    page.goto(link)
    page.wait_for_url(re.compile(r"/$"))
    page.context.close()
    again = _page(browser)
    response = again.goto(link)
    assert response is not None and response.status == 403
    assert "already used" in again.get_by_role("alert").inner_text()
    response = again.goto(served.link(w.admin, now=int(time.time()) - 61))
    assert response is not None and response.status == 403
    assert "expired" in again.get_by_role("alert").inner_text()
    assert not [c for c in again.context.cookies() if c["name"] == "mrcloud_session"]
    again.context.close()


def test_admin_pages_screenshots_and_accessibility(browser: Any, served: Served) -> None:
    w = served.world
    page = _sign_in(browser, served, w.admin)
    _shot(page, "jobs")
    for path, name in (("/suppressions", "suppressions"), ("/audit", "audit")):
        page.goto(served.url + path)
        _shot(page, name)
    link = served.link(w.admin)
    page.context.close()
    # axe-core is injected from node_modules (the dashboard's CSP would refuse an inline script,
    # so this one context bypasses CSP); every main page is checked.
    audit_page = _page(browser, bypass_csp=True)
    audit_page.goto(link)
    audit_page.wait_for_url(re.compile(r"/$"))
    problems = {}
    pages = ("/", f"/jobs/{w.jobs['done']}", "/settings?company=1", "/suppressions", "/audit", "/campaigns")
    for path in (*pages, "/campaigns/new", "/schedules", "/schedules/new"):
        audit_page.goto(served.url + path)
        audit_page.add_script_tag(path=str(AXE))
        result = audit_page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        serious = [
            f"{v['id']}: {v['help']} ({len(v['nodes'])})"
            for v in result["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        if serious:
            problems[path] = serious
    assert problems == {}
    audit_page.context.close()


def test_pages_work_without_javascript(browser: Any, served: Served) -> None:
    w = served.world
    c1 = w.companies[0]
    page = _page(browser, java_script_enabled=False)
    page.goto(served.link(w.managers[c1], c1))
    page.wait_for_url(re.compile(r"/$"))  # the sign-in page moves on with a meta refresh, not a script
    page.get_by_role("link", name=f"#{w.jobs['done']}").click()
    assert page.get_by_role("heading", name=re.compile(rf"Job #{w.jobs['done']}")).is_visible()
    assert "100.0%" in page.locator(".progress").first.inner_text()
    page.context.close()


def test_manager_runs_a_campaign_in_the_browser(browser: Any, served: Served) -> None:
    """A company manager creates a campaign (after a refused form), previews, pauses, resumes and
    runs it; another company's manager gets 404; a forged CSRF token gets 403."""
    w = served.world
    c1, c2 = w.companies
    repo = BridgeRepo(w.tables)
    with served.engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        if repo.get_settings(conn, c1) is None:
            repo.save_settings(conn, CompanySettings(c1, cloudenabled=True), "test")
    page = _sign_in(browser, served, w.managers[c1], c1)
    page.get_by_role("link", name="Campaigns").click()
    page.get_by_role("link", name="New campaign").click()
    page.get_by_label("Name", exact=True).fill("Browser nudge")
    page.get_by_label("Days (N)").fill("ten")
    page.get_by_label("Subject").fill("We miss you, {{ firstname }}")
    page.get_by_label("HTML part").fill("<p>Hello {{ fullname }}</p>")
    page.get_by_role("button", name="Create campaign").click()
    assert "trigger.days must be a whole number" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Name", exact=True).input_value() == "Browser nudge"  # nothing typed is lost
    page.get_by_label("Days (N)").fill("0")
    page.get_by_role("button", name="Create campaign").click()
    assert "created (active)" in page.get_by_role("status").inner_text()
    match = re.search(r"/campaigns/(\d+)", page.url)
    assert match
    campaign = int(match.group(1))
    members = len(w.learners[c1]) + 2  # the learners, the manager and the department manager
    assert page.locator('[data-field="audience"]').inner_text() == f"{members} users"

    page.get_by_role("link", name="Preview").click()
    assert page.locator('[data-field="subject"]').inner_text().startswith("We miss you, ")
    assert "Nothing is sent" in page.get_by_role("status").inner_text()
    page.get_by_role("link", name=f"← Campaign #{campaign}").click()

    page.get_by_role("button", name="Pause").click()
    assert page.locator(f'[data-campaign-status="{campaign}"]').inner_text() == "paused"
    page.get_by_role("button", name="Resume").click()
    assert page.locator(f'[data-campaign-status="{campaign}"]').inner_text() == "active"
    page.get_by_role("button", name="Run now").click()
    assert "the next tick submits it" in page.get_by_role("status").inner_text()
    assert page.locator('tr[data-cycle="0"] td').nth(1).inner_text() == str(members)
    _shot(page, "campaign")

    # A forged CSRF token, with this session's cookie: refused, nothing changes.
    forged = page.request.post(f"{served.url}/campaigns/{campaign}/pause", form={"csrf": "forged"})
    assert forged.status == 403
    page.reload()
    assert page.locator(f'[data-campaign-status="{campaign}"]').inner_text() == "active"
    page.context.close()

    other = _sign_in(browser, served, w.managers[c2], c2)
    other.get_by_role("link", name="Campaigns").click()
    assert other.get_by_role("link", name=re.compile(f"#{campaign} ")).count() == 0
    response = other.goto(f"{served.url}/campaigns/{campaign}")
    assert response is not None and response.status == 404
    other.context.close()


def test_manager_schedules_a_report_in_the_browser(browser: Any, served: Served) -> None:
    """A company manager creates a report schedule (after a refused form), previews, pauses and
    resumes it; another company's manager gets 404; a forged CSRF token gets 403."""
    w = served.world
    c1, c2 = w.companies
    repo = BridgeRepo(w.tables)
    with served.engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        if repo.get_settings(conn, c1) is None:
            repo.save_settings(conn, CompanySettings(c1, cloudenabled=True), "test")
    page = _sign_in(browser, served, w.managers[c1], c1)
    page.get_by_role("link", name="Schedules").click()
    page.get_by_role("link", name="New schedule").click()
    page.get_by_label("Name", exact=True).fill("Browser report")
    page.locator('select[name="report"]').select_option("mail_sent")
    page.get_by_label("Days (N, the report's period)").fill("seven")
    page.get_by_role("button", name="Create schedule").click()
    assert "days (the report's period) must be a whole number" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Name", exact=True).input_value() == "Browser report"  # nothing typed is lost
    page.get_by_label("Days (N, the report's period)").fill("7")
    page.get_by_label("Local time (HH:MM)").fill("06:45")
    page.get_by_role("button", name="Create schedule").click()
    assert "created (active)" in page.get_by_role("status").inner_text()
    match = re.search(r"/schedules/(\d+)", page.url)
    assert match
    schedule = int(match.group(1))
    assert "at 06:45" in page.get_by_role("region", name=re.compile("When")).inner_text()

    page.get_by_role("link", name="Preview").click()
    assert "Nothing is sent" in page.get_by_role("status").inner_text()
    assert page.locator('[data-field="recipients"]').inner_text() == "1"
    rows = page.locator('[data-field="count"]').inner_text()
    assert f"mail_sent.csv: {rows} rows" in page.locator('[data-field="attachment"]').inner_text()
    page.get_by_role("link", name=f"← Schedule #{schedule}").click()

    page.get_by_role("button", name="Pause").click()
    assert page.locator(f'[data-schedule-status="{schedule}"]').inner_text() == "paused"
    assert page.locator('[data-field="nextrun"]').inner_text() == "none while paused"
    page.get_by_role("button", name="Resume").click()
    assert page.locator(f'[data-schedule-status="{schedule}"]').inner_text() == "active"
    assert "06:45" in page.locator('[data-field="nextrun"]').inner_text()
    _shot(page, "schedule")

    # A forged CSRF token, with this session's cookie: refused, nothing changes.
    forged = page.request.post(f"{served.url}/schedules/{schedule}/pause", form={"csrf": "forged"})
    assert forged.status == 403
    page.reload()
    assert page.locator(f'[data-schedule-status="{schedule}"]').inner_text() == "active"
    page.context.close()

    other = _sign_in(browser, served, w.managers[c2], c2)
    other.get_by_role("link", name="Schedules").click()
    assert other.get_by_role("link", name=re.compile(f"#{schedule} ")).count() == 0
    response = other.goto(f"{served.url}/schedules/{schedule}")
    assert response is not None and response.status == 404
    other.context.close()


# -- a job's certificates as one ZIP ------------------------------------------------------------


CERT_BUCKET = "mrco-browser-certificates"
CERT_REGION = "eu-west-1"


@pytest.fixture
def certified_job(served: Served, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, dict[str, bytes]]]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": CERT_REGION,
    }.items():
        monkeypatch.setenv(key, value)
    w = served.world
    c1 = w.companies[0]
    with mock_aws():
        s3 = boto3.client("s3", region_name=CERT_REGION)
        s3.create_bucket(Bucket=CERT_BUCKET, CreateBucketConfiguration={"LocationConstraint": CERT_REGION})
        r = w.tables.recipients
        with served.engine.begin() as conn:
            job = add_job(conn, w.tables, c1, w.learners[c1], ["rendered"] * 6, now=int(time.time()))
            conn.execute(
                w.tables.jobs.update().where(w.tables.jobs.c.id == job).values(jobtype="certificate")
            )
            rows = conn.execute(sa.select(r.c.id, r.c.address).where(r.c.jobid == job).order_by(r.c.id)).all()
            expected: dict[str, bytes] = {}
            for row in rows:
                key = f"certificates/company-{c1}/{job}/{row.id}.pdf"
                body = b"%PDF-1.7\n" + f"certificate of {row.address}\n".encode() * 500 + b"%%EOF\n"
                s3.put_object(Bucket=CERT_BUCKET, Key=key, Body=body)
                conn.execute(r.update().where(r.c.id == row.id).values(artifactkey=key))
                expected[str(row.id)] = body
        config = served.config
        store_config = replace(config, aws=AwsConfig(region=CERT_REGION, content_bucket=CERT_BUCKET))
        state = served.app.state.dashboard
        previous = state.certificate_store
        state.certificate_store = S3Certificates(store_config, s3)
        try:
            yield job, expected
        finally:
            state.certificate_store = previous


def test_manager_downloads_the_zip_from_the_link_and_others_cannot(
    browser: Any, served: Served, certified_job: tuple[int, dict[str, bytes]], tmp_path: Path
) -> None:
    job, expected = certified_job
    w = served.world
    c1, c2 = w.companies[0], w.companies[1]
    page = _sign_in(browser, served, w.managers[c1], c1)
    page.goto(f"{served.url}/jobs/{job}")
    page.get_by_role("link", name="Certificates of this job").click()
    page.wait_for_url(re.compile(rf"/jobs/{job}/certificates$"))
    with page.expect_download() as info:
        page.get_by_role("link", name="All certificates (ZIP)").click()
    download = info.value
    assert download.suggested_filename == f"job-{job}-certificates.zip"
    saved = tmp_path / download.suggested_filename
    download.save_as(str(saved))
    with zipfile.ZipFile(saved) as archive:
        assert archive.testzip() is None
        got = {name.split("-")[1]: archive.read(name) for name in archive.namelist()}
        assert all("/" not in name for name in archive.namelist())
    assert got == expected
    page.context.close()

    other = _sign_in(browser, served, w.managers[c2], c2)
    response = other.goto(f"{served.url}/jobs/{job}/certificates.zip")
    assert response is not None and response.status == 404
    other.context.close()
