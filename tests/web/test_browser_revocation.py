"""Revoking a certificate from the dashboard, in Debian's Chromium (Playwright): a company manager
revokes with a reason and the cloud's verification record (DynamoDB, moto) says revoked; a
department manager sees no form and a forged POST (no CSRF token) changes nothing."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws

from lambdas.certificates.verification import facts, record_item
from moodle_bridge.transports.certificate_records import CertificateRecords
from tests.web.test_browser import (  # noqa: F401 - the fixture refuses requests to other hosts
    CHROMIUM,
    Served,
    _page,
    _sign_in,
    nothing_from_other_hosts,
    sync_api,
)
from tests.web.world import add_job, build_world

pytestmark = pytest.mark.browser
TABLE = "mrco-idempotency"
CODE = "REVOKEME0001"


@pytest.fixture
def revocable(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Served, int, Any]]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'site.sqlite3'}", connect_args={"timeout": 30})
    world = build_world(engine, now=int(time.time()))
    c1 = world.companies[0]
    t = world.tables
    with mock_aws():
        db = boto3.client("dynamodb", region_name="eu-west-1")
        db.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        with engine.begin() as conn:
            job = add_job(conn, t, c1, world.learners[c1], ["rendered"])
            conn.execute(t.jobs.update().where(t.jobs.c.id == job).values(jobtype="certificate"))
            rid = conn.execute(sa.select(t.recipients.c.id).where(t.recipients.c.jobid == job)).scalar_one()
            key = f"certificates/company-{c1}/{job}/{rid}.pdf"
            conn.execute(t.recipients.update().where(t.recipients.c.id == rid).values(artifactkey=key))
            conn.execute(t.certificates.insert().values(companyid=c1, recipientid=rid, verifycode=CODE))
        data = {"learner_name": "Zoë", "course_name": "Safety", "completed_at": 1790000000}
        db.put_item(
            TableName=TABLE,
            Item={"id": {"S": f"cert#{CODE}"}, **record_item(c1, str(job), str(rid), key, data)},
        )
        with Served(engine, world) as served:
            app: Any = served.server.config.app
            app.state.dashboard.verification_records = CertificateRecords(db, TABLE)
            yield served, job, db
    engine.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _record(db: Any) -> dict[str, Any]:
    item: dict[str, Any] = db.get_item(TableName=TABLE, Key={"id": {"S": f"cert#{CODE}"}})["Item"]
    return item


def test_a_company_manager_revokes_and_reinstates_with_a_reason(browser: Any, revocable: Any) -> None:
    served, job, db = revocable
    w = served.world
    c1 = w.companies[0]
    page = _sign_in(browser, served, w.managers[c1], c1)
    page.goto(f"{served.url}/jobs/{job}/certificates")
    assert page.get_by_text(CODE).is_visible()
    page.get_by_role("button", name=re.compile("^Revoke")).click()  # no reason: the browser refuses
    assert "revoked_at" not in _record(db)
    page.get_by_placeholder("reason").fill("issued in error")
    page.get_by_role("button", name=re.compile("^Revoke")).click()
    page.wait_for_url(re.compile(r"/certificates\?msg="))
    assert page.get_by_text(f"Certificate {CODE} is revoked").is_visible()
    assert page.locator("td strong", has_text="revoked").is_visible()
    item = _record(db)
    assert item["revoked_reason"] == {"S": "issued in error"} and facts(CODE, item)["valid"] is False
    page.get_by_placeholder("reason").fill("confirmed by HR")
    page.get_by_role("button", name=re.compile("^Reinstate")).click()
    page.wait_for_url(re.compile(r"/certificates\?msg="))
    assert facts(CODE, _record(db))["valid"] is True
    a = w.tables.audit_log.c
    with served.engine.connect() as conn:
        rows = conn.execute(
            sa.select(a.action, a.actor, a.detail).where(a.jobid == job, a.action.like("certificate_%r%"))
        ).all()
    assert [(r.action, json.loads(r.detail)["reason"]) for r in rows] == [
        ("certificate_revoked", "issued in error"), ("certificate_reinstated", "confirmed by HR")
    ]  # fmt: skip
    assert all(r.actor.startswith("dashboard:") for r in rows)
    # The cloud no longer holds the record: the page says so and nothing changes.
    db.delete_item(TableName=TABLE, Key={"id": {"S": f"cert#{CODE}"}})
    page.get_by_placeholder("reason").fill("again")
    page.get_by_role("button", name=re.compile("^Revoke")).click()
    page.wait_for_url(re.compile(r"/certificates\?err="))
    assert page.get_by_text(f"the cloud holds no verification record {CODE} for company {c1}").is_visible()
    with served.engine.connect() as conn:
        assert conn.execute(sa.select(w.tables.certificates.c.timerevoked)).scalar_one() is None


def test_a_department_manager_sees_no_form_and_a_forged_post_changes_nothing(
    browser: Any, revocable: Any
) -> None:
    served, job, db = revocable
    w = served.world
    c1 = w.companies[0]
    page = _sign_in(browser, served, w.department_manager, c1)
    page.goto(f"{served.url}/jobs/{job}/certificates")
    assert page.get_by_role("button", name=re.compile("^Revoke")).count() == 0
    manager = _sign_in(browser, served, w.managers[c1], c1)
    # The manager's own session, but a POST without the form's CSRF token (a forged request).
    with served.engine.connect() as conn:
        rid = conn.execute(sa.select(w.tables.certificates.c.recipientid)).scalar_one()
    answer = manager.request.post(
        f"{served.url}/jobs/{job}/certificates/{rid}/revocation",
        form={"action": "revoke", "reason": "forged"},
    )
    assert answer.status in (400, 403)
    assert "revoked_at" not in _record(db)
