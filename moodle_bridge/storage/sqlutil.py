"""Small portable SQL helpers for the bridge's own tables (bridge core and results alike)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
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


def update_where_in(
    conn: sa.Connection,
    table: sa.Table,
    column: sa.ColumnElement[Any],
    keys: Sequence[Any],
    values: Mapping[str, Any],
    *conditions: sa.ColumnElement[bool],
    size: int = CHUNK,
) -> int:
    """``UPDATE table SET values WHERE column IN (keys) AND conditions``, one statement per chunk
    of keys. Returns the rows matched."""
    total = 0
    for part in chunks(list(keys), size):
        stmt = table.update().where(column.in_(list(part)), *conditions).values(**values)
        total += conn.execute(stmt).rowcount or 0
    return total


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


def _placeholder(conn: sa.Connection) -> str:
    return "?" if conn.dialect.paramstyle in ("qmark", "numeric") else "%s"


def update_rows_by_id(
    conn: sa.Connection,
    table: sa.Table,
    values_by_id: Mapping[int, Mapping[str, Any]],
    *,
    where_equals: Mapping[str, Any] | None = None,
) -> int:
    """Set per-row values with one statement per chunk: ``SET col = CASE id WHEN .. THEN .. END``.

    All rows must change the same columns. A column whose value is the same for every row of the
    chunk is set with one parameter; ``where_equals`` adds ``AND col = value`` guards. Returns the
    number of rows matched.

    The statement is written as driver SQL with positional parameters (never values in the text):
    building a 500-branch CASE through SQLAlchemy's expression layer costs more than running it.
    """
    ids = sorted(values_by_id)
    if not ids:
        return 0
    columns = sorted(values_by_id[ids[0]])
    quote = conn.dialect.identifier_preparer.quote
    mark = _placeholder(conn)
    table_sql = conn.dialect.identifier_preparer.format_table(table)
    id_sql = quote("id")
    total = 0
    for part in chunks(ids):
        params: list[Any] = []
        assignments: list[str] = []
        for column in columns:
            per_row = [values_by_id[row_id][column] for row_id in part]
            first = per_row[0]
            if all(v == first and type(v) is type(first) for v in per_row):
                assignments.append(f"{quote(column)} = {mark}")
                params.append(first)
            else:
                branches = " ".join(f"WHEN {mark} THEN {mark}" for _ in part)
                assignments.append(f"{quote(column)} = CASE {id_sql} {branches} ELSE {quote(column)} END")
                for row_id, value in zip(part, per_row, strict=True):
                    params.extend((row_id, value))
        where = [f"{id_sql} IN ({', '.join(mark for _ in part)})"]
        params.extend(part)
        for column, value in sorted((where_equals or {}).items()):
            where.append(f"{quote(column)} = {mark}")
            params.append(value)
        sql = f"UPDATE {table_sql} SET {', '.join(assignments)} WHERE {' AND '.join(where)}"
        total += conn.exec_driver_sql(sql, tuple(params)).rowcount or 0
    return total
