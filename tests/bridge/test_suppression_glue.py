"""Job creation consults the bounce/complaint memory: IOMAD claims and list jobs alike."""

from __future__ import annotations

import json
from dataclasses import replace

import sqlalchemy as sa

from moodle_bridge.cli import main
from moodle_bridge.commands.submit_list import ListRow, compile_template, create_list_job
from moodle_bridge.commands.tick import build_submitters, reconcile_summary, run_tick, summary
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.results.ingest import ingest_result_batch
from moodle_bridge.results.suppression import SKIP_CODES, record_suppressions, suppression_counts
from moodle_bridge.sources.iomad.passwords import REDACTION
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from tests.bridge.conftest import drain, make_config, with_queues
from tests.bridge.iomad_world import IomadWorld

T = build_bridge_tables("mdl_")


def _list_job(engine, repo, config, companyid: int, emails: list[str]) -> int:
    rows = [ListRow(n + 2, e, "Name", None, {}) for n, e in enumerate(emails)]
    result = create_list_job(
        engine,
        repo,
        config,
        companyid,
        "Hi",
        "<p>hi</p>",
        None,
        rows,
        compile_template("Hi", "<p>hi</p>", None),
        "test",
    )
    assert not isinstance(result, str), result
    return result[0]


def _outcomes(engine, jobid: int) -> dict[str, tuple[str, str | None]]:
    r = T.recipients
    with engine.connect() as conn:
        return {
            row.address: (row.status, row.errorcode)
            for row in conn.execute(
                sa.select(r.c.address, r.c.status, r.c.errorcode).where(r.c.jobid == jobid)
            )
        }


def test_bounced_address_is_skipped_in_later_jobs_of_the_same_company_only(
    bridge_engine, db_url, repo, aws, monkeypatch, capsys
) -> None:
    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    world.add_user(10, "learner@example.com", "Lea", "Rner", companyid=1)
    world.add_user(11, "other@example.com", "Oth", "Er", companyid=1)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
        repo.save_settings(conn, CompanySettings(2, cloudenabled=True), "test")
    config = with_queues(make_config(db_url), aws)
    submitters = build_submitters(config, sqs_client=aws["sqs"])

    # Job 1 (IOMAD claim): the learner's licence mail goes out, then bounces.
    world.queue("license_allocated", 10, 1, subject="Licence", body="<p>Safety 101</p>")
    first = run_tick(bridge_engine, config, submitters=submitters)
    assert first.claim is not None and first.claim.suppressed == 0
    (job1,) = first.claim.jobs
    (message,) = drain(aws)
    (rcp,) = message["recipients"]
    bounce = {
        "type": "result_batch",
        "contract_version": 1,
        "report_id": "r-1",
        "company_id": 1,
        "reporter": "ses_events",
        "created_at": 1,
        "results": [
            {
                "job_id": str(job1),
                "recipient_id": rcp["recipient_id"],
                "status": "bounced",
                "provider_message_id": "ses-1",
                "attempts": 1,
                "occurred_at": 1,
            }
        ],
    }
    with bridge_engine.begin() as conn:
        ingest_result_batch(conn, T, bounce, company_id=1, now=2, actor="test")
    assert _outcomes(bridge_engine, job1)["learner@example.com"][0] == "bounced"

    # Job 2 of the same company (IOMAD claim): the bounced learner is skipped, the other user sent.
    world.queue("license_allocated", 10, 1, subject="Licence", body="<p>First aid</p>")
    world.queue("license_allocated", 11, 1, subject="Licence", body="<p>First aid</p>")
    second = run_tick(bridge_engine, config, submitters=submitters)
    assert second.claim is not None and second.claim.suppressed == 1
    assert "1 skipped as suppressed" in summary(second)
    (job2,) = second.claim.jobs
    assert _outcomes(bridge_engine, job2) == {
        "learner@example.com": ("skipped", SKIP_CODES["bounce"]),
        "other@example.com": ("queued", None),
    }
    assert [r["to"] for m in drain(aws) for r in m["recipients"]] == ["other@example.com"]

    # A list job of the same company (address case differs) skips it too; another company does not.
    job3 = _list_job(bridge_engine, repo, config, 1, ["Learner@Example.com", "new@example.com"])
    assert _outcomes(bridge_engine, job3) == {
        "Learner@Example.com": ("skipped", SKIP_CODES["bounce"]),
        "new@example.com": ("pending", None),
    }
    job4 = _list_job(bridge_engine, repo, config, 2, ["learner@example.com"])
    assert _outcomes(bridge_engine, job4) == {"learner@example.com": ("pending", None)}

    with bridge_engine.connect() as conn:
        assert suppression_counts(conn, T, job2) == {SKIP_CODES["bounce"]: 1}
        job = repo.job(conn, job3)
    assert job is not None and job.recipientsskipped == 1 and job.recipientstotal == 2

    monkeypatch.setenv("MRCO_DATABASE_URL", config.database.url)
    capsys.readouterr()
    assert main(["jobs", "show", str(job2), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["counts"]["skipped"] == 1
    assert shown["skipped_by_reason"] == {SKIP_CODES["bounce"]: 1}


def test_tick_summary_reports_the_reconciliation_pass(bridge_engine, db_url, aws) -> None:
    config = with_queues(make_config(db_url), aws)
    config = replace(config, database=replace(config.database, site="moodle"))
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.reconciled is not None
    text = summary(report)
    assert "reconciled: 0 results ingested from 0 messages, 0 quarantined, 0 jobs flagged overdue" in text
    assert reconcile_summary(report.reconciled) in text


def test_suppressed_learner_of_a_password_mail_still_gets_redacted_manager_copies(
    bridge_engine, db_url, repo, aws
) -> None:
    password = "Pw-7&x<1"
    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    world.add_user(10, "learner@example.com", "Lea", "Rner", companyid=1)
    world.add_user(11, "boss@example.com", "Bo", "Ss", companyid=1, manager=True)
    world.set_temporary_password(10, password)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
        record_suppressions(conn, T, [(1, "learner@example.com", "complaint")], source="test", now=1)
    config = with_queues(make_config(db_url), aws)
    world.queue("user_create", 10, 1, subject="New account", body=f"<p>password: {password}</p>")
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.suppressed == 1
    (message,) = drain(aws)
    assert [r["to"] for r in message["recipients"]] == ["boss@example.com"]
    (content,) = message["contents"].values()
    assert password not in content["html"] and REDACTION in content["html"]
    (jobid,) = report.claim.jobs
    assert _outcomes(bridge_engine, jobid)["learner@example.com"] == ("skipped", SKIP_CODES["complaint"])
