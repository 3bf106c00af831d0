"""Issue 11: lock ownership at every claim commit, the outbox's row guard, a bad row failing alone,
and IOMAD's Resend as a new send generation. On SQLite, MariaDB and PostgreSQL.

Deliveries are counted per (IOMAD row, address) across both paths: IOMAD's (the simulated
cron's recording sink) and the cloud's (recipients of the messages SQS accepted).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from iomad_sim.iomad_cron import run_iomad_email_cron
from iomad_sim.smtp_sink import RecordingSmtpSink
from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.pipeline.claiming import ClaimPass
from moodle_bridge.pipeline.iomad_contents import IomadRowContents
from moodle_bridge.pipeline.outbox import Outbox
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.results.ingest import ingest_result_batch
from moodle_bridge.results.iomad_link import AdapterQueue
from moodle_bridge.sources.iomad.moodle_lock import db_record_key
from moodle_bridge.sources.iomad.queue import PARKED_DUE_BASE
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from tests.bridge.conftest import drain, make_config, with_queues
from tests.bridge.iomad_world import IomadWorld

T = build_bridge_tables("mdl_")
PASSWORD = "?4:#F_L3fu"


def _site(engine: sa.Engine, repo: Any, learners: int = 30) -> tuple[IomadWorld, list[int]]:
    world = IomadWorld.create(engine)
    world.add_company(1)
    world.add_user(11, "boss@example.com", "Bo", "Ss", companyid=1, manager=True)
    ids = []
    for uid in range(100, 100 + learners):
        world.add_user(uid, f"u{uid}@example.com", companyid=1)
        ids.append(world.queue("license_allocated", uid, 1, body=f"<p>licence for {uid}</p>"))
    with engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
    return world, ids


def _cloud(messages: list[dict[str, Any]]) -> Counter[tuple[int, str]]:
    """(IOMAD row, address) -> copies the cloud was asked to send."""
    out: Counter[tuple[int, str]] = Counter()
    for m in messages:
        for r in m["recipients"]:
            out[(int(str(r["content_id"])[1:].rstrip("r")), str(r["to"]).lower())] += 1
    return out


def _iomad(sink: RecordingSmtpSink) -> Counter[tuple[int, str]]:
    return Counter((int(m.email_id or 0), m.address.lower()) for m in sink.messages)


def _expected(world: IomadWorld, ids: list[int]) -> set[tuple[int, str]]:
    """Every (row, address) IOMAD's fan-out owes: the learner and the manager of each row."""
    rows = world.rows()
    return {(e, f"u{rows[e].userid}@example.com") for e in ids} | {(e, "boss@example.com") for e in ids}


def _dbname(engine: sa.Engine) -> str:
    return engine.url.database or ""


def _kill(engine: sa.Engine, conn: sa.Connection) -> None:
    """End ``conn``'s session from outside, as an idle time-out or a fail-over does."""
    if engine.dialect.name in ("mysql", "mariadb"):
        cid = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one()
        with engine.connect() as killer:
            killer.execute(sa.text(f"KILL {int(cid)}"))
    else:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as killer:
            killer.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": int(pid)})
            killer.commit()


