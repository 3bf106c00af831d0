"""``moodle-offload dashboard``: serve the dashboard, or print a one-time sign-in link.

``link`` is for sites without the Moodle plugin (and for the demo): it signs the same token the
plugin's launch page signs, valid for 60 seconds and usable once.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import uvicorn

from moodle_bridge.config import BridgeConfig, ConfigError
from moodle_bridge.results.iomad_link import detect_queue
from moodle_bridge.results.runtime import open_database
from offload_contract import dashboard_token


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dashboard", help="the web dashboard: serve it, or print a sign-in link")
    actions = parser.add_subparsers(dest="dashboard_action", metavar="ACTION", required=True)
    serve = actions.add_parser("serve", help="run the dashboard (uvicorn)")
    serve.add_argument("--host", help="bind address (default: dashboard.bind_host)")
    serve.add_argument("--port", type=int, help="bind port (default: dashboard.bind_port)")
    serve.set_defaults(handler=run_serve)
    link = actions.add_parser("link", help="print a one-time sign-in URL, valid for 60 seconds")
    link.add_argument("--user", type=int, required=True, help="Moodle user id")
    link.add_argument("--company", type=int, default=0, help="IOMAD company id (0: none chosen)")
    link.set_defaults(handler=run_link)


def _key(config: BridgeConfig) -> str:
    if not config.dashboard.shared_key:
        raise ConfigError("dashboard.shared_key (MRCO_DASHBOARD_KEY) is required for the dashboard")
    return config.dashboard.shared_key


def signin_url(config: BridgeConfig, user_id: int, company_id: int = 0, *, now: int | None = None) -> str:
    token = dashboard_token.sign(
        _key(config), user_id, company_id, now=int(time.time()) if now is None else now
    )
    return f"{config.dashboard.public_url.rstrip('/')}/signin?token={token}"


def run_link(args: argparse.Namespace, config: BridgeConfig) -> int:
    if args.user <= 0 or args.company < 0:
        raise ConfigError("--user must be a Moodle user id (> 0) and --company >= 0")
    print(signin_url(config, args.user, args.company))
    return 0


def run_serve(args: argparse.Namespace, config: BridgeConfig) -> int:
    from moodle_bridge.web.app import create_app  # noqa: PLC0415 - starlette/jinja2 only when serving

    _key(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    engine, tables = open_database(config)
    app = create_app(engine, tables, config, queue=detect_queue(engine, config.database.prefix))
    uvicorn.run(
        app,
        host=args.host or config.dashboard.bind_host,
        port=args.port or config.dashboard.bind_port,
        log_level="info",
        access_log=False,  # sign-in URLs carry tokens; the audit log records what matters
        proxy_headers=True,
        server_header=False,
    )
    return 0
