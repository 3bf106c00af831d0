"""`jobs retry` end to end: failed recipients -> new batches -> next tick -> SQS -> results -> done.

Password mail: the learner's retried copy is rebuilt from IOMAD's row exactly as the first time;
third-party copies are redacted again with the sealed temporary password, which is kept (encrypted)
while a redacted copy of the row may still be retried. No password in CLI output or logs.
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from moodle_bridge.cli import main
from moodle_bridge.commands.tick import build_submitters, run_tick, summary
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.results.ingest import ingest_result_batch
from moodle_bridge.results.iomad_link import AdapterQueue
from moodle_bridge.results.job_control import retry_failed
from moodle_bridge.sources.iomad.passwords import REDACTION
from moodle_bridge.storage.bridge_repo import PASSWORD_RETRY_WINDOW_SECONDS
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from offload_contract import validate
from offload_contract.sealing import open_content
from offload_contract.signing import decode_root_secret
from tests.bridge.conftest import SEAL_ROOT, drain, make_config, with_queues
from tests.bridge.iomad_world import IomadWorld

PASSWORD = "?4:#F_L3fu"
T = build_bridge_tables("mdl_")


def _results(jobid: int, outcomes: dict[str, str], report_id: str) -> dict[str, object]:
    items = []
    for rid, status in outcomes.items():
        item: dict[str, object] = {
            "job_id": str(jobid),
            "recipient_id": rid,
            "status": status,
            "attempts": 1,
            "occurred_at": 1,
        }
        if status == "sent":
            item["provider_message_id"] = f"ses-{report_id}-{rid}"
        else:
            item["error"] = {
                "code": "TRANSIENT_FAILURE",
                "message": "gave up after 8 attempts",
                "permanent": True,
            }
        items.append(item)
    return {
        "type": "result_batch",
        "contract_version": 1,
        "report_id": report_id,
        "company_id": 1,
        "reporter": "email_sender",
        "created_at": 1,
        "results": items,
    }


def _ingest_then_tick(engine, config, submitters, queue, batch) -> tuple[sa.Row, int]:
    """Apply a result batch, run a tick (reconcile + secrets sweep); the job row and sealed passwords."""
    jobid = int(batch["results"][0]["job_id"])
    with engine.begin() as conn:
        ingest_result_batch(conn, T, batch, company_id=1, now=2, actor="test", queue=queue)
    run_tick(engine, config, submitters=submitters, claim=False)
    with engine.connect() as conn:
        job = conn.execute(sa.select(T.jobs).where(T.jobs.c.id == jobid)).one()
        sealed = conn.execute(
            sa.select(sa.func.count()).where(T.recipients.c.secret.is_not(None))
        ).scalar_one()
    return job, int(sealed)


def _by_recipient(messages: list[dict]) -> dict[str, tuple[dict, dict]]:
    """address -> (batch message, its recipient entry)."""
    return {r["to"]: (m, r) for m in messages for r in m["recipients"]}


def _opened(message: dict, recipient: dict) -> dict:
    """The user's sealed copy, opened as the email sender opens it."""
    content_id = recipient["content_id"]
    roots = {"s1": decode_root_secret(SEAL_ROOT)}
    return open_content(
        roots, message["company_id"], message["job_id"], content_id, message["contents"][content_id]
    )


