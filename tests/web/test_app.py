"""The dashboard app in-process (Starlette TestClient): sign-in, scoping, actions, exports, audit."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3  # type: ignore[import-untyped,unused-ignore]
import pytest
import sqlalchemy as sa
from moto import mock_aws
from starlette.testclient import TestClient

from moodle_bridge.results.switches import COMPANY_OFF_REASON, GLOBAL_OFF_REASON
from moodle_bridge.storage.statuses import JOB_STATUSES
from moodle_bridge.web.app import create_app
from tests.web.conftest import Site
from tests.web.world import NOW

TABLE = "offload-idempotency"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _csrf(html: str) -> str:
    match = CSRF.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def _audit(site: Site, action: str) -> list[Any]:
    a = site.world.tables.audit_log
    with site.engine.connect() as conn:
        return list(conn.execute(sa.select(a).where(a.c.action == action).order_by(a.c.id)).all())


def test_signin_sets_a_strict_cookie_and_shows_own_company_only(site_on: Site) -> None:
    site = site_on
    w = site.world
    c1 = w.companies[0]
    client = site.client()
    response = client.get("/signin", params={"token": site.token(w.managers[c1], c1)})
    assert response.status_code == 200
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    assert "Content-Security-Policy" in response.headers
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    jobs = client.get("/")
    assert jobs.status_code == 200
    assert f"/jobs/{w.jobs['sending']}" in jobs.text and f"/jobs/{w.jobs['done']}" in jobs.text
    assert f'/jobs/{w.jobs["other"]}"' not in jobs.text
    assert client.get(f"/jobs/{w.jobs['other']}").status_code == 404
    assert client.get(f"/jobs/{w.jobs['other']}/recipients.csv").status_code == 404
    assert client.get(f"/jobs/{w.jobs['sending']}").status_code == 200
    signed = _audit(site, "dashboard_signed_in")
    assert [(r.actor, r.companyid) for r in signed] == [(f"dashboard:{w.managers[c1]}", c1)]


def test_replayed_expired_and_forged_tokens_are_refused(site: Site) -> None:
    w = site.world
    token = site.token(w.admin)
    assert site.client().get("/signin", params={"token": token}).status_code == 200
    replay = site.client().get("/signin", params={"token": token})
    assert replay.status_code == 403 and "already used" in replay.text
    expired = site.token(w.admin, lifetime=10)
    site.clock.now += 11
    late = site.client().get("/signin", params={"token": expired})
    assert late.status_code == 403 and "expired" in late.text
    forged = token.split(".")[0] + "." + "0" * 64
    assert site.client().get("/signin", params={"token": forged}).status_code == 403
    assert site.client().get("/signin").status_code == 403
    reasons = [r.detail for r in _audit(site, "dashboard_signin_refused")]
    assert any("replayed" in d for d in reasons) and any("expired" in d for d in reasons)
    # Without a session nothing is shown.
    assert site.client().get("/").status_code == 401


def test_learners_and_strangers_cannot_sign_in(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    learner = site.client().get("/signin", params={"token": site.token(w.learners[c1][0], c1)})
    assert learner.status_code == 403 and "not a manager" in learner.text
    # A manager of company 1 claiming company 2.
    other = site.client().get("/signin", params={"token": site.token(w.managers[c1], w.companies[1])})
    assert other.status_code == 403
    nobody = site.client().get("/signin", params={"token": site.token(99999)})
    assert nobody.status_code == 403


def test_rights_are_rechecked_and_a_demoted_manager_is_signed_out(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    cu = sa.table("mdl_company_users", sa.column("userid"), sa.column("managertype"))
    with site.engine.begin() as conn:
        conn.execute(cu.update().where(cu.c.userid == w.managers[c1]).values(managertype=0))
    site.clock.now += 60
    assert client.get("/").status_code == 200  # not rechecked yet
    site.clock.now += site.config.dashboard.recheck_seconds
    gone = client.get("/")
    assert gone.status_code == 401 and "ended" in gone.text
    assert [r.actor for r in _audit(site, "dashboard_access_revoked")] == [f"dashboard:{w.managers[c1]}"]
    assert client.get("/").status_code == 401


def test_posts_need_the_csrf_token(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    job = w.jobs["sending"]
    refused = client.post(f"/jobs/{job}/cancel", data={"csrf": "nope"})
    assert refused.status_code == 403
    assert client.post(f"/jobs/{job}/cancel", data={}).status_code == 403
    with site.engine.connect() as conn:
        status = conn.execute(sa.select(w.tables.jobs.c.status).where(w.tables.jobs.c.id == job)).scalar()
    assert status == "processing"


def test_retry_and_cancel_go_through_job_control_and_are_audited(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    job = w.jobs["sending"]
    page = client.get(f"/jobs/{job}")
    token = _csrf(page.text)
    # The failures are MessageRejected (permanent): retried only when asked (issue 12).
    retried = client.post(f"/jobs/{job}/retry", data={"csrf": token, "include_permanent": "1"})
    assert retried.status_code == 303
    shown = client.get(retried.headers["location"])
    assert "failed recipients go out again" in shown.text
    r = w.tables.recipients
    with site.engine.connect() as conn:
        statuses = sorted(conn.execute(sa.select(r.c.status).where(r.c.jobid == job)).scalars())
    assert statuses.count("pending") == 2 and "failed" not in statuses
    assert [(x.actor, x.jobid) for x in _audit(site, "job_retried")] == [(f"dashboard:{w.managers[c1]}", job)]
    cancelled = client.post(f"/jobs/{job}/cancel", data={"csrf": token})
    assert cancelled.status_code == 303
    assert "Cancelled:" in client.get(cancelled.headers["location"]).text
    # Some recipients are in the cloud: the job is cancelling until the cloud's records settle them
    # (issue 12); cancelling again changes nothing.
    with site.engine.connect() as conn:
        assert conn.execute(sa.select(w.tables.jobs.c.status).where(w.tables.jobs.c.id == job)).scalar() == (
            "cancelling"
        )
    again = client.post(f"/jobs/{job}/cancel", data={"csrf": token})
    assert again.status_code == 303
    with site.engine.connect() as conn:
        assert conn.execute(sa.select(w.tables.jobs.c.status).where(w.tables.jobs.c.id == job)).scalar() == (
            "cancelling"
        )
    # Another company's job: 404, nothing changed, even with a valid token.
    assert client.post(f"/jobs/{w.jobs['other']}/cancel", data={"csrf": token}).status_code == 404


def test_job_page_counts_add_up_and_show_rates_and_cost(site: Site) -> None:
    w = site.world
    client = site.signed_in(w.admin)
    page = client.get(f"/jobs/{w.jobs['sending']}").text
    total = re.search(r"<tfoot><tr><th scope=\"row\">Total</th><td class=\"num\">(\d+)</td>", page)
    assert total and int(total.group(1)) == 8
    assert "MessageRejected" in page and "bounce_permanent" in page
    assert "SES review at 5.00%" in page and "Gmail/Yahoo spam 0.30%" in page
    # Retry offers "also permanent failures", unchecked by default.
    box = re.search(r'<input type="checkbox" name="include_permanent" value="1"[^>]*>', page)
    assert box and "checked" not in box.group(0) and "also permanent failures" in page
    assert "33.33%" in page  # 1 bounce over 3 accepted messages
    assert "Cost estimate" in page and "$0.0005" in page  # 5 SES messages at $0.10 per 1,000
    # The admin's Moodle time zone is Europe/Paris.
    assert "CET" in page or "CEST" in page
    found = client.get(f"/jobs/{w.jobs['sending']}", params={"q": f"learner{w.learners[w.companies[0]][0]}@"})
    assert found.text.count("<td>learner") == 1


def test_csv_exports_hold_no_bodies_or_passwords(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    job = w.jobs["sending"]
    full = client.get(f"/jobs/{job}/recipients.csv")
    assert full.status_code == 200 and full.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(full.text)))
    assert len(rows) == 8 and {r["status"] for r in rows} >= {"delivered", "failed", "queued"}
    errors = list(csv.DictReader(io.StringIO(client.get(f"/jobs/{job}/errors.csv").text)))
    assert {r["status"] for r in errors} == {"failed", "bounced"}
    texts = [full.text, client.get(f"/jobs/{job}/errors.csv").text, client.get(f"/jobs/{job}").text]
    texts += [client.get(p).text for p in ("/", "/audit", "/suppressions", "/settings", "/suppressions.csv")]
    for text in texts:
        for password in w.passwords:
            assert password not in text
    assert {r.action for r in _audit(site, "recipient_list_downloaded")} == {"recipient_list_downloaded"}


def test_csv_exports_strip_control_characters_from_provider_texts(site: Site) -> None:
    """A bounce text with terminal escapes, bidi overrides and line breaks reaches every dashboard CSV
    (recipients, errors, a department manager's errors) as plain text, formulas neutralised."""
    w = site.world
    c1 = w.companies[0]
    job = w.jobs["sending"]
    r = w.tables.recipients
    poison = "=\x1b[2J\x1b]0;owned\x07 bounce \u202eevil\r\nline\x85"
    with site.engine.begin() as conn:
        changed = conn.execute(
            sa.update(r).where(r.c.jobid == job, r.c.status == "failed").values(errormessage=poison)
        ).rowcount
    assert changed
    manager = site.signed_in(w.managers[c1], c1)
    department = site.signed_in(w.department_manager, c1)
    exports = [
        manager.get(f"/jobs/{job}/recipients.csv").text,
        manager.get(f"/jobs/{job}/errors.csv").text,
        department.get(f"/jobs/{job}/errors.csv").text,
        department.get(f"/jobs/{job}/recipients.csv").text,
    ]
    rows = [row for text in exports for row in csv.DictReader(io.StringIO(text))]
    bounced = [row for row in rows if "bounce" in row["error_message"]]
    assert len(bounced) >= 2, exports
    for row in bounced:
        message = row["error_message"]
        assert message.startswith("'="), message  # formula neutralised
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch == "\u202e" for ch in message), message


