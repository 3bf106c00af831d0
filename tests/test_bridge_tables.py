"""The bridge's tables follow Moodle's naming limits and create cleanly on every engine."""

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import TABLE_NAMES, build_bridge_tables
from moodle_bridge.storage.types import MAX_COLUMN_NAME, MAX_TABLE_NAME


def test_names_within_moodle_limits() -> None:
    tables = build_bridge_tables("mdl_")
    names = sorted(t.name.removeprefix("mdl_") for t in tables.metadata.sorted_tables)
    assert names == sorted(TABLE_NAMES)
    for table in tables.metadata.sorted_tables:
        assert len(table.name.removeprefix("mdl_")) <= MAX_TABLE_NAME, table.name
        for column in table.columns:
            assert len(column.name) <= MAX_COLUMN_NAME, (table.name, column.name)


def test_create_and_insert_on_every_engine(db_engine: sa.Engine) -> None:
    tables = build_bridge_tables("pfx_")
    tables.metadata.create_all(db_engine)
    with db_engine.begin() as conn:
        conn.execute(
            tables.jobs.insert(),
            [
                {
                    "companyid": 1,
                    "jobtype": "email",
                    "source": "iomad",
                    "provider": "aws",
                    "status": "pending",
                    "timecreated": 1,
                    "timemodified": 1,
                }
            ],
        )
        job_id = conn.execute(sa.select(tables.jobs.c.id)).scalar_one()
    assert job_id >= 1
    inspected = set(sa.inspect(db_engine).get_table_names())
    assert {f"pfx_{n}" for n in TABLE_NAMES} <= inspected
