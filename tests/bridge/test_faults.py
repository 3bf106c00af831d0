"""Crashes between steps and an unreachable queue: nothing lost, nothing sent twice.

Run on SQLite and MariaDB (the production engine); PostgreSQL shares the code paths.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.pipeline.claiming import ClaimPass
from moodle_bridge.pipeline.iomad_contents import IomadRowContents
from moodle_bridge.pipeline.outbox import LEASE_SECONDS, Outbox, backoff_seconds
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.iomad.queue import PARKED_DUE_BASE
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.secrets_at_rest import SecretBox
from moodle_bridge.transports.targets import SqsSubmitter, SubmitError
from tests.bridge.conftest import drain, make_config, with_queues
from tests.bridge.iomad_world import IomadWorld

T = build_bridge_tables("mdl_")
ENGINES = pytest.mark.parametrize(
    "db_engine_name",
    [pytest.param("sqlite", marks=pytest.mark.sqlite), pytest.param("mariadb", marks=pytest.mark.mariadb)],
)


class Boom(Exception):
    pass


def _world(engine, repo, n: int = 5) -> tuple[IomadWorld, list[int]]:
    world = IomadWorld.create(engine)
    world.add_company(1)
    ids = []
    for uid in range(10, 10 + n):
        world.add_user(uid, f"u{uid}@example.com", companyid=1)
        ids.append(world.queue("license_allocated", uid, 1, body=f"<p>{uid}</p>"))
    with engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
    return world, ids


def _count(engine, table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


@ENGINES
def test_crash_inside_the_claim_transaction_leaves_iomad_rows_untouched(
    bridge_engine, db_url, repo, aws
) -> None:
    world, _ids = _world(bridge_engine, repo)
    before = world.rows()
    config = with_queues(make_config(db_url), aws)

    def crash(_parked: list[int]) -> None:
        raise Boom("power cut after parking")

    def factory(*args: Any, **kwargs: Any) -> ClaimPass:
        return ClaimPass(*args, after_park=crash, **kwargs)

    with pytest.raises(Boom):
        run_tick(
            bridge_engine,
            config,
            submitters=build_submitters(config, sqs_client=aws["sqs"]),
            claim_pass_factory=factory,
        )
    assert world.rows() == before  # the park rolled back with everything else
    for table in (T.claims, T.jobs, T.recipients, T.batches):
        assert _count(bridge_engine, table) == 0
    run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    got = sorted(r["to"] for m in drain(aws) for r in m["recipients"])
    assert got == sorted(f"u{uid}@example.com" for uid in range(10, 15))


@ENGINES
def test_crash_after_claim_before_submit_is_picked_up_by_the_next_tick(
    bridge_engine, db_url, repo, aws
) -> None:
    world, ids = _world(bridge_engine, repo)
    config = with_queues(make_config(db_url), aws)
    # claim only, then "die" before the outbox runs
    with bridge_engine.connect() as conn:
        from moodle_bridge.sources.iomad.schema import detect_iomad

        iomad = detect_iomad(conn, "mdl_")
    ClaimPass(bridge_engine, repo, iomad, config, box=SecretBox(config.password_key_bytes())).run()
    assert all(r.due >= PARKED_DUE_BASE for r in world.rows().values() if r.id in ids)
    assert drain(aws) == []
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.claimed == 0
    got = sorted(r["to"] for m in drain(aws) for r in m["recipients"])
    assert got == sorted(f"u{uid}@example.com" for uid in range(10, 15))


class FlakyClient:
    """An SQS client that is unreachable until ``up`` is set."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.up = False
        self.calls = 0

    def send_message(self, **kwargs: Any) -> Any:
        self.calls += 1
        if not self.up:
            raise ConnectionError("connect timeout")
        return self.real.send_message(**kwargs)


@ENGINES
def test_unreachable_queue_retries_with_backoff_then_succeeds(bridge_engine, db_url, repo, aws) -> None:
    world, _ids = _world(bridge_engine, repo)
    config = with_queues(make_config(db_url), aws)
    client = FlakyClient(aws["sqs"])
    submitters = build_submitters(config, sqs_client=client)
    report = run_tick(bridge_engine, config, submitters=submitters)
    assert report.outbox is not None and report.outbox.retried == 1 and report.outbox.submitted == 0
    with bridge_engine.connect() as conn:
        batch = conn.execute(sa.select(T.batches)).one()
        statuses = {r.status for r in conn.execute(sa.select(T.recipients))}
    assert batch.status == "pending" and batch.tries == 1
    assert batch.lasterror == "sqs: ConnectionError"
    assert batch.nexttry > batch.timecreated
    assert statuses == {"pending"}
    # before nexttry nothing is attempted
    calls = client.calls
    run_tick(bridge_engine, config, submitters=submitters)
    assert client.calls == calls
    # the queue comes back and time passes: submitted once
    client.up = True
    outbox = Outbox(
        bridge_engine,
        repo,
        config,
        submitters,
        iomad=IomadRowContents(world.tables),
        clock=lambda: batch.nexttry + 1,
    )
    assert outbox.submit_due().submitted == 1
    assert len(drain(aws)) == 1
    with bridge_engine.connect() as conn:
        assert {r.status for r in conn.execute(sa.select(T.recipients))} == {"queued"}


def test_backoff_grows_and_is_capped() -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_seconds(n, 15, 900, rng) for n in range(1, 12)]
    assert 7 <= delays[0] <= 15
    assert all(d <= 900 for d in delays)
    assert delays[-1] >= 450


