"""``moodle-offload migrate``: create or upgrade the bridge's own tables (idempotent)."""

from __future__ import annotations

import argparse
from typing import Any

import sqlalchemy as sa

from moodle_bridge.commands._common import fail
from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.ticklock import TickBusy, tick_lock
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound, detect_iomad
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import (
    DatabaseUnavailable,
    check_connection,
    create_bridge_engine,
    describe_database_error,
    require_database,
    uses_default_database,
)
from moodle_bridge.storage.migrations import (
    LATEST_VERSION,
    STEPS,
    SchemaTooNew,
    Step,
    current_version,
    migrate,
)
from moodle_bridge.storage.strict_mode import install_strict_mode, remove_strict_mode


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("migrate", help="create or upgrade the bridge's tables")
    parser.add_argument("--status", action="store_true", help="show the schema version and exit")
    parser.add_argument(
        "--wait",
        type=float,
        default=60,
        metavar="SECONDS",
        help="wait up to SECONDS for a running tick to finish before changing tables (60)",
    )
    strict = parser.add_mutually_exclusive_group()
    strict.add_argument(
        "--strict",
        action="store_true",
        help="strict mode: install the trigger that parks cloud-routed IOMAD rows at insert "
        "(needs the TRIGGER privilege; see docs/sending.md)",
    )
    strict.add_argument(
        "--no-strict",
        action="store_true",
        help="remove strict mode's trigger and hand the rows it parked back to IOMAD",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config: BridgeConfig) -> int:
    # The built-in default URL names ./moodle-offload.sqlite3: never create it by accident.
    # A SQLite URL the admin configured may name a new file (a fresh test database).
    if uses_default_database(config.database) or args.status:
        require_database(config.database)
    engine = create_bridge_engine(config.database)
    try:
        check_connection(engine)
        if args.status:
            with engine.connect() as conn:
                version = current_version(conn, build_bridge_tables(config.database.prefix))
            print(f"schema version {version} (latest {LATEST_VERSION})")
            for step in STEPS:
                mark = "applied" if step.version <= version else "pending"
                print(f"  {step.version:>3}  {mark:<8} {step.summary}")
            return 0

        def show(step: Step) -> None:
            print(f"applying step {step.version}: {step.summary}")

        # No tick between the steps: an ALTER waiting behind a pass's transaction would stall it.
        with tick_lock(engine, config.database.prefix, args.wait):
            result = migrate(engine, config.database.prefix, on_step=show)
            if getattr(args, "strict", False) or getattr(args, "no_strict", False):
                with engine.connect() as conn:
                    iomad = detect_iomad(conn, config.database.prefix)
                if args.strict:
                    install_strict_mode(engine, iomad, config.database.prefix)
                    table = iomad.email.name
                    print(f"strict mode on: {table} rows of cloud-routed companies are parked at insert")
                else:
                    back = remove_strict_mode(engine, iomad, config.database.prefix)
                    print(
                        f"strict mode off: trigger removed, {back} parked unclaimed rows handed back to IOMAD"
                    )
    except TickBusy:
        return fail(f"a tick is still running after {args.wait:g} s; run migrate again, or stop the service")
    except IomadSchemaNotFound as exc:
        return fail(f"strict mode needs the IOMAD queue table: {exc}")
    except DatabaseUnavailable as exc:
        return fail(str(exc))
    except SchemaTooNew as exc:
        return fail(str(exc))
    except sa.exc.SQLAlchemyError as exc:
        return fail(f"migration failed: {describe_database_error(exc)}")
    finally:
        engine.dispose()
    if result.applied:
        print(f"bridge tables at schema version {result.after} (were {result.before})")
    else:
        print(f"bridge tables already at schema version {result.after}; nothing to do")
    return 0
