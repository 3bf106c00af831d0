"""``moodle-offload config check``: is this host ready to offload? One line per check.

Reads the configuration and its secrets, connects to the database, detects IOMAD and its
generation, asks the queues or intakes, checks the SES sender identity, quota and sandbox
state, and whether the callback URL reaches a receiver. Each line says OK, or FAIL with the
fix; the exit code is 1 when any check failed. No line ever holds a secret (only where each
secret came from).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from botocore.exceptions import BotoCoreError, ClientError

from moodle_bridge.commands._common import fail
from moodle_bridge.config import BridgeConfig
from moodle_bridge.operations.grants import GrantError, grant_statements
from moodle_bridge.operations.probes import (
    Check,
    ClientMaker,
    aws_clients,
    cloud_checks,
    probe_database,
    safe_url,
)
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound, detect_iomad
from moodle_bridge.storage import manireports
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import (
    DatabaseUnavailable,
    check_connection,
    create_bridge_engine,
    dialect_family,
)
from moodle_bridge.storage.migrations import LATEST_VERSION, current_version

ACCESS_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "config", help="check the configuration against the real services; print the database grants"
    )
    inner = parser.add_subparsers(dest="config_command", metavar="ACTION")
    check = inner.add_parser("check", help="one line per check, OK or the fix; exit 1 on any failure")
    check.add_argument(
        "--skip-aws", action="store_true", help="skip the cloud checks (SQS, SES and the Worker intake)"
    )
    check.add_argument("--skip-callback", action="store_true", help="skip the callback URL check")
    check.set_defaults(handler=handle)
    grants = inner.add_parser(
        "grants",
        help="print the GRANT statements the bridge's database user needs (run with an admin's URL)",
    )
    grants.add_argument("--user", required=True, help="the bridge's database user (role on PostgreSQL)")
    grants.add_argument("--host", default="localhost", help="MariaDB/MySQL: the user's host (localhost)")
    grants.add_argument("--schema", default="public", help="PostgreSQL: Moodle's schema (public)")
    grants.add_argument(
        "--strict", action="store_true", help="also the TRIGGER grant strict mode (migrate --strict) needs"
    )
    grants.set_defaults(handler=handle_grants)
    parser.set_defaults(handler=lambda args, config: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def handle(args: argparse.Namespace, config: BridgeConfig) -> int:
    failed = 0
    for check in run_checks(
        config, clients=None if args.skip_aws else aws_clients(config), callback=not args.skip_callback
    ):
        print(check.line(), flush=True)
        failed += not check.ok
    print(f"{failed} check(s) failed" if failed else "all checks passed")
    return 1 if failed else 0


def handle_grants(args: argparse.Namespace, config: BridgeConfig) -> int:
    engine = create_bridge_engine(config.database)
    try:
        check_connection(engine)
        family = dialect_family(engine)
        with engine.connect() as conn:
            iomad = None
            if config.database.site == "iomad":
                try:
                    iomad = detect_iomad(conn, config.database.prefix)
                except IomadSchemaNotFound as exc:
                    return fail(f'{exc} (for a plain Moodle site set database.site = "moodle")')
            has_manireports = manireports.present(conn, config.database.prefix)
        database = engine.url.database or ""
        statements = grant_statements(
            family,
            database,
            args.user,
            build_bridge_tables(config.database.prefix),
            iomad,
            host=args.host,
            schema=args.schema,
            manireports=manireports.table_name(config.database.prefix) if has_manireports else None,
            strict=args.strict,
        )
    except (DatabaseUnavailable, GrantError) as exc:
        return fail(str(exc))
    finally:
        engine.dispose()
    print(f"-- grants for the moodle-offload bridge on {family} database {database} (docs/INSTALL.md)")
    for line in statements:
        print(line)
    return 0


def run_checks(
    config: BridgeConfig, *, clients: ClientMaker | None, callback: bool = True
) -> Iterator[Check]:
    yield from _config_checks(config)
    engine = create_bridge_engine(config.database)
    try:
        db = probe_database(engine)
        yield db
        if db.ok:
            yield from _schema_checks(engine, config)
    finally:
        engine.dispose()
    if clients is not None:
        yield from cloud_checks(config, clients)
        if _uses_aws(config):
            yield from ses_checks(config, clients)
    if callback and config.callbacks.results_mode == "push":
        yield probe_callback_url(config.callbacks.public_url)


def _uses_aws(config: BridgeConfig) -> bool:
    return bool(config.aws.jobs_queue_url or config.aws.api_gateway_url or config.aws.certificates_queue_url)


def _config_checks(config: BridgeConfig) -> Iterator[Check]:
    where = config.config_file or "no file (defaults and MRCO_* variables)"
    yield Check("configuration", True, f"read {where}")
    sources = dict(config.secret_sources)
    if config.keys.keysets:
        yield Check(
            "HMAC key sets",
            bool(config.keys.current),
            f"{len(config.keys.keysets)} set(s) ({', '.join(sorted(config.keys.keysets))}) from "
            f"{sources.get('keysets', '?')}"
            + (f"; signing with {config.keys.current}" if config.keys.current else "; FIX: set keys.current"),
        )
    else:
        yield Check(
            "HMAC key sets",
            False,
            "none configured; FIX: MRCO_KEYSETS(_FILE) or [secrets] keysets (needed to sign and verify)",
        )
    if config.password_key:
        previous = len(config.password_keys_previous)
        yield Check(
            "password key",
            True,
            f"from {sources.get('password_key', '?')}"
            + (f", {previous} previous key(s) kept" if previous else ""),
        )
    else:
        yield Check(
            "password key",
            config.database.site != "iomad",
            "not set"
            + (
                "; FIX: MRCO_PASSWORD_KEY(_FILE) (IOMAD password mail)"
                if config.database.site == "iomad"
                else ""
            ),
        )
    for name in ("database_password", "aws_access_key_id", "aws_secret_access_key", "dashboard_key"):
        if name in sources:
            yield Check(name.replace("_", " "), True, f"from {sources[name]}")


def _schema_checks(engine: sa.Engine, config: BridgeConfig) -> Iterator[Check]:
    tables = build_bridge_tables(config.database.prefix)
    with engine.connect() as conn:
        version = current_version(conn, tables)
        if version == LATEST_VERSION:
            yield Check("bridge tables", True, f"schema version {version}")
        elif version > LATEST_VERSION:
            yield Check(
                "bridge tables",
                False,
                f"schema version {version} is newer than this release ({LATEST_VERSION}); FIX: upgrade",
            )
        else:
            yield Check(
                "bridge tables",
                False,
                f"schema version {version}, this release needs {LATEST_VERSION}; FIX: moodle-offload migrate",
            )
        if config.database.site != "iomad":
            yield Check("site", True, "plain Moodle (database.site = moodle): list jobs only")
            return
        try:
            iomad = detect_iomad(conn, config.database.prefix)
        except IomadSchemaNotFound as exc:
            yield Check("IOMAD", False, f'{exc}; FIX: database.prefix, or database.site = "moodle"')
            return
        label = "5.1+ (local_iomad_* tables)" if iomad.generation.value == "renamed" else "up to 5.0"
        yield Check("IOMAD", True, f"found, generation {label}, queue table {iomad.email.name}")


def _senders(config: BridgeConfig) -> list[str]:
    found = [config.submit.sender_address] if config.submit.sender_address else []
    engine = create_bridge_engine(config.database)
    tables = build_bridge_tables(config.database.prefix)
    try:
        with engine.connect() as conn:
            if sa.inspect(conn).has_table(tables.company_settings.name):
                cs = tables.company_settings
                rows = conn.execute(
                    sa.select(cs.c.senderaddress)
                    .where(cs.c.senderaddress.is_not(None), cs.c.senderaddress != "", cs.c.provider == "aws")
                    .distinct()
                )
                found.extend(str(r[0]) for r in rows)
    except sa.exc.SQLAlchemyError:
        pass  # the database check already said why
    finally:
        engine.dispose()
    return sorted(set(found))


def ses_checks(config: BridgeConfig, clients: ClientMaker) -> Iterator[Check]:
    """Sender identities verified, the account's quota, and the sandbox."""
    try:
        ses = clients("ses")
        sesv2 = clients("sesv2")
    except (BotoCoreError, ValueError) as exc:
        yield Check("SES", False, f"cannot create an SES client ({type(exc).__name__})")
        return
    senders = _senders(config)
    if not senders:
        yield Check(
            "SES sender",
            False,
            "no sender address; FIX: submit.sender_address or company set --sender-address",
        )
    for address in senders:
        domain = address.rpartition("@")[2]
        try:
            answer = ses.get_identity_verification_attributes(Identities=[address, domain])
        except (ClientError, BotoCoreError) as exc:
            yield _ses_error(f"SES sender {address}", exc, "ses:GetIdentityVerificationAttributes")
            continue
        states = {k: v.get("VerificationStatus") for k, v in answer.get("VerificationAttributes", {}).items()}
        if "Success" in (states.get(address), states.get(domain)):
            which = "address" if states.get(address) == "Success" else f"domain {domain}"
            yield Check(f"SES sender {address}", True, f"verified ({which})")
        else:
            yield Check(
                f"SES sender {address}",
                False,
                f"not verified (address: {states.get(address) or 'absent'}, domain: "
                f"{states.get(domain) or 'absent'}); FIX: verify the domain in SES (docs/AWS_SETUP.md)",
            )
    try:
        account = sesv2.get_account()
    except (ClientError, BotoCoreError) as exc:
        yield _ses_error("SES account", exc, "ses:GetAccount")
        return
    quota = account.get("SendQuota", {})
    sent, daily, rate = (
        quota.get("SentLast24Hours", 0),
        quota.get("Max24HourSend", 0),
        quota.get("MaxSendRate", 0),
    )
    enabled = account.get("SendingEnabled", True)
    yield Check(
        "SES quota",
        bool(enabled) and daily > sent,
        f"{rate:g}/s, {sent:g} of {daily:g} sent in 24 h"
        + ("" if enabled else "; sending is DISABLED for this account: FIX: see the SES console")
        + (
            ""
            if daily > sent
            else "; daily quota used up: FIX: wait for the 24 h window or request a higher quota"
        ),
    )
    if account.get("ProductionAccessEnabled"):
        yield Check("SES sandbox", True, "out of the sandbox (production access)")
    else:
        yield Check(
            "SES sandbox",
            False,
            "in the sandbox: mail only to verified addresses; "
            "FIX: request production access (docs/AWS_SETUP.md)",
        )


