"""``moodle-offload``: the bridge's command line.

Sub-commands live in ``moodle_bridge.commands``: migrate, tick, company (bridge core);
jobs, serve (results and job control). Errors exit non-zero with one clear line and never
print secrets or message bodies.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from botocore.exceptions import BotoCoreError, ClientError

from moodle_bridge.aws_session import install_default_session
from moodle_bridge.config import ConfigError, load_config
from moodle_bridge.logs import configure_logging


def version() -> str:
    try:
        return metadata.version("manireports-cloud-offload")
    except metadata.PackageNotFoundError:  # running from a source tree without installing
        return "unknown (not installed)"


#: Modules under moodle_bridge.commands, in help order. A missing module is skipped, so
#: parts can land independently.
COMMAND_MODULES = (
    "migrate",
    "tick",
    "run",
    "company",
    "jobs",
    "serve",
    "submit_list",
    "campaigns",
    "schedules",
    "config_check",
    "uninstall",
    "dashboard",
    "certificates",
)

#: Long-running commands: they log at INFO by default (one-shot commands at WARNING).
SERVICE_COMMANDS = ("serve", "run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moodle-offload", description="Offload IOMAD/Moodle bulk mail to the cloud."
    )
    parser.add_argument(
        "--config", help="TOML configuration file (default: $MRCO_CONFIG or ./moodle-offload.toml)"
    )
    parser.add_argument("--version", action="version", version=f"moodle-offload {version()}")
    parser.add_argument(
        "--log-format",
        choices=("auto", "human", "json"),
        help="log lines: human text, or one JSON object per line (default: log_format, auto: "
        "human on a terminal, JSON otherwise)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"moodle_bridge.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"moodle_bridge.commands.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
        install_default_session(config)
        service = args.command in SERVICE_COMMANDS
        configure_logging(
            args.log_format or config.log_format, config.log_level or ("INFO" if service else "WARNING")
        )
        code: int = args.handler(args, config)
    except ConfigError as exc:
        print(f"moodle-offload: configuration error: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(f"moodle-offload: {aws_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("moodle-offload: interrupted", file=sys.stderr)
        return 130
    sys.stdout.flush()
    return code


def aws_error_line(exc: BaseException) -> str:
    """One line naming an AWS failure and its fix (no URL query, body or secret)."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "error")
        return (
            f"AWS refused the call ({code}); check the bridge's AWS credentials, region and the names "
            "in [aws]"
        )
    return (
        f"the AWS endpoint could not be reached ({type(exc).__name__}); check aws.endpoint_url, aws.region "
        "and the network"
    )


if __name__ == "__main__":
    sys.exit(main())
