"""Fault injection over the whole pipeline: every recipient gets exactly one email.

Small focused scenarios (docs/faults.md): each bridge kill point, a dropped database
connection, and IOMAD's cron running at the same moment (MariaDB, its real lock). The
10,000-recipient pass with the cloud-side faults is test_ten_thousand.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from demo.event_source import drain
from demo.faults import BridgeKilled, CloudFaults, Pipeline, pipeline
from moodle_bridge.pipeline.claiming import ClaimPass
from moodle_bridge.transports.targets import Submitter
from tests.faults.checks import assert_exactly_once

pytestmark = pytest.mark.slow


class _KillAfterSubmit:
    """The queue accepted the batch; the bridge dies before it records that."""

    def __init__(self, real: Submitter, before: bool) -> None:
        self.real, self.before, self.armed = real, before, True

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed and self.before:
            self.armed = False
            raise BridgeKilled("killed before the queue was called")
        result = self.real.submit(*args, **kwargs)
        if self.armed:
            self.armed = False
            raise BridgeKilled("killed after the queue accepted the batch")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


KILL_POINTS = ["inside-claim", "after-claim-before-submit", "before-submit", "after-submit-before-record"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_bridge_killed_at_each_step_then_the_next_tick_carries_on(point: str) -> None:
    with pipeline(30) as p:
        if point == "inside-claim":

            def park_then_die(*args: Any, **kwargs: Any) -> ClaimPass:
                def die(_ids: list[int]) -> None:
                    raise BridgeKilled("killed after parking IOMAD rows, before commit")

                return ClaimPass(*args, after_park=die, **kwargs)

            with pytest.raises(BridgeKilled):
                p.tick(claim_pass_factory=park_then_die)
        elif point == "after-claim-before-submit":

            def claim_then_die(*args: Any, **kwargs: Any) -> ClaimPass:
                claimer = ClaimPass(*args, **kwargs)
                real_run = claimer.run

                def run(*a: Any, **k: Any) -> Any:
                    real_run(*a, **k)
                    raise BridgeKilled("killed after the claim committed")

                claimer.run = run  # type: ignore[method-assign]
                return claimer

            with pytest.raises(BridgeKilled):
                p.tick(claim_pass_factory=claim_then_die)
        else:
            with pytest.raises(BridgeKilled):
                p.tick(wrap_submitter=lambda s: _KillAfterSubmit(s, before=point == "before-submit"))
        p.settle(tick=lambda: _tick_after_lease(p))
        v = p.verdict()
    assert_exactly_once(v)


def _tick_after_lease(p: Pipeline) -> Any:
    """A later cron pass: the dead pass's batch lease has run out by then."""
    from moodle_bridge.pipeline.outbox import LEASE_SECONDS

    with _clock_shift(LEASE_SECONDS + 1):
        return p.tick()


def _clock_shift(seconds: int) -> Any:
    import contextlib
    import functools
    from unittest import mock

    from moodle_bridge.pipeline.outbox import Outbox
    from moodle_bridge.storage.database import now as unix_now

    @contextlib.contextmanager
    def shifted() -> Any:
        later = functools.partial(Outbox, clock=lambda: unix_now() + seconds)
        with mock.patch("moodle_bridge.commands.tick.Outbox", later):
            yield

    return shifted()


@pytest.mark.parametrize("ses_took_it", [False, True], ids=["before-ses-accepted", "after-ses-accepted"])
def test_lambda_killed_inside_the_crash_window_still_reaches_everyone_once(ses_took_it: bool) -> None:
    """The sender dies during an SES call. If SES took it, its Send event settles the claim;
    if not, the Send watermark (moved on by the sender's probe) proves it, and it is resent."""
    faults = (
        CloudFaults(crash_sender_after_ses_accepted={1})
        if ses_took_it
        else CloudFaults(crash_sender_mid_batch={1})
    )
    with pipeline(60, faults=faults) as p:
        p.tick()
        p.settle()
        v = p.verdict()
        injected = dict(p.injected)
    assert sum(n for kind, n in injected.items() if kind.startswith("Lambda crash mid-batch")) == 1, injected
    assert_exactly_once(v)
    assert v.probes == (0 if ses_took_it else 1), v.summary()


