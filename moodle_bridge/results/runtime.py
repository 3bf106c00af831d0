"""Open the bridge database for the results commands.

Bridge core owns engine creation (pool settings, MariaDB/PostgreSQL options); until its helper is
merged this minimal version is used by ``jobs`` and ``serve``. Replace the body with a call to
bridge core's function when both are on main.
"""

from __future__ import annotations

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables


def open_database(config: BridgeConfig) -> tuple[sa.Engine, BridgeTables]:
    engine = sa.create_engine(config.database.url, pool_pre_ping=True)
    return engine, build_bridge_tables(config.database.prefix)
