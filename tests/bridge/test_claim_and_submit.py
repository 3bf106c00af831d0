"""The cron pass end to end on every engine: claim IOMAD rows, create jobs, submit to SQS.

Every claimed recipient ends in exactly one path (a queued cloud message, or a recorded
outcome), rows of local companies are untouched, passwords never leak to copies.
"""

from __future__ import annotations

from dataclasses import replace

import sqlalchemy as sa

from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.iomad.queue import PARKED_DUE_BASE
from moodle_bridge.routing import CompanySettings
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from offload_contract import validate
from tests.bridge.conftest import drain, make_config, with_queues
from tests.bridge.iomad_world import IomadWorld

PASSWORD = "?4:#F_L3fu"
T = build_bridge_tables("mdl_")


def _setup(bridge_engine, repo, threshold: int = 0):
    world = IomadWorld.create(bridge_engine)
    for cid in (1, 2):
        world.add_company(cid)
    world.add_user(10, "learner@example.com", "Lea", "Rner", companyid=1)
    world.add_user(11, "boss@example.com", "Bo", "Ss", companyid=1, manager=True)
    world.add_user(12, "not-an-address", "Bad", "Addr", companyid=1)
    world.add_user(20, "other@example.com", "Oth", "Er", companyid=2)
    world.set_temporary_password(10, PASSWORD)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, threshold=threshold), "test")
        repo.save_settings(conn, CompanySettings(3, cloudenabled=True), "test")  # company 3 does not exist
    return world


def test_tick_claims_routes_and_submits(bridge_engine, db_url, repo, aws) -> None:
    world = _setup(bridge_engine, repo)
    body = f"<p>username: learner</br>password: {PASSWORD}</br></p>"
    e_create = world.queue("user_create", 10, 1, subject="New account", body=body)
    e_licence = world.queue("license_allocated", 10, 1, subject="Licence", body="<p>Safety 101</p>")
    e_badaddr = world.queue("license_allocated", 12, 1, subject="Licence", body="<p>x</p>")
    e_headers = world.queue("user_promoted", 10, 1, headers='a:1:{s:8:"template";O:8:"stdCl')
    e_unknown = world.queue("no_such_template", 10, 1)
    e_local = world.queue("license_allocated", 20, 2)
    e_nocompany = world.queue("license_allocated", 10, 3)
    before = world.rows()
    config = with_queues(make_config(db_url), aws)

    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))

    assert report.claim is not None and report.outbox is not None
    assert report.claim.claimed == 3  # create, licence, bad address (its manager copy still goes)
    assert report.claim.released == 3  # bad headers, unknown template, missing company
    assert report.outbox.submitted >= 1 and report.outbox.retried == 0
    rows = world.rows()
    for eid in (e_create, e_licence, e_badaddr):
        assert rows[eid].due == before[eid].due + PARKED_DUE_BASE
        assert rows[eid].sent is None
        assert rows[eid].body == before[eid].body  # content untouched: reversible
    for eid in (e_headers, e_unknown, e_local, e_nocompany):
        assert rows[eid] == before[eid], eid  # IOMAD's rows, untouched

    messages = drain(aws)
    for m in messages:
        validate("email_batch", m)
    sent = {(r["to"], r["content_id"]): m for m in messages for r in m["recipients"]}
    assert ("learner@example.com", f"e{e_create}") in sent
    assert ("boss@example.com", f"e{e_create}r") in sent
    user_copy = sent[("learner@example.com", f"e{e_create}")]["contents"][f"e{e_create}"]
    manager_copy = sent[("boss@example.com", f"e{e_create}r")]["contents"][f"e{e_create}r"]
    assert PASSWORD in user_copy["html"]
    assert PASSWORD not in manager_copy["html"]
    assert "********" in manager_copy["html"]
    assert ("boss@example.com", f"e{e_badaddr}") in sent
    assert not any(to == "other@example.com" for to, _ in sent)

    with bridge_engine.connect() as conn:
        recipients = conn.execute(sa.select(T.recipients)).all()
        claims = {r.emailid: r for r in conn.execute(sa.select(T.claims))}
    by_email: dict[int, list] = {}
    for r in recipients:
        by_email.setdefault(r.emailid, []).append(r)
    assert {r.status for r in by_email[e_create]} == {"queued"}
    bad = {r.errorcode: r.status for r in by_email[e_badaddr]}
    assert bad == {"invalid_address": "failed", None: "queued"}
    assert by_email[e_headers][0].status == "restored" and by_email[e_headers][0].errorcode == "bad_headers"
    assert by_email[e_unknown][0].errorcode == "unknown_template"
    assert by_email[e_nocompany][0].errorcode == "company_missing"
    assert claims[e_headers].state == "released"
    assert claims[e_create].state == "claimed"
    assert claims[e_create].originaldue == before[e_create].due
    assert e_local not in claims
    secrets = [r.secret for r in recipients if r.secret]
    assert len(secrets) == 1
    assert PASSWORD not in secrets[0]
    assert all(PASSWORD not in (r.errormessage or "") for r in recipients)

    # A second pass takes nothing again: every row has exactly one path.
    again = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert again.claim is not None and again.claim.claimed == 0 and again.claim.released == 0
    assert drain(aws) == []


