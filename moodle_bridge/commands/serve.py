"""``moodle-offload serve``: the callback receiver on uvicorn (see docs/results.md)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import uvicorn

from moodle_bridge.config import BridgeConfig, ConfigError
from moodle_bridge.results.iomad_link import detect_queue
from moodle_bridge.results.receiver import create_app
from moodle_bridge.results.runtime import open_database
from moodle_bridge.results.server import receiver_server_settings, uvicorn_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the signed result-callback receiver (uvicorn)")
    parser.add_argument("--host", help="bind address (default: callbacks.bind_host)")
    parser.add_argument("--port", type=int, help="bind port (default: callbacks.bind_port)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, config: BridgeConfig) -> int:
    if not config.keys.keysets:
        raise ConfigError("keys.keysets (MRCO_KEYSETS) is required to verify callbacks")
    if not logging.getLogger().handlers:  # called outside the CLI (which configures logging)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    engine, tables = open_database(config)
    settings = receiver_server_settings(config)
    app = create_app(
        engine,
        tables,
        config,
        queue=detect_queue(engine, config.database.prefix),
        body_timeout_seconds=settings.body_timeout_seconds,
    )
    server_config = uvicorn_config(
        app,
        host=args.host or config.callbacks.bind_host,
        port=args.port or config.callbacks.bind_port,
        settings=settings,
        log_config=None,  # uvicorn's lines go through the bridge's format (human or JSON)
    )
    uvicorn.Server(server_config).run()
    return 0
