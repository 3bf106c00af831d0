"""Rotating the password key with mail in flight: passwords sealed under the old key still
redact the managers' copies after the switch (docs/INSTALL.md, "Rotating the password key")."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from tests.bridge.conftest import drain, make_config, with_queues
from tests.bridge.test_claim_and_submit import PASSWORD, _setup

T = build_bridge_tables("mdl_")
KEY_NEW = base64.b64encode(bytes(range(100, 132))).decode()


def _make_due(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            T.batches.update().where(T.batches.c.status == "pending").values(nexttry=0, leasetoken=None)
        )


def _claimed_under_the_old_key(bridge_engine, db_url, repo, aws) -> tuple[int, Any]:
    world = _setup(bridge_engine, repo)
    eid = world.queue("user_create", 10, 1, body=f"<p>username: learner</br>password: {PASSWORD}</br></p>")
    old = with_queues(make_config(db_url), aws)
    # Claimed and sealed under the old key; the queue is not reachable yet (no submitter).
    first = run_tick(bridge_engine, old, submitters={})
    assert first.claim is not None and first.claim.claimed == 1
    assert drain(aws) == []
    with bridge_engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).where(T.recipients.c.secret.is_not(None))).scalar() == 1
        )
    return eid, old


def test_password_key_rotation_with_batches_in_the_outbox(bridge_engine, db_url, repo, aws) -> None:
    eid, old = _claimed_under_the_old_key(bridge_engine, db_url, repo, aws)
    # The documented rotation: new key first, old key kept as previous until rows are final.
    rotated = replace(old, password_key=KEY_NEW, password_keys_previous=(old.password_key,))
    _make_due(bridge_engine)
    report = run_tick(
        bridge_engine, rotated, claim=False, submitters=build_submitters(rotated, sqs_client=aws["sqs"])
    )
    assert report.outbox is not None and report.outbox.submitted >= 1
    sent = {(r["to"], r["content_id"]): m for m in drain(aws) for r in m["recipients"]}
    manager = sent[("boss@example.com", f"e{eid}r")]["contents"][f"e{eid}r"]["html"]
    assert PASSWORD not in manager and "********" in manager
    with bridge_engine.connect() as conn:
        statuses = {
            r.status for r in conn.execute(sa.select(T.recipients).where(T.recipients.c.emailid == eid))
        }
    assert statuses == {"queued"}


def test_a_rotation_that_forgets_the_old_key_never_sends_a_copy_unredacted(
    bridge_engine, db_url, repo, aws
) -> None:
    eid, old = _claimed_under_the_old_key(bridge_engine, db_url, repo, aws)
    # The key is rotated without keeping the old one: the redacted copy cannot be built, so it is
    # never sent (and never unredacted); it is settled alone at once (docs/sending.md, I11).
    forgot = replace(old, password_key=KEY_NEW, password_keys_previous=())
    _make_due(bridge_engine)
    run_tick(bridge_engine, forgot, claim=False, submitters=build_submitters(forgot, sqs_client=aws["sqs"]))
    leaked = [r for m in drain(aws) for r in m["recipients"] if r["content_id"] == f"e{eid}r"]
    assert leaked == []
    r = T.recipients
    with bridge_engine.connect() as conn:
        copies = conn.execute(
            sa.select(r.c.status, r.c.errorcode).where(r.c.emailid == eid, r.c.contentkey == f"e{eid}r")
        ).all()
    assert copies == [("skipped", "password_not_redactable")]
