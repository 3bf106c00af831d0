"""The grants docs/INSTALL.md gives the bridge's database user are enough, and are applied for
real: a user holding only them migrates, claims, parks, submits and settles on MariaDB and
PostgreSQL."""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from moodle_bridge.cli import main
from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.iomad.queries import PARKED_DUE_BASE
from moodle_bridge.storage import manireports
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from tests.bridge.conftest import drain, make_config, with_queues
from tests.bridge.iomad_world import IomadWorld


@pytest.fixture(
    params=[
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def db_engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("with_manireports", [False, True], ids=["moodle", "with-manireports"])
def test_a_user_with_only_the_printed_grants_runs_the_bridge(
    db_url: URL, db_engine_name: str, aws, tmp_path, monkeypatch, capsys, with_manireports: bool
) -> None:
    admin = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
    world = IomadWorld.create(admin)
    if with_manireports:  # the ManiReports plugin's table, owned by Moodle's user
        sa.Table(
            manireports.table_name("mdl_"),
            sa.MetaData(),
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column("name", sa.String(255)),
            sa.Column("userid", sa.BigInteger),
            sa.Column("reporttype", sa.String(100)),
            sa.Column("format", sa.String(10)),
            sa.Column("frequency", sa.String(20)),
            sa.Column("enabled", sa.SmallInteger),
        ).create(admin)
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO mdl_manireports_schedules (id, name, userid, reporttype, format, "
                    "frequency, enabled) VALUES (3, 'Weekly', 2, 'completions', 'csv', 'weekly', 1)"
                )
            )
    world.add_company(1)
    world.add_user(10, "learner@example.com", "Lea", "Rner", companyid=1)
    eid = world.queue("license_allocated", 10, 1)
    user = f"mrco_{secrets.token_hex(4)}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MRCO_DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.delenv("MRCO_CONFIG", raising=False)
    assert main(["config", "grants", "--user", user, "--host", "%"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("--")]
    assert printed and all(line.startswith("GRANT ") for line in printed)
    assert not any(" DROP" in line or "ALL PRIVILEGES" in line for line in printed)
    mysql = db_engine_name == "mariadb"
    assert any("manireports_schedules" in line for line in printed) == with_manireports
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"
                if mysql
                else f"CREATE ROLE \"{user}\" LOGIN PASSWORD 'pw'"
            )
        )
    limited_url = db_url.set(username=user, password="pw")
    limited = create_bridge_engine(limited_url)
    try:
        with admin.connect() as conn:
            for statement in printed:
                conn.execute(sa.text(statement))
        monkeypatch.setenv("MRCO_DATABASE_URL", limited_url.render_as_string(hide_password=False))
        assert main(["migrate"]) == 0
        assert main(["migrate"]) == 0
        if with_manireports:
            with limited.connect() as conn:
                (row,) = manireports.read(conn, "mdl_")
                columns = {c["name"] for c in sa.inspect(conn).get_columns("mdl_manireports_schedules")}
            # MariaDB: the printed ALTER lets migrate add the plan's columns; PostgreSQL: only the
            # owner may, so they are read as their defaults (migrate warned and went on).
            assert ("cloud_preference" in columns) == mysql
            assert (row.id, row.cloud_preference, row.action_type) == (3, "auto", "email")
        repo = BridgeRepo(build_bridge_tables("mdl_"))
        with limited.begin() as conn:
            repo.set_offload_enabled(conn, True)
            repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
        config = with_queues(make_config(limited_url), aws)
        report = run_tick(limited, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
        assert report.claim is not None and report.claim.claimed == 1
        assert report.outbox is not None and report.outbox.submitted == 1
        assert world.rows()[eid].due >= PARKED_DUE_BASE
        assert len(drain(aws)) == 1
        # Anything beyond the grants is refused: the user cannot drop IOMAD's queue.
        with pytest.raises(sa.exc.SQLAlchemyError), limited.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {world.tables.email.name}"))
    finally:
        limited.dispose()
        with admin.connect() as conn:
            if mysql:
                conn.execute(sa.text(f"DROP USER '{user}'@'%'"))
            else:
                conn.execute(sa.text(f'REASSIGN OWNED BY "{user}" TO CURRENT_USER'))
                conn.execute(sa.text(f'DROP OWNED BY "{user}"'))
                conn.execute(sa.text(f'DROP ROLE "{user}"'))
        admin.dispose()


def test_strict_mode_with_the_documented_privileges_and_moodles_own_user_inserting(
    db_url: URL, db_engine_name: str, aws, tmp_path, monkeypatch, capsys
) -> None:
    """docs/sending.md's strict-mode privileges, applied for real: the bridge's user holding the
    printed grants plus TRIGGER on IOMAD's queue table installs the trigger; Moodle's own user, which
    has no grant on the bridge's tables, still queues mail (parked at insert); the bridge takes it."""
    admin = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
    world = IomadWorld.create(admin)
    world.add_company(1)
    world.add_user(10, "learner@example.com", "Lea", "Rner", companyid=1)
    mysql = db_engine_name == "mariadb"
    bridge_user, moodle_user = f"mrco_{secrets.token_hex(4)}", f"mdl_{secrets.token_hex(4)}"
    email = world.tables.email.name
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MRCO_DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.delenv("MRCO_CONFIG", raising=False)
    assert main(["config", "grants", "--user", bridge_user, "--host", "%", "--strict"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("--")]
    database = db_url.database
    if mysql:
        strict_grant = f"GRANT TRIGGER ON `{database}`.`{email}` TO '{bridge_user}'@'%';"
        moodle_grants = [f"GRANT SELECT, INSERT, UPDATE ON `{database}`.`{email}` TO '{moodle_user}'@'%';"]
    else:
        strict_grant = f'GRANT TRIGGER ON TABLE "public"."{email}" TO "{bridge_user}";'
        moodle_grants = [
            f'GRANT CONNECT ON DATABASE "{database}" TO "{moodle_user}";',
            f'GRANT USAGE ON SCHEMA public TO "{moodle_user}";',
            f'GRANT SELECT, INSERT, UPDATE ON "{email}" TO "{moodle_user}";',
        ]
    bridge_url = db_url.set(username=bridge_user, password="pw")
    moodle_url = db_url.set(username=moodle_user, password="pw")
    bridge = create_bridge_engine(bridge_url)
    moodle = sa.create_engine(moodle_url)
    try:
        with admin.connect() as conn:
            for user in (bridge_user, moodle_user):
                conn.execute(
                    sa.text(
                        f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"
                        if mysql
                        else f"CREATE ROLE \"{user}\" LOGIN PASSWORD 'pw'"
                    )
                )
            assert printed[-1] == strict_grant  # printed by `config grants --strict`
            for statement in [*printed, *moodle_grants]:
                conn.execute(sa.text(statement))
        monkeypatch.setenv("MRCO_DATABASE_URL", bridge_url.render_as_string(hide_password=False))
        assert main(["migrate"]) == 0
        repo = BridgeRepo(build_bridge_tables("mdl_"))
        with bridge.begin() as conn:
            repo.set_offload_enabled(conn, True)
            repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
        assert main(["migrate", "--strict"]) == 0

        # IOMAD queues mail as Moodle's user, which cannot read the bridge's tables.
        with moodle.connect() as conn, pytest.raises(sa.exc.SQLAlchemyError):
            conn.execute(sa.text("SELECT count(*) FROM mdl_mrcloud_company_settings"))
        world.engine = moodle
        eid = world.queue("license_allocated", 10, 1)
        world.engine = admin
        assert world.rows()[eid].due >= PARKED_DUE_BASE  # parked in the inserting transaction

        config = with_queues(make_config(bridge_url), aws)
        report = run_tick(bridge, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
        assert report.claim is not None and report.claim.claimed == 1
        assert len(drain(aws)) == 1
        assert main(["migrate", "--strict"]) == 0  # again: idempotent with the same privileges
        if not mysql:  # only the table's owner (or a superuser) may drop a PostgreSQL trigger
            monkeypatch.setenv("MRCO_DATABASE_URL", db_url.render_as_string(hide_password=False))
        assert main(["migrate", "--no-strict"]) == 0
        world.engine = moodle
        after = world.queue("license_allocated", 10, 1)
        world.engine = admin
        assert world.rows()[after].due < PARKED_DUE_BASE
    finally:
        world.engine = admin
        bridge.dispose()
        moodle.dispose()
        with admin.connect() as conn:
            for user in (moodle_user, bridge_user):
                if mysql:
                    conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
                else:
                    conn.execute(sa.text(f'REASSIGN OWNED BY "{user}" TO CURRENT_USER'))
                    conn.execute(sa.text(f'DROP OWNED BY "{user}"'))
                    conn.execute(sa.text(f'DROP ROLE IF EXISTS "{user}"'))
        admin.dispose()
