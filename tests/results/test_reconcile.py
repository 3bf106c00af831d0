"""Reconciliation against moto's in-process SQS: drain the results DLQ (push) or queue (pull),
delete only after commit, move poison messages aside, flag overdue jobs, settle IOMAD rows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import boto3  # type: ignore[import-untyped,unused-ignore]
import pytest
import sqlalchemy as sa
from moto import mock_aws

from moodle_bridge.config import AwsConfig, BridgeConfig, CallbackConfig
from moodle_bridge.results.reconcile import ReconcileContext, reconcile
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


@pytest.fixture
def sqs() -> Any:
    with mock_aws():
        yield boto3.client("sqs", region_name="eu-west-1")


def _config(url: str, mode: str) -> BridgeConfig:
    aws = replace(
        AwsConfig(),
        results_dlq_url=url if mode == "push" else "",
        results_queue_url=url if mode == "pull" else "",
    )
    return replace(BridgeConfig(), aws=aws, callbacks=replace(CallbackConfig(), results_mode=mode))


def _send(sqs: Any, url: str, body: bytes | str, key_id: str | None = None) -> None:
    attributes = {"key_id": {"DataType": "String", "StringValue": key_id}} if key_id else {}
    sqs.send_message(
        QueueUrl=url,
        MessageBody=body if isinstance(body, str) else body.decode(),
        MessageAttributes=attributes,
    )


def _depth(sqs: Any, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_drains_durable_results_and_moves_poison_aside(db_engine: sa.Engine, sqs: Any, mode: str) -> None:
    url = sqs.create_queue(QueueName=f"results-{mode}")["QueueUrl"]
    tables = make_tables(db_engine)
    itables, queue = make_iomad(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=4, per_email=2)
        foreign = create_job(conn, tables, company_id=8, recipients=1, email_id_start=None)
        park_rows(conn, itables, job.email_ids)
    good = result_batch(7, [result(job, i, "sent") for i in range(4)], batch_id=job.batch_key)
    _send(sqs, url, encode_message(good), key_id="k1.c7")
    _send(sqs, url, encode_message(good), key_id="k1.c7")  # delivered twice by SQS
    _send(sqs, url, "{not json")
    _send(sqs, url, encode_message({"type": "result_batch"}))
    _send(sqs, url, encode_message(result_batch(7, [result(foreign, 0, "sent")])))  # wrong company
    _send(sqs, url, encode_message(result_batch(8, [result(foreign, 0, "sent")])), key_id="k1.c7")
    ctx = ReconcileContext(
        db_engine, tables, _config(url, mode), clock=lambda: NOW + 30, sqs=sqs, iomad_queue=queue
    )
    report = reconcile(ctx)
    assert report.queue_url == url
    assert (report.messages_applied, report.messages_duplicate, report.messages_quarantined) == (1, 1, 4)
    assert report.results_applied == 4
    assert _depth(sqs, url) == (0, 4)  # applied ones deleted; poison hidden, not blocking
    with db_engine.connect() as conn:
        assert counters_match(conn, tables) == []
        assert all(sent == NOW + 30 for sent, _ in email_state(conn, itables).values())
        quarantined = (
            conn.execute(
                sa.select(tables.audit_log.c.detail).where(
                    tables.audit_log.c.action == "result_message_quarantined"
                )
            )
            .scalars()
            .all()
        )
        foreign_status = conn.execute(
            sa.select(tables.recipients.c.status).where(tables.recipients.c.jobid == foreign.job_id)
        ).scalar_one()
    assert len(quarantined) == 4 and all("sqs_message_id" in d for d in quarantined)
    assert foreign_status == "queued"
    # A second tick finds nothing new.
    again = reconcile(ctx)
    assert (again.messages_applied, again.messages_quarantined) == (0, 0)


def test_overdue_flag_settle_sweep_and_nonce_purge(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    itables, queue = make_iomad(db_engine)
    with db_engine.begin() as conn:
        stuck = create_job(conn, tables, recipients=1, email_id_start=None)
        settled = create_job(conn, tables, recipients=2, per_email=2)
        park_rows(conn, itables, settled.email_ids)
        # Final recipients whose claim is still open (e.g. written while the IOMAD link was down).
        conn.execute(
            tables.recipients.update()
            .where(tables.recipients.c.jobid == settled.job_id)
            .values(status="failed", errorcode="x")
        )
        conn.execute(
            tables.nonces.insert(),
            [
                {"keyid": "k1.c7", "nonce": "n" * 20, "timeexpires": NOW},
                {"keyid": "k1.c7", "nonce": "m" * 20, "timeexpires": NOW + 10_000},
            ],
        )
        session = {"userid": 2, "principal": "{}", "csrftoken": "c" * 32, "timecreated": NOW}
        conn.execute(
            tables.dash_sessions.insert(),
            [
                {**session, "sessionhash": "a" * 64, "timechecked": NOW, "timeexpires": NOW},
                {**session, "sessionhash": "b" * 64, "timechecked": NOW, "timeexpires": NOW + 10_000},
            ],
        )
    config = replace(BridgeConfig(), job_deadline_seconds=3600)
    ctx = ReconcileContext(db_engine, tables, config, clock=lambda: NOW + 7200, iomad_queue=queue)
    report = reconcile(ctx)
    assert stuck.job_id in report.jobs_flagged_overdue
    assert report.rows_restored == 1 and report.nonces_purged == 1
    assert report.sessions_purged == 1  # dashboard sessions expire without anybody signing in
    with db_engine.connect() as conn:
        assert email_state(conn, itables)[settled.email_ids[0]][0] is None  # back with IOMAD
        assert counters_match(conn, tables) == []
        job_row = conn.execute(sa.select(tables.jobs).where(tables.jobs.c.id == settled.job_id)).one()
    assert job_row.status == "fell_back" and job_row.recipientsfellback == 2
    # Flagged once only; the status of the stuck job stays.
    assert reconcile(ctx).jobs_flagged_overdue == []
    with db_engine.connect() as conn:
        assert (
            conn.execute(sa.select(tables.jobs.c.status).where(tables.jobs.c.id == stuck.job_id)).scalar_one()
            == "queued"
        )
