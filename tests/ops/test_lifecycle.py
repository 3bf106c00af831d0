"""migrate on every deploy, downgrade refused, and uninstall giving every parked row back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import sqlalchemy as sa

from moodle_bridge.cli import main
from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.iomad.queries import PARKED_DUE_BASE
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.migrations import LATEST_VERSION, SCHEMA_VERSION_KEY, STEPS
from moodle_bridge.storage.strict_mode import strict_mode_installed
from tests.bridge.conftest import make_config, with_queues
from tests.bridge.iomad_world import IomadWorld
from tests.bridge.test_claim_and_submit import _setup

T = build_bridge_tables("mdl_")


def _env(monkeypatch, tmp_path, db_url) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MRCO_DATABASE_URL", db_url.render_as_string(hide_password=False))
    for name in ("MRCO_CONFIG", "MRCO_KEYSETS", "MRCO_PASSWORD_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_migrate_on_every_deploy_and_downgrade_refused(db_url, tmp_path, monkeypatch, capsys) -> None:
    _env(monkeypatch, tmp_path, db_url)
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0
    out = capsys.readouterr().out
    assert out.count("nothing to do") == 2
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                T.config.update()
                .where(T.config.c.name == SCHEMA_VERSION_KEY)
                .values(value=str(LATEST_VERSION + 1))
            )
        before = [c["name"] for c in sa.inspect(engine).get_columns(T.batches.name)]
    finally:
        engine.dispose()
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert f"schema version {LATEST_VERSION + 1}, newer than this release knows ({LATEST_VERSION})" in err
    assert "upgrade moodle-offload" in err
    for command in (["tick"], ["serve"], ["jobs", "list"]):
        monkeypatch.setenv("MRCO_KEYSETS", "k1=" + "A" * 43)
        assert main(command) == 2, command  # refused before touching anything
        assert "a downgrade is not supported" in capsys.readouterr().err
    engine = sa.create_engine(db_url)
    try:
        assert [c["name"] for c in sa.inspect(engine).get_columns(T.batches.name)] == before
    finally:
        engine.dispose()


def test_uninstall_gives_every_parked_row_back_and_drops_the_tables(
    bridge_engine, db_url, repo, aws, tmp_path, monkeypatch, capsys
) -> None:
    world = _setup(bridge_engine, repo)
    config = with_queues(make_config(db_url), aws)
    in_cloud = world.queue("license_allocated", 10, 1)
    run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    waiting = world.queue("license_allocated", 11, 1)
    run_tick(bridge_engine, config, submitters={})  # claimed and parked, never submitted
    local = world.queue("license_allocated", 20, 2)
    before = world.rows()
    assert before[in_cloud].due >= PARKED_DUE_BASE and before[waiting].due >= PARKED_DUE_BASE
    _env(monkeypatch, tmp_path, db_url)

    assert main(["uninstall"]) == 0  # a dry run
    assert (
        "would: switch offload off; 2 parked IOMAD row(s) to give back, 2 recipient(s) still in the cloud"
        in (capsys.readouterr().out)
    )
    assert world.rows() == before

    assert main(["uninstall", "--yes"]) == 1  # the cloud still holds a recipient
    assert "still in the cloud" in capsys.readouterr().err
    assert world.rows() == before

    assert main(["uninstall", "--yes", "--give-back-only", "--force"]) == 0
    assert "gave 2 parked IOMAD row(s) back" in capsys.readouterr().out
    rows = world.rows()
    for eid in (in_cloud, waiting):
        assert rows[eid].due == before[eid].due - PARKED_DUE_BASE and rows[eid].sent is None
    assert rows[local] == before[local]
    with bridge_engine.connect() as conn:
        assert repo.offload_enabled(conn) is False
        assert sa.inspect(conn).has_table(T.jobs.name)

    assert main(["uninstall", "--yes", "--force"]) == 0
    assert f"dropped {len(T.metadata.sorted_tables)} bridge table(s)" in capsys.readouterr().out
    with bridge_engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
    assert not {t.name for t in T.metadata.sorted_tables} & names
    assert world.rows()[local] == before[local]


def test_migrate_does_not_run_beside_a_tick(db_url, tmp_path, monkeypatch, capsys) -> None:
    from moodle_bridge.pipeline.ticklock import tick_lock
    from moodle_bridge.storage.database import create_bridge_engine

    _env(monkeypatch, tmp_path, db_url)
    engine = create_bridge_engine(db_url)
    try:
        with tick_lock(engine, "mdl_"):
            assert main(["migrate", "--wait", "0"]) == 1
        assert "a tick is still running" in capsys.readouterr().err
        assert main(["migrate", "--wait", "0"]) == 0
    finally:
        engine.dispose()


def test_uninstall_removes_strict_modes_trigger_so_iomad_still_queues_mail(
    db_url, tmp_path, monkeypatch, capsys
) -> None:
    """The trigger reads the bridge's tables: left behind after they are dropped, it would fail
    every insert into IOMAD's queue (no more mail from Moodle at all)."""
    _env(monkeypatch, tmp_path, db_url)
    engine = sa.create_engine(db_url)
    try:
        world = IomadWorld.create(engine)
        world.add_company(1)
        world.add_user(10, "learner@example.com", companyid=1)
        assert main(["migrate"]) == 0
        with engine.begin() as conn:
            BridgeRepo(T).set_offload_enabled(conn, True)
            BridgeRepo(T).save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
        assert main(["migrate", "--strict"]) == 0
        parked = world.queue("license_allocated", 10, 1)
        assert world.rows()[parked].due >= PARKED_DUE_BASE
        assert main(["uninstall", "--yes"]) == 0
        assert "strict mode's trigger removed" in capsys.readouterr().out
        with engine.connect() as conn:
            assert not strict_mode_installed(conn, "mdl_")
            assert not sa.inspect(conn).has_table(T.recipients.name)
        after = world.queue("license_allocated", 10, 1)  # IOMAD queues mail as before
        rows = world.rows()
        assert rows[after].due < PARKED_DUE_BASE and rows[parked].due < PARKED_DUE_BASE
    finally:
        engine.dispose()


def test_every_schema_step_has_a_lock_note_and_the_measured_figures_are_the_benchmarks() -> None:
    """docs/UPGRADING.md says, for each step after version 4, whether it locks a table; the step 7
    figures are those of bench/results/migration_lock.json (1,000,000 recipients)."""
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "UPGRADING.md").read_text("utf-8")
    noted = {int(n) for n in re.findall(r"^\| (\d+) \| ", doc, re.MULTILINE)}
    assert {step.version for step in STEPS if step.version > 4} <= noted, "a step without a lock note"
    results = json.loads((root / "bench" / "results" / "migration_lock.json").read_text("utf-8"))
    engines = {e["engine"]: e for e in results["figures"]["engines"]}
    assert {e["rows"] for e in engines.values()} == {1_000_000}
    (row,) = [line for line in doc.splitlines() if line.startswith("| **step 7**")]
    for engine in ("mariadb", "postgres"):
        step = engines[engine]["ddl"]["step_7_recipient_indexes"]
        assert step["indexes"] == 3
        assert f"{step['ddl_seconds']:.1f} s" in row, (engine, row)
    slowest = engines["postgres"]["ddl"]["step_7_recipient_indexes"]["writer_during_ddl"]["max_ms"]
    assert f"{slowest:,} ms" in row