@pytest.mark.parametrize(
    "db_engine_name",
    [
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def test_lock_connection_killed_mid_claim_while_iomads_cron_takes_the_lock(
    bridge_engine: sa.Engine, db_url: Any, repo: Any, aws: dict[str, Any]
) -> None:
    world, ids = _site(bridge_engine, repo)
    config = with_queues(make_config(db_url, claim_chunk_rows=10), aws)
    sink = RecordingSmtpSink()
    cron_runs: list[Any] = []
    claimers: list[ClaimPass] = []

    def kill_then_let_iomad_run(_parked: list[int]) -> None:
        if cron_runs:
            return
        claimer = claimers[-1]
        assert claimer.lock_connection is not None
        _kill(bridge_engine, claimer.lock_connection)
        # IOMAD's cron now gets the task lock and mails every row that is due for it.
        cron_runs.append(
            run_iomad_email_cron(
                bridge_engine, "mdl_", _dbname(bridge_engine), sink, tables=world.tables, lock_timeout=10
            )
        )

    def factory(*args: Any, **kwargs: Any) -> ClaimPass:
        claimers.append(ClaimPass(*args, after_park=kill_then_let_iomad_run, **kwargs))
        return claimers[-1]

    submitters = build_submitters(config, sqs_client=aws["sqs"])
    with pytest.raises(sa.exc.DBAPIError):
        run_tick(bridge_engine, config, submitters=submitters, claim_pass_factory=factory)
    assert cron_runs and cron_runs[0].ran and len(cron_runs[0].sent_rows) == len(ids)
    # The killed session's chunk rolled back with it: nothing of it was committed.
    with bridge_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(T.claims)).scalar_one() == 0
    run_tick(bridge_engine, config, submitters=submitters)
    run_tick(bridge_engine, config, submitters=submitters)

    both = _iomad(sink) + _cloud(drain(aws))
    assert {k for k, n in both.items() if n > 1} == set()  # 0 duplicates
    assert set(both) == _expected(world, ids)  # 0 lost


def test_lock_taken_over_between_claim_chunks_rolls_the_chunk_back(
    bridge_engine: sa.Engine,
    db_url: Any,
    db_engine_name: str,
    repo: Any,
    aws: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """db_record factory (SQLite's; ``$CFG->lock_factory`` on the server engines): a lock that
    looks stale is taken over by IOMAD's cron between two chunks; the next chunk's ownership
    check refuses to commit, so IOMAD and the bridge never both hold a row."""
    world, ids = _site(bridge_engine, repo)
    config = with_queues(make_config(db_url, claim_chunk_rows=10), aws)
    sink = RecordingSmtpSink()
    if db_engine_name != "sqlite":  # the site's lock factory: both sides use lock_db
        from moodle_bridge.sources.iomad.moodle_lock import moodle_cron_lock

        def db_record_lock(*args: Any, **kwargs: Any) -> Any:
            return moodle_cron_lock(*args, factory="db_record", **kwargs)

        monkeypatch.setattr("moodle_bridge.pipeline.claiming.moodle_cron_lock", db_record_lock)
        monkeypatch.setattr("iomad_sim.iomad_cron.moodle_cron_lock", db_record_lock)
    claimer = ClaimPass(bridge_engine, repo, world.tables, config)
    lock_db = world.tables.lock_db
    stolen: list[int] = []

    def steal_after_first_chunk(done: int, _total: int) -> None:
        if stolen:
            return
        stolen.append(done)
        with bridge_engine.begin() as conn:  # the bridge's lock looks stale: expired
            conn.execute(
                lock_db.update()
                .where(lock_db.c.resourcekey == db_record_key(world.tables.email_cron_task))
                .values(expires=1)
            )
        run = run_iomad_email_cron(
            bridge_engine, "mdl_", _dbname(bridge_engine), sink, tables=world.tables, lock_timeout=0
        )
        assert run.ran and len(run.sent_rows) == len(ids) - done

    report = claimer.run(steal_after_first_chunk)
    assert report.lock_lost and report.claimed == 10 and stolen == [10]
    run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]), claim=False)
    both = _iomad(sink) + _cloud(drain(aws))
    assert {k for k, n in both.items() if n > 1} == set()
    assert set(both) == _expected(world, ids)


def test_outbox_sends_only_recipients_whose_row_is_still_parked_and_unsent(
    bridge_engine: sa.Engine, db_url: Any, repo: Any, aws: dict[str, Any]
) -> None:
    world, ids = _site(bridge_engine, repo, learners=8)
    config = with_queues(make_config(db_url), aws)
    report = ClaimPass(bridge_engine, repo, world.tables, config).run()
    assert report.claimed == 8
    sent_by_iomad, gone, unparked = ids[0], ids[1], ids[2]
    e = world.tables.email
    with bridge_engine.begin() as conn:
        # What IOMAD's whole-row rewrite leaves after a lost-lock race: sent, original due back.
        conn.execute(
            e.update().where(e.c.id == sent_by_iomad).values(sent=123, due=e.c.due - PARKED_DUE_BASE)
        )
        conn.execute(e.delete().where(e.c.id == gone))
        conn.execute(e.update().where(e.c.id == unparked).values(due=e.c.due - PARKED_DUE_BASE))
    outbox = Outbox(
        bridge_engine,
        repo,
        config,
        build_submitters(config, sqs_client=aws["sqs"]),
        iomad=IomadRowContents(world.tables),
    )
    result = outbox.submit_due()
    assert result.settled == 6 and result.errors == [] and result.retried == 0
    cloud = _cloud(drain(aws))
    assert {row for row, _ in cloud} == set(ids[3:])
    with bridge_engine.connect() as conn:
        rows = conn.execute(
            sa.select(T.recipients.c.emailid, T.recipients.c.status, T.recipients.c.errorcode)
        ).all()
        claim = conn.execute(sa.select(T.claims.c.state).where(T.claims.c.emailid == unparked)).scalar_one()
    codes = {
        (int(r.emailid), r.status, r.errorcode) for r in rows if r.emailid in (sent_by_iomad, gone, unparked)
    }
    assert codes == {
        (sent_by_iomad, "skipped", "iomad_already_sent"),
        (gone, "skipped", "iomad_row_gone"),
        (unparked, "restored", "iomad_row_unparked"),
    }
    assert claim == "released"  # never marked sent by the bridge: IOMAD sends it
    assert world.rows()[unparked].sent is None


