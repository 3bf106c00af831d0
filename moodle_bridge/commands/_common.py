"""Helpers shared by the bridge's commands: engine, tables, actor, one-line errors."""

from __future__ import annotations

import getpass
import os
import sys

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig, ConfigError
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine, require_database


def cli_actor() -> str:
    """``cli:<login>``: who changed something, for the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER", "unknown")
    return f"cli:{user}"


def require_migrated(engine: sa.Engine, tables: BridgeTables) -> None:
    """One line telling the admin to run ``migrate`` when the bridge's tables are missing or old."""
    from moodle_bridge.storage.migrations import LATEST_VERSION, current_version  # noqa: PLC0415

    with engine.connect() as conn:
        version = current_version(conn, tables)
    if version == 0:
        raise ConfigError("the bridge's tables do not exist yet: run `moodle-offload migrate` first")
    if version < LATEST_VERSION:
        raise ConfigError(
            f"the bridge's tables are at schema version {version}, this release needs {LATEST_VERSION}: "
            "run `moodle-offload migrate`"
        )


def open_database(config: BridgeConfig) -> tuple[sa.Engine, BridgeTables, BridgeRepo]:
    require_database(config.database)
    engine = create_bridge_engine(config.database)
    tables = build_bridge_tables(config.database.prefix)
    return engine, tables, BridgeRepo(tables)


def fail(message: str, code: int = 1) -> int:
    print(f"moodle-offload: {message}", file=sys.stderr)
    return code
