"""Strict mode: the trigger ``migrate --strict`` installs parks cloud-routed rows at insert, so
IOMAD's cron never loads them; the claim pass takes them, hands back the ones it must not send,
and ``migrate --no-strict`` removes the trigger and hands back what it parked. All engines.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from iomad_sim.iomad_cron import run_iomad_email_cron
from iomad_sim.smtp_sink import RecordingSmtpSink
from moodle_bridge.cli import main
from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.iomad.queue import PARKED_DUE_BASE
from moodle_bridge.storage.strict_mode import strict_mode_installed
from tests.bridge.conftest import drain, make_config, with_queues
from tests.bridge.iomad_world import IomadWorld


def _site(engine: sa.Engine, repo: Any) -> IomadWorld:
    world = IomadWorld.create(engine)
    for cid in (1, 2, 4):
        world.add_company(cid)
    world.add_user(11, "boss@example.com", companyid=1, manager=True)
    for uid in range(100, 106):
        world.add_user(uid, f"u{uid}@example.com", companyid=1)
    world.add_user(200, "local@example.com", companyid=2)
    world.add_user(400, "small@example.com", companyid=4)
    with engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
        repo.save_settings(conn, CompanySettings(4, cloudenabled=True, threshold=100), "test")
    return world


def test_strict_mode_parks_at_insert_and_the_bridge_takes_every_routed_row(
    bridge_engine, db_url, repo, aws, monkeypatch
) -> None:
    world = _site(bridge_engine, repo)
    url = db_url.render_as_string(hide_password=False)
    monkeypatch.setenv("MRCO_DATABASE_URL", url)
    assert main(["migrate", "--strict"]) == 0
    with bridge_engine.connect() as conn:
        assert strict_mode_installed(conn, "mdl_")

    routed = [world.queue("license_allocated", uid, 1) for uid in range(100, 106)]
    local = world.queue("license_allocated", 200, 2)
    small = world.queue("license_allocated", 400, 4)  # cloud-enabled, but below its threshold
    rows = world.rows()
    assert all(rows[e].due >= PARKED_DUE_BASE for e in routed)  # parked in the inserting transaction
    assert rows[local].due < PARKED_DUE_BASE

    # IOMAD's cron runs first, right after the inserts: it never loads a parked row.
    sink = RecordingSmtpSink()
    run = run_iomad_email_cron(
        bridge_engine, "mdl_", bridge_engine.url.database or "", sink, tables=world.tables
    )
    assert run.ran and sorted(run.sent_rows) == [local]

    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.claimed == 6
    assert report.claim.left_local["below_threshold"] == 1
    cloud = {(int(r["content_id"][1:]), r["to"]) for m in drain(aws) for r in m["recipients"]}
    assert cloud == {(e, f"u{uid}@example.com") for e, uid in zip(routed, range(100, 106), strict=True)} | {
        (e, "boss@example.com") for e in routed
    }
    rows = world.rows()
    assert rows[small].due < PARKED_DUE_BASE and rows[small].sent is None  # handed back to IOMAD
    run_iomad_email_cron(bridge_engine, "mdl_", bridge_engine.url.database or "", sink, tables=world.tables)
    assert sink.addresses_for(small) == ["small@example.com"]
    assert not any(m.email_id in routed for m in sink.messages)  # 0 duplicates

    # Turning strict mode off hands back every row it parked that no claim holds.
    waiting = world.queue("license_allocated", 100, 1)
    assert world.rows()[waiting].due >= PARKED_DUE_BASE
    assert main(["migrate", "--no-strict"]) == 0
    with bridge_engine.connect() as conn:
        assert not strict_mode_installed(conn, "mdl_")
    rows = world.rows()
    assert rows[waiting].due < PARKED_DUE_BASE
    assert all(rows[e].due >= PARKED_DUE_BASE for e in routed)  # claimed rows stay the bridge's
    after = world.queue("license_allocated", 101, 1)
    assert world.rows()[after].due < PARKED_DUE_BASE
