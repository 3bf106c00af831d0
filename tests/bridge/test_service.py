"""``moodle-offload run``: claim loop + outbox + reconciliation + receiver in one process.

On SQLite, MariaDB and PostgreSQL: rows queued while the service runs are claimed and
submitted within a few passes; an idle pass costs at most 3 statements; the command stops
cleanly on SIGTERM with the receiver answering until then.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from moodle_bridge.commands.tick import TickContext, build_submitters, reconcile_context
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.service import Service
from moodle_bridge.storage.database import StatementCounter, create_bridge_engine
from moodle_bridge.storage.migrations import migrate
from offload_contract.signing import generate_root_secret
from tests.bridge.conftest import drain, make_config, with_queues
from tests.bridge.iomad_world import IomadWorld


def _site(engine: sa.Engine, repo: Any) -> IomadWorld:
    world = IomadWorld.create(engine)
    world.add_company(1)
    world.add_user(11, "boss@example.com", companyid=1, manager=True)
    for uid in range(100, 110):
        world.add_user(uid, f"u{uid}@example.com", companyid=1)
    with engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
    return world


def _service(engine: sa.Engine, config: Any, submitters: Any, interval: float = 0.05) -> Service:
    return Service(
        engine,
        config,
        submitters=submitters,
        interval=interval,
        reconcile_every=0.2,
        reconcile_context=lambda s: reconcile_context(
            TickContext(s.engine, s.config, s.repo, s.iomad, s.submitters, s.box)
        ),
    )


def test_service_claims_rows_queued_while_it_runs_then_stops(bridge_engine, db_url, repo, aws) -> None:
    world = _site(bridge_engine, repo)
    config = with_queues(make_config(db_url), aws)
    service = _service(bridge_engine, config, build_submitters(config, sqs_client=aws["sqs"]))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        # Queue only once the service has run an idle pass: the rows arrive while it runs (on a
        # loaded machine the first pass could otherwise start after every insert).
        started = time.monotonic() + 20
        while service.stats.passes < 1 and time.monotonic() < started:
            time.sleep(0.01)
        assert service.stats.passes >= 1
        ids = [world.queue("license_allocated", uid, 1, body=f"<p>{uid}</p>") for uid in range(100, 110)]
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 20
        while len(seen) < 20 and time.monotonic() < deadline:
            seen |= {(r["content_id"], r["to"]) for m in drain(aws) for r in m["recipients"]}
            time.sleep(0.05)
    finally:
        service.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert seen == {(f"e{e}", f"u{uid}@example.com") for e, uid in zip(ids, range(100, 110), strict=True)} | {
        (f"e{e}", "boss@example.com") for e in ids
    }
    assert all(world.rows()[e].due >= 10**12 for e in ids)  # parked: IOMAD's cron never loads them
    assert service.stats.errors == 0 and service.stats.passes >= 2


def test_an_idle_pass_costs_at_most_three_statements(bridge_engine, db_url, repo, aws) -> None:
    world = _site(bridge_engine, repo)
    config = with_queues(make_config(db_url), aws)
    service = _service(bridge_engine, config, build_submitters(config, sqs_client=aws["sqs"]))
    world.queue("license_allocated", 100, 1)
    busy = service.pass_once(reconcile_now=False)
    assert busy.busy and busy.claim is not None and busy.claim.claimed == 1
    counter = StatementCounter(bridge_engine)
    try:
        idle = service.pass_once(reconcile_now=False)
    finally:
        counter.close()
    assert not idle.busy
    assert counter.count <= 3, counter.by_verb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_command_serves_callbacks_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'site.db'}"
    engine = create_bridge_engine(url)
    migrate(engine, "mdl_")
    IomadWorld.create(engine)
    engine.dispose()
    port = _free_port()
    env = {
        **os.environ,
        "MRCO_DATABASE_URL": url,
        "MRCO_KEYSETS": f"k1={generate_root_secret()}",
        "MRCO_KEYSET_CURRENT": "k1",
        "MRCO_CALLBACK_BIND_PORT": str(port),
        "MRCO_CALLBACK_BIND_HOST": "127.0.0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "moodle_bridge", "run", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    status = r.status
                    break
            except OSError as exc:
                status = getattr(exc, "code", None)
                if status is not None:
                    break  # the receiver answers (any HTTP status): it is mounted and running
                time.sleep(0.2)
        assert status is not None, "the receiver never answered"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "stopped after" in out


def test_the_cheap_probe_still_sees_rows_queued_before_they_were_due(
    bridge_engine, db_url, repo, aws
) -> None:
    """Between two full looks the probe reads only ids above its watermark; a row queued in the
    same second as a full look (not due yet, so not found) must stay above it, also when strict
    mode parked it at insert."""
    from moodle_bridge.storage.strict_mode import install_strict_mode

    world = _site(bridge_engine, repo)
    config = with_queues(make_config(db_url), aws)
    now = [1_900_000_000]
    service = Service(
        bridge_engine,
        config,
        submitters=build_submitters(config, sqs_client=aws["sqs"]),
        clock=lambda: now[0],
    )
    assert service.claimer is not None
    first = world.queue("license_allocated", 100, 1, due=now[0])
    assert service.pass_once(reconcile_now=False).claim.considered == 0  # type: ignore[union-attr]
    install_strict_mode(bridge_engine, world.tables, "mdl_")
    second = world.queue("license_allocated", 101, 1, due=now[0])
    assert world.rows()[second].due >= 10**12
    assert service.pass_once(reconcile_now=False).claim.considered == 0  # type: ignore[union-attr]
    now[0] += 1
    report = service.pass_once(reconcile_now=False)
    assert report.claim is not None and report.claim.claimed == 2
    assert {first, second} <= {int(r["content_id"][1:]) for m in drain(aws) for r in m["recipients"]}