def test_below_threshold_and_switch_off_stay_local(bridge_engine, db_url, repo, aws) -> None:
    world = _setup(bridge_engine, repo, threshold=5)
    e = world.queue("license_allocated", 10, 1)
    before = world.rows()
    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None
    assert report.claim.left_local == {"below_threshold": 1}
    assert world.rows() == before
    with bridge_engine.begin() as conn:
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, threshold=0), "test")
        repo.set_offload_enabled(conn, False)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.considered == 0
    assert world.rows()[e] == before[e]


def test_completion_becomes_certificate_job_with_its_email(bridge_engine, db_url, repo, aws) -> None:
    world = _setup(bridge_engine, repo)
    with bridge_engine.begin() as conn:
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, allowcertificates=True), "test")
    world.add_course(5, "Safety 101")
    at = world.rows() and 0
    import time

    at = int(time.time()) - 120
    world.complete(10, 5, 1, at)
    e = world.queue(
        "completion_course_user", 10, 1, courseid=5, subject="Well done", body="<p>Done</p>", due=at
    )
    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.claimed == 1
    certs = drain(aws, "certificates")
    emails = drain(aws, "jobs")
    assert len(certs) == 1
    validate("certificate_batch", certs[0])
    (learner,) = certs[0]["recipients"]
    assert learner["to"] == "learner@example.com"
    assert learner["content_id"] == f"e{e}"
    assert certs[0]["contents"][f"e{e}"]["html"] == "<p>Done</p>"
    assert learner["certificate"]["course_name"] == "Safety 101"
    assert learner["certificate"]["completed_at"] == at
    assert certs[0]["delivery"] == "email_attachment"
    # the manager's copy of the completion mail goes as a plain email
    assert [r["to"] for m in emails for r in m["recipients"]] == ["boss@example.com"]


def test_batches_respect_the_configured_size(bridge_engine, db_url, repo, aws) -> None:
    world = _setup(bridge_engine, repo)
    for uid in range(100, 125):
        world.add_user(uid, f"u{uid}@example.com", companyid=2)
    with bridge_engine.begin() as conn:
        repo.save_settings(conn, CompanySettings(2, cloudenabled=True), "test")
    for uid in range(100, 125):
        world.queue("license_allocated", uid, 2)
    config = with_queues(replace(make_config(db_url)), aws)
    config = replace(config, submit=replace(config.submit, max_recipients=10, claim_chunk_rows=7))
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.claimed == 25
    messages = drain(aws)
    sizes = sorted(len(m["recipients"]) for m in messages)
    assert sum(sizes) == 25 and max(sizes) <= 10
    assert len({m["job_id"] for m in messages}) == 1  # one job per company and type per pass
    assert len({m["batch_id"] for m in messages}) == len(messages)
