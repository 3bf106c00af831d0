"""Open the bridge database for the results commands.

The engine comes from bridge core's ``create_bridge_engine`` (READ COMMITTED, utf8mb4, pool
settings), so the receiver and the CLI behave exactly like ``tick``.
"""

from __future__ import annotations

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine


def open_database(config: BridgeConfig) -> tuple[sa.Engine, BridgeTables]:
    engine = create_bridge_engine(config.database)
    return engine, build_bridge_tables(config.database.prefix)
