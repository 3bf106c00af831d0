"""A scheduled report end to end through emulated AWS (moto): the bridge fires the schedule,
puts the file in S3, the outbox queues a batch that names it, and the real email sender Lambda
fetches it, checks its SHA-256 and mails it as an attachment. On SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import json
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from lambdas.email.contents import ContentError, ObjectFetcher
from lambdas.handlers import email_sender
from moodle_bridge.commands.tick import attachment_uploader, build_submitters
from moodle_bridge.config import AwsConfig
from moodle_bridge.pipeline.outbox import Outbox
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.schedules.runner import attachment_key, create_schedule, run_due
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.migrations import migrate
from moodle_bridge.storage.schedule_repo import ScheduleRepo
from tests.bridge.conftest import make_config
from tests.bridge.test_campaigns import Site
from tests.bridge.test_schedules import SLOT1, T0, people, report_values, xlsx_text
from tests.lambdas.conftest import ENV, Aws, FakeContext, sqs_event


def test_a_scheduled_report_runs_end_to_end(aws: Aws, db_engine: sa.Engine, db_url: Any) -> None:
    site = Site(db_engine)
    people(site)
    migrate(db_engine, "mdl_")
    repo = BridgeRepo(build_bridge_tables("mdl_"))
    base = make_config(db_url)
    config = replace(
        base,
        aws=replace(
            AwsConfig(), jobs_queue_url=aws.jobs_url, content_bucket=ENV["CONTENT_BUCKET"], region="eu-west-1"
        ),
        submit=replace(base.submit, sender_address="noreply@acme.example"),
    )
    with db_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
        sid = create_schedule(conn, repo, report_values(), actor="test", at=T0)
        row = ScheduleRepo(repo.t).get(conn, sid)

    upload = attachment_uploader(config, s3_client=aws.s3)
    [fired] = run_due(db_engine, repo, config, at=SLOT1, upload=upload)
    assert fired.outcome == "queued"
    assert Outbox(db_engine, repo, config, build_submitters(config)).submit_due().submitted == 1

    [message] = aws.drain(aws.jobs_url)
    [queued] = json.loads(message["Body"])["recipients"]
    [named] = queued["attachments"]
    assert set(named) == {"filename", "content_type", "ref"}  # a reference, never the file
    assert named["ref"]["key"] == attachment_key(row, SLOT1)
    email_sender.sender.cache_clear()
    try:
        response = email_sender.handler(sqs_event(message["Body"]), FakeContext())
    finally:
        email_sender.sender.cache_clear()
    assert response == {"batchItemFailures": []}
    [result] = aws.results()
    assert result["status"] == "sent"

    [raw] = [m.raw_data for m in aws.ses.sent_messages() if getattr(m, "raw_data", None)]
    mail = email.message_from_string(raw, policy=email.policy.default)
    assert mail["To"].addresses[0].addr_spec == "u30@example.com"
    assert str(mail["Subject"]).startswith("Weekly completions: 2 rows")
    [part] = list(mail.iter_attachments())
    assert part.get_filename() == "completions-2026-06-02.xlsx"
    body = part.get_payload(decode=True)
    assert isinstance(body, bytes)
    stored = aws.s3.get_object(Bucket=ENV["CONTENT_BUCKET"], Key=attachment_key(row, SLOT1))["Body"].read()
    assert body == stored
    assert "First10" in xlsx_text(body) and "First11" in xlsx_text(body)

    # The sender checks what it fetched: a file that is not the one the message names is refused.
    altered = {**named["ref"], "sha256": "0" * 64}
    with pytest.raises(ContentError) as refused:
        ObjectFetcher(aws.s3, ENV["CONTENT_BUCKET"]).fetch(altered)
    assert refused.value.code == "reference_mismatch"
