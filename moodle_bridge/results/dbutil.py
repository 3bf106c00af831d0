"""Small portable SQL helpers shared by the results modules."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

T = TypeVar("T")

#: Rows per IN list / CASE statement. Keeps SQLite under its 32,766 bound-parameter limit even
#: with several CASE columns, and MariaDB/PostgreSQL statements small.
CHUNK = 500


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_ignore(conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert rows, skipping those that collide with a unique key. Returns rows inserted."""
    if not rows:
        return 0
    name = conn.dialect.name
    stmt: Any
    if name in ("mysql", "mariadb"):
        stmt = mysql.insert(table).prefix_with("IGNORE")
    elif name == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    elif name == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - the bridge supports the three engines above
        raise NotImplementedError(name)
    total = 0
    for part in chunks(list(rows)):
        total += conn.execute(stmt, list(part)).rowcount or 0
    return total


def update_rows_by_id(
    conn: sa.Connection,
    table: sa.Table,
    values_by_id: Mapping[int, Mapping[str, Any]],
    *,
    extra_where: Iterable[sa.ColumnElement[bool]] = (),
) -> int:
    """Set per-row values with one statement per chunk: ``SET col = CASE id WHEN .. THEN .. END``.

    All rows must change the same columns. A column whose value is the same for every row of the
    chunk is set with one parameter. Returns the number of rows matched.
    """
    ids = sorted(values_by_id)
    if not ids:
        return 0
    columns = sorted(values_by_id[ids[0]])
    total = 0
    for part in chunks(ids):
        assignments: dict[str, Any] = {}
        for column in columns:
            per_row = {row_id: values_by_id[row_id][column] for row_id in part}
            distinct = set(per_row.values())
            if len(distinct) == 1:
                assignments[column] = next(iter(distinct))
            else:
                assignments[column] = sa.case(per_row, value=table.c.id, else_=table.c[column])
        stmt = table.update().where(table.c.id.in_(part), *extra_where).values(**assignments)
        total += conn.execute(stmt).rowcount or 0
    return total