def test_retry_resubmits_failed_recipients_with_the_same_password_content(
    bridge_engine, db_url, repo, aws, monkeypatch, capsys, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    world.add_user(10, "learner@example.com", "Lea", "Rner", companyid=1)
    world.add_user(11, "boss@example.com", "Bo", "Ss", companyid=1, manager=True)
    world.add_user(12, "chief@example.com", "Chi", "Ef", companyid=1, manager=True)
    world.set_temporary_password(10, PASSWORD)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, fallbacklocal=False), "test")
    config = with_queues(make_config(db_url), aws)
    submitters = build_submitters(config, sqs_client=aws["sqs"])
    body = f"<p>username: learner</br>password: {PASSWORD}</br></p>"
    emailid = world.queue("user_create", 10, 1, subject="New account", body=body)
    queue = AdapterQueue(world.tables)

    first = run_tick(bridge_engine, config, submitters=submitters)
    assert first.claim is not None
    (jobid,) = first.claim.jobs
    sent1 = _by_recipient(drain(aws))
    assert set(sent1) == {"learner@example.com", "boss@example.com", "chief@example.com"}
    learner_msg, learner = sent1["learner@example.com"]
    boss_msg, boss = sent1["boss@example.com"]
    _chief_msg, chief = sent1["chief@example.com"]
    assert learner_msg["attempt"] == 1
    sealed = learner_msg["contents"][learner["content_id"]]
    assert sealed["kind"] == "sealed"  # the user's copy leaves the bridge sealed (docs/security.md)
    first_learner_content = _opened(learner_msg, learner)
    first_boss_content = boss_msg["contents"][boss["content_id"]]
    assert PASSWORD in first_learner_content["html"]
    assert PASSWORD not in first_boss_content["html"] and REDACTION in first_boss_content["html"]

    # The learner and one manager fail; the other manager is reached. Reconcile, secrets sweep.
    outcomes = {
        learner["recipient_id"]: "failed",
        boss["recipient_id"]: "failed",
        chief["recipient_id"]: "sent",
    }
    job, kept = _ingest_then_tick(bridge_engine, config, submitters, queue, _results(jobid, outcomes, "r1"))
    assert job is not None and job.status == "partial_failure" and job.recipientsfailed == 2
    assert kept == 1  # sealed, kept: a redacted copy of the row may still be retried

    monkeypatch.setenv("MRCO_DATABASE_URL", config.database.url)
    capsys.readouterr()
    assert main(["jobs", "retry", str(jobid)]) == 0
    assert "attempt 2, 2 recipients" in capsys.readouterr().out

    second = run_tick(bridge_engine, config, submitters=submitters, claim=False)
    assert second.outbox is not None and second.outbox.submitted == 1, summary(second)
    messages = drain(aws)
    for m in messages:
        validate("email_batch", m)
        assert m["attempt"] == 2 and m["job_id"] == str(jobid)
    sent2 = _by_recipient(messages)
    assert set(sent2) == {"learner@example.com", "boss@example.com"}
    learner_msg2, learner2 = sent2["learner@example.com"]
    boss_msg2, boss2 = sent2["boss@example.com"]
    assert learner2["recipient_id"] == learner["recipient_id"]
    assert _opened(learner_msg2, learner2) == first_learner_content
    assert boss_msg2["contents"][boss2["content_id"]] == first_boss_content
    with bridge_engine.connect() as conn:
        attempts = dict(
            conn.execute(
                sa.select(T.recipients.c.address, T.recipients.c.attempts).where(
                    T.recipients.c.jobid == jobid
                )
            ).all()
        )
    assert attempts == {"learner@example.com": 2, "boss@example.com": 2, "chief@example.com": 1}

    # The retry's results complete the job; then the password is deleted.
    retried = {learner["recipient_id"]: "sent", boss["recipient_id"]: "sent"}
    job, secrets = _ingest_then_tick(bridge_engine, config, submitters, queue, _results(jobid, retried, "r2"))
    assert job is not None and job.status == "completed" and job.recipientssent == 3
    assert secrets == 0
    row = world.rows()[emailid]
    assert row.sent is not None and row.body == body  # settled after the first results, untouched

    assert main(["jobs", "show", str(jobid)]) == 0
    output = capsys.readouterr()
    everything = output.out + output.err + caplog.text
    assert PASSWORD not in everything


