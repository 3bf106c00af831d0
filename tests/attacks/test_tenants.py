"""Tenants cannot interfere: idempotency keys are scoped by company on the bridge and in the cloud.

Company 7's key pre-claims a report id (or a job/recipient key in the cloud) that company 8 then
uses for its genuine report: company 8's report must still apply.
"""

from __future__ import annotations

import sqlalchemy as sa

from moodle_bridge.results.ingest import ingest_result_batch
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from moodle_bridge.storage.migrations import LATEST_VERSION, migrate
from tests.results.factory import NOW, create_job, make_tables, result, result_batch


def _ingest(conn: sa.Connection, tables, batch, company: int):
    return ingest_result_batch(conn, tables, batch, company_id=company, now=NOW + 30, actor="test")


def test_a_report_id_claimed_by_one_company_does_not_drop_another_companys_report(db_engine) -> None:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job7 = create_job(conn, tables, company_id=7, recipients=2, email_id_start=None)
        job8 = create_job(conn, tables, company_id=8, recipients=2, email_id_start=None)
    with db_engine.begin() as conn:
        pre = _ingest(conn, tables, result_batch(7, [result(job7, 0, "sent")], report_id="shared-id"), 7)
        assert pre.applied == 1
    with db_engine.begin() as conn:
        genuine = _ingest(conn, tables, result_batch(8, [result(job8, 0, "sent")], report_id="shared-id"), 8)
    assert not genuine.duplicate_report
    assert genuine.applied == 1
    with db_engine.begin() as conn:  # and the same company's repeat is still a duplicate
        again = _ingest(conn, tables, result_batch(8, [result(job8, 0, "sent")], report_id="shared-id"), 8)
    assert again.duplicate_report


def test_upgrade_rescopes_the_report_id_key_and_keeps_rows(db_url) -> None:
    engine = create_bridge_engine(db_url)
    tables = build_bridge_tables("mdl_")
    migrate(engine, "mdl_", target=LATEST_VERSION - 1)
    # Recreate result_reports as every release before this one had it: reportid unique on its own.
    old = sa.MetaData()
    legacy = sa.Table(
        tables.result_reports.name,
        old,
        *[
            sa.Column(
                c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, unique=c.name == "reportid"
            )
            for c in tables.result_reports.columns
        ],
    )
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {tables.result_reports.name}"))
        legacy.create(conn)
        conn.execute(
            legacy.insert().values(
                reportid="r-1", companyid=7, reporter="email_sender", resultcount=1, timereceived=1
            )
        )
    with engine.begin() as conn, __import__("pytest").raises(sa.exc.IntegrityError):
        conn.execute(
            legacy.insert().values(
                reportid="r-1", companyid=8, reporter="email_sender", resultcount=1, timereceived=1
            )
        )
    result = migrate(engine, "mdl_")
    assert [s.version for s in result.applied] == [LATEST_VERSION]
    rr = tables.result_reports
    with engine.begin() as conn:
        conn.execute(
            rr.insert().values(
                reportid="r-1", companyid=8, reporter="email_sender", resultcount=1, timereceived=2
            )
        )
        assert conn.execute(sa.select(sa.func.count()).select_from(rr)).scalar_one() == 2
    with engine.begin() as conn, __import__("pytest").raises(sa.exc.IntegrityError):
        conn.execute(
            rr.insert().values(
                reportid="r-1", companyid=8, reporter="email_sender", resultcount=1, timereceived=3
            )
        )
    assert migrate(engine, "mdl_").applied == ()
    engine.dispose()
