"""Open the bridge database for the results commands.

The engine comes from bridge core's ``create_bridge_engine`` (READ COMMITTED, utf8mb4, pool
settings), so the receiver and the CLI behave exactly like ``tick``.
"""

from __future__ import annotations

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig, ConfigError
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine, require_database
from moodle_bridge.storage.migrations import LATEST_VERSION, current_version


def open_database(config: BridgeConfig) -> tuple[sa.Engine, BridgeTables]:
    require_database(config.database)
    engine = create_bridge_engine(config.database)
    tables = build_bridge_tables(config.database.prefix)
    try:
        with engine.connect() as conn:
            present = sa.inspect(conn).has_table(tables.jobs.name)
            version = current_version(conn, tables) if present else 0
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        where = engine.url.render_as_string(hide_password=True)
        raise ConfigError(f"cannot open the database {where}: {type(exc).__name__}") from None
    if not present:
        engine.dispose()
        raise ConfigError(
            f"the bridge tables ({tables.jobs.name}, ...) are missing: run `moodle-offload migrate`"
        )
    if version > LATEST_VERSION:
        engine.dispose()
        raise ConfigError(
            f"bridge tables are at schema version {version}, newer than this release knows "
            f"({LATEST_VERSION}): a downgrade is not supported; install the release that migrated them"
        )
    return engine, tables
