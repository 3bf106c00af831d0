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