def test_department_manager_sees_only_their_departments_recipients_and_cannot_act(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.department_manager, c1)
    job = w.jobs["sending"]
    rows = list(csv.DictReader(io.StringIO(client.get(f"/jobs/{job}/recipients.csv").text)))
    mine = {f"learner{u}@example.org" for u in w.department_learners}
    assert rows and {r["address"] for r in rows} <= mine
    page = client.get(f"/jobs/{job}")
    assert "your departments only" in page.text and "Retry failed" not in page.text
    assert "IST" in page.text  # Asia/Kolkata
    token = _csrf(page.text)
    assert client.post(f"/jobs/{job}/cancel", data={"csrf": token}).status_code == 404
    assert client.get(f"/jobs/{w.jobs['other']}").status_code == 404


def test_company_settings_are_validated_and_the_global_switch_is_for_admins(site: Site) -> None:
    w = site.world
    c1, c2 = w.companies
    client = site.signed_in(w.managers[c1], c1)
    page = client.get("/settings")
    token = _csrf(page.text)
    assert "Turn the global switch" not in page.text
    form = {
        "csrf": token,
        "cloud": "1",
        "emails": "1",
        "threshold": "25",
        "provider": "aws",
        "sender_address": "no-at-sign",
        "cert_template": "default",
    }
    bad = client.post(f"/settings/{c1}", data=form)
    assert bad.status_code == 400 and "sender address must be an email address" in bad.text
    bad = client.post(f"/settings/{c1}", data={**form, "sender_address": "", "threshold": "-1"})
    assert bad.status_code == 400 and "threshold" in bad.text
    s = w.tables.company_settings
    with site.engine.connect() as conn:
        assert conn.execute(sa.select(s).where(s.c.companyid == c1)).first() is None
    ok = client.post(f"/settings/{c1}", data={**form, "sender_address": "training@acme.example"})
    assert ok.status_code == 303
    with site.engine.connect() as conn:
        row = conn.execute(sa.select(s).where(s.c.companyid == c1)).one()
    assert (row.cloudenabled, row.threshold, row.senderaddress, row.allowcertificates) == (
        1,
        25,
        "training@acme.example",
        0,
    )
    assert client.post(f"/settings/{c2}", data={**form, "sender_address": ""}).status_code == 404
    assert client.post("/settings/global", data={"csrf": token, "enabled": "1"}).status_code == 404
    admin = site.signed_in(w.admin)
    admin_token = _csrf(admin.get("/settings").text)
    assert admin.post("/settings/global", data={"csrf": admin_token, "enabled": "1"}).status_code == 303
    assert [r.actor for r in _audit(site, "global_switch_on")] == [f"dashboard:{w.admin}"]
    assert [r.actor for r in _audit(site, "company_settings_created")] == [f"dashboard:{w.managers[c1]}"]


