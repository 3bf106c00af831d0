"""The per-engine database fixtures work, and each engine round-trips non-ASCII text."""

import sqlalchemy as sa


def test_round_trip_unicode_and_bigint(db_engine: sa.Engine, db_engine_name: str) -> None:
    meta = sa.MetaData()
    table = sa.Table(
        "mrco_probe",
        meta,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("due", sa.BigInteger, nullable=False),
    )
    meta.create_all(db_engine)
    text = "Zoë — محمد — 李小龍 — 🎓"
    with db_engine.begin() as conn:
        conn.execute(table.insert(), [{"body": text, "due": 2**40}])
        row = conn.execute(sa.select(table.c.body, table.c.due)).one()
    assert row.body == text
    assert row.due == 2**40
    assert (
        db_engine.dialect.name
        == {"sqlite": "sqlite", "mariadb": "mysql", "postgres": "postgresql"}[db_engine_name]
    )
