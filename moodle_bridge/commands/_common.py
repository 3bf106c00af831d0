"""Helpers shared by the bridge's commands: engine, tables, actor, one-line errors."""

from __future__ import annotations

import getpass
import os
import sys

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine


def cli_actor() -> str:
    """``cli:<login>``: who changed something, for the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER", "unknown")
    return f"cli:{user}"


def open_database(config: BridgeConfig) -> tuple[sa.Engine, BridgeTables, BridgeRepo]:
    engine = create_bridge_engine(config.database)
    tables = build_bridge_tables(config.database.prefix)
    return engine, tables, BridgeRepo(tables)


def fail(message: str, code: int = 1) -> int:
    print(f"moodle-offload: {message}", file=sys.stderr)
    return code
