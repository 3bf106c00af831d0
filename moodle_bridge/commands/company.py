"""``moodle-offload company``: show and set per-company routing and the global switch.

Every change is written to the audit log with the actor (``cli:<login>``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from moodle_bridge.commands._common import cli_actor, fail, open_database, require_migrated
from moodle_bridge.commands.company_checks import company_exists, sender_verified
from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.routing import PROVIDERS, CompanySettings, could_offload
from moodle_bridge.results.iomad_link import AdapterQueue
from moodle_bridge.results.job_control import CancelReport
from moodle_bridge.results.switches import change_company, switch_global, tell_cloud
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound, detect_iomad
from moodle_bridge.storage.database import DatabaseUnavailable, check_connection, now
from moodle_bridge.storage.settings_change import SettingsError
from moodle_bridge.transports.capabilities import worker_check


def _queue(conn: Any, config: BridgeConfig) -> AdapterQueue | None:
    """IOMAD's mail queue, where cancelled jobs' unsent rows go back (None without IOMAD)."""
    try:
        return AdapterQueue(detect_iomad(conn, config.database.prefix))
    except IomadSchemaNotFound:
        return None


def _report_stopped(reports: list[CancelReport], engine: Any, repo: Any, config: BridgeConfig) -> int:
    """Print what turning the switch off did to open jobs; 1 when the cloud could not be told."""
    if not reports:
        return 0
    in_cloud = sum(r.in_cloud for r in reports)
    print(
        f"{len(reports)} open jobs cancelled: {sum(r.recipients_cancelled for r in reports)} recipients "
        f"not yet in the cloud cancelled, {sum(r.rows_restored for r in reports)} IOMAD rows given back"
        + (
            f"; {in_cloud} recipients already in the cloud are recorded as the cloud reports them"
            if in_cloud
            else ""
        )
    )
    problem = tell_cloud(reports, engine, repo.t, config, now()).problem
    if problem:
        print(f"moodle-offload: {problem}", file=sys.stderr)
        return 1
    return 0


def _onoff(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("on", "1", "yes", "true"):
        return True
    if lowered in ("off", "0", "no", "false"):
        return False
    raise argparse.ArgumentTypeError("expected on or off")


def _threshold(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("threshold must be a whole number >= 0") from None
    if number < 0:
        raise argparse.ArgumentTypeError("threshold must be a whole number >= 0")
    return number


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("company", help="show and set per-company routing")
    sub = parser.add_subparsers(dest="company_command", metavar="ACTION", required=True)

    show = sub.add_parser("show", help="show routing for one company or all")
    show.add_argument("companyid", nargs="?", type=int)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=run_show)

    setp = sub.add_parser("set", help="create or change a company's routing")
    setp.add_argument("companyid", type=int)
    setp.add_argument("--cloud", type=_onoff, help="on|off: offload this company at all")
    setp.add_argument("--provider", choices=PROVIDERS)
    setp.add_argument("--emails", type=_onoff, help="on|off: offload email jobs")
    setp.add_argument("--certificates", type=_onoff, help="on|off: offload certificate jobs")
    setp.add_argument("--threshold", type=_threshold, help="minimum recipients per pass to offload")
    setp.add_argument("--fallback", type=_onoff, help="on|off: give work back to IOMAD if the cloud fails")
    setp.add_argument("--sender-address", help="From address (empty to clear)")
    setp.add_argument("--sender-name", help="From display name (empty to clear)")
    setp.add_argument("--ses-tenant", help="SES tenant name (empty to clear)")
    setp.add_argument("--cert-template", help="certificate template id")
    setp.set_defaults(handler=run_set)

    glob = sub.add_parser("global", help="the global switch: show, on or off")
    glob.add_argument("state", nargs="?", type=_onoff)
    glob.set_defaults(handler=run_global)


def _line(s: CompanySettings, global_on: bool) -> str:
    routes = [t for t in ("email", "certificate") if could_offload(global_on, s, t)]
    route = f"cloud ({', '.join(routes)})" if routes else "local"
    return (
        f"company {s.companyid}: {route}; cloud={'on' if s.cloudenabled else 'off'} provider={s.provider} "
        f"emails={'on' if s.allowemail else 'off'} certificates={'on' if s.allowcertificates else 'off'} "
        f"threshold={s.threshold} fallback={'on' if s.fallbacklocal else 'off'} "
        f"sender={s.senderaddress or '-'}"
    )


def cloudflare_refusal(settings: CompanySettings, config: BridgeConfig) -> str | None:
    """One line when the company would route a job type to a Worker that cannot process it."""
    if settings.provider != "cloudflare" or not settings.cloudenabled:
        return None
    wanted = [
        t for t, on in (("email", settings.allowemail), ("certificate", settings.allowcertificates)) if on
    ]
    check = worker_check(config)
    for job_type in wanted:
        line = check(settings.companyid, job_type)
        if line is not None:
            return f"{line}; not saved (turn {job_type} jobs off for this company, or use --provider aws)"
    return None


def run_show(args: argparse.Namespace, config: BridgeConfig) -> int:
    engine, _tables, repo = open_database(config)
    try:
        check_connection(engine)
        require_migrated(engine, repo.t)
        with engine.connect() as conn:
            global_on = repo.offload_enabled(conn)
            settings = repo.all_settings(conn)
    except DatabaseUnavailable as exc:
        return fail(str(exc))
    finally:
        engine.dispose()
    if args.companyid is not None:
        settings = {k: v for k, v in settings.items() if k == args.companyid}
    if args.json:
        print(
            json.dumps({"global": global_on, "companies": [asdict(s) for s in settings.values()]}, indent=2)
        )
        return 0
    print(f"global switch: {'on' if global_on else 'off'}")
    if args.companyid is not None and not settings:
        print(f"company {args.companyid}: no settings row, stays local")
        return 0
    for s in settings.values():
        print(_line(s, global_on))
    if not settings:
        print("no company settings: every company stays local")
    return 0


def run_set(args: argparse.Namespace, config: BridgeConfig) -> int:
    engine, _tables, repo = open_database(config)
    actor = cli_actor()
    notes: list[str] = []
    stopped: list[CancelReport] = []
    try:
        check_connection(engine)
        require_migrated(engine, repo.t)
        with engine.begin() as conn:
            changes: dict[str, Any] = {}
            for arg, attr in (
                ("cloud", "cloudenabled"),
                ("provider", "provider"),
                ("emails", "allowemail"),
                ("certificates", "allowcertificates"),
                ("threshold", "threshold"),
                ("fallback", "fallbacklocal"),
                ("cert_template", "certtemplate"),
                ("sender_address", "senderaddress"),
                ("sender_name", "sendername"),
                ("ses_tenant", "sesstenant"),
            ):
                value = getattr(args, arg)
                if value is not None:
                    changes[attr] = value
            exists = company_exists(conn, config, args.companyid)
            if exists.problem:
                return fail(exists.problem)

            def check(settings: CompanySettings) -> str | None:
                refused = cloudflare_refusal(settings, config)
                if refused or not changes.get("senderaddress") or settings.provider != "aws":
                    return refused
                checked = sender_verified(config, str(changes["senderaddress"]))
                if checked.note:
                    notes.append(checked.note)
                return checked.problem

            try:
                updated, stopped = change_company(
                    conn,
                    repo,
                    args.companyid,
                    changes,
                    actor=actor,
                    now=now(),
                    queue=_queue(conn, config),
                    check=check,
                )
            except SettingsError as exc:
                return fail(str(exc))
            global_on = repo.offload_enabled(conn)
        code = _report_stopped(stopped, engine, repo, config)
    except DatabaseUnavailable as exc:
        return fail(str(exc))
    finally:
        engine.dispose()
    print(_line(updated, global_on))
    for note in notes:
        print(f"note: {note}")
    if not global_on:
        print("note: the global switch is off; nothing is offloaded until `company global on`")
    return code


def run_global(args: argparse.Namespace, config: BridgeConfig) -> int:
    engine, _tables, repo = open_database(config)
    try:
        check_connection(engine)
        require_migrated(engine, repo.t)
        with engine.begin() as conn:
            if args.state is None:
                print(f"global switch: {'on' if repo.offload_enabled(conn) else 'off'}")
                return 0
            stopped = switch_global(
                conn, repo, args.state, actor=cli_actor(), now=now(), queue=_queue(conn, config)
            )
        print(f"global switch: {'on' if args.state else 'off'}")
        return _report_stopped(stopped, engine, repo, config)
    except DatabaseUnavailable as exc:
        return fail(str(exc))
    finally:
        engine.dispose()
