"""Engines, transactions and a statement counter for the bridge's database access.

One engine per process, created from ``DatabaseConfig``. The bridge shares Moodle's
database, so it uses the engine's own conventions: utf8mb4 and READ COMMITTED on
MariaDB/MySQL (Moodle's own setting), a busy timeout and WAL on the embedded SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from moodle_bridge.config import ConfigError, DatabaseConfig


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; the message names the server, never a password."""


def now() -> int:
    """Unix seconds, as Moodle stores every time."""
    return int(time.time())


def dialect_family(engine: sa.Engine | sa.Connection) -> str:
    """``mysql`` (MariaDB and MySQL), ``postgresql`` or ``sqlite``."""
    name = engine.dialect.name
    if name in ("mysql", "mariadb"):
        return "mysql"
    return name


def create_bridge_engine(config: DatabaseConfig | str | URL, **overrides: Any) -> sa.Engine:
    """An engine with the per-dialect settings the bridge relies on."""
    raw = config.url if isinstance(config, DatabaseConfig) else config
    url = make_url(raw)
    # hide_parameters: a failed statement's message (logged, or raised into a traceback) never
    # carries its bound values, which include addresses, bounce texts and sealed secrets.
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "future": True, "hide_parameters": True}
    backend = url.get_backend_name()
    if backend in ("mysql", "mariadb"):
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        kwargs.update(isolation_level="READ COMMITTED", pool_recycle=3600, pool_size=5, max_overflow=5)
    elif backend == "postgresql":
        kwargs.update(isolation_level="READ COMMITTED", pool_size=5, max_overflow=5)
    elif backend == "sqlite":
        kwargs.update(connect_args={"timeout": 30})
    kwargs.update(overrides)
    engine = sa.create_engine(url, **kwargs)
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()


def describe_database_error(exc: BaseException) -> str:
    """One line for an operator that never carries row data.

    ``hide_parameters`` keeps bound values out of SQLAlchemy's own message, but a driver's text can
    still quote them (MariaDB's "Duplicate entry 'alice@example.com-3'", PostgreSQL's "DETAIL: Key
    (email)=(...)"). Errors about the server, the connection or the schema (operational and
    programming errors) name objects, not values, so their first line is kept; for every other
    kind only the class and the driver's error code are shown.
    """
    orig = getattr(exc, "orig", None)
    if orig is None:
        return type(exc).__name__
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.ProgrammingError)):
        lines = str(orig).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0][:200] if lines else type(orig).__name__}"
    code = getattr(orig, "sqlstate", None) or (orig.args[0] if getattr(orig, "args", None) else None)
    suffix = f" (driver code {code})" if isinstance(code, (int, str)) and len(str(code)) <= 10 else ""
    return f"{type(exc).__name__}{suffix}"


def check_connection(engine: sa.Engine) -> None:
    """Raise ``DatabaseUnavailable`` with one clear line when the server does not answer."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise DatabaseUnavailable(f"cannot connect to {where}: {first}") from None


class StatementCounter:
    """Counts statements sent to the server (one ``executemany`` counts once).

    Used by the benchmark and by tests that check round trips grow with batches, not
    recipients.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.count = 0
        self.by_verb: dict[str, int] = {}
        sa.event.listen(engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.count += 1
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        self.by_verb[verb] = self.by_verb.get(verb, 0) + 1

    def reset(self) -> None:
        self.count = 0
        self.by_verb = {}

    def close(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._on_execute)

    @contextmanager
    def measure(self) -> Iterator[StatementCounter]:
        self.reset()
        yield self


def missing_sqlite_file(config: DatabaseConfig) -> str | None:
    """The path of a configured SQLite database file that does not exist (connecting would
    silently create an empty one), else None."""
    url = make_url(config.url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return None if Path(url.database).exists() else url.database


def uses_default_database(config: DatabaseConfig) -> bool:
    return config.url == DatabaseConfig().url


def require_database(config: DatabaseConfig) -> None:
    """Refuse to work on a SQLite file that does not exist instead of creating an empty one."""
    path = missing_sqlite_file(config)
    if path is None:
        return
    if uses_default_database(config):
        raise ConfigError(
            "no database is configured (no configuration file was found and database.url is the "
            "built-in default): set database.url in moodle-offload.toml (or MRCO_DATABASE_URL, or pass "
            "--config) to Moodle's database"
        )
    raise ConfigError(
        f"the database file {path} does not exist: check database.url, then run `moodle-offload migrate`"
    )
