"""A certificate schedule end to end through emulated AWS (moto), on SQLite, MariaDB and
PostgreSQL: the bridge fires the schedule (one certificate per user who completed the course, or
per completed member of a cohort, once per slot), the outbox queues a ``certificate_batch``, the
real renderer Lambda stores each PDF and forwards the mail, and the real sender Lambda mails it with
the PDF attached."""

from __future__ import annotations

import email
import email.policy
import json
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from lambdas.handlers import certificate_renderer, email_sender
from moodle_bridge.commands.tick import build_submitters
from moodle_bridge.config import AwsConfig
from moodle_bridge.pipeline.outbox import Outbox
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.schedules.runner import create_schedule, preview_schedule, run_due, run_schedule
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.migrations import migrate
from moodle_bridge.storage.schedule_repo import ScheduleRepo
from offload_contract import validate
from tests.bridge.conftest import make_config
from tests.bridge.test_campaigns import COURSE, Site
from tests.bridge.test_schedules import SLOT1, T0, people, report_values
from tests.lambdas.conftest import Aws, FakeContext, sqs_event

COHORT = 5


def certificate_values(**changes: Any) -> dict[str, Any]:
    values = report_values(action_type="certificate", report=None, courseid=COURSE, name="Certificates")
    values.update(changes)
    return values


def _setup(
    aws: Aws, db_engine: sa.Engine, db_url: Any, *, certificates: bool = True
) -> tuple[Any, Any, Site]:
    site = Site(db_engine)
    people(site)
    migrate(db_engine, "mdl_")
    repo = BridgeRepo(build_bridge_tables("mdl_"))
    base = make_config(db_url)
    config = replace(
        base,
        aws=replace(
            AwsConfig(),
            jobs_queue_url=aws.jobs_url,
            certificates_queue_url=aws.certificates_url,
            region="eu-west-1",
        ),
        submit=replace(base.submit, sender_address="noreply@acme.example"),
    )
    with db_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(
            conn, CompanySettings(1, cloudenabled=True, allowcertificates=certificates), "test"
        )
    return repo, config, site


def test_a_certificate_schedule_runs_end_to_end_once_per_slot(
    aws: Aws, db_engine: sa.Engine, db_url: Any
) -> None:
    repo, config, _site = _setup(aws, db_engine, db_url)
    with db_engine.begin() as conn:
        sid = create_schedule(conn, repo, certificate_values(), actor="test", at=T0)

    # Preview: who would get one, and a sample mail; nothing is created.
    shown = preview_schedule(db_engine, repo, config, sid, at=T0)
    assert (shown.count, shown.recipients) == (3, ["u10@example.com", "u11@example.com", "u12@example.com"])
    assert shown.sample is not None and shown.sample["subject"] == "Your certificate: Safety 101"

    [fired] = run_due(db_engine, repo, config, at=SLOT1, upload=None)
    # 10, 11 and 12 completed the course in company 1 (whenever); 20 is company 2's; 14 never did.
    assert (fired.outcome, fired.rows, fired.recipients) == ("queued", 3, 3)
    with db_engine.connect() as conn:
        job = conn.execute(sa.select(repo.t.jobs)).one()
        certificates = conn.execute(sa.select(repo.t.certificates)).all()
    assert (job.jobtype, job.source, job.recipientstotal) == ("certificate", "schedule", 3)
    assert sorted(c.userid for c in certificates) == [10, 11, 12]
    assert {c.courseid for c in certificates} == {COURSE}

    # Once per (schedule, slot, user): the slot again (a second bridge, a stale view) adds nothing.
    with db_engine.begin() as conn:
        ScheduleRepo(repo.t).set_next(conn, sid, lastslot=None, nextrun=SLOT1)
        conn.execute(repo.t.schedules.update().values(lastslot=None))
    again = run_schedule(db_engine, repo, config, sid, at=SLOT1 + 60, actor="b2", upload=None)
    assert again.outcome == "already_fired"
    with db_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(repo.t.recipients)).scalar() == 3

    assert Outbox(db_engine, repo, config, build_submitters(config)).submit_due().submitted == 1
    [message] = aws.drain(aws.certificates_url)
    batch = json.loads(message["Body"])
    validate("certificate_batch", batch)
    assert batch["delivery"] == "email_attachment"
    assert sorted(r["to"] for r in batch["recipients"]) == [
        "u10@example.com",
        "u11@example.com",
        "u12@example.com",
    ]
    codes = {r["certificate"]["verification_code"] for r in batch["recipients"]}
    assert codes == {c.verifycode for c in certificates}

    certificate_renderer.renderer.cache_clear()
    email_sender.sender.cache_clear()
    try:
        assert certificate_renderer.handler(sqs_event(message["Body"]), FakeContext()) == {
            "batchItemFailures": []
        }
        rendered = [r for r in aws.results() if r["status"] == "rendered"]
        assert len(rendered) == 3
        [forwarded] = aws.drain(aws.jobs_url)
        assert email_sender.handler(sqs_event(forwarded["Body"]), FakeContext()) == {"batchItemFailures": []}
    finally:
        certificate_renderer.renderer.cache_clear()
        email_sender.sender.cache_clear()
    assert sorted(r["status"] for r in aws.results()) == ["sent"] * 3
    raws = [m.raw_data for m in aws.ses.sent_messages() if getattr(m, "raw_data", None)]
    assert len(raws) == 3
    mail = email.message_from_string(raws[0], policy=email.policy.default)
    assert str(mail["Subject"]) == "Your certificate: Safety 101"
    learner = mail["To"].addresses[0].addr_spec.split("@")[0].removeprefix("u")
    [sent] = [r for r in batch["recipients"] if r["to"] == f"u{learner}@example.com"]
    text = mail.get_body(preferencelist=("plain",))
    assert text is not None
    body = text.get_content()
    assert f"Hello First{learner} Last{learner}" in body and "for Safety 101" in body
    assert sent["certificate"]["verification_code"] in body
    [part] = list(mail.iter_attachments())
    assert part.get_filename() == "certificate.pdf"
    pdf = part.get_payload(decode=True)
    assert isinstance(pdf, bytes) and pdf.startswith(b"%PDF")


