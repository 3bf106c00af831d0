"""Store-only certificates on every engine: completions IOMAD does not mail get one certificate
job recipient each (delivery store_only), exactly once across passes, restarts and races."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import sqlalchemy as sa

from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.pipeline.store_only import GRACE_SECONDS, LOOKBACK_SECONDS, StoreOnlyPass
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.completion_ledger import WATERMARK_KEY, CompletionLedger
from offload_contract import validate
from tests.bridge.conftest import drain, make_config, with_queues
from tests.bridge.iomad_world import IomadWorld

T = build_bridge_tables("mdl_")


def _world(bridge_engine: sa.Engine, repo: Any) -> tuple[IomadWorld, int, dict[str, int]]:
    """Company 1 has cloud certificates on, company 2 does not. Returns the completion ids."""
    world = IomadWorld.create(bridge_engine)
    for cid in (1, 2):
        world.add_company(cid)
    world.add_user(10, "lea@example.com", "Lea", "Rner", companyid=1)
    world.add_user(11, "old@example.com", "Ole", "Dmail", companyid=1)
    world.add_user(12, "gone@example.com", "Del", "Eted", companyid=1, deleted=True)
    world.add_user(13, "young@example.com", "Yo", "Ung", companyid=1)
    world.add_user(20, "other@example.com", "Oth", "Er", companyid=2)
    for courseid, name in ((5, "Safety 101"), (6, "Fire Drill")):
        world.add_course(courseid, name)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, allowcertificates=True), "test")
        repo.save_settings(conn, CompanySettings(2, cloudenabled=True, allowcertificates=False), "test")
    at = int(time.time())
    done = at - GRACE_SECONDS - 300
    ids = {
        "mailed": world.complete(10, 5, 1, done),
        "unmailed": world.complete(10, 6, 1, done + 1),
        "old_mail": world.complete(11, 5, 1, done + 2),
        "deleted": world.complete(12, 5, 1, done + 3),
        "other_company": world.complete(20, 5, 2, done + 4),
        "young": world.complete(13, 5, 1, at - 30),
    }
    # The completion mail IOMAD queued for the first completion (claimed or not, it is its mail).
    world.queue("completion_course_user", 10, 1, courseid=5, due=done)
    # A mail of an earlier completion of the same course (a year ago): not this completion's.
    old = world.queue("completion_course_user", 11, 1, courseid=5, due=done - 365 * 86400)
    with bridge_engine.begin() as conn:
        e = world.tables.email
        conn.execute(e.update().where(e.c.id == old).values(modifiedtime=done - 365 * 86400, sent=done - 1))
    return world, at, ids


def _recipients(engine: sa.Engine) -> list[Any]:
    r, j = T.recipients, T.jobs
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(r.c.id, r.c.userid, r.c.address, r.c.status, r.c.data, j.c.source, j.c.jobtype)
                .join(j, j.c.id == r.c.jobid)
                .where(j.c.source == "completion")
                .order_by(r.c.id)
            )
        )


def test_completions_without_mail_get_one_store_only_certificate(bridge_engine, db_url, repo) -> None:
    world, at, ids = _world(bridge_engine, repo)
    config = make_config(db_url)
    report = StoreOnlyPass(bridge_engine, repo, world.tables, config).run(at)
    assert (report.considered, report.mailed, report.unusable, report.certificates) == (4, 1, 1, 2)
    rows = _recipients(bridge_engine)
    certified = {json.loads(r.data)["completionid"] for r in rows}
    assert certified == {ids["unmailed"], ids["old_mail"]}
    assert {r.jobtype for r in rows} == {"certificate"} and {r.status for r in rows} == {"pending"}
    first = json.loads(rows[0].data)["certificate"]
    assert first["learner_name"] == "Lea Rner" and first["course_name"] == "Fire Drill"
    assert first["grade"] == "87.5"
    with bridge_engine.connect() as conn:
        ledger = conn.execute(sa.select(T.completion_certs)).all()
        certs = conn.execute(sa.select(T.certificates)).all()
    assert {(x.userid, x.courseid, x.completionid) for x in ledger} == {
        (10, 6, ids["unmailed"]),
        (11, 5, ids["old_mail"]),
    }
    assert {c.verifycode for c in certs} == {
        json.loads(r.data)["certificate"]["verification_code"] for r in rows
    }

    # The next pass, a restarted bridge that lost its watermark, and the young completion's turn.
    again = StoreOnlyPass(bridge_engine, repo, world.tables, config).run(at + 1)
    assert again.certificates == 0 and again.considered == 0
    with bridge_engine.begin() as conn:
        conn.execute(T.config.delete().where(T.config.c.name == WATERMARK_KEY))
    restarted = StoreOnlyPass(bridge_engine, repo, world.tables, config).run(at + 2)
    assert restarted.certificates == 0 and restarted.already == 2
    later = StoreOnlyPass(bridge_engine, repo, world.tables, config).run(at + GRACE_SECONDS)
    assert later.certificates == 1
    rows = _recipients(bridge_engine)
    assert sorted(json.loads(r.data)["completionid"] for r in rows) == sorted(
        [ids["unmailed"], ids["old_mail"], ids["young"]]
    )


def test_two_bridges_planning_the_same_completions_commit_once(
    bridge_engine, db_url, repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    world, at, _ = _world(bridge_engine, repo)
    config = make_config(db_url)
    first = StoreOnlyPass(bridge_engine, repo, world.tables, config).run(at)
    assert first.certificates == 2
    with bridge_engine.connect() as conn:
        jobs_before = conn.execute(sa.select(sa.func.count()).select_from(T.jobs)).scalar()
    with bridge_engine.begin() as conn:
        conn.execute(T.config.delete().where(T.config.c.name == WATERMARK_KEY))
    # A second bridge that read the ledger before the first committed: only the unique key stops it.
    monkeypatch.setattr(CompletionLedger, "issued", lambda self, conn, completionids: set())
    second = StoreOnlyPass(bridge_engine, repo, world.tables, config).run(at)
    assert second.raced and second.certificates == 0
    with bridge_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(T.jobs)).scalar() == jobs_before
        assert conn.execute(sa.select(sa.func.count()).select_from(T.completion_certs)).scalar() == 2
    assert len(_recipients(bridge_engine)) == 2


def test_nothing_while_off_and_the_last_week_when_turned_on(bridge_engine, db_url, repo) -> None:
    world, at, ids = _world(bridge_engine, repo)
    old = world.complete(13, 6, 1, at - LOOKBACK_SECONDS - GRACE_SECONDS - 10)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, False)
    report = StoreOnlyPass(bridge_engine, repo, world.tables, make_config(db_url)).run(at)
    assert report.considered == 0 and _recipients(bridge_engine) == []
    with bridge_engine.connect() as conn:  # nothing is written while no company is on
        mark = conn.execute(sa.select(T.config.c.value).where(T.config.c.name == WATERMARK_KEY)).first()
    assert mark is None
    # Turned on: the unmailed completions of the last week, not the older one.
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
    StoreOnlyPass(bridge_engine, repo, world.tables, make_config(db_url)).run(at)
    certified = {json.loads(r.data)["completionid"] for r in _recipients(bridge_engine)}
    assert certified == {ids["unmailed"], ids["old_mail"]} and old not in certified


def test_tick_submits_store_only_batches_without_mail(bridge_engine, db_url, repo, aws) -> None:
    _world(bridge_engine, repo)
    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.store_only is not None and report.store_only.certificates == 2
    certs = drain(aws, "certificates")
    # The mailed completion went with its mail (the claim pass); the two others store-only.
    by_delivery = {c["delivery"]: c for c in certs}
    assert len(certs) == 2 and set(by_delivery) == {"email_attachment", "store_only"}
    (mailed,) = by_delivery["email_attachment"]["recipients"]
    assert mailed["to"] == "lea@example.com" and mailed["certificate"]["course_name"] == "Safety 101"
    batch = by_delivery["store_only"]
    validate("certificate_batch", batch)
    assert batch["delivery"] == "store_only" and "contents" not in batch
    assert all("to" not in r and "content_id" not in r for r in batch["recipients"])
    assert {r["name"] for r in batch["recipients"]} == {"Lea Rner", "Ole Dmail"}


def test_cloudflare_companies_get_no_store_only_certificates(bridge_engine, db_url, repo) -> None:
    world, at, _ = _world(bridge_engine, repo)
    with bridge_engine.begin() as conn:
        repo.save_settings(
            conn, CompanySettings(1, cloudenabled=True, allowcertificates=True, provider="cloudflare"), "test"
        )
    report = StoreOnlyPass(bridge_engine, repo, world.tables, make_config(db_url)).run(at)
    assert report.considered == 0 and _recipients(bridge_engine) == []