@ENGINES
def test_crash_between_accept_and_mark_resubmits_the_same_batch(
    bridge_engine, db_url, repo, aws, monkeypatch
) -> None:
    world, _ids = _world(bridge_engine, repo)
    config = with_queues(make_config(db_url), aws)
    submitters = build_submitters(config, sqs_client=aws["sqs"])
    original = repo.mark_batch_submitted
    state = {"crash": True}

    def mark(*args: Any, **kwargs: Any) -> bool:
        if state["crash"]:
            state["crash"] = False
            raise Boom("killed after the queue accepted")
        return bool(original(*args, **kwargs))

    monkeypatch.setattr(repo, "mark_batch_submitted", mark)
    outbox = Outbox(bridge_engine, repo, config, submitters, iomad=IomadRowContents(world.tables))
    with bridge_engine.connect() as conn:
        from moodle_bridge.sources.iomad.schema import detect_iomad

        iomad = detect_iomad(conn, "mdl_")
    ClaimPass(bridge_engine, repo, iomad, config, box=SecretBox(config.password_key_bytes())).run()
    with pytest.raises(Boom):
        outbox.submit_due()
    assert outbox.submit_due().submitted == 0  # the dead submitter's lease still holds
    later = Outbox(
        bridge_engine,
        repo,
        config,
        submitters,
        iomad=IomadRowContents(world.tables),
        clock=lambda: int(time.time()) + LEASE_SECONDS + 1,
    )
    assert later.submit_due().submitted == 1
    first, second = drain(aws)
    # Same batch id and recipient ids: the email sender's idempotency (job_id, recipient_id)
    # turns the second delivery into a no-op.
    assert first["batch_id"] == second["batch_id"]
    assert [r["recipient_id"] for r in first["recipients"]] == [
        r["recipient_id"] for r in second["recipients"]
    ]


@ENGINES
def test_queue_down_past_the_deadline_gives_rows_back_to_iomad(bridge_engine, db_url, repo, aws) -> None:
    world, _ids = _world(bridge_engine, repo)
    before = world.rows()
    config = with_queues(make_config(db_url), aws)
    client = FlakyClient(aws["sqs"])
    submitters = build_submitters(config, sqs_client=client)
    run_tick(bridge_engine, config, submitters=submitters)
    outbox = Outbox(
        bridge_engine, repo, config, submitters, iomad=IomadRowContents(world.tables), clock=lambda: 2**40
    )
    report = outbox.submit_due()
    assert report.abandoned == 1 and report.restored_rows == 5
    assert world.rows() == before  # exactly as IOMAD queued them: IOMAD sends them now
    with bridge_engine.connect() as conn:
        recipients = conn.execute(sa.select(T.recipients)).all()
        claims = conn.execute(sa.select(T.claims)).all()
    assert {(r.status, r.errorcode) for r in recipients} == {("restored", "submit_abandoned")}
    assert {c.state for c in claims} == {"released"}
    # and the bridge never takes them again
    report2 = run_tick(bridge_engine, config, submitters=submitters)
    assert report2.claim is not None and report2.claim.claimed == 0


def test_sqs_submitter_error_names_no_body() -> None:
    class Down:
        def send_message(self, **kwargs: Any) -> Any:
            raise RuntimeError(kwargs["MessageBody"])

    with pytest.raises(SubmitError) as err:
        SqsSubmitter(Down(), {"email_batch": "https://q"}).submit("email_batch", "b1", 1, b'{"secret":"pw"}')
    assert "pw" not in str(err.value)


@ENGINES
class OverlapCheckingClient:
    """Proves that calls overlap: the 2nd and 3rd calls each wait for the other (a barrier),
    which only a concurrent caller can pass; the 1st (the target's probe) must come alone."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.lock = threading.Lock()
        self.calls = 0
        self.in_flight = 0
        self.alone_first = False
        self.pair = threading.Barrier(2, timeout=10)

    def send_message(self, **kwargs: Any) -> Any:
        with self.lock:
            self.calls += 1
            n = self.calls
            self.in_flight += 1
        try:
            if n == 1:
                time.sleep(0.2)  # anything started meanwhile would be seen below
                with self.lock:
                    self.alone_first = self.in_flight == 1
            elif n in (2, 3):
                self.pair.wait()  # raises BrokenBarrierError if the calls ran one by one
            return self.real.send_message(**kwargs)
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.mark.sqlite
@pytest.mark.parametrize("db_engine_name", ["sqlite"])
def test_a_healthy_queue_gets_a_groups_batches_concurrently_after_one_alone(
    bridge_engine, db_url, repo, aws
) -> None:
    _world(bridge_engine, repo)
    config = with_queues(make_config(db_url, max_recipients=1), aws)
    client = OverlapCheckingClient(aws["sqs"])
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=client))
    assert report.outbox is not None and report.outbox.submitted == 5 and report.outbox.retried == 0
    assert client.calls == 5 and client.alone_first
    assert sorted(m["recipients"][0]["to"] for m in drain(aws)) == [
        f"u{u}@example.com" for u in range(10, 15)
    ]


def test_a_down_queue_is_tried_once_per_pass_and_its_other_batches_wait(
    bridge_engine, db_url, repo, aws
) -> None:
    _world(bridge_engine, repo)
    config = with_queues(make_config(db_url, max_recipients=2), aws)
    client = FlakyClient(aws["sqs"])
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=client))
    assert client.calls == 1  # not one time-out per batch
    assert report.outbox is not None and report.outbox.retried == 3
    with bridge_engine.connect() as conn:
        batches = conn.execute(sa.select(T.batches).order_by(T.batches.c.id)).all()
    assert [b.tries for b in batches] == [1, 0, 0]
    assert len({b.nexttry for b in batches}) == 1
    assert all(b.status == "pending" and b.leasetoken is None for b in batches)
    assert batches[1].lasterror == "deferred: sqs: ConnectionError"