def test_a_cohort_limits_the_certificates_and_routing_can_keep_them_local(
    aws: Aws, db_engine: sa.Engine, db_url: Any
) -> None:
    repo, config, site = _setup(aws, db_engine, db_url, certificates=False)
    with db_engine.begin() as conn:
        conn.execute(site.t["cohort"].insert(), [{"id": COHORT, "name": "Night shift", "contextid": 1}])
        conn.execute(
            site.t["cohort_members"].insert(), [{"cohortid": COHORT, "userid": u} for u in (11, 14, 20)]
        )
        sid = create_schedule(conn, repo, certificate_values(cohortid=COHORT), actor="test", at=T0)
    # The company does not offload certificates: recorded as not_sent, with the reason; no job.
    [kept] = run_due(db_engine, repo, config, at=SLOT1, upload=None)
    assert (kept.outcome, kept.rows) == ("not_sent", 1)
    assert "not routed to the cloud" in kept.notes[0]
    # Certificates on, but under the threshold: kept too; cloud_preference cloud ignores the threshold.
    with db_engine.begin() as conn:
        repo.save_settings(
            conn, CompanySettings(1, cloudenabled=True, allowcertificates=True, threshold=50), "test"
        )
    below = run_schedule(
        db_engine, repo, config, sid, at=SLOT1 + 30, actor="test", upload=None, now_slot=True
    )
    assert below.outcome == "not_sent" and "threshold" in below.notes[0]
    with db_engine.begin() as conn:
        conn.execute(repo.t.schedules.update().values(cloud_preference="cloud"))
    # Only 11 is in the cohort and completed the course (14 never did; 20 is another company's).
    fired = run_schedule(
        db_engine, repo, config, sid, at=SLOT1 + 60, actor="test", upload=None, now_slot=True
    )
    assert (fired.outcome, fired.rows, fired.recipients) == ("queued", 1, 1)
    with db_engine.connect() as conn:
        assert [c.userid for c in conn.execute(sa.select(repo.t.certificates))] == [11]
        runs = ScheduleRepo(repo.t).runs(conn, sid)
    assert [r.outcome for r in runs] == ["queued", "not_sent", "not_sent"]
