"""Moodle's scheduled-task lock, per engine, and the simulated IOMAD cron honouring it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from iomad_sim.iomad_cron import run_iomad_email_cron
from iomad_sim.smtp_sink import RecordingSmtpSink
from moodle_bridge.sources.iomad.moodle_lock import (
    LockNotAcquired,
    db_record_key,
    moodle_cron_lock,
    mysql_lock_name,
    postgres_lock_keys,
)
from moodle_bridge.sources.iomad.queue import select_due_emails
from tests.iomad.helpers import NOW, seeded

TASK = "\\local_email\\task\\cron_task"


def test_mysql_lock_name_matches_the_live_install() -> None:
    assert mysql_lock_name("iomad", "mdl_", TASK) == "1d5b0e6223f809c28ac8adff1cd34ba72a432943"


def test_postgres_keys_follow_postgres_lock_factory() -> None:
    # Values computed with PHP 8.2 running the factory's own expressions:
    # crc32('iomad:mdl_') folded to signed 32 bits; hexdec(substr(sha1('cron_' . $resource), 0, 7)).
    locktype, token = postgres_lock_keys("iomad", "mdl_", TASK)
    assert (locktype, token) == (-411618811, 189789076)
    assert 0 <= token <= 0xFFFFFFF
    assert postgres_lock_keys("moodle", "mdl_", TASK)[0] == 1289808297  # crc32 below 2**31 stays positive


def test_db_record_key() -> None:
    assert db_record_key(TASK) == "cron_\\local_email\\task\\cron_task"


def test_held_lock_makes_the_iomad_cron_skip(db_engine: sa.Engine, db_url: URL) -> None:
    tables, seed = seeded(db_engine, users_per_company=2, license_allocated=False)
    dbname = db_url.database or "moodle"
    sink = RecordingSmtpSink()
    with moodle_cron_lock(db_engine, tables, dbname, tables.email_cron_task, 0) as held:
        # the engine really holds Moodle's lock
        with db_engine.connect() as other:
            if db_engine.dialect.name in ("mysql", "mariadb"):
                name = mysql_lock_name(dbname, "mdl_", TASK)
                assert held.key == name
                assert other.execute(sa.text("SELECT IS_USED_LOCK(:n)"), {"n": name}).scalar() is not None
            elif db_engine.dialect.name == "postgresql":
                k1, k2 = postgres_lock_keys(dbname, "mdl_", TASK)
                assert (
                    other.execute(sa.text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": k1, "b": k2}).scalar()
                    is False
                )
            else:
                owner = other.execute(
                    sa.select(tables.lock_db.c.owner).where(
                        tables.lock_db.c.resourcekey == db_record_key(TASK)
                    )
                ).scalar()
                assert owner
        with (
            pytest.raises(LockNotAcquired),
            moodle_cron_lock(db_engine, tables, dbname, tables.email_cron_task, 0),
        ):
            pass
        run = run_iomad_email_cron(db_engine, "mdl_", dbname, sink, now=NOW, tables=tables)
        assert not run.ran
        assert sink.messages == []
    with db_engine.connect() as conn:
        assert len(select_due_emails(conn, tables, NOW, None, None)) == len(seed.learner_ids)
    run = run_iomad_email_cron(db_engine, "mdl_", dbname, sink, now=NOW, tables=tables)
    assert run.ran and len(run.sent_rows) == len(seed.learner_ids)
    # released again after the run
    with moodle_cron_lock(db_engine, tables, dbname, tables.email_cron_task, 0):
        pass


def test_lock_waits_up_to_its_timeout() -> None:
    engine = sa.create_engine("sqlite://", poolclass=sa.StaticPool, connect_args={"check_same_thread": False})
    tables, _ = seeded(engine, users_per_company=1)
    with moodle_cron_lock(engine, tables, "x", TASK, 0), pytest.raises(LockNotAcquired):  # noqa: SIM117
        with moodle_cron_lock(engine, "mdl_", "x", TASK, 1):
            pass