def test_a_bad_row_fails_alone_and_at_once(
    bridge_engine: sa.Engine, db_url: Any, repo: Any, aws: dict[str, Any]
) -> None:
    """A user_create row whose learner's address is invalid: its manager copy is still built
    (redacted) and the rest of the batch goes at the first pass; nothing is retried."""
    world, ids = _site(bridge_engine, repo, learners=5)
    world.add_user(50, "not an address", companyid=1)
    world.set_temporary_password(50, PASSWORD)
    bad = world.queue("user_create", 50, 1, body=f"<p>password: {PASSWORD}</p>")
    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.outbox is not None and report.outbox.submitted == 1
    assert report.outbox.retried == 0 and report.outbox.errors == []
    messages = drain(aws)
    cloud = _cloud(messages)
    assert (bad, "boss@example.com") in cloud and all((e, "boss@example.com") in cloud for e in ids)
    copy = next(m["contents"][f"e{bad}r"] for m in messages if f"e{bad}r" in m.get("contents", {}))
    assert PASSWORD not in copy["html"] and "********" in copy["html"]
    with bridge_engine.connect() as conn:
        own = conn.execute(
            sa.select(T.recipients).where(T.recipients.c.emailid == bad, T.recipients.c.role == "user")
        ).one()
    assert own.status == "failed" and own.errorcode == "invalid_address"


def _all_sent(engine: sa.Engine, world: IomadWorld, messages: list[dict[str, Any]]) -> None:
    """The cloud reports every recipient of ``messages`` sent; settle with a tick."""
    for m in messages:
        batch = {
            "type": "result_batch",
            "contract_version": 1,
            "report_id": f"r-{m['batch_id']}",
            "company_id": 1,
            "reporter": "email_sender",
            "created_at": 1,
            "results": [
                {
                    "job_id": m["job_id"],
                    "recipient_id": r["recipient_id"],
                    "status": "sent",
                    "attempts": 1,
                    "occurred_at": 1,
                    "provider_message_id": f"ses-{m['batch_id']}-{r['recipient_id']}",
                }
                for r in m["recipients"]
            ],
        }
        with engine.begin() as conn:
            ingest_result_batch(
                conn, T, batch, company_id=1, now=2, actor="test", queue=AdapterQueue(world.tables)
            )


def test_iomads_resend_is_a_new_send_exactly_once_per_resend(
    bridge_engine: sa.Engine, db_url: Any, repo: Any, aws: dict[str, Any]
) -> None:
    world, ids = _site(bridge_engine, repo, learners=4)
    config = with_queues(make_config(db_url), aws)
    submitters = build_submitters(config, sqs_client=aws["sqs"])
    e = world.tables.email
    sends: Counter[tuple[int, str]] = Counter()
    for generation in (1, 2, 3):
        report = run_tick(bridge_engine, config, submitters=submitters)
        assert report.claim is not None and report.claim.claimed == 4
        assert report.claim.resends == (0 if generation == 1 else 4)
        messages = drain(aws)
        sends += _cloud(messages)
        _all_sent(bridge_engine, world, messages)
        run_tick(bridge_engine, config, submitters=submitters)  # settles: rows marked sent
        assert drain(aws) == []  # no second send of this generation
        rows = world.rows()
        assert all(rows[i].sent is not None for i in ids)
        with bridge_engine.connect() as conn:
            claims = conn.execute(sa.select(T.claims.c.generation, T.claims.c.state)).all()
        assert {(g, s) for g, s in claims} == {(generation, "completed")}
        # "Resend all" in IOMAD's Outgoing Email Report: sent = NULL on the same rows.
        with bridge_engine.begin() as conn:
            conn.execute(e.update().where(e.c.id.in_(ids)).values(sent=None))
    assert set(sends.values()) == {3}  # each (row, address) once per send generation
    assert set(sends) == _expected(world, ids)


def test_a_released_row_is_iomads_until_iomad_sent_it(
    bridge_engine: sa.Engine, db_url: Any, repo: Any, aws: dict[str, Any]
) -> None:
    """A row handed back (here: unknown template) is not looked at again until IOMAD sent it and a
    Resend made it due again; then it is a new generation (released again, as the template is still
    unknown)."""
    world, _ids = _site(bridge_engine, repo, learners=0)
    world.add_user(60, "u60@example.com", companyid=1)
    odd = world.queue("custom_plugin_mail", 60, 1)
    config = with_queues(make_config(db_url), aws)
    submitters = build_submitters(config, sqs_client=aws["sqs"])
    first = run_tick(bridge_engine, config, submitters=submitters)
    assert first.claim is not None and first.claim.released == 1
    again = run_tick(bridge_engine, config, submitters=submitters)
    assert again.claim is not None and again.claim.considered == 0  # still IOMAD's turn
    sink = RecordingSmtpSink()
    run_iomad_email_cron(
        bridge_engine,
        "mdl_",
        _dbname(bridge_engine),
        sink,
        tables=world.tables,
        now=world.rows()[odd].modifiedtime + 100,
    )
    assert sink.addresses_for(odd) == ["u60@example.com"]
    e = world.tables.email
    with bridge_engine.begin() as conn:
        conn.execute(e.update().where(e.c.id == odd).values(sent=None))
    resent = run_tick(bridge_engine, config, submitters=submitters)
    assert resent.claim is not None and resent.claim.resends == 1 and resent.claim.released == 1
    with bridge_engine.connect() as conn:
        assert (
            conn.execute(sa.select(T.claims.c.generation).where(T.claims.c.emailid == odd)).scalar_one() == 2
        )