def test_database_connection_dropped_mid_tick_then_recovered() -> None:
    with pipeline(30) as p:
        engine = sa.create_engine(p.db_url)
        statements = {"n": 0}

        def drop(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements["n"] += 1
            if statements["n"] == 25:
                raise sa.exc.OperationalError(
                    statement, {}, ConnectionResetError("server closed the connection")
                )

        sa.event.listen(engine, "before_cursor_execute", drop)
        with pytest.raises(sa.exc.OperationalError):
            p.tick(engine=engine)
        engine.dispose()
        p.settle(tick=lambda: _tick_after_lease(p))
        v = p.verdict()
    assert_exactly_once(v)


@pytest.mark.mariadb
@pytest.mark.parametrize("db_engine_name", ["mariadb"])
def test_mariadb_connection_killed_by_the_server_mid_tick(db_url: Any) -> None:
    """A real drop: the server KILLs the bridge's connection in the middle of a pass."""
    url = db_url.render_as_string(hide_password=False)
    with pipeline(30, db_url=url) as p:
        engine = sa.create_engine(url)
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        statements = {"n": 0}

        def kill(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements["n"] += 1
            if statements["n"] == 25:
                thread_id = conn.connection.dbapi_connection.thread_id()
                with admin.connect() as other:
                    other.execute(sa.text(f"KILL {int(thread_id)}"))

        sa.event.listen(engine, "before_cursor_execute", kill)
        with pytest.raises(sa.exc.OperationalError):
            p.tick(engine=engine)
        engine.dispose()
        admin.dispose()
        p.settle(tick=lambda: _tick_after_lease(p))
        v = p.verdict()
    assert statements["n"] >= 25
    assert_exactly_once(v)


@pytest.mark.mariadb
@pytest.mark.parametrize("db_engine_name", ["mariadb"])
def test_iomad_cron_running_at_the_same_moment(db_url: Any) -> None:
    """IOMAD's cron loads all due rows and the bridge ticks inside that window, then both run
    side by side in threads: Moodle's real task lock keeps each row on one path."""
    import threading

    url = db_url.render_as_string(hide_password=False)
    with pipeline(30, db_url=url) as p:
        errors: list[BaseException] = []

        def cron_loop() -> None:
            try:
                for _ in range(5):
                    p.iomad_cron()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=cron_loop)
        thread.start()
        for _ in range(5):
            p.tick()
        thread.join(timeout=300)
        assert not errors
        # and the bridge ticking inside the window where IOMAD holds all due rows in memory
        reports: list[Any] = []
        run = p.iomad_cron(after_load=lambda _ids: reports.append(p.tick()))
        assert run.ran and reports and reports[0].claim is not None
        assert reports[0].claim.lock_busy or reports[0].claim.claimed == 0
        p.settle()
        v = p.verdict()
    assert_exactly_once(v, both_paths=False)


@pytest.mark.mariadb
@pytest.mark.parametrize("db_engine_name", ["mariadb"])
def test_moodle_lock_connection_killed_mid_claim_while_iomads_cron_takes_the_lock(db_url: Any) -> None:
    """Issue 11's double send: the server KILLs the connection holding Moodle's lock after the
    first claim chunk committed and while the second is parking rows; IOMAD's cron takes the lock
    at once and mails every row due for it. The killed chunk rolls back with its session (I9), the
    next ticks carry on, and the oracle finds every recipient delivered once by one path."""
    url = db_url.render_as_string(hide_password=False)
    with pipeline(30, db_url=url) as p:
        p.env["MRCO_CLAIM_CHUNK_ROWS"] = "10"
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        claimers: list[ClaimPass] = []
        chunks: list[list[int]] = []
        runs: list[Any] = []

        def kill_then_let_iomad_run(parked: list[int]) -> None:
            chunks.append(parked)
            if len(chunks) != 2:
                return
            conn = claimers[-1].lock_connection
            assert conn is not None
            session = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one()
            with admin.connect() as other:
                other.execute(sa.text(f"KILL {int(session)}"))
            p.injected["lock_connection_killed"] += 1
            runs.append(p.iomad_cron(lock_timeout=10))  # IOMAD's cron gets the task lock now

        def factory(*args: Any, **kwargs: Any) -> ClaimPass:
            claimers.append(ClaimPass(*args, after_park=kill_then_let_iomad_run, **kwargs))
            return claimers[-1]

        with pytest.raises(sa.exc.DBAPIError):
            p.tick(claim_pass_factory=factory)
        admin.dispose()
        assert runs and runs[0].ran
        assert set(chunks[1]) <= set(runs[0].sent_rows)  # IOMAD mailed the killed chunk's rows
        assert not set(chunks[0]) & set(runs[0].sent_rows)  # the committed chunk stayed parked
        p.settle()
        v = p.verdict()
    assert p.injected["lock_connection_killed"] == 1
    assert_exactly_once(v)


@pytest.mark.parametrize("when", ["before", "after"])
def test_bridge_killed_around_reconciliation_of_lost_callbacks(when: str) -> None:
    """The results of a lost callback reach the bridge through the results DLQ during the tick's
    reconciliation (which settles recipients and marks IOMAD rows sent); the bridge dies just
    before or just after it, and the next tick finishes the work."""
    from unittest import mock

    from moodle_bridge.commands import tick as tick_module

    with pipeline(
        20, faults=CloudFaults(lose_callback_on_dispatch={1, 2}), max_receive=2, visibility_timeout=1
    ) as p:
        p.tick()
        from demo.event_source import drain

        drain(p.mappings, timeout_seconds=300, idle_sleep=0.2)
        from moodle_bridge.results.reconcile import reconcile as real_hook

        def dying(ctx: Any) -> Any:
            if when == "before":
                raise BridgeKilled("killed before reconciling")
            real_hook(ctx)
            raise BridgeKilled("killed after reconciling, before clearing secrets")

        with mock.patch.object(tick_module, "reconcile", dying), pytest.raises(BridgeKilled):
            p.tick()
        p.settle()
        v = p.verdict()
        lost = p.injected["callback POST lost (every attempt; the message goes to the results DLQ)"]
    assert lost > 0
    assert_exactly_once(v)


def _cloud_jobs(p: Pipeline) -> list[int]:
    from demo.faults import T

    with p.engine.connect() as conn:
        return [int(x) for x in conn.execute(sa.select(T.jobs.c.id).order_by(T.jobs.c.id)).scalars()]


def _recipient_statuses(p: Pipeline) -> dict[str, int]:
    from collections import Counter

    from demo.faults import T

    with p.engine.connect() as conn:
        return dict(Counter(str(s) for s in conn.execute(sa.select(T.recipients.c.status)).scalars()))


def test_cancel_after_submit_stops_sending_and_records_what_was_sent() -> None:
    """A person cancels every job after the queue accepted its batches and while the sender is
    working through them: no SES message for a recipient reported cancelled, none reported sent
    without one, every IOMAD row sent exactly once (by the cloud or, given back, by IOMAD)."""
    import os

    from moodle_bridge.cli import main as moodle_offload

    with pipeline(30) as p:
        os.environ["MRCO_MAX_RECIPIENTS"] = "4"  # many small batches: some go before the cancel
        p.env["MRCO_MAX_RECIPIENTS"] = "4"
        p.tick()
        sender = next(m for m in p.mappings if m.function_name == "email-sender")
        assert sender.poll_once() > 0  # the sender works through its first batches
        sent_before = len(p.ses.sends_by_tags())
        for job_id in _cloud_jobs(p):
            assert moodle_offload(["jobs", "cancel", str(job_id)]) in (0, 1)
        p.settle()
        v = p.verdict()
        statuses = _recipient_statuses(p)
        sent_after = len(p.ses.sends_by_tags())
    assert sent_before > 0
    assert statuses.get("cancelled", 0) + statuses.get("restored", 0) > 0, statuses
    assert statuses.get("sent", 0) + statuses.get("delivered", 0) > 0, statuses
    assert sent_after == v.delivered_cloud + v.probes  # nothing sent for a cancelled recipient
    assert_exactly_once(v)


def test_accepted_but_never_processed_is_settled_after_the_deadline() -> None:
    """The queue accepts every batch and then nothing comes back (the sender is dead for the
    first messages, which are lost). After the job deadline reconciliation asks the sender's own
    records: what was sent is settled sent, what was never claimed is closed in the cloud and
    its rows go back to IOMAD; nothing is sent twice when the lost messages turn up after all."""
    import os

    with pipeline(20) as p:
        for name, value in (("MRCO_JOB_DEADLINE_SECONDS", "1"), ("MRCO_MAX_RECIPIENTS", "10")):
            p.env[name] = value  # many small batches: the lost ones are a part of the job
            os.environ[name] = value
        p.tick()
        sender = next(m for m in p.mappings if m.function_name == "email-sender")
        # Two accepted messages are lost before any sender sees them.
        sqs = p.aws.client("sqs")
        got = sqs.receive_message(QueueUrl=sender.queue_url, MaxNumberOfMessages=2)
        held = [m["Body"] for m in got.get("Messages", [])]
        for message in got.get("Messages", []):
            sqs.delete_message(QueueUrl=sender.queue_url, ReceiptHandle=message["ReceiptHandle"])
        assert held
        time.sleep(2)  # past the deadline
        p.settle()
        v = p.verdict()
        statuses = _recipient_statuses(p)
        # The lost messages turn up late: the sender replays the closing records, sends nothing.
        sent_before = len(p.ses.sends_by_tags())
        for body in held:
            sqs.send_message(QueueUrl=sender.queue_url, MessageBody=body)
        drain(p.mappings, timeout_seconds=120, idle_sleep=0.2)
        late = p.verdict()
        sent_after = len(p.ses.sends_by_tags())
    assert statuses.get("restored", 0) > 0, statuses
    assert sent_after == sent_before, (late.duplicates[:5], statuses)
    assert_exactly_once(v)
    assert_exactly_once(late)
