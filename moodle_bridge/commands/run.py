"""``moodle-offload run``: service mode, a claim pass every few seconds (docs/sending.md).

Claim loop, outbox, reconciliation and the signed callback receiver in one process. Stops
cleanly on SIGTERM or SIGINT: the pass under way finishes (a claim commits or rolls back
whole), the receiver stops, the tick lock is released, exit status 0. Meant for systemd or a
container; remove the `moodle-offload tick` cron line (it would exit at once anyway: the
service holds the tick lock).
"""

from __future__ import annotations

import argparse
import logging
import signal
from contextlib import ExitStack
from typing import Any

import sqlalchemy as sa

from moodle_bridge.commands._common import fail
from moodle_bridge.commands.tick import (
    TickContext,
    attachment_uploader,
    build_submitters,
    content_uploader,
    reconcile_context,
    worker_content_uploader,
)
from moodle_bridge.config import BridgeConfig, ConfigError
from moodle_bridge.pipeline.ticklock import TickBusy, tick_lock
from moodle_bridge.results.iomad_link import detect_queue
from moodle_bridge.results.receiver import create_app
from moodle_bridge.results.server import receiver_server_settings
from moodle_bridge.service import Receiver, Service
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound
from moodle_bridge.storage.database import (
    DatabaseUnavailable,
    check_connection,
    create_bridge_engine,
    describe_database_error,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="service mode: claim every few seconds, submit, reconcile, receive callbacks"
    )
    parser.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="seconds between passes (default 2)"
    )
    parser.add_argument(
        "--reconcile-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between reconciliation passes (default 30)",
    )
    parser.add_argument("--no-receiver", action="store_true", help="do not run the callback receiver here")
    parser.add_argument("--host", help="receiver bind address (default: callbacks.bind_host)")
    parser.add_argument("--port", type=int, help="receiver bind port (default: callbacks.bind_port)")
    parser.add_argument(
        "--wait", type=float, default=0, metavar="SECONDS", help="wait up to SECONDS for a running tick"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, config: BridgeConfig) -> int:
    if not logging.getLogger().handlers:  # called outside the CLI (which configures logging)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    engine = create_bridge_engine(config.database)
    try:
        check_connection(engine)
        submitters = build_submitters(config)
        service = Service(
            engine,
            config,
            submitters=submitters,
            upload=content_uploader(config),
            r2_upload=worker_content_uploader(config),
            report_upload=attachment_uploader(config),
            interval=args.interval,
            reconcile_every=args.reconcile_every,
            reconcile_context=lambda s: reconcile_context(
                TickContext(s.engine, s.config, s.repo, s.iomad, s.submitters, s.box)
            ),
        )

        def on_signal(signum: int, _frame: Any) -> None:
            logging.getLogger("moodle_bridge.service").info("signal %d: stopping after this pass", signum)
            service.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        with ExitStack() as stack:
            stack.enter_context(tick_lock(engine, config.database.prefix, args.wait))
            if not args.no_receiver:
                if not config.keys.keysets:
                    raise ConfigError("keys.keysets (MRCO_KEYSETS) is required to verify callbacks")
                settings = receiver_server_settings(config)
                app = create_app(
                    engine,
                    service.tables,
                    config,
                    queue=detect_queue(engine, config.database.prefix),
                    body_timeout_seconds=settings.body_timeout_seconds,
                )
                receiver = Receiver(
                    app,
                    args.host or config.callbacks.bind_host,
                    args.port or config.callbacks.bind_port,
                    settings,
                )
                receiver.start()
                stack.callback(receiver.stop)
            print(f"moodle-offload run: a pass every {args.interval:g} s; SIGTERM stops it", flush=True)
            stats = service.run()
        print(
            f"moodle-offload run: stopped after {stats.passes} passes "
            f"({stats.busy_passes} busy, {stats.errors} failed)",
            flush=True,
        )
        return 0
    except TickBusy:
        return fail("another tick or service is running (use --wait to wait for it)")
    except DatabaseUnavailable as exc:
        return fail(str(exc))
    except IomadSchemaNotFound as exc:
        return fail(f'{exc} (for a plain Moodle site set database.site = "moodle")')
    except sa.exc.SQLAlchemyError as exc:
        return fail(f"database error: {describe_database_error(exc)}")
    finally:
        engine.dispose()