def test_suppression_list_is_scoped_searchable_and_removal_needs_a_reason(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    page = client.get("/suppressions")
    assert "bounced1@example.org" in page.text and "other2@example.org" not in page.text
    assert "bounced1" not in client.get("/suppressions", params={"q": "nomatch"}).text
    exported = client.get("/suppressions.csv").text
    assert "bounced1@example.org" in exported and "other2@example.org" not in exported
    token = _csrf(page.text)
    no_reason = client.post(
        "/suppressions/remove",
        data={"csrf": token, "company": c1, "address": "bounced1@example.org", "why": ""},
    )
    assert "Say why" in client.get(no_reason.headers["location"]).text
    other = client.post(
        "/suppressions/remove",
        data={"csrf": token, "company": w.companies[1], "address": "other2@example.org", "why": "x"},
    )
    assert other.status_code == 404
    done = client.post(
        "/suppressions/remove",
        data={"csrf": token, "company": c1, "address": "Bounced1@example.org", "why": "mailbox fixed"},
    )
    assert "removed" in client.get(done.headers["location"]).text
    removed = _audit(site, "suppression_removed")
    assert len(removed) == 1 and "mailbox fixed" in removed[0].detail


def test_audit_log_is_scoped_and_filterable(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    admin = site.signed_in(w.admin)
    manager = site.signed_in(w.managers[c1], c1)
    everything = admin.get("/audit").text
    assert f"dashboard:{w.managers[c1]}" in everything and f"dashboard:{w.admin}" in everything
    mine = manager.get("/audit").text
    assert f"dashboard:{w.admin}</td>" not in mine  # the admin's sign-in has no company
    only = admin.get("/audit", params={"actor": f"dashboard:{w.admin}"}).text
    assert f"dashboard:{w.managers[c1]}" not in only
    assert admin.get("/audit", params={"from": "not-a-date"}).status_code == 200


def test_progress_json_moves_with_the_job_and_is_scoped(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    ids = f"{w.jobs['sending']},{w.jobs['other']}"
    data = client.get("/progress.json", params={"ids": ids}).json()["jobs"]
    assert [j["id"] for j in data] == [w.jobs["sending"]]
    before = data[0]
    assert (before["done"], before["total"], before["terminal"]) == (5, 8, False)
    # No SES rate configured: no ETA is guessed (issue 12's results/eta.py, as `jobs show`).
    assert before["rate_per_minute"] > 0 and before["eta_seconds"] is None
    assert before["eta"] == "rate unknown"
    r = w.tables.recipients
    with site.engine.begin() as conn:
        conn.execute(
            r.update()
            .where(r.c.jobid == w.jobs["sending"], r.c.status == "queued")
            .values(status="delivered", timefinal=NOW)
        )
        from moodle_bridge.results.ingest import lock_jobs, refresh_jobs

        refresh_jobs(conn, w.tables, lock_jobs(conn, w.tables, [w.jobs["sending"]]), now=NOW, actor="test")
    after = client.get("/progress.json", params={"ids": ids}).json()["jobs"][0]
    assert (after["done"], after["percent"], after["terminal"]) == (8, 100.0, True)


def test_sign_out_ends_the_session_and_headers_are_strict(site: Site) -> None:
    w = site.world
    client = site.signed_in(w.admin)
    page = client.get("/")
    for name, value in (
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-store"),
    ):
        assert page.headers[name] == value
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline
    out = client.post("/signout", data={"csrf": _csrf(page.text)})
    assert out.status_code == 200 and "signed out" in out.text
    s = w.tables.dash_sessions
    with site.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(s)).scalar() == 0
    assert client.get("/").status_code == 401


def test_job_figures_follow_a_change_at_once(site: Site) -> None:
    w = site.world
    client = site.signed_in(w.admin)
    job = w.jobs["sending"]
    before = client.get(f"/jobs/{job}").text
    assert 'rstatus=pending">pending' not in before
    token = _csrf(before)
    client.post(f"/jobs/{job}/retry", data={"csrf": token, "include_permanent": "1"})
    after = client.get(f"/jobs/{job}").text  # within the cache's lifetime, same clock second
    assert 'rstatus=pending">pending</a></td><td class="num">2<' in after


def test_sessions_expire_and_are_purged_at_the_next_sign_in(site: Site) -> None:
    w = site.world
    old = site.signed_in(w.admin)
    site.clock.now += site.config.dashboard.session_seconds + 1
    assert old.get("/").status_code == 401
    site.signed_in(w.admin)
    s = w.tables.dash_sessions
    with site.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(s)).scalar() == 1


def test_settings_refuse_a_worker_that_cannot_take_the_jobs(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    token = _csrf(client.get("/settings").text)
    form = {"csrf": token, "cloud": "1", "emails": "1", "threshold": "0", "provider": "cloudflare",
            "cert_template": "default"}  # fmt: skip
    refused = client.post(f"/settings/{c1}", data=form)
    assert refused.status_code == 400 and "not saved" in refused.text
    s = w.tables.company_settings
    with site.engine.connect() as conn:
        assert conn.execute(sa.select(s).where(s.c.companyid == c1)).first() is None


# -- issue 12 job control through the dashboard ----------------------------------------------------


def _with_config(site: Site, **aws: Any) -> Site:
    """The same site served by an app whose ``[aws]`` settings differ (``aws``)."""
    config = replace(site.config, aws=replace(site.config.aws, **aws))
    app = create_app(site.engine, site.world.tables, config, clock=site.clock)

    def client() -> TestClient:
        return TestClient(app, base_url="https://testserver", follow_redirects=False)

    return replace(site, config=config, app=app, client=client)


def _job_status(site: Site, job_id: int) -> str:
    j = site.world.tables.jobs
    with site.engine.connect() as conn:
        return str(conn.execute(sa.select(j.c.status).where(j.c.id == job_id)).scalar())


def test_job_status_filter_offers_every_job_status(site: Site) -> None:
    w = site.world
    client = site.signed_in(w.admin)
    page = client.get("/").text
    select = re.search(r'<select name="status">(.*?)</select>', page)
    assert select
    offered = re.findall(r"<option[^>]*>([a-z_]+)</option>", select.group(1))
    assert offered == ["any", *JOB_STATUSES]
    assert {"cancelling", "fell_back"} <= set(JOB_STATUSES)
    j = w.tables.jobs
    with site.engine.begin() as conn:
        conn.execute(j.update().where(j.c.id == w.jobs["done"]).values(status="fell_back"))
    listed = client.get("/", params={"status": "fell_back"}).text
    assert f'/jobs/{w.jobs["done"]}"' in listed and f'/jobs/{w.jobs["sending"]}"' not in listed


def test_retry_leaves_permanent_failures_unless_asked(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    job = w.jobs["sending"]
    token = _csrf(client.get(f"/jobs/{job}").text)
    # Both failures are MessageRejected (permanent): the box is unchecked, nothing is retried.
    refused = client.post(f"/jobs/{job}/retry", data={"csrf": token})
    assert refused.status_code == 303
    shown = client.get(refused.headers["location"]).text
    assert "a retry cannot" in shown and "cure" in shown
    r = w.tables.recipients
    with site.engine.connect() as conn:
        statuses = list(conn.execute(sa.select(r.c.status).where(r.c.jobid == job)).scalars())
    assert statuses.count("failed") == 2 and "pending" not in statuses
    assert _audit(site, "job_retried") == []
    # One curable failure (the queue was unavailable): only it goes out again, the other is named.
    with site.engine.begin() as conn:
        first = conn.execute(
            sa.select(sa.func.min(r.c.id)).where(r.c.jobid == job, r.c.status == "failed")
        ).scalar()
        conn.execute(r.update().where(r.c.id == first).values(errorcode="submit_abandoned"))
    retried = client.post(f"/jobs/{job}/retry", data={"csrf": token})
    shown = client.get(retried.headers["location"]).text
    assert "1 failed recipients go out again" in shown and "1 failed recipients were left" in shown
    with site.engine.connect() as conn:
        statuses = list(conn.execute(sa.select(r.c.status).where(r.c.jobid == job)).scalars())
    assert statuses.count("failed") == 1 and statuses.count("pending") == 1


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        db = boto3.client("dynamodb", region_name="eu-west-1")
        db.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield db


def _cancel_record(db: Any, job_id: int) -> bool:
    return "Item" in db.get_item(TableName=TABLE, Key={"id": {"S": f"cancel#{job_id}"}})


def test_cancel_writes_the_cancel_record_at_once_like_the_cli(site: Site, dynamodb: Any) -> None:
    cloudy = _with_config(site, idempotency_table=TABLE, region="eu-west-1")
    w = site.world
    c1 = w.companies[0]
    client = cloudy.signed_in(w.managers[c1], c1)
    job = w.jobs["sending"]
    token = _csrf(client.get(f"/jobs/{job}").text)
    cancelled = client.post(f"/jobs/{job}/cancel", data={"csrf": token})
    shown = client.get(cancelled.headers["location"]).text
    assert "The cloud was told at once" in shown and "alert" not in shown
    assert _cancel_record(dynamodb, job)
    j = w.tables.jobs
    with site.engine.connect() as conn:
        assert conn.execute(sa.select(j.c.timecancelsignalled).where(j.c.id == job)).scalar() == NOW


def test_cancel_without_cloud_records_says_the_cloud_was_not_told(site: Site) -> None:
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    job = w.jobs["sending"]
    token = _csrf(client.get(f"/jobs/{job}").text)
    cancelled = client.post(f"/jobs/{job}/cancel", data={"csrf": token})
    shown = client.get(cancelled.headers["location"]).text
    assert "The cloud was not told yet: every tick tries again" in shown
    assert "aws.idempotency_table is not set" in shown
    assert _job_status(site, job) == "cancelling"


def _settings_form(token: str, *, cloud: bool) -> dict[str, str]:
    form = {
        "csrf": token,
        "emails": "1",
        "certificates": "1",
        "fallback": "1",
        "threshold": "0",
        "provider": "aws",
        "sender_address": "",
        "cert_template": "default",
    }
    if cloud:
        form["cloud"] = "1"
    return form


def test_company_cloud_off_cancels_its_open_jobs_like_the_cli(site: Site, dynamodb: Any) -> None:
    cloudy = _with_config(site, idempotency_table=TABLE, region="eu-west-1")
    w = site.world
    c1 = w.companies[0]
    client = cloudy.signed_in(w.managers[c1], c1)
    token = _csrf(client.get("/settings").text)
    assert client.post(f"/settings/{c1}", data=_settings_form(token, cloud=True)).status_code == 303
    assert _job_status(site, w.jobs["sending"]) == "processing"  # turning it on stops nothing
    off = client.post(f"/settings/{c1}", data=_settings_form(token, cloud=False))
    assert off.status_code == 303
    shown = client.get(off.headers["location"]).text
    assert "1 open jobs cancelled" in shown and "The cloud was told at once" in shown
    assert _job_status(site, w.jobs["sending"]) == "cancelling"
    assert _job_status(site, w.jobs["other"]) == "queued"  # another company's job is untouched
    assert _cancel_record(dynamodb, w.jobs["sending"])
    reasons = [json.loads(x.detail)["reason"] for x in _audit(site, "job_cancelled")]
    assert reasons == [COMPANY_OFF_REASON]


def test_global_switch_off_cancels_every_open_job(site: Site) -> None:
    w = site.world
    admin = site.signed_in(w.admin)
    token = _csrf(admin.get("/settings").text)
    off = admin.post("/settings/global", data={"csrf": token, "enabled": "0"})
    assert off.status_code == 303
    shown = admin.get(off.headers["location"]).text
    assert "Global switch is off. 2 open jobs cancelled" in shown
    assert "aws.idempotency_table is not set" in shown  # said plainly: the cloud was not told
    assert _job_status(site, w.jobs["sending"]) == "cancelling"
    assert _job_status(site, w.jobs["other"]) == "cancelling"
    assert _job_status(site, w.jobs["done"]) == "completed"
    reasons = {json.loads(x.detail)["reason"] for x in _audit(site, "job_cancelled")}
    assert reasons == {GLOBAL_OFF_REASON}


def test_eta_uses_the_ses_send_rate_when_configured(site: Site) -> None:
    paced = _with_config(site, ses_send_rate=0.5)
    w = site.world
    c1 = w.companies[0]
    client = paced.signed_in(w.managers[c1], c1)
    job = w.jobs["sending"]
    data = client.get("/progress.json", params={"ids": str(job)}).json()["jobs"][0]
    # 3 recipients still queued at 0.5/s: 6 s (results/eta.py), whatever the observed rate.
    assert data["eta_seconds"] == 6
    page = client.get(f"/jobs/{job}").text
    assert f'data-field="eta">{data["eta"]}<' in page and "rate unknown" not in page
    unknown = site.signed_in(w.managers[c1], c1).get(f"/jobs/{job}").text
    assert 'data-field="eta">rate unknown<' in unknown
