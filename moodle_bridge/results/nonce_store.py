"""A database-backed ``NonceStore`` for ``offload_contract.signing.Verifier``.

The unique key (keyid, nonce) makes "remember" atomic across processes and servers: two requests
with the same nonce race on the insert and exactly one wins. Expired nonces are reused in place and
purged by ``purge_expired`` (called from ``tick``'s reconciliation).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import BridgeTables


class DatabaseNonceStore:
    def __init__(
        self, engine: sa.Engine, tables: BridgeTables, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._nonces = tables.nonces
        self._clock = clock

    def remember(self, key_id: str, nonce: str, expires_at: int) -> bool:
        table = self._nonces
        try:
            with self._engine.begin() as conn:
                conn.execute(table.insert().values(keyid=key_id, nonce=nonce, timeexpires=expires_at))
            return True
        except sa.exc.IntegrityError:
            pass
        now = int(self._clock())
        with self._engine.begin() as conn:
            reused = conn.execute(
                table.update()
                .where(table.c.keyid == key_id, table.c.nonce == nonce, table.c.timeexpires <= now)
                .values(timeexpires=expires_at)
            ).rowcount
        return bool(reused)


def purge_expired(conn: sa.Connection, tables: BridgeTables, now: int) -> int:
    """Delete nonces that can no longer be replayed (their timestamp is outside the window)."""
    return conn.execute(tables.nonces.delete().where(tables.nonces.c.timeexpires <= now)).rowcount or 0
