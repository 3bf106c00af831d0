"""Retry, cancel and the error report, on every engine; the CLI on SQLite; no secret ever leaks."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from moodle_bridge.cli import main
from moodle_bridge.results.ingest import ingest_result_batch
from moodle_bridge.results.job_control import (
    JobControlError,
    cancel_job,
    error_rows,
    job_counts,
    job_summary,
    retry_failed,
    write_error_csv,
)
from moodle_bridge.storage.bridge_repo import BridgeRepo
from tests.results.factory import (
    NOW,
    SECRET_PASSWORD,
    counters_match,
    create_job,
    email_state,
    make_iomad,
    make_tables,
    park_rows,
    result,
    result_batch,
    snapshot,
)


def _ingest(engine, tables, batch, queue=None, now=NOW + 30):
    with engine.begin() as conn:
        return ingest_result_batch(conn, tables, batch, company_id=7, now=now, actor="t", queue=queue)


def test_retry_is_a_new_attempt_under_the_same_rules(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=3, email_id_start=None)
    _ingest(
        db_engine,
        tables,
        result_batch(
            7,
            [result(job, 0, "sent"), result(job, 1, "failed"), result(job, 2, "failed")],
            batch_id=job.batch_key,
        ),
    )
    with db_engine.begin() as conn:
        report = retry_failed(
            conn,
            tables,
            job.job_id,
            actor="cli:admin",
            now=NOW + 40,
            max_recipients=1,
            include_permanent=True,
        )
    assert report.attempt == 2 and report.recipients == 2 and len(report.batches) == 2
    r, b, j = tables.recipients, tables.batches, tables.jobs
    with db_engine.connect() as conn:
        rows = conn.execute(sa.select(r).where(r.c.jobid == job.job_id).order_by(r.c.id)).all()
        batches = conn.execute(sa.select(b).where(b.c.batchkey.in_(report.batches))).all()
        job_row = conn.execute(sa.select(j).where(j.c.id == job.job_id)).one()
    assert [x.status for x in rows] == ["sent", "pending", "pending"]
    assert [x.attempts for x in rows] == [1, 1, 1]  # the outbox counts the attempt when it submits
    assert {x.status for x in batches} == {"pending"} and {x.attempt for x in batches} == {2}
    assert {x.companyid for x in batches} == {7} and {x.messagetype for x in batches} == {"email_batch"}
    assert job_row.status == "processing" and job_row.attempt == 2 and job_row.timecompleted is None
    # A late failure from attempt 1 is stale; the new attempt's results apply.
    stale = _ingest(db_engine, tables, result_batch(7, [result(job, 1, "failed")], batch_id=job.batch_key))
    assert stale.ignored == 1
    batch_of = {int(x.id): x.batchid for x in rows}
    keys = {x.id: x.batchkey for x in batches}
    for index in (1, 2):
        key = keys[batch_of[job.recipient_ids[index]]]
        assert (
            _ingest(db_engine, tables, result_batch(7, [result(job, index, "sent")], batch_id=key)).applied
            == 1
        )
    with db_engine.connect() as conn:
        assert counters_match(conn, tables) == []
        assert conn.execute(sa.select(j.c.status).where(j.c.id == job.job_id)).scalar_one() == "completed"
    with db_engine.begin() as conn, pytest.raises(JobControlError, match="no failed recipients"):
        retry_failed(conn, tables, job.job_id, actor="cli:admin", now=NOW + 50)


def test_cancel_waits_for_the_cloud_and_records_what_it_sent(db_engine: sa.Engine) -> None:
    """Recipients already in the cloud are not reported cancelled on the bridge's word: what the
    cloud sent is recorded sent, what it did not send (its ``job_cancelled``) cancelled; a row
    nobody was reached from goes back to IOMAD and its recipients count as "fell back"."""
    tables = make_tables(db_engine)
    itables, queue = make_iomad(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=4, per_email=2)
        park_rows(conn, itables, job.email_ids)
    # Row A: one recipient already sent; row B: nothing sent yet. All four are in the cloud.
    _ingest(db_engine, tables, result_batch(7, [result(job, 0, "sent")], batch_id=job.batch_key), queue=queue)
    with db_engine.begin() as conn:
        report = cancel_job(conn, tables, job.job_id, actor="cli:admin", now=NOW + 40, queue=queue)
    assert (report.recipients_cancelled, report.in_cloud, report.status) == (0, 3, "cancelling")
    with db_engine.connect() as conn:
        job_row = conn.execute(sa.select(tables.jobs).where(tables.jobs.c.id == job.job_id)).one()
    assert job_row.status == "cancelling" and job_row.timecancelrequested == NOW + 40
    assert job_row.timecancelsignalled is None and job_row.recipientscancelled == 0
    # The cloud sent recipient 1 before the cancel reached it, and stopped before 2 and 3.
    late = _ingest(
        db_engine,
        tables,
        result_batch(
            7,
            [
                result(job, 1, "sent"),
                result(job, 2, "failed", code="job_cancelled"),
                result(job, 3, "failed", code="job_cancelled"),
            ],
            batch_id=job.batch_key,
        ),
        queue=queue,
        now=NOW + 50,
    )
    assert late.applied == 3
    with db_engine.connect() as conn:
        rows = email_state(conn, itables)
        statuses = [
            s for (s,) in conn.execute(sa.select(tables.recipients.c.status).order_by(tables.recipients.c.id))
        ]
        job_row = conn.execute(sa.select(tables.jobs).where(tables.jobs.c.id == job.job_id)).one()
        assert counters_match(conn, tables) == []
        counts = job_counts(conn, tables, job.job_id)
    assert statuses == ["sent", "sent", "restored", "restored"]
    row_a, row_b = job.email_ids
    assert rows[row_a][0] == NOW + 50  # reached: marked sent, IOMAD must not send it again
    assert rows[row_b] == (None, NOW - 60)  # nobody was reached: IOMAD sends it
    assert job_row.status == "cancelled" and job_row.timecompleted == NOW + 50
    assert (counts.sent, counts.fell_back, counts.cancelled, counts.in_flight) == (2, 2, 0, 0)
    # Cancelling a job that ended changes nothing and says how it ended.
    with db_engine.connect() as conn:
        before = snapshot(conn, tables)
    ended = r"already ended \(cancelled: 2 sent"
    with db_engine.begin() as conn, pytest.raises(JobControlError, match=ended):
        cancel_job(conn, tables, job.job_id, actor="cli:admin", now=NOW + 60, queue=queue)
    with db_engine.connect() as conn:
        assert snapshot(conn, tables) == before


def test_cancel_before_submission_and_of_an_ended_job(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        pending = create_job(
            conn, tables, recipients=3, status="pending", recipient_status="pending", email_id_start=None
        )
        conn.execute(tables.batches.update().values(status="pending"))
        done = create_job(conn, tables, recipients=2, email_id_start=None, company_id=7)
    _ingest(
        db_engine,
        tables,
        result_batch(7, [result(done, 0, "sent"), result(done, 1, "failed")], batch_id=done.batch_key),
    )
    with db_engine.begin() as conn:
        report = cancel_job(conn, tables, pending.job_id, actor="cli:admin", now=NOW + 40)
    assert (report.recipients_cancelled, report.batches_abandoned, report.in_cloud) == (3, 1, 0)
    assert report.status == "cancelled"
    with db_engine.connect() as conn:
        summary = job_summary(conn, tables, pending.job_id, deadline_seconds=3600, now=NOW + 41)
        assert counters_match(conn, tables) == []
    assert summary.status == "cancelled" and summary.counts.cancelled == 3 and summary.counts.total == 3
    # A cancelled recipient the cloud reports sent after all is recorded as sent (the truth).
    late = _ingest(db_engine, tables, result_batch(7, [result(pending, 0, "sent")]), now=NOW + 50)
    assert late.applied == 1
    with db_engine.connect() as conn:
        assert job_counts(conn, tables, pending.job_id).sent == 1
        status = conn.execute(sa.select(tables.jobs.c.status).where(tables.jobs.c.id == pending.job_id))
        assert status.scalar_one() == "cancelled"
    # A job that ended with a failure keeps it: cancel refuses and names it.
    with db_engine.connect() as conn:
        before = snapshot(conn, tables)
    with db_engine.begin() as conn, pytest.raises(JobControlError, match="partial_failure: 1 sent, 1 failed"):
        cancel_job(conn, tables, done.job_id, actor="cli:admin", now=NOW + 60)
    with db_engine.connect() as conn:
        assert snapshot(conn, tables) == before


def test_retry_takes_only_what_can_succeed_unless_asked(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=3, email_id_start=None)
    _ingest(
        db_engine,
        tables,
        result_batch(
            7,
            [
                result(job, 0, "failed", code="ACCOUNT_THROTTLED"),
                result(job, 1, "failed", code="BadRequestException"),
                result(job, 2, "failed", code="invalid_address"),
            ],
            batch_id=job.batch_key,
        ),
    )
    with db_engine.begin() as conn:
        first = retry_failed(conn, tables, job.job_id, actor="cli:admin", now=NOW + 40)
    assert (first.recipients, first.left_failed) == (1, 2)
    with db_engine.begin() as conn, pytest.raises(JobControlError, match="use --all"):
        retry_failed(conn, tables, job.job_id, actor="cli:admin", now=NOW + 41)
    with db_engine.begin() as conn:
        second = retry_failed(
            conn, tables, job.job_id, actor="cli:admin", now=NOW + 42, include_permanent=True
        )
    assert (second.recipients, second.left_failed, second.attempt) == (2, 0, 3)


def test_error_report_csv_is_safe(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=3, email_id_start=None)
        conn.execute(
            tables.recipients.update().values(
                secret="ENCRYPTED-" + SECRET_PASSWORD, data=json.dumps({"password": SECRET_PASSWORD})
            )
        )
    failing = result(job, 0, "failed", code="MailFromDomainNotVerified")
    failing["error"]["message"] = '=HYPERLINK("http://evil")'
    _ingest(db_engine, tables, result_batch(7, [failing, result(job, 1, "sent"), result(job, 2, "retrying")]))
    out = io.StringIO()
    with db_engine.begin() as conn:
        BridgeRepo(tables).clear_final_secrets(conn)  # the tick's sweep (ingestion keeps them)
    with db_engine.connect() as conn:
        count = write_error_csv(error_rows(conn, tables, job.job_id), out)
        secrets_left = conn.execute(
            sa.select(tables.recipients.c.id).where(tables.recipients.c.secret.is_not(None))
        ).all()
    text = out.getvalue()
    assert count == 1
    assert "MailFromDomainNotVerified" in text and "User0@Example.org" in text
    assert "'=HYPERLINK" in text  # formula neutralised
    assert SECRET_PASSWORD not in text
    # Final recipients lose their encrypted password; the one still retrying keeps it.
    assert [int(x.id) for x in secrets_left] == [job.recipient_ids[2]]


@pytest.mark.sqlite
def test_jobs_cli_list_show_errors_retry_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog
) -> None:
    url = f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
    engine = sa.create_engine(url)
    tables = make_tables(engine)
    with engine.begin() as conn:
        job = create_job(conn, tables, recipients=2, email_id_start=None)
        other = create_job(conn, tables, recipients=1, email_id_start=None, company_id=8)
        conn.execute(tables.recipients.update().values(data=json.dumps({"password": SECRET_PASSWORD})))
    _ingest(engine, tables, result_batch(7, [result(job, 0, "failed"), result(job, 1, "bounced")]))
    engine.dispose()
    monkeypatch.setenv("MRCO_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    assert main(["jobs", "list", "--company", "7"]) == 0
    listing = capsys.readouterr().out
    assert "partial_failure" in listing and f"\n{other.job_id:>7}" not in listing
    assert main(["jobs", "list", "--json", "--status", "queued"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [other.job_id]
    assert main(["jobs", "show", str(job.job_id)]) == 0
    human = capsys.readouterr().out
    assert "status:     partial_failure" in human and "needs attention: 1 failed" in human
    assert "UTC" in human and "18000" not in human  # dates, not epoch seconds
    assert main(["jobs", "show", str(job.job_id), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["counts"]["bounced"] == 1 and shown["audit"][0]["action"] == "job_completed"
    csv_path = tmp_path / "errors.csv"
    assert main(["jobs", "errors", str(job.job_id), "--output", str(csv_path)]) == 0
    assert csv_path.read_text().count("\n") == 3
    assert main(["jobs", "retry", str(job.job_id)]) == 1  # MessageRejected: permanent
    assert "use --all" in capsys.readouterr().err
    assert main(["jobs", "retry", "--all", str(job.job_id)]) == 0
    assert "attempt 2, 1 recipients" in capsys.readouterr().out
    assert main(["jobs", "cancel", str(job.job_id)]) == 0
    assert main(["jobs", "cancel", "999"]) == 1
    captured = capsys.readouterr()
    assert "job 999 does not exist" in captured.err
    everything = captured.out + captured.err + listing + csv_path.read_text() + caplog.text
    assert SECRET_PASSWORD not in everything
    check = sa.create_engine(url)
    with check.connect() as conn:
        audit_text = " ".join(str(tuple(row)) for row in conn.execute(sa.select(tables.audit_log)))
    check.dispose()
    assert SECRET_PASSWORD not in audit_text and "cli:" in audit_text


@pytest.mark.sqlite
def test_commands_fail_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MRCO_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    monkeypatch.chdir(tmp_path)
    assert main(["jobs", "list"]) == 2
    assert "run `moodle-offload migrate`" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "MRCO_KEYSETS" in capsys.readouterr().err
