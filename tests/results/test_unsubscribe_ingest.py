"""``unsubscribed`` results on every engine: the address is suppressed for the company's campaign mail
once, the recipient rows and counters are left alone, transactional jobs are never the source, and
scope holds (docs/results.md, "The recipient state machine")."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from moodle_bridge.results.ingest import IngestResult, ScopeError, ingest_result_batch
from moodle_bridge.results.states import Outcome, decide_unsubscribe
from moodle_bridge.results.suppression import record_suppressions
from moodle_bridge.storage.bridge_tables import BridgeTables
from tests.results.factory import (
    NOW,
    JobFixture,
    create_job,
    make_tables,
    result,
    result_batch,
)


def _ingest(
    engine: sa.Engine, tables: BridgeTables, batch: dict[str, Any], company_id: int = 7
) -> IngestResult:
    with engine.begin() as conn:
        return ingest_result_batch(
            conn, tables, batch, company_id=company_id, now=NOW + 30, actor="callback:test"
        )


def _job(engine: sa.Engine, tables: BridgeTables, category: str, company_id: int = 7) -> JobFixture:
    with engine.begin() as conn:
        job = create_job(conn, tables, company_id=company_id, recipient_status="sent", email_id_start=None)
        conn.execute(tables.jobs.update().where(tables.jobs.c.id == job.job_id).values(category=category))
    return job


def _unsubscribed(job: JobFixture, index: int) -> dict[str, Any]:
    return {
        "job_id": str(job.job_id),
        "recipient_id": str(job.recipient_ids[index]),
        "status": "unsubscribed",
        "attempts": 1,
        "occurred_at": NOW + 20,
    }


def _recipients(engine: sa.Engine, tables: BridgeTables) -> list[tuple[Any, ...]]:
    r = tables.recipients
    with engine.connect() as conn:
        rows = conn.execute(sa.select(r.c.id, r.c.status, r.c.errorcode, r.c.timemodified).order_by(r.c.id))
        return [tuple(row) for row in rows]


def _job_row(engine: sa.Engine, tables: BridgeTables, job: JobFixture) -> tuple[Any, ...]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.select(tables.jobs).where(tables.jobs.c.id == job.job_id)).one())


def _suppressed(engine: sa.Engine, tables: BridgeTables) -> list[tuple[int, str, str]]:
    s = tables.suppressions
    with engine.connect() as conn:
        rows = conn.execute(sa.select(s.c.companyid, s.c.address, s.c.reason).order_by(s.c.address))
        return [(int(c), str(a), str(r)) for c, a, r in rows]


def test_decide_unsubscribe_is_about_the_address_only() -> None:
    assert decide_unsubscribe("campaign", None).outcome is Outcome.APPLIED
    assert decide_unsubscribe("campaign", None).changes == ()  # never a recipient change
    assert decide_unsubscribe("campaign", "unsubscribe").outcome is Outcome.DUPLICATE
    assert decide_unsubscribe("campaign", "bounce").outcome is Outcome.DUPLICATE
    ignored = decide_unsubscribe("transactional", None)
    assert (ignored.outcome, ignored.reason) == (Outcome.IGNORED, "not_campaign")


def test_an_unsubscribe_suppresses_the_address_once_and_leaves_the_recipient_alone(
    db_engine: sa.Engine,
) -> None:
    tables = make_tables(db_engine)
    job = _job(db_engine, tables, "campaign")
    with db_engine.begin() as conn:
        record_suppressions(conn, tables, [(7, "user1@example.org", "bounce")], source="test", now=NOW)
    before = _recipients(db_engine, tables)
    job_before = _job_row(db_engine, tables, job)
    first = _ingest(
        db_engine,
        tables,
        result_batch(7, [_unsubscribed(job, 0), _unsubscribed(job, 1)], reporter="unsubscribe"),
    )
    assert (first.applied, first.duplicates, first.ignored) == (1, 1, 0)  # user1 bounced already
    assert _suppressed(db_engine, tables) == [
        (7, "user0@example.org", "unsubscribe"),
        (7, "user1@example.org", "bounce"),  # a bounce stops everything and is kept
    ]
    assert _recipients(db_engine, tables) == before
    # The same click reported again (a retried POST, a redelivered message): a duplicate.
    again = _ingest(db_engine, tables, result_batch(7, [_unsubscribed(job, 0)], reporter="unsubscribe"))
    assert (again.applied, again.duplicates) == (0, 1)
    assert _job_row(db_engine, tables, job) == job_before  # counters and status untouched
    # Another company's suppression list is untouched.
    assert {c for c, _, _ in _suppressed(db_engine, tables)} == {7}


def test_a_bounce_in_the_same_report_wins_over_the_unsubscribe(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    job = _job(db_engine, tables, "campaign")
    batch = result_batch(
        7,
        [_unsubscribed(job, 2), result(job, 2, "bounced", message_id=None, at=NOW + 25)],
        reporter="ses_events",
    )
    outcome = _ingest(db_engine, tables, batch)
    assert outcome.applied == 2
    assert _suppressed(db_engine, tables) == [(7, "user2@example.org", "bounce")]


def test_transactional_jobs_are_never_the_source_of_an_unsubscribe(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    job = _job(db_engine, tables, "transactional")
    outcome = _ingest(db_engine, tables, result_batch(7, [_unsubscribed(job, 0)], reporter="unsubscribe"))
    assert (outcome.applied, outcome.ignored, dict(outcome.ignored_reasons)) == (0, 1, {"not_campaign": 1})
    assert _suppressed(db_engine, tables) == []


def test_an_unsubscribe_for_another_companys_job_changes_nothing(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    theirs = _job(db_engine, tables, "campaign", company_id=8)
    with pytest.raises(ScopeError) as raised:
        _ingest(db_engine, tables, result_batch(7, [_unsubscribed(theirs, 0)], reporter="unsubscribe"))
    assert raised.value.code == "job_scope"
    ours = _job(db_engine, tables, "campaign")
    mixed = _unsubscribed(ours, 0) | {
        "recipient_id": str(theirs.recipient_ids[0])
    }  # their recipient, our job
    outcome = _ingest(db_engine, tables, result_batch(7, [mixed], reporter="unsubscribe"))
    assert dict(outcome.ignored_reasons) == {"unknown_recipient": 1}
    assert _suppressed(db_engine, tables) == []
