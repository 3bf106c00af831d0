"""Take Moodle's own scheduled-task lock, exactly as Moodle's lock factory for the engine does.

While the bridge holds the lock of ``\\local_email\\task\\cron_task`` (5.1+:
``\\local_iomad\\task\\email_cron_task``), IOMAD's email cron cannot be between its load and
its whole-row update, and the normal cron runner (timeout 0) skips the task instead.

- MySQL/MariaDB (``mysql_lock_factory``): ``GET_LOCK(sha1(dbname . ':' . prefix . '_' . type
  . '_' . resource), timeout)`` / ``RELEASE_LOCK``; e.g.
  sha1('iomad:mdl__cron_\\local_email\\task\\cron_task').
- PostgreSQL (``postgres_lock_factory``): ``pg_try_advisory_lock(crc32(dbname . ':' . prefix)
  as signed int32, hexdec(substr(sha1(type . '_' . resource), 0, 7)))``, retried every
  10-250 ms until the timeout; ``pg_advisory_unlock`` to release.
- Anything else, e.g. SQLite (``db_record_lock_factory``): a ``lock_db`` row per resource key
  ``type . '_' . resource``; ``UPDATE ... SET owner = :token, expires = :expires WHERE
  resourcekey = :key AND (owner IS NULL OR expires < :now)``, then count the rows we own.

MySQL named locks and PostgreSQL advisory locks belong to a *connection*: pass an Engine
(a dedicated AUTOCOMMIT connection is held for the lock's lifetime) or a Connection reserved
for the lock.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from moodle_bridge.sources.iomad.schema import IomadTables

DEFAULT_LOCK_TYPE = "cron"
MYSQL = "mysql"
POSTGRES = "postgres"
DB_RECORD = "db_record"


class LockNotAcquired(RuntimeError):
    """Somebody else (normally Moodle's cron running the task) holds the lock."""


class LockLost(RuntimeError):
    """The lock this process took is no longer held by it (its session ended, it expired, it was
    released): whatever the caller was about to commit under it must be rolled back."""


@dataclass(frozen=True)
class HeldLock:
    factory: str
    resource: str
    key: str  # what identifies the lock in the engine (name, "locktype:token" or lock_db key)
    #: db_record factory: the owner token written into ``lock_db`` (None for the other factories)
    token: str | None = None
    lock_db: sa.Table | None = None
    maxlifetime: int = 86400


def lock_still_held(conn: sa.Connection, held: HeldLock) -> bool:
    """Whether ``conn``'s session still owns ``held``: one statement, run inside the caller's
    transaction so that ownership is checked by the transaction that commits.

    - MySQL/MariaDB: ``IS_USED_LOCK(name) = CONNECTION_ID()`` (named locks belong to a session);
    - PostgreSQL: the advisory lock is granted to ``pg_backend_pid()`` in ``pg_locks``;
    - db_record: the ``lock_db`` row still carries our token; its ``expires`` is renewed by the
      same UPDATE, which also locks the row until the caller commits, so nobody can take the
      lock over between this check and the commit.
    """
    if held.factory == MYSQL:
        got = conn.execute(
            sa.text("SELECT IS_USED_LOCK(:name) = CONNECTION_ID()"), {"name": held.key}
        ).scalar()
        return bool(got)
    if held.factory == POSTGRES:
        locktype, token = (int(x) for x in held.key.split(":"))
        got = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND classid::bigint = :classid"
                " AND objid::bigint = :objid AND objsubid = 2"
            ),
            {"classid": locktype & 0xFFFFFFFF, "objid": token},
        ).scalar()
        return bool(got)
    if held.lock_db is None or held.token is None:
        return False
    now = int(time.time())
    renewed = conn.execute(
        sa.update(held.lock_db)
        .where(held.lock_db.c.resourcekey == held.key, held.lock_db.c.owner == held.token)
        .values(expires=now + held.maxlifetime)
    ).rowcount
    return renewed == 1


def mysql_lock_name(dbname: str, prefix: str, resource: str, locktype: str = DEFAULT_LOCK_TYPE) -> str:
    """``sha1($CFG->dbname . ':' . $CFG->prefix . '_' . $type . '_' . $resource)``."""
    return hashlib.sha1(f"{dbname}:{prefix}_{locktype}_{resource}".encode()).hexdigest()  # noqa: S324


def postgres_lock_keys(
    dbname: str, prefix: str, resource: str, locktype: str = DEFAULT_LOCK_TYPE
) -> tuple[int, int]:
    """(locktype, token) for ``pg_try_advisory_lock``, as postgres_lock_factory derives them."""
    crc = zlib.crc32(f"{dbname}:{prefix}".encode())
    if crc > 0x7FFFFFFF:
        crc -= 0x100000000
    token = int(hashlib.sha1(f"{locktype}_{resource}".encode()).hexdigest()[:7], 16)  # noqa: S324
    return crc, token


def db_record_key(resource: str, locktype: str = DEFAULT_LOCK_TYPE) -> str:
    return f"{locktype}_{resource}"


def factory_for(dialect_name: str) -> str:
    if dialect_name in ("mysql", "mariadb"):
        return MYSQL
    if dialect_name == "postgresql":
        return POSTGRES
    return DB_RECORD


def _lock_db_table(tables_or_prefix: IomadTables | str) -> sa.Table:
    if isinstance(tables_or_prefix, IomadTables):
        return tables_or_prefix.lock_db
    m = sa.MetaData()
    return sa.Table(
        f"{tables_or_prefix}lock_db",
        m,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("resourcekey", sa.String(255)),
        sa.Column("expires", sa.BigInteger),
        sa.Column("owner", sa.String(36)),
    )


