"""The ManiReports plugin's ``manireports_schedules`` table, when a site has it (docs/schedules.md).

The original plan extends that table with five columns (``cloud_preference``, ``action_type``,
``custom_interval``, ``suppresstarget``, ``suppress_course_completion``, with the plan's types and
defaults). ``moodle-offload migrate`` adds the ones missing; the bridge then reads the table's
rows (``schedules list`` shows them, ``schedules create --from-manireports ID`` makes a bridge
schedule from one) and writes nothing else to it. A site without the plugin has no such table and
the bridge keeps its schedules in ``mrcloud_schedules`` alone, with the same five columns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.schema import CreateColumn

TABLE = "manireports_schedules"

log = logging.getLogger("moodle_bridge.storage.manireports")

#: The plan's columns: (name, type, default), added in this order when missing.
PLAN_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any], str], ...] = (
    ("cloud_preference", sa.String(20), "auto"),
    ("action_type", sa.String(20), "email"),
    ("custom_interval", sa.BigInteger(), "0"),
    ("suppresstarget", sa.BigInteger(), "0"),
    ("suppress_course_completion", sa.SmallInteger(), "0"),
)


@dataclass(frozen=True)
class ManiReportsSchedule:
    id: int
    name: str
    userid: int
    reporttype: str
    format: str
    frequency: str
    enabled: bool
    cloud_preference: str
    action_type: str
    custom_interval: int
    suppresstarget: int
    suppress_course_completion: bool


def table_name(prefix: str) -> str:
    return f"{prefix}{TABLE}"


def present(conn: sa.Connection, prefix: str) -> bool:
    """Whether the site has the table *and the bridge's user may see it*.

    MariaDB/MySQL answer "SELECT command denied" rather than "no such table" about a table the
    user has no grant on; its ``information_schema`` lists only the tables the user may use.
    """
    if conn.dialect.name in ("mysql", "mariadb"):
        found = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = :name"
            ),
            {"name": table_name(prefix)},
        ).scalar()
        return bool(found)
    return sa.inspect(conn).has_table(table_name(prefix))


def extend(conn: sa.Connection, prefix: str) -> list[str]:
    """Add the plan's columns the site's table lacks (idempotent); the names added.

    Without the right to alter it (grants: ``config grants``; on PostgreSQL only the table's
    owner may) the table is left as it is, with one warning: the bridge then reads the plan's
    columns as their defaults. A refused ALTER must not stop the bridge's own migration.
    """
    if not present(conn, prefix):
        return []
    name = table_name(prefix)
    existing = {c["name"] for c in sa.inspect(conn).get_columns(name)}
    added: list[str] = []
    preparer = conn.dialect.identifier_preparer
    for column, type_, default in PLAN_COLUMNS:
        if column in existing:
            continue
        col = sa.Column(column, type_, nullable=False, server_default=default)
        sa.Table(name, sa.MetaData(), col)  # binds the column to a table for the DDL compiler
        ddl = CreateColumn(col).compile(dialect=conn.dialect)
        statement = sa.text(f"ALTER TABLE {preparer.quote(name)} ADD {ddl}")
        try:
            if conn.dialect.name == "postgresql":  # a failed statement would abort the transaction
                with conn.begin_nested():
                    conn.execute(statement)
            else:
                conn.execute(statement)
        except sa.exc.DBAPIError as exc:
            log.warning(
                "%s: the plan's columns were not added (%s); grant ALTER on it (on PostgreSQL run "
                "migrate once as its owner) to extend it. Its rows are read with the defaults.",
                name,
                type(exc.orig).__name__,
            )
            return added
        added.append(column)
    return added


def _table(prefix: str) -> sa.Table:
    return sa.Table(
        table_name(prefix),
        sa.MetaData(),
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("name", sa.String(255)),
        sa.Column("userid", sa.BigInteger),
        sa.Column("reporttype", sa.String(100)),
        sa.Column("format", sa.String(10)),
        sa.Column("frequency", sa.String(20)),
        sa.Column("enabled", sa.SmallInteger),
        *(sa.Column(c, t) for c, t, _ in PLAN_COLUMNS),
    )


def read(conn: sa.Connection, prefix: str, ids: Sequence[int] | None = None) -> list[ManiReportsSchedule]:
    """The table's rows (all, or those ids), by primary key; [] when the site has no such table."""
    if not present(conn, prefix):
        return []
    t = _table(prefix)
    existing = {c["name"] for c in sa.inspect(conn).get_columns(table_name(prefix))}
    query = sa.select(*(c for c in t.c if c.name in existing)).order_by(t.c.id)
    if ids is not None:
        query = query.where(t.c.id.in_(list(ids)))
    return [
        ManiReportsSchedule(
            id=int(r["id"]),
            name=str(r["name"] or ""),
            userid=int(r["userid"] or 0),
            reporttype=str(r["reporttype"] or ""),
            format=str(r["format"] or "csv").lower(),
            frequency=str(r["frequency"] or "").lower(),
            enabled=bool(r["enabled"]),
            cloud_preference=str(r.get("cloud_preference") or "auto"),
            action_type=str(r.get("action_type") or "email"),
            custom_interval=int(r.get("custom_interval") or 0),
            suppresstarget=int(r.get("suppresstarget") or 0),
            suppress_course_completion=bool(r.get("suppress_course_completion")),
        )
        for r in conn.execute(query).mappings()
    ]