def _ses_error(name: str, exc: Exception, action: str) -> Check:
    code = (
        exc.response.get("Error", {}).get("Code", "error")
        if isinstance(exc, ClientError)
        else type(exc).__name__
    )
    if code in ACCESS_DENIED:
        return Check(
            name, False, f"{code}; FIX: allow {action} to these credentials, or run the check as an operator"
        )
    return Check(name, False, f"{code}; FIX: aws.region and the AWS credentials")


def probe_callback_url(url: str, timeout: float = 5) -> Check:
    """The receiver answers GET on its POST-only path with 405: that proves the route reaches it."""
    parts = urlsplit(url)
    safe = safe_url(url)
    if parts.scheme not in ("http", "https"):
        return Check("callback URL", False, f"{safe} is not http(s); FIX: callbacks.public_url")
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return Check(
            "callback URL",
            False,
            f"{safe} unreachable from this host ({type(exc).__name__}); FIX: start the service, proxy, DNS",
        )
    if response.status_code == 405:
        note = (
            "" if parts.scheme == "https" or parts.hostname in ("127.0.0.1", "localhost") else "; use https"
        )
        return Check("callback URL", True, f"{safe} reaches the receiver{note}")
    return Check(
        "callback URL",
        False,
        f"{safe} answered HTTP {response.status_code}, not the receiver's 405; FIX: route this path to "
        "the service (deploy/nginx, deploy/apache)",
    )
