"""Open the bridge database for the results commands.

The engine comes from bridge core's ``create_bridge_engine`` (READ COMMITTED, utf8mb4, pool
settings), so the receiver and the CLI behave exactly like ``tick``.
"""

from __future__ import annotations

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig, ConfigError
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine, require_database


def open_database(config: BridgeConfig) -> tuple[sa.Engine, BridgeTables]:
    require_database(config.database)
    engine = create_bridge_engine(config.database)
    tables = build_bridge_tables(config.database.prefix)
    try:
        with engine.connect() as conn:
            present = sa.inspect(conn).has_table(tables.jobs.name)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        where = engine.url.render_as_string(hide_password=True)
        raise ConfigError(f"cannot open the database {where}: {type(exc).__name__}") from None
    if not present:
        engine.dispose()
        raise ConfigError(
            f"the bridge tables ({tables.jobs.name}, ...) are missing: run `moodle-offload migrate`"
        )
    return engine, tables
