"""``moodle-offload uninstall``: give every parked IOMAD row back, then drop the bridge's tables.

In order, under the tick lock (no tick runs meanwhile):

1. the global switch goes off (audited), so nothing new is claimed;
2. recipients the cloud still holds (``queued``/``retrying``) stop the command unless ``--force``:
   their rows would be given back while the cloud may still send them (sent twice);
3. strict mode's trigger, if installed, is removed (it reads the bridge's tables, so left
   behind it would fail every insert into IOMAD's queue once they are dropped); every parked,
   unsent IOMAD row gets its original ``due`` back (IOMAD's cron sends it);
4. the bridge's tables are dropped (not with ``--give-back-only``).

Without ``--yes`` it only prints what it would do.
"""

from __future__ import annotations

import argparse
from typing import Any

import sqlalchemy as sa

from moodle_bridge.commands._common import cli_actor, fail
from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.ticklock import TickBusy, tick_lock
from moodle_bridge.sources.iomad import queue as iomad_queue
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound, IomadTables, detect_iomad
from moodle_bridge.storage import audit, statuses
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.database import (
    DatabaseUnavailable,
    check_connection,
    create_bridge_engine,
    describe_database_error,
    now,
)
from moodle_bridge.storage.strict_mode import remove_strict_mode, strict_mode_installed


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "uninstall", help="give parked IOMAD rows back and drop the bridge's tables (rollback)"
    )
    parser.add_argument("--yes", action="store_true", help="do it (without: only show what would happen)")
    parser.add_argument(
        "--give-back-only", action="store_true", help="give the parked rows back but keep the tables"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="also give back rows whose recipients the cloud still holds (they may be sent twice)",
    )
    parser.add_argument("--wait", type=float, default=60, help="seconds to wait for a running tick (60)")
    parser.set_defaults(handler=run)


def _iomad(conn: sa.Connection, config: BridgeConfig) -> IomadTables | None:
    if config.database.site != "iomad":
        return None
    try:
        return detect_iomad(conn, config.database.prefix)
    except IomadSchemaNotFound:
        return None


def _in_flight(conn: sa.Connection, t: BridgeTables) -> int:
    r = t.recipients
    active = (statuses.QUEUED, statuses.RETRYING)
    return int(conn.execute(sa.select(sa.func.count()).where(r.c.status.in_(active))).scalar_one())


def _existing(conn: sa.Connection, t: BridgeTables) -> list[sa.Table]:
    present = set(sa.inspect(conn).get_table_names())
    return [table for table in t.metadata.sorted_tables if table.name in present]


def run(args: argparse.Namespace, config: BridgeConfig) -> int:
    engine = create_bridge_engine(config.database)
    tables = build_bridge_tables(config.database.prefix)
    repo = BridgeRepo(tables)
    try:
        check_connection(engine)
        with engine.connect() as conn:
            existing = _existing(conn, tables)
            has_bridge = any(tbl.name == tables.recipients.name for tbl in existing)
            in_flight = _in_flight(conn, tables) if has_bridge else 0
            iomad = _iomad(conn, config)
            parked = iomad_queue.list_parked(conn, iomad) if iomad is not None else {}
        plan = (
            f"{len(parked)} parked IOMAD row(s) to give back, {in_flight} recipient(s) still in the cloud, "
            f"{len(existing)} bridge table(s)" + (" to drop" if not args.give_back_only else " kept")
        )
        if not args.yes:
            print(f"would: switch offload off; {plan}. Run again with --yes to do it.")
            return 0
        if in_flight and not args.force:
            return fail(
                f"{in_flight} recipient(s) are still in the cloud (queued or retrying): wait for their "
                "results (`moodle-offload jobs list`) or pass --force (their rows may then be sent twice)"
            )
        with tick_lock(engine, config.database.prefix, args.wait):
            if has_bridge:
                with engine.begin() as conn:
                    repo.set_offload_enabled(conn, False)
                    audit.record(
                        conn,
                        tables,
                        actor=cli_actor(),
                        action=audit.GLOBAL_SWITCH_OFF,
                        now=now(),
                        detail={"reason": "uninstall"},
                    )
            given_back: list[int] = []
            if iomad is not None:
                with engine.connect() as conn:
                    strict = strict_mode_installed(conn, config.database.prefix)
                if strict:
                    # The trigger reads the bridge's tables: left behind without them, it would
                    # fail every insert into IOMAD's queue.
                    remove_strict_mode(engine, iomad, config.database.prefix)
                    print(f"strict mode's trigger removed from {iomad.email.name}")
                with engine.begin() as conn:
                    parked = iomad_queue.list_parked(conn, iomad)
                    given_back = iomad_queue.restore_emails(conn, iomad, parked)
            print(f"gave {len(given_back)} parked IOMAD row(s) back to IOMAD's cron")
            if args.give_back_only:
                print("offload switched off; the bridge's tables are kept")
                return 0
            with engine.begin() as conn:
                for table in reversed(_existing(conn, tables)):
                    table.drop(conn)
            print(f"dropped {len(existing)} bridge table(s); uninstall the package to finish")
    except TickBusy:
        return fail(f"a tick is still running after {args.wait:g} s; stop the service and cron first")
    except DatabaseUnavailable as exc:
        return fail(str(exc))
    except sa.exc.SQLAlchemyError as exc:
        return fail(f"database error: {describe_database_error(exc)}")
    finally:
        engine.dispose()
    return 0
