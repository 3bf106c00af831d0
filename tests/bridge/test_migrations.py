"""Migrations: fresh install, idempotent re-run, upgrade from schema version 1 with data."""

from __future__ import annotations

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from moodle_bridge.storage.migrations import LATEST_VERSION, STEPS, current_version, migrate


def _columns(engine: sa.Engine, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table)}


def test_fresh_install_matches_the_current_schema_and_is_idempotent(db_url) -> None:
    engine = create_bridge_engine(db_url)
    tables = build_bridge_tables("mdl_")
    first = migrate(engine, "mdl_")
    assert first.before == 0
    assert first.after == LATEST_VERSION
    assert [s.version for s in first.applied] == [s.version for s in STEPS]
    for table in tables.metadata.sorted_tables:
        assert _columns(engine, table.name) == {c.name for c in table.columns}, table.name
    second = migrate(engine, "mdl_")
    assert second.applied == ()
    assert second.after == LATEST_VERSION
    with engine.connect() as conn:
        assert current_version(conn, tables) == LATEST_VERSION
    engine.dispose()


def test_upgrade_from_version_1_keeps_rows_and_adds_columns(db_url) -> None:
    engine = create_bridge_engine(db_url)
    tables = build_bridge_tables("mdl_")
    migrate(engine, "mdl_", target=1)
    assert "messagetype" not in _columns(engine, "mdl_mrcloud_batches")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO mdl_mrcloud_batches (jobid, batchkey, attempt, status, target, "
                "recipientcount, bytes, tries, nexttry, timecreated) "
                "VALUES (7, 'j7-a1-b0', 1, 'pending', 'sqs', 3, 0, 0, 0, 1)"
            )
        )
    result = migrate(engine, "mdl_")
    assert result.before == 1
    assert result.after == LATEST_VERSION
    with engine.connect() as conn:
        row = conn.execute(sa.select(tables.batches)).one()
    assert row.batchkey == "j7-a1-b0"
    assert row.messagetype == "email_batch"  # server default filled the existing row
    assert row.companyid == 0
    engine.dispose()


def test_prefix_is_respected(db_url) -> None:
    engine = create_bridge_engine(db_url)
    migrate(engine, "moo_")
    names = set(sa.inspect(engine).get_table_names())
    assert "moo_mrcloud_jobs" in names
    assert not any(n.startswith("mdl_") for n in names)
    engine.dispose()


def test_upgrade_indexes_certificates_by_recipient(db_url) -> None:
    """The step that indexes certificates by recipient creates the index a database one version
    older lacks, and keeps the rows."""
    step = next(s for s in STEPS if s.summary.startswith("certificates by recipient"))
    engine = create_bridge_engine(db_url)
    tables = build_bridge_tables("mdl_")
    migrate(engine, "mdl_", target=step.version - 1)
    (index,) = [ix for ix in tables.certificates.indexes if ix.name == "mdl_mrclcert_rec_ix"]
    with engine.begin() as conn:
        index.drop(conn)  # what version 13 had: the baseline creates today's indexes
        conn.execute(
            tables.certificates.insert().values(companyid=1, recipientid=7, verifycode="a" * 32, timeissued=1)
        )
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("mdl_mrcloud_certificates")}
    assert "mdl_mrclcert_rec_ix" not in names
    result = migrate(engine, "mdl_")
    assert result.applied[0] == step
    indexes = {
        ix["name"]: ix["column_names"] for ix in sa.inspect(engine).get_indexes("mdl_mrcloud_certificates")
    }
    assert indexes["mdl_mrclcert_rec_ix"] == ["recipientid"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(tables.certificates.c.recipientid)).scalars().all() == [7]
    engine.dispose()
