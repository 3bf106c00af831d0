"""The cron pass end to end on every engine: claim IOMAD rows, create jobs, submit to SQS.

Every claimed recipient ends in exactly one path (a queued cloud message, or a recorded
outcome), rows of local companies are untouched, passwords never leak to copies.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import sqlalchemy as sa

from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.iomad.queue import PARKED_DUE_BASE
from moodle_bridge.sources.iomad.schema import IomadGeneration
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from offload_contract import validate
from offload_contract.sealing import open_content
from offload_contract.signing import decode_root_secret
from tests.bridge.conftest import SEAL_ROOT, drain, make_config, with_queues
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
    user_batch = sent[("learner@example.com", f"e{e_create}")]
    user_copy = user_batch["contents"][f"e{e_create}"]
    manager_copy = sent[("boss@example.com", f"e{e_create}r")]["contents"][f"e{e_create}r"]
    # The user's own copy leaves sealed: no queue ever holds the password in plaintext.
    assert user_copy["kind"] == "sealed"
    assert not any(PASSWORD in json.dumps(m, ensure_ascii=False) for m in messages)
    opened = open_content(
        {"s1": decode_root_secret(SEAL_ROOT)}, 1, user_batch["job_id"], f"e{e_create}", user_copy
    )
    assert PASSWORD in opened["html"]
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
    with bridge_engine.connect() as conn:
        (cert,) = conn.execute(sa.select(T.certificates)).all()
    assert cert.verifycode == learner["certificate"]["verification_code"]
    assert (cert.companyid, cert.userid, cert.courseid) == (1, 10, 5)
    assert cert.recipientid == int(learner["recipient_id"])


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


@pytest.mark.parametrize(
    "generation", [IomadGeneration.LEGACY, IomadGeneration.RENAMED], ids=["le50", "ge51"]
)
def test_both_schema_generations(bridge_engine, db_url, repo, aws, generation) -> None:
    world = IomadWorld.create(bridge_engine, generation=generation)
    world.add_company(1)
    world.add_user(10, "learner@example.com", companyid=1)
    world.add_user(11, "boss@example.com", companyid=1, manager=True)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
    e = world.queue("license_allocated", 10, 1)
    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.claimed == 1
    assert world.rows()[e].due >= PARKED_DUE_BASE
    assert sorted(r["to"] for m in drain(aws) for r in m["recipients"]) == [
        "boss@example.com",
        "learner@example.com",
    ]


@pytest.mark.sqlite
def test_passwords_never_reach_output_logs_or_the_outbox(tmp_path, monkeypatch, capsys, caplog, aws) -> None:
    import logging

    from moodle_bridge.cli import main
    from moodle_bridge.storage.database import create_bridge_engine
    from moodle_bridge.storage.migrations import migrate
    from tests.bridge.conftest import PASSWORD_KEY

    caplog.set_level(logging.DEBUG)
    url = f"sqlite:///{tmp_path / 'moodle.sqlite3'}"
    engine = create_bridge_engine(url)
    world = IomadWorld.create(engine)
    world.add_company(1)
    world.add_user(10, "learner@example.com", companyid=1)
    world.add_user(11, "boss@example.com", companyid=1, manager=True)
    world.set_temporary_password(10, PASSWORD)
    world.queue("user_create", 10, 1, body=f"<p>password: {PASSWORD}</p>")
    migrate(engine, "mdl_")
    for k, v in {
        "MRCO_DATABASE_URL": url,
        "MRCO_KEYSETS": "k1=" + "A" * 43,
        "MRCO_KEYSET_CURRENT": "k1",
        "MRCO_SENDER_ADDRESS": "noreply@example.com",
        "MRCO_PASSWORD_KEY": PASSWORD_KEY,
        "MRCO_SEAL_KEYSETS": "s1=" + "B" * 43,
        "MRCO_JOBS_QUEUE_URL": aws["jobs"] + "-missing",
        "MRCO_AWS_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    assert main(["company", "global", "on"]) == 0
    assert main(["company", "set", "1", "--cloud", "on"]) == 0
    # The queue does not exist: the batch stays pending, and cron mails the admin (exit 1, one line).
    assert main(["tick"]) == 1
    captured = capsys.readouterr()
    assert "to retry" in captured.out and "Fix:" in captured.err
    everything = captured.out + captured.err + caplog.text
    with engine.connect() as conn:
        for table in (T.batches, T.jobs, T.claims, T.audit_log):
            everything += repr(conn.execute(sa.select(table)).all())
        secrets = [r.secret for r in conn.execute(sa.select(T.recipients)) if r.secret]
    engine.dispose()
    for name, text in (("out", captured.out), ("err", captured.err), ("log", caplog.text)):
        assert PASSWORD not in text, name
    assert PASSWORD not in everything
    assert len(secrets) == 1 and PASSWORD not in secrets[0]


@pytest.mark.sqlite
@pytest.mark.parametrize("db_engine_name", ["sqlite"])
def test_round_trips_grow_with_batches_not_recipients(bridge_engine, db_url, repo, aws) -> None:
    """10x the recipients in the same number of batches costs the same number of statements."""
    from moodle_bridge.storage.database import StatementCounter

    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
    config = with_queues(make_config(db_url, max_recipients=1000), aws)
    counts = []
    uid = 100
    for rows in (20, 200):
        for _ in range(rows):
            uid += 1
            world.add_user(uid, f"u{uid}@example.com", companyid=1)
            world.queue("license_allocated", uid, 1)
        counter = StatementCounter(bridge_engine)
        report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
        counter.close()
        assert report.claim is not None and report.claim.claimed == rows and report.claim.batches == 1
        counts.append(counter.count)
        drain(aws)
    assert counts[1] == counts[0], counts


HUGE = "<p>" + "x" * 1_100_000 + "</p>"  # over SQS's 1 MiB even alone


@pytest.mark.sqlite
@pytest.mark.parametrize("db_engine_name", ["sqlite"])
@pytest.mark.parametrize("fallback", [True, False])
def test_too_large_without_a_bucket_goes_back_to_iomad_or_fails_visibly(
    bridge_engine, db_url, repo, aws, fallback
) -> None:
    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    world.add_user(10, "learner@example.com", companyid=1)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, fallbacklocal=fallback), "test")
    big = world.queue("license_allocated", 10, 1, body=HUGE)
    small = world.queue("license_allocated", 10, 1, body="<p>ok</p>")
    before = world.rows()
    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.claimed == 2
    with bridge_engine.connect() as conn:
        rec = {r.emailid: r for r in conn.execute(sa.select(T.recipients))}
        claims = {c.emailid: c for c in conn.execute(sa.select(T.claims))}
    assert rec[big].errorcode == "too_large"
    if fallback:
        assert world.rows()[big] == before[big]
        assert rec[big].status == "restored" and claims[big].state == "released"
    else:
        # tick's reconciliation (results part) settles the row: every recipient is final, nobody
        # was reached and fallback is off, so IOMAD's row is marked sent and the claim completed.
        assert rec[big].status == "failed" and claims[big].state == "completed"
    assert rec[small].status == "queued"
    assert [r["to"] for m in drain(aws) for r in m["recipients"]] == ["learner@example.com"]


@pytest.mark.sqlite
@pytest.mark.parametrize("db_engine_name", ["sqlite"])
def test_too_large_content_travels_by_reference_to_the_bucket(bridge_engine, db_url, repo, aws) -> None:
    import hashlib

    import boto3

    from moodle_bridge.commands.tick import content_uploader

    s3 = boto3.client("s3", region_name="eu-west-1")
    s3.create_bucket(Bucket="contents", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    world.add_user(10, "learner@example.com", companyid=1)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
    big = world.queue("license_allocated", 10, 1, body=HUGE)
    config = with_queues(make_config(db_url), aws)
    config = replace(config, aws=replace(config.aws, content_bucket="contents"))
    report = run_tick(
        bridge_engine,
        config,
        submitters=build_submitters(config, sqs_client=aws["sqs"]),
        upload=content_uploader(config, s3_client=s3),
    )
    assert report.outbox is not None and report.outbox.submitted == 1
    (message,) = drain(aws)
    validate("email_batch", message)
    ref = message["contents"][f"e{big}"]
    assert ref["kind"] == "reference"
    stored = s3.get_object(Bucket="contents", Key=ref["ref"]["key"])["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == ref["ref"]["sha256"]
    assert json.loads(stored)["html"] == HUGE
    assert ref["ref"]["key"].startswith(f"contents/company-1/{message['job_id']}/")


def test_the_templates_sender_name_and_reply_to_travel_with_the_content(
    bridge_engine, db_url, repo, aws
) -> None:
    """From stays the verified sender; the template's display name and Reply-To are kept."""
    world = _setup(bridge_engine, repo)
    world.add_user(30, "support@acme.example", "Help", "Desk", companyid=1)
    props = {"emailfromothername": "{Company_Name} Training", "emailreplytoother": "help@acme.example"}
    named = world.queue("license_allocated", 10, 1, template_props=props)
    from_user = world.queue("license_allocated", 10, 1, template_props={"emailfrom": "30"})
    other_domain = world.queue(
        "license_allocated", 10, 1,
        template_props={"emailfromother": "hr@gmail.example", "emailfromothername": "{Site_FullName}"},
    )  # fmt: skip
    plain = world.queue("license_allocated", 10, 1)
    config = with_queues(make_config(db_url), aws)

    run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))

    contents = {cid: c for m in drain(aws) for cid, c in m["contents"].items()}
    assert contents[f"e{named}"]["from_name"] == "Company 1 Training"
    assert contents[f"e{named}"]["reply_to"] == ["help@acme.example"]
    # Fan-out copies (the manager's) carry the same sender as the learner's.
    assert {k for k in contents if k.startswith(f"e{named}")} == {f"e{named}"}
    assert contents[f"e{from_user}"]["from_name"] == "Help Desk"
    assert contents[f"e{from_user}"]["reply_to"] == ["support@acme.example"]  # its From, as Reply-To
    assert "from_name" not in contents[f"e{other_domain}"]  # an unfilled placeholder is never shown
    assert contents[f"e{other_domain}"]["reply_to"] == ["hr@gmail.example"]
    assert "from_name" not in contents[f"e{plain}"] and "reply_to" not in contents[f"e{plain}"]
    with bridge_engine.connect() as conn:
        claims = {r.emailid: r for r in conn.execute(sa.select(T.claims))}
    assert (claims[named].fromname, claims[named].replyto) == ("Company 1 Training", "help@acme.example")
    assert (claims[plain].fromname, claims[plain].replyto) == (None, None)
