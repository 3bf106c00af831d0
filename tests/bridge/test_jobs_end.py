"""Every job ends (issue 12): jobs whose recipients all failed at creation or all went back to
IOMAD reach a final status, and after an SQS-down fallback each recipient is recorded as what
really happens to it. On SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.pipeline.iomad_contents import IomadRowContents
from moodle_bridge.pipeline.outbox import Outbox
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.results.job_control import job_counts
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from tests.bridge.conftest import make_config, with_queues
from tests.bridge.iomad_world import IomadWorld
from tests.bridge.test_faults import FlakyClient

T = build_bridge_tables("mdl_")


def _world(engine, repo) -> IomadWorld:
    world = IomadWorld.create(engine)
    world.add_company(1)
    with engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
    return world


def _jobs(engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(T.jobs).order_by(T.jobs.c.id)))


def test_sqs_down_fallback_records_each_recipient_and_ends_the_job(bridge_engine, db_url, repo, aws) -> None:
    world = _world(bridge_engine, repo)
    for uid in (10, 11):
        world.add_user(uid, f"u{uid}@example.com", companyid=1)
        # Each row fans out to its user and a second address: two recipients, two batches.
        world.queue("license_allocated", uid, 1, template_props={"emailtoother": f"boss{uid}@example.com"})
    before = world.rows()
    config = with_queues(make_config(db_url, max_recipients=1), aws)
    client = FlakyClient(aws["sqs"])
    submitters = build_submitters(config, sqs_client=client)
    run_tick(bridge_engine, config, submitters=submitters)
    with bridge_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(T.batches)).scalar_one() == 4
    outbox = Outbox(
        bridge_engine, repo, config, submitters, iomad=IomadRowContents(world.tables), clock=lambda: 2**40
    )
    outbox.submit_due()
    assert world.rows() == before  # both rows are IOMAD's again, exactly as queued
    with bridge_engine.connect() as conn:
        recipients = conn.execute(sa.select(T.recipients)).all()
        batches = {b.status for b in conn.execute(sa.select(T.batches))}
        (job,) = _jobs(bridge_engine)
        counts = job_counts(conn, T, int(job.id))
    # IOMAD sends every one of them: none is "failed", none is "cancelled".
    assert {(r.status, r.errorcode) for r in recipients} == {("restored", "submit_abandoned")}
    assert batches == {"abandoned"}
    assert job.status == "fell_back" and job.timecompleted is not None
    assert (counts.fell_back, counts.failed, counts.cancelled, counts.in_flight) == (4, 0, 0, 0)
    assert (job.recipientsfellback, job.recipientscancelled, job.recipientsfailed) == (4, 0, 0)


def test_a_job_whose_recipients_all_fail_at_creation_ends(bridge_engine, db_url, repo, aws) -> None:
    world = _world(bridge_engine, repo)
    world.add_user(10, "u10@example.com", companyid=1)
    # The row's user is fine, but suppressed: skipped at creation; its second address is invalid.
    world.queue("license_allocated", 10, 1, template_props={"emailtoother": "not an address"})
    with bridge_engine.begin() as conn:
        conn.execute(
            T.suppressions.insert().values(
                companyid=1, address="u10@example.com", reason="bounce", timecreated=1
            )
        )
    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    jobs = _jobs(bridge_engine)
    with bridge_engine.connect() as conn:
        statuses = sorted((r.status, r.errorcode) for r in conn.execute(sa.select(T.recipients)))
    assert report.claim is not None and jobs
    # The scenario: every recipient is final at creation (nothing will ever report on them).
    assert statuses and not {"pending", "queued"} & {s for s, _ in statuses}, statuses
    for job in jobs:
        assert job.status in ("completed", "failed", "fell_back", "partial_failure"), (job.status, statuses)
        assert job.timecompleted is not None
        with bridge_engine.connect() as conn:
            counts = job_counts(conn, T, int(job.id))
        assert counts.in_flight == 0
        assert (
            (
                counts.sent
                + counts.delivered
                + counts.failed
                + counts.bounced
                + counts.complained
                + counts.skipped
                + counts.fell_back
                + counts.cancelled
            )
            == counts.total
            == job.recipientstotal
        )


def test_certificates_only_offloads_completions_whole(bridge_engine, db_url, repo, aws) -> None:
    """Cloud on for certificates only: each completion row goes to the cloud whole (the learner's
    certificate mail and the managers' copies of it); other mail stays with IOMAD."""
    import time

    from tests.bridge.conftest import drain

    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    world.add_user(9, "boss@example.com", companyid=1, manager=True)
    world.add_course(5, "Safety 101")
    at = int(time.time()) - 120
    completions = []
    for uid in range(10, 15):
        world.add_user(uid, f"u{uid}@example.com", companyid=1)
        world.complete(uid, 5, 1, at)
        completions.append(world.queue("completion_course_user", uid, 1, courseid=5, due=at))
    other = world.queue("license_allocated", 10, 1)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(
            conn, CompanySettings(1, cloudenabled=True, allowemail=False, allowcertificates=True), "test"
        )
    before = world.rows()
    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.claimed == 5
    assert dict(report.claim.left_local) == {"emails_not_allowed": 1}
    assert world.rows()[other] == before[other]  # plain mail stays with IOMAD
    certs = drain(aws, "certificates")
    copies = drain(aws, "jobs")
    assert sorted(r["to"] for m in certs for r in m["recipients"]) == [
        f"u{uid}@example.com" for uid in range(10, 15)
    ]
    assert sorted(r["to"] for m in copies for r in m["recipients"]) == ["boss@example.com"] * 5
