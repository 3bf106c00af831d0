"""Throw-away databases on the three engines the bridge supports, for tests, the demo and
the benchmarks.

SQLite always works. MariaDB and PostgreSQL are used when reachable; each user gets a
database of its own, created and dropped here, so parallel runs never collide. Every
function takes an optional ``server_url`` (an SQLAlchemy URL of the server's admin
database) for callers with their own override variable.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

ENGINES = ("sqlite", "mariadb", "postgres")

SERVER_URLS = {
    "mariadb": os.environ.get("MRCO_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/"),
    "postgres": os.environ.get(
        "MRCO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
}


@dataclass(frozen=True)
class ServerStatus:
    engine: str
    reachable: bool
    detail: str


def probe(engine: str) -> ServerStatus:
    if engine == "sqlite":
        return ServerStatus(engine, True, "embedded")
    url = make_url(SERVER_URLS[engine])
    try:
        eng = sa.create_engine(url, connect_args={"connect_timeout": 3}, poolclass=sa.NullPool)
        with eng.connect() as conn:
            version = conn.execute(sa.text("SELECT version()")).scalar_one()
        eng.dispose()
    except Exception as exc:  # any failure means "not usable here"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ServerStatus(engine, False, f"{url.render_as_string(hide_password=True)}: {first_line}")
    return ServerStatus(engine, True, f"{url.host}:{url.port} {str(version).split(',')[0]}")


def _admin_engine(engine: str, server_url: str | None) -> sa.Engine:
    return sa.create_engine(
        server_url or SERVER_URLS[engine], isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )


def create_database(engine: str, label: str = "t", server_url: str | None = None) -> URL:
    """Create an empty database and return its URL."""
    name = f"mrco_{label}_{os.getpid()}_{secrets.token_hex(4)}"
    if engine == "sqlite":
        path = Path(tempfile.mkdtemp(prefix="mrco-sqlite-")) / f"{name}.sqlite3"
        return make_url(f"sqlite:///{path}")
    admin = _admin_engine(engine, server_url)
    with admin.connect() as conn:
        if engine == "mariadb":
            conn.execute(
                sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            )
        else:
            conn.execute(sa.text(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"))
    admin.dispose()
    return make_url(server_url or SERVER_URLS[engine]).set(database=name)


def drop_database(engine: str, url: URL, server_url: str | None = None) -> None:
    if engine == "sqlite":
        if url.database:
            path = Path(url.database)
            for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                candidate.unlink(missing_ok=True)
        return
    admin = _admin_engine(engine, server_url)
    with admin.connect() as conn:
        if engine == "mariadb":
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{url.database}`"))
        else:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()