def test_retry_of_a_redacted_copy_after_the_password_window_is_refused_not_sent(
    bridge_engine, db_url, repo, aws
) -> None:
    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    world.add_user(10, "learner@example.com", "Lea", "Rner", companyid=1)
    world.add_user(11, "boss@example.com", "Bo", "Ss", companyid=1, manager=True)
    world.set_temporary_password(10, PASSWORD)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, fallbacklocal=False), "test")
    config = with_queues(make_config(db_url), aws)
    submitters = build_submitters(config, sqs_client=aws["sqs"])
    world.queue("user_create", 10, 1, subject="New account", body=f"<p>password: {PASSWORD}</p>")
    first = run_tick(bridge_engine, config, submitters=submitters)
    assert first.claim is not None
    (jobid,) = first.claim.jobs
    sent = _by_recipient(drain(aws))
    outcomes = {
        sent["learner@example.com"][1]["recipient_id"]: "sent",
        sent["boss@example.com"][1]["recipient_id"]: "failed",
    }
    with bridge_engine.begin() as conn:
        ingest_result_batch(conn, T, _results(jobid, outcomes, "r1"), company_id=1, now=2, actor="test")
        assert repo.clear_final_secrets(conn) == 0  # the failed manager copy may be retried
        later = int(time.time()) + PASSWORD_RETRY_WINDOW_SECONDS + 60
        assert repo.clear_final_secrets(conn, at=later) == 1
        retry_failed(conn, T, jobid, actor="test", now=3)
    report = run_tick(bridge_engine, config, submitters=submitters, claim=False)
    # The copy fails alone and at once (issue 11 item 6): settled, never retried for hours.
    assert report.outbox is not None and report.outbox.submitted == 0 and report.outbox.retried == 0
    assert report.outbox.settled == 1
    assert drain(aws) == []
    with bridge_engine.connect() as conn:
        status, lasterror = conn.execute(
            sa.select(T.batches.c.status, T.batches.c.lasterror).where(
                T.batches.c.jobid == jobid, T.batches.c.attempt == 2
            )
        ).one()
        boss = conn.execute(
            sa.select(T.recipients).where(T.recipients.c.jobid == jobid, T.recipients.c.role == "manager")
        ).one()
    assert status == "abandoned" and "nothing left to send" in lasterror and PASSWORD not in lasterror
    assert boss.status == "skipped" and boss.errorcode == "password_not_redactable"
    assert PASSWORD not in (boss.errormessage or "")


def test_retry_batch_over_the_queue_limit_is_split_and_sent(
    bridge_engine, db_engine_name, db_url, repo, aws
) -> None:
    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    for n in range(4):
        world.add_user(10 + n, f"u{n}@example.com", "U", str(n), companyid=1)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, fallbacklocal=False), "test")
    config = with_queues(make_config(db_url), aws)
    submitters = build_submitters(config, sqs_client=aws["sqs"])
    for n in range(4):
        world.queue("license_allocated", 10 + n, 1, subject="Licence", body=f"<p>{n}</p>" + "x" * 300_000)
    first = run_tick(bridge_engine, config, submitters=submitters)
    assert first.claim is not None
    (jobid,) = first.claim.jobs
    sent = _by_recipient(drain(aws))
    failed = {entry["recipient_id"]: "failed" for _m, entry in sent.values()}
    with bridge_engine.begin() as conn:
        ingest_result_batch(conn, T, _results(jobid, failed, "r1"), company_id=1, now=2, actor="test")
        retry = retry_failed(conn, T, jobid, actor="test", now=3)
    assert len(retry.batches) == 1  # packed by count: 4 x 300 KB, over the 1 MiB queue limit

    split = run_tick(bridge_engine, config, submitters=submitters, claim=False)
    assert split.outbox is not None and split.outbox.split == 1 and split.outbox.submitted == 0
    assert "1 split" in summary(split)
    second = run_tick(bridge_engine, config, submitters=submitters, claim=False)
    assert second.outbox is not None and second.outbox.submitted == 2
    messages = drain(aws)
    assert sorted(r["to"] for m in messages for r in m["recipients"]) == sorted(sent)
    assert all(m["attempt"] == 2 for m in messages)
    done = {r["recipient_id"]: "sent" for m in messages for r in m["recipients"]}
    job, _sealed = _ingest_then_tick(bridge_engine, config, submitters, None, _results(jobid, done, "r2"))
    assert job.status == "completed" and job.recipientssent == 4
