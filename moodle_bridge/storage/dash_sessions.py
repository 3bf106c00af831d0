"""Dashboard sessions at rest: what the bridge's housekeeping needs without the web layer."""

from __future__ import annotations

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import BridgeTables


def purge_sessions(conn: sa.Connection, tables: BridgeTables, *, now: int) -> int:
    """Delete expired dashboard sessions (on the ``timeexpires`` index); returns how many."""
    s = tables.dash_sessions
    return int(conn.execute(s.delete().where(s.c.timeexpires <= now)).rowcount or 0)
