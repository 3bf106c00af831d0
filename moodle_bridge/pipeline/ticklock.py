"""One tick at a time, across processes and hosts: a lock in the database the ticks share.

MariaDB/MySQL: ``GET_LOCK`` (released when the session ends, so a killed tick never leaves
it behind); PostgreSQL: a session advisory lock; SQLite: ``flock`` on a file beside the
database. The lock name includes the database and prefix, so two sites on one server do
not block each other. This is the bridge's own lock, distinct from Moodle's cron locks.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from moodle_bridge.storage.database import dialect_family


class TickBusy(Exception):
    """Another tick holds the lock."""


def lock_name(engine: sa.Engine, prefix: str) -> str:
    return f"mrcloud:{engine.url.database or ''}:{prefix}tick"


def _pg_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def tick_lock(engine: sa.Engine, prefix: str, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the tick lock for the block; raise ``TickBusy`` if not obtained within ``wait_seconds``."""
    name = lock_name(engine, prefix)
    family = dialect_family(engine)
    if family == "sqlite":
        with _file_lock(engine, wait_seconds):
            yield
        return
    conn = engine.connect()
    try:
        if family == "mysql":
            # GET_LOCK names are limited to 64 characters: use a digest of the full name.
            key = "mrcloud-tick-" + hashlib.sha1(name.encode()).hexdigest()  # noqa: S324 - a name, not security
            got = conn.execute(
                sa.text("SELECT GET_LOCK(:k, :t)"), {"k": key, "t": int(wait_seconds)}
            ).scalar()
            conn.commit()
            if got != 1:
                raise TickBusy(name)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:k)"), {"k": key})
                conn.commit()
        else:
            key_int = _pg_key(name)
            deadline = time.monotonic() + wait_seconds
            while True:
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key_int}).scalar()
                conn.commit()
                if got:
                    break
                if time.monotonic() >= deadline:
                    raise TickBusy(name)
                time.sleep(0.5)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key_int})
                conn.commit()
    finally:
        conn.close()


@contextmanager
def _file_lock(engine: sa.Engine, wait_seconds: float) -> Iterator[None]:
    database = engine.url.database or ""
    path = Path(database + ".tick.lock") if database and database != ":memory:" else None
    if path is None:
        yield
        return
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TickBusy(str(path)) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