def _prefix(tables_or_prefix: IomadTables | str) -> str:
    return tables_or_prefix.prefix if isinstance(tables_or_prefix, IomadTables) else tables_or_prefix


def _commit(conn: sa.Connection) -> None:
    if conn.in_transaction():
        conn.commit()


def _mysql_acquire(conn: sa.Connection, name: str, timeout: float) -> bool:
    got = conn.execute(
        sa.text("SELECT GET_LOCK(:name, :timeout)"), {"name": name, "timeout": math.ceil(timeout)}
    ).scalar()
    _commit(conn)
    return got == 1


def _mysql_release(conn: sa.Connection, name: str) -> None:
    conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
    _commit(conn)


def _pg_acquire(conn: sa.Connection, keys: tuple[int, int], timeout: float) -> bool:
    giveup = time.time() + timeout
    while True:
        got = conn.execute(
            sa.text("SELECT pg_try_advisory_lock(:locktype, :token)"), {"locktype": keys[0], "token": keys[1]}
        ).scalar()
        _commit(conn)
        if got:
            return True
        if time.time() >= giveup:
            return False
        time.sleep(random.uniform(0.01, 0.25))  # noqa: S311 - Moodle's back-off


def _pg_release(conn: sa.Connection, keys: tuple[int, int]) -> None:
    conn.execute(
        sa.text("SELECT pg_advisory_unlock(:locktype, :token)"), {"locktype": keys[0], "token": keys[1]}
    )
    _commit(conn)


def _db_acquire(
    conn: sa.Connection, lock_db: sa.Table, key: str, token: str, timeout: float, maxlifetime: int
) -> bool:
    now = int(time.time())
    giveup = now + timeout
    exists = conn.execute(sa.select(lock_db.c.id).where(lock_db.c.resourcekey == key)).first()
    if exists is None:
        try:
            conn.execute(sa.insert(lock_db).values(resourcekey=key))
            _commit(conn)
        except sa.exc.IntegrityError:  # somebody inserted it first: fine
            conn.rollback()
    while True:
        now = int(time.time())
        conn.execute(
            sa.update(lock_db)
            .where(
                lock_db.c.resourcekey == key,
                sa.or_(lock_db.c.owner.is_(None), lock_db.c.expires < now),
            )
            .values(expires=now + maxlifetime, owner=token)
        )
        owned = conn.execute(
            sa.select(sa.func.count())
            .select_from(lock_db)
            .where(lock_db.c.resourcekey == key, lock_db.c.owner == token)
        ).scalar_one()
        _commit(conn)
        if owned == 1:
            return True
        if now >= giveup:
            return False
        time.sleep(random.uniform(0.01, 0.25))  # noqa: S311


def _db_release(conn: sa.Connection, lock_db: sa.Table, token: str) -> None:
    conn.execute(sa.update(lock_db).where(lock_db.c.owner == token).values(expires=None, owner=None))
    _commit(conn)


def _release_quietly(release: Callable[[], None], conn: sa.Connection) -> None:
    """Release, unless the session is already gone (then the server has released it)."""
    try:
        release()
    except sa.exc.DBAPIError as exc:
        if not (exc.connection_invalidated or conn.invalidated or conn.closed):
            raise


@contextmanager
def moodle_cron_lock(
    bind: sa.Engine | sa.Connection,
    tables_or_prefix: IomadTables | str,
    dbname: str,
    resource: str,
    timeout_seconds: float = 0,
    *,
    locktype: str = DEFAULT_LOCK_TYPE,
    factory: str | None = None,
    maxlifetime: int = 86400,
) -> Iterator[HeldLock]:
    """Hold Moodle's ``locktype`` lock on ``resource`` for the ``with`` block.

    Raises LockNotAcquired when it cannot be had within ``timeout_seconds`` (0: one try, like
    Moodle's cron runner). ``factory`` overrides the engine's default (``$CFG->lock_factory``).
    Given a Connection, the lock belongs to that connection's session: a caller that also
    commits its work on that connection can never commit after losing the lock to a dead
    session (the session's transaction dies with it); ``lock_still_held`` checks it explicitly.
    """
    prefix = _prefix(tables_or_prefix)
    own_conn = isinstance(bind, sa.Engine)
    conn = (
        bind.connect().execution_options(isolation_level="AUTOCOMMIT")
        if isinstance(bind, sa.Engine)
        else bind
    )
    try:
        kind = factory or factory_for(conn.dialect.name)
        if kind == MYSQL:
            name = mysql_lock_name(dbname, prefix, resource, locktype)
            if not _mysql_acquire(conn, name, timeout_seconds):
                raise LockNotAcquired(f"Moodle {locktype} lock for {resource} is held by another process")
            try:
                yield HeldLock(kind, resource, name)
            finally:
                _release_quietly(lambda: _mysql_release(conn, name), conn)
        elif kind == POSTGRES:
            keys = postgres_lock_keys(dbname, prefix, resource, locktype)
            if not _pg_acquire(conn, keys, timeout_seconds):
                raise LockNotAcquired(f"Moodle {locktype} lock for {resource} is held by another process")
            try:
                yield HeldLock(kind, resource, f"{keys[0]}:{keys[1]}")
            finally:
                _release_quietly(lambda: _pg_release(conn, keys), conn)
        else:
            lock_db = _lock_db_table(tables_or_prefix)
            key = db_record_key(resource, locktype)
            token = str(uuid.uuid4())
            if not _db_acquire(conn, lock_db, key, token, timeout_seconds, maxlifetime):
                raise LockNotAcquired(f"Moodle {locktype} lock for {resource} is held by another process")
            try:
                yield HeldLock(DB_RECORD, resource, key, token, lock_db, maxlifetime)
            finally:
                _release_quietly(lambda: _db_release(conn, lock_db, token), conn)
    finally:
        if own_conn:
            conn.close()
