"""Result ingestion on every engine: idempotency, staleness, scope, counters, IOMAD settlement."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from moodle_bridge.results.ingest import ScopeError, ingest_result_batch
from moodle_bridge.results.suppression import filter_suppressed
from moodle_bridge.sources.iomad.queries import PARKED_DUE_BASE
from tests.results.factory import (
    NOW,
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


def _ingest(engine, tables, batch, company_id=7, queue=None, now=NOW + 30):
    with engine.begin() as conn:
        return ingest_result_batch(
            conn, tables, batch, company_id=company_id, now=now, actor="callback:test", queue=queue
        )


def _statuses(engine, tables, job):
    r = tables.recipients
    with engine.connect() as conn:
        rows = conn.execute(sa.select(r.c.id, r.c.status).where(r.c.jobid == job.job_id).order_by(r.c.id))
        return [status for _, status in rows]


def test_results_apply_once_and_settle_iomad_rows(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    itables, queue = make_iomad(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=4, per_email=2)
        park_rows(conn, itables, job.email_ids)
    results = [result(job, i, "sent") for i in range(4)]
    first = _ingest(db_engine, tables, result_batch(7, results, batch_id=job.batch_key), queue=queue)
    assert (first.applied, first.duplicates, first.ignored) == (4, 0, 0)
    with db_engine.connect() as conn:
        before = snapshot(conn, tables)
        rows = email_state(conn, itables)
    assert all(sent == NOW + 30 and due == NOW - 60 for sent, due in rows.values())
    # The same results again, under a new report id: nothing changes.
    again = _ingest(db_engine, tables, result_batch(7, results, batch_id=job.batch_key), queue=queue)
    assert (again.applied, again.duplicates) == (0, 4)
    # The very same report: recognised as a whole.
    report = result_batch(7, results, batch_id=job.batch_key, report_id="same-report")
    _ingest(db_engine, tables, report, queue=queue)
    dup = _ingest(db_engine, tables, report, queue=queue)
    assert dup.duplicate_report and dup.applied == 0
    with db_engine.connect() as conn:
        after = snapshot(conn, tables, skip=("result_reports",))
        assert counters_match(conn, tables) == []
        job_row = conn.execute(sa.select(tables.jobs).where(tables.jobs.c.id == job.job_id)).one()
    before.pop(tables.result_reports.name)
    assert before == after
    assert job_row.status == "completed" and job_row.recipientssent == 4 and job_row.timecompleted == NOW + 30


def test_transitions_stale_and_provider_events(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=5, email_id_start=None)
        other = create_job(conn, tables, recipients=1, email_id_start=None)
    out = _ingest(
        db_engine,
        tables,
        result_batch(
            7,
            [
                result(job, 0, "sent", at=NOW + 1),
                result(job, 0, "delivered", at=NOW + 5, message_id=f"ses-{job.recipient_ids[0]}"),
                result(job, 0, "sent", at=NOW + 6),  # late sent after delivered: duplicate
                result(job, 1, "sent", at=NOW + 1),
                result(job, 1, "failed", at=NOW + 2),  # failed after sent (same attempt): ignored
                result(job, 2, "retrying", at=NOW + 1, permanent=False),
                result(job, 2, "failed", at=NOW + 2),
                result(job, 3, "sent", at=NOW + 1),
                result(job, 3, "bounced", at=NOW + 3, message_id="ses-other-message"),  # other message
                result(job, 4, "sent", at=NOW + 1),
            ],
            batch_id=job.batch_key,
        ),
    )
    assert out.applied == 7 and out.duplicates == 1 and out.ignored == 2
    assert dict(out.ignored_reasons) == {"conflicts_with_sent": 1, "other_message": 1}
    assert _statuses(db_engine, tables, job) == ["delivered", "sent", "failed", "sent", "sent"]
    # An async bounce after delivery is accepted and remembered for the company.
    late = _ingest(
        db_engine,
        tables,
        result_batch(7, [result(job, 0, "bounced", message_id=f"ses-{job.recipient_ids[0]}")]),
    )
    assert late.applied == 1
    # A result naming another job's batch is from an older attempt / other batch: ignored.
    stale = _ingest(db_engine, tables, result_batch(7, [result(job, 3, "failed")], batch_id=other.batch_key))
    assert stale.ignored == 1 and dict(stale.ignored_reasons) == {"stale_attempt": 1}
    # A recipient id of another job is never touched through this job.
    forged = dict(result(job, 0, "sent"), recipient_id=str(other.recipient_ids[0]))
    assert _ingest(db_engine, tables, result_batch(7, [forged])).ignored == 1
    with db_engine.connect() as conn:
        assert counters_match(conn, tables) == []
        assert filter_suppressed(conn, tables, 7, ["USER0@example.org", "user1@example.org"]) == {
            "USER0@example.org": "bounce"
        }
        assert filter_suppressed(conn, tables, 8, ["user0@example.org"]) == {}
        row = conn.execute(sa.select(tables.jobs).where(tables.jobs.c.id == job.job_id)).one()
    assert row.status == "partial_failure"
    assert (row.recipientssent, row.recipientsfailed, row.recipientsbounced) == (3, 1, 1)


def test_wrong_company_or_unknown_job_changes_nothing(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, company_id=7, email_id_start=None)
        foreign = create_job(conn, tables, company_id=8, email_id_start=None)
    with db_engine.connect() as conn:
        before = snapshot(conn, tables)
    mixed = [result(job, 0, "sent"), result(foreign, 0, "sent")]
    for batch, company, code in [
        (result_batch(7, mixed), 7, "job_scope"),
        (result_batch(8, [result(job, 0, "sent")]), 7, "company_mismatch"),
        (result_batch(7, [dict(result(job, 0, "sent"), job_id="999999")]), 7, "job_scope"),
        (result_batch(7, [dict(result(job, 0, "sent"), job_id="job-x")]), 7, "job_scope"),
    ]:
        with pytest.raises(ScopeError) as info:
            _ingest(db_engine, tables, batch, company_id=company)
        assert info.value.code == code
    with db_engine.connect() as conn:
        assert snapshot(conn, tables) == before


def test_fallback_restores_only_rows_nobody_received(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    itables, queue = make_iomad(db_engine)
    with db_engine.begin() as conn:
        # Rows of two recipients each: row A both fail, row B one sent + one failed.
        job = create_job(conn, tables, recipients=4, per_email=2)
        park_rows(conn, itables, job.email_ids)
    row_a, row_b = job.email_ids
    out = _ingest(
        db_engine,
        tables,
        result_batch(
            7,
            [
                result(job, 0, "failed"),
                result(job, 1, "failed"),
                result(job, 2, "sent"),
                result(job, 3, "failed"),
            ],
            batch_id=job.batch_key,
        ),
        queue=queue,
    )
    assert out.applied == 4
    with db_engine.connect() as conn:
        rows = email_state(conn, itables)
        claims = dict(conn.execute(sa.select(tables.claims.c.emailid, tables.claims.c.state)).all())
        assert counters_match(conn, tables) == []
        row = conn.execute(sa.select(tables.jobs).where(tables.jobs.c.id == job.job_id)).one()
        audit = [a for (a,) in conn.execute(sa.select(tables.audit_log.c.action))]
    assert rows[row_a] == (None, NOW - 60)  # back to IOMAD: its cron sends it
    assert rows[row_b][0] == NOW + 30 and rows[row_b][1] < PARKED_DUE_BASE  # marked sent
    assert claims == {row_a: "released", row_b: "completed"}
    assert _statuses(db_engine, tables, job) == ["restored", "restored", "sent", "failed"]
    assert row.status == "partial_failure" and row.recipientsfailed == 1 and row.recipientsfellback == 2
    assert {"iomad_rows_restored", "fallback_withheld", "job_completed"} <= set(audit)


def test_fallback_off_marks_rows_sent(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    itables, queue = make_iomad(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=2, per_email=2)
        park_rows(conn, itables, job.email_ids)
        conn.execute(
            tables.company_settings.insert().values(
                companyid=7, cloudenabled=1, fallbacklocal=0, timecreated=NOW, timemodified=NOW
            )
        )
    _ingest(
        db_engine, tables, result_batch(7, [result(job, 0, "failed"), result(job, 1, "failed")]), queue=queue
    )
    with db_engine.connect() as conn:
        assert email_state(conn, itables)[job.email_ids[0]][0] == NOW + 30
        row = conn.execute(sa.select(tables.jobs).where(tables.jobs.c.id == job.job_id)).one()
    assert row.status == "failed" and row.recipientsfailed == 2
