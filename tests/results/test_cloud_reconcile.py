"""Cancellation reaching the cloud, and recipients settled from the cloud's own records, on every
engine: moto's in-process DynamoDB stands in for the sender's table, and the sender's own
``IdempotencyStore`` checks that a recipient the bridge closed can never be sent afterwards.
Also: one result message the database cannot store is quarantined and reconciliation goes on."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import boto3  # type: ignore[import-untyped,unused-ignore]
import pytest
import sqlalchemy as sa
from botocore.config import Config as BotoConfig
from moto import mock_aws

from lambdas.common.idempotency import ClaimState, IdempotencyStore
from moodle_bridge.config import AwsConfig, BridgeConfig
from moodle_bridge.results import reconcile as reconcile_module
from moodle_bridge.results.ingest import ingest_result_batch
from moodle_bridge.results.job_control import cancel_job, job_counts
from moodle_bridge.results.reconcile import ReconcileContext, reconcile
from moodle_bridge.transports.cloud_records import CloudRecords
from offload_contract import validate
from offload_contract.cloud_keys import send_key as senders_key
from offload_contract.codec import encode_message
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
)

TABLE = "offload-idempotency"
COMPANY = 7  # create_job's default company
DEADLINE = 3600


@pytest.fixture
def cloud() -> Any:
    with mock_aws():
        db = boto3.client("dynamodb", region_name="eu-west-1")
        db.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield db


def _sent_record(db: Any, job_id: int, rid: int, message_id: str) -> None:
    sent = {
        "job_id": str(job_id),
        "recipient_id": str(rid),
        "status": "sent",
        "attempts": 1,
        "occurred_at": NOW + 5,
        "provider_message_id": message_id,
    }
    db.put_item(
        TableName=TABLE,
        Item={
            "id": {"S": senders_key(COMPANY, str(job_id), str(rid))},
            "status": {"S": "COMPLETED"},
            "result": {"S": json.dumps(sent)},
        },
    )


def _in_progress(db: Any, job_id: int, rid: int, lease_until: int) -> None:
    db.put_item(
        TableName=TABLE,
        Item={
            "id": {"S": senders_key(COMPANY, str(job_id), str(rid))},
            "status": {"S": "INPROGRESS"},
            "token": {"S": "dead-owner"},
            "lease_until": {"N": str(lease_until)},
            "claimed_at": {"N": str(NOW)},
        },
    )


def _config() -> BridgeConfig:
    return replace(
        BridgeConfig(), aws=replace(AwsConfig(), idempotency_table=TABLE), job_deadline_seconds=DEADLINE
    )


def _ctx(engine: sa.Engine, tables: Any, db: Any, at: int, queue: Any = None) -> ReconcileContext:
    return ReconcileContext(
        engine,
        tables,
        _config(),
        clock=lambda: at,
        iomad_queue=queue,
        cloud=CloudRecords(db, TABLE, clock=lambda: at),
    )


def _statuses(engine: sa.Engine, tables: Any, job_id: int) -> list[tuple[str, str | None]]:
    r = tables.recipients
    with engine.connect() as conn:
        return [
            (str(s), c)
            for s, c in conn.execute(
                sa.select(r.c.status, r.c.errorcode).where(r.c.jobid == job_id).order_by(r.c.id)
            )
        ]


def test_cancel_after_submit_settles_from_the_senders_records(db_engine: sa.Engine, cloud: Any) -> None:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=4, email_id_start=None)  # all four in the cloud
    r0, r1, r2, _r3 = job.recipient_ids
    _sent_record(cloud, job.job_id, r0, "ses-sent-before-cancel")  # the cloud sent it already
    _in_progress(cloud, job.job_id, r2, NOW + 600)  # a sender is inside its SES call for it
    with db_engine.begin() as conn:
        report = cancel_job(conn, tables, job.job_id, actor="cli:admin", now=NOW + 10)
    assert (report.recipients_cancelled, report.in_cloud, report.status) == (0, 4, "cancelling")

    first = reconcile(_ctx(db_engine, tables, cloud, NOW + 20))
    assert first.cancels_signalled == 1 and first.errors == []
    assert "Item" in cloud.get_item(TableName=TABLE, Key={"id": {"S": f"cancel#{job.job_id}"}})
    # r0: sent, with its provider id (bounces reach the suppression list); r1, r3: never claimed,
    # closed in the cloud and cancelled; r2: still in its SES call, waits.
    assert _statuses(db_engine, tables, job.job_id) == [
        ("sent", None),
        ("cancelled", "job_cancelled"),
        ("queued", None),
        ("cancelled", "job_cancelled"),
    ]
    with db_engine.connect() as conn:
        pmid = conn.execute(
            sa.select(tables.recipients.c.providermessageid).where(tables.recipients.c.id == r0)
        ).scalar_one()
        status = conn.execute(
            sa.select(tables.jobs.c.status).where(tables.jobs.c.id == job.job_id)
        ).scalar_one()
    assert pmid == "ses-sent-before-cancel" and status == "cancelling"
    # The sender can never send a recipient the bridge closed: its claim replays the closing record.
    store = IdempotencyStore(cloud, TABLE, clock=lambda: NOW + 30)
    claim = store.claim_one(senders_key(COMPANY, str(job.job_id), str(r1)), NOW + 900, NOW + 30, attempt=1)
    assert claim.state is ClaimState.COMPLETED and claim.result is not None
    assert claim.result["error"]["code"] == "job_cancelled"
    assert store.job_cancelled(str(job.job_id))

    # The SES call of r2 completes (sent); the next pass records it and the job ends.
    _sent_record(cloud, job.job_id, r2, "ses-late")
    second = reconcile(_ctx(db_engine, tables, cloud, NOW + 40))
    assert second.settled_from_cloud == 1 and second.cancels_signalled == 0
    with db_engine.connect() as conn:
        counts = job_counts(conn, tables, job.job_id)
        assert counters_match(conn, tables) == []
        job_row = conn.execute(sa.select(tables.jobs).where(tables.jobs.c.id == job.job_id)).one()
    assert (counts.sent, counts.cancelled, counts.in_flight) == (2, 2, 0)
    assert job_row.status == "cancelled" and job_row.timecompleted == NOW + 40
    assert job_row.timecancelsignalled == NOW + 20


def test_accepted_but_never_processed_is_settled_after_the_deadline(db_engine: sa.Engine, cloud: Any) -> None:
    tables = make_tables(db_engine)
    itables, queue = make_iomad(db_engine)
    with db_engine.begin() as conn:
        # Rows of two recipients: row A (0, 1), row B (2, 3), row C (4, 5).
        job = create_job(conn, tables, recipients=6, per_email=2)
        park_rows(conn, itables, job.email_ids)
    rid = job.recipient_ids
    _sent_record(cloud, job.job_id, rid[0], "ses-a0")  # row A: one sent, one never claimed
    _in_progress(cloud, job.job_id, rid[4], NOW + 100)  # row C: one stuck in a dead SES call
    _sent_record(cloud, job.job_id, rid[5], "ses-c5")
    # Before the deadline nothing is decided for a job that was not cancelled.
    early = reconcile(_ctx(db_engine, tables, cloud, NOW + 60, queue))
    assert early.settled_from_cloud == 0
    assert {s for s, _ in _statuses(db_engine, tables, job.job_id)} == {"queued"}

    late = reconcile(_ctx(db_engine, tables, cloud, NOW + DEADLINE + 60, queue))
    assert late.errors == [] and late.settled_from_cloud == 6
    assert _statuses(db_engine, tables, job.job_id) == [
        ("sent", None),
        ("failed", "never_processed"),  # row A reached someone: no fallback, the failure shows
        ("restored", "never_processed"),  # row B: nobody reached, back to IOMAD
        ("restored", "never_processed"),
        ("failed", "outcome_unknown"),  # cannot be known: failed with the reason, never resent
        ("sent", None),
    ]
    row_a, row_b, row_c = job.email_ids
    with db_engine.connect() as conn:
        rows = email_state(conn, itables)
        counts = job_counts(conn, tables, job.job_id)
        assert counters_match(conn, tables) == []
        status = conn.execute(
            sa.select(tables.jobs.c.status).where(tables.jobs.c.id == job.job_id)
        ).scalar_one()
    assert rows[row_a][0] is not None and rows[row_c][0] is not None  # marked sent
    assert rows[row_b] == (None, NOW - 60)  # IOMAD sends it
    assert (counts.sent, counts.failed, counts.fell_back, counts.in_flight) == (2, 2, 2, 0)
    assert status == "partial_failure"
    # The recipients closed in the cloud stay closed for the sender.
    store = IdempotencyStore(cloud, TABLE, clock=lambda: NOW + DEADLINE + 70)
    for index in (1, 2, 3):
        key = senders_key(COMPANY, str(job.job_id), str(rid[index]))
        claim = store.claim_one(key, NOW + DEADLINE + 900, NOW + DEADLINE + 70)
        assert claim.state is ClaimState.COMPLETED
        assert claim.result is not None
        validate(
            "result_batch",
            {
                "type": "result_batch",
                "contract_version": 1,
                "report_id": "r-check",
                "company_id": 7,
                "reporter": "email_sender",
                "created_at": NOW,
                "results": [claim.result],
            },
        )


def test_an_unreachable_cloud_is_one_line_and_the_pass_goes_on(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=2, email_id_start=None)
        cancel_job(conn, tables, job.job_id, actor="cli:admin", now=NOW + 10)
    db = boto3.client(
        "dynamodb",
        region_name="eu-west-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=BotoConfig(connect_timeout=1, read_timeout=1, retries={"max_attempts": 0}),
    )
    report = reconcile(_ctx(db_engine, tables, db, NOW + 20))
    assert report.cancels_not_signalled == 1 and len(report.errors) == 2
    assert all("\n" not in line and ("check" in line or "Fix" in line) for line in report.errors), (
        report.errors
    )
    assert "127.0.0.1" not in " ".join(report.errors)
    assert report.nonces_purged == 0 and report.rows_marked_sent == 0  # the later steps ran


@pytest.mark.parametrize("bad", ["NUL \x00 in it", "lone \ud800 surrogate"])
def test_one_bad_result_is_stored_or_quarantined_and_reconciliation_goes_on(
    db_engine: sa.Engine, bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="eu-west-1")
        url = sqs.create_queue(QueueName="results-dlq")["QueueUrl"]
        tables = make_tables(db_engine)
        with db_engine.begin() as conn:
            job = create_job(conn, tables, recipients=3, email_id_start=None)
        failing = result(job, 0, "failed", code="MessageRejected")
        failing["error"]["message"] = bad
        # JSON escapes keep the body valid for SQS; the decoded text holds the bad character.
        sqs.send_message(QueueUrl=url, MessageBody=encode_message(result_batch(7, [failing])).decode())
        sqs.send_message(
            QueueUrl=url, MessageBody=encode_message(result_batch(7, [result(job, 1, "sent")])).decode()
        )
        sqs.send_message(
            QueueUrl=url, MessageBody=encode_message(result_batch(7, [result(job, 2, "sent")])).decode()
        )
        config = replace(BridgeConfig(), aws=replace(AwsConfig(), results_dlq_url=url))
        real = ingest_result_batch
        calls = {"n": 0}

        def once_unstorable(conn: sa.Connection, *args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 3:  # whatever else a driver may refuse: quarantined, not fatal
                raise sa.exc.DataError("INSERT ...", {}, Exception("value the engine refuses"))
            return real(conn, *args, **kwargs)

        monkeypatch.setattr(reconcile_module, "ingest_result_batch", once_unstorable)
        report = reconcile(ReconcileContext(db_engine, tables, config, clock=lambda: NOW + 30, sqs=sqs))
        assert report.errors == []
        assert (report.messages_applied, report.messages_quarantined) == (2, 1)
        r = tables.recipients
        with db_engine.connect() as conn:
            stored = conn.execute(
                sa.select(r.c.errormessage).where(r.c.id == job.recipient_ids[0])
            ).scalar_one()
            actions = [a for (a,) in conn.execute(sa.select(tables.audit_log.c.action))]
        assert "\ufffd" in stored and "\x00" not in stored
        assert "result_message_quarantined" in actions


def test_a_result_message_nested_too_deep_to_decode_is_quarantined(db_engine: sa.Engine) -> None:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="eu-west-1")
        url = sqs.create_queue(QueueName="results-dlq")["QueueUrl"]
        tables = make_tables(db_engine)
        with db_engine.begin() as conn:
            job = create_job(conn, tables, recipients=1, email_id_start=None)
        sqs.send_message(QueueUrl=url, MessageBody="[" * 100_000 + "]" * 100_000)  # RecursionError
        sqs.send_message(
            QueueUrl=url, MessageBody=encode_message(result_batch(7, [result(job, 0, "sent")])).decode()
        )
        config = replace(BridgeConfig(), aws=replace(AwsConfig(), results_dlq_url=url))
        report = reconcile(ReconcileContext(db_engine, tables, config, clock=lambda: NOW + 30, sqs=sqs))
        assert report.errors == []
        assert (report.messages_applied, report.messages_quarantined) == (1, 1)
