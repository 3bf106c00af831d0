"""``moodle-offload schedules``: campaigns and reports fired at a local time (docs/schedules.md).

list | show | create | pause | resume | preview | run-now. Every change is audited. Preview
renders one sample mail and sends, uploads and records nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from typing import Any

import sqlalchemy as sa

from moodle_bridge.commands._common import cli_actor, fail, open_database
from moodle_bridge.commands.tick import attachment_uploader
from moodle_bridge.config import BridgeConfig
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound, detect_iomad
from moodle_bridge.sources.schedules import reports
from moodle_bridge.sources.schedules.runner import (
    ACTIONS,
    CLOUD_PREFERENCES,
    ScheduleError,
    ScheduleRunReport,
    create_schedule,
    preview_schedule,
    recurrence_of,
    resolve_timezone,
    run_schedule,
)
from moodle_bridge.sources.schedules.timing import (
    FREQUENCIES,
    TimingError,
    format_time_of_day,
    parse_time_of_day,
)
from moodle_bridge.storage import audit, manireports
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.database import DatabaseUnavailable, check_connection
from moodle_bridge.storage.schedule_repo import ACTIVE, PAUSED, ScheduleRepo

#: ManiReports report types the bridge can send, and the bridge report each becomes.
MANIREPORTS_REPORTS = {"course_completion": "completions"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("schedules", help="campaigns and reports fired at a local time")
    sub = parser.add_subparsers(dest="schedules_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="every schedule (and ManiReports' own, if the site has them)").set_defaults(
        handler=run
    )
    for name, text in (
        ("show", "a schedule and its last runs"),
        ("pause", "stop a schedule from firing"),
        ("resume", "let a paused schedule fire again"),
        ("preview", "row count (or audience), recipients and one rendered sample; sends nothing"),
        ("run-now", "fire the schedule now, once (the outbox sends the mail)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("schedule", type=int)
        p.set_defaults(handler=run)
    create = sub.add_parser("create", help="store a schedule")
    create.add_argument("--company", type=int, required=True)
    create.add_argument("--name")
    create.add_argument("--action", dest="action_type", choices=ACTIONS, default="report")
    create.add_argument("--cloud", dest="cloud_preference", choices=CLOUD_PREFERENCES, default="auto")
    create.add_argument("--frequency", choices=FREQUENCIES, default="daily")
    create.add_argument("--every-days", dest="custom_interval", type=int, default=0, help="frequency custom")
    create.add_argument("--time", default="07:00", help="local time HH:MM (default 07:00)")
    create.add_argument("--start", help="local start date YYYY-MM-DD (default today)")
    create.add_argument(
        "--timezone", help="IANA zone (default: the company's, else --creator's, else the site's)"
    )
    create.add_argument(
        "--creator", type=int, help="the Moodle user id creating it (their zone is the fallback)"
    )
    create.add_argument("--report", choices=sorted(reports.REPORTS))
    create.add_argument("--format", choices=reports.FORMATS, default="csv")
    create.add_argument("--days", dest="reportdays", type=int, default=7, help="the report's period in days")
    create.add_argument("--send-if-empty", action="store_true", help="send an empty report too")
    create.add_argument("--campaign", dest="campaignid", type=int, help="action email: the campaign it runs")
    create.add_argument(
        "--suppresstarget", type=int, default=0, help="action email: skip who completed this cm"
    )
    create.add_argument("--suppress-course-completion", action="store_true")
    create.add_argument("--from-manireports", type=int, metavar="ID", help="copy a manireports_schedules row")
    create.set_defaults(handler=run)


def _when(at: Any, zone_name: str) -> str:
    if at is None:
        return "never"
    from moodle_bridge.sources.schedules.timing import zone  # noqa: PLC0415

    return dt.datetime.fromtimestamp(int(at), zone(zone_name)).strftime("%Y-%m-%d %H:%M %Z")


def _create_values(
    conn: sa.Connection, config: BridgeConfig, args: argparse.Namespace, at: int
) -> dict[str, Any]:
    prefix = config.database.prefix
    iomad = detect_iomad(conn, prefix)
    values: dict[str, Any] = {
        "companyid": args.company,
        "name": args.name,
        "action_type": args.action_type,
        "cloud_preference": args.cloud_preference,
        "frequency": args.frequency,
        "custom_interval": args.custom_interval,
        "suppresstarget": args.suppresstarget,
        "suppress_course_completion": args.suppress_course_completion,
        "timeofday": parse_time_of_day(args.time),
        "report": args.report if args.action_type == "report" else None,
        "format": args.format,
        "reportdays": args.reportdays,
        "skipifempty": not args.send_if_empty,
        "campaignid": args.campaignid,
    }
    creator = args.creator
    if args.from_manireports is not None:
        matches = manireports.read(conn, prefix, [args.from_manireports])
        if not matches:
            raise ScheduleError(f"manireports_schedules has no row {args.from_manireports}")
        found = matches[0]
        report = MANIREPORTS_REPORTS.get(found.reporttype)
        if report is None:
            raise ScheduleError(
                f"ManiReports report type {found.reporttype!r} has no bridge report "
                f"(the bridge sends: {', '.join(sorted(MANIREPORTS_REPORTS))})"
            )
        values.update(
            name=values["name"] or found.name,
            action_type=found.action_type,
            cloud_preference=found.cloud_preference,
            frequency="custom" if found.custom_interval else found.frequency,
            custom_interval=found.custom_interval,
            suppresstarget=found.suppresstarget,
            suppress_course_completion=found.suppress_course_completion,
            report=report if found.action_type == "report" else None,
            format=found.format,
            manireportsid=found.id,
        )
        creator = creator or found.userid or None
    tz = args.timezone or resolve_timezone(conn, prefix, iomad, args.company, creator)
    values["timezone"] = tz
    from moodle_bridge.sources.schedules.timing import zone  # noqa: PLC0415

    try:
        today = dt.datetime.fromtimestamp(at, zone(tz)).date()
    except TimingError as exc:
        raise ScheduleError(str(exc)) from None
    values["startdate"] = args.start or today.isoformat()
    values["suppress_course_completion"] = bool(values["suppress_course_completion"])
    return values


def _run_line(r: ScheduleRunReport, zone_name: str) -> str:
    slot = _when(r.slot, zone_name) if r.slot is not None else "-"
    text = f"schedule {r.scheduleid} slot {slot}: {r.outcome}"
    if r.jobid is not None:
        text += f", job {r.jobid} with {r.recipients} recipients ({r.rows} rows)"
    elif r.outcome in ("empty", "not_sent"):
        text += f" ({r.rows} rows)"
    return text + (f"; {'; '.join(r.notes)}" if r.notes else "")


def run(args: argparse.Namespace, config: BridgeConfig) -> int:
    action = args.schedules_command
    engine, tables, repo = open_database(config)
    schedules = ScheduleRepo(tables)
    actor, at = cli_actor(), int(time.time())
    try:
        check_connection(engine)
        if action == "create":
            with engine.begin() as conn:
                values = _create_values(conn, config, args, at)
                scheduleid = create_schedule(conn, repo, values, actor=actor, at=at)
                row = schedules.get(conn, scheduleid)
            if row is None:  # pragma: no cover - inserted just above
                return fail(f"schedule {scheduleid} vanished")
            tz = str(row.timezone)
            print(
                f"schedule {scheduleid} created (active), {row.frequency} at "
                f"{format_time_of_day(int(row.timeofday))} {tz}; first run {_when(row.nextrun, tz)}"
            )
        elif action == "list":
            with engine.connect() as conn:
                rows = schedules.list(conn)
                foreign = manireports.read(conn, config.database.prefix)
            if not rows:
                print("no schedules")
            for row in rows:
                what = row.report if row.action_type == "report" else f"campaign {row.campaignid}"
                print(
                    f"{row.id:>5}  company {row.companyid:<5} {row.status:<7} {row.action_type:<7} "
                    f"{what:<18} {row.frequency} {format_time_of_day(int(row.timeofday))} {row.timezone}  "
                    f"next {_when(row.nextrun, str(row.timezone))}  {row.name}"
                )
            for m in foreign:
                print(
                    f"  manireports_schedules {m.id}: {m.name} ({m.reporttype}, {m.frequency}, {m.format}, "
                    f"{m.action_type}, cloud {m.cloud_preference}, {'enabled' if m.enabled else 'disabled'})"
                )
        elif action == "show":
            with engine.connect() as conn:
                row = schedules.get(conn, args.schedule)
                if row is None:
                    return fail(f"schedule {args.schedule} does not exist")
                runs = schedules.runs(conn, args.schedule)
            tz = str(row.timezone)
            shown = dict(row._mapping)
            shown["nextrun"] = _when(row.nextrun, tz)
            shown["lastslot"] = _when(row.lastslot, tz)
            shown["time"] = format_time_of_day(int(row.timeofday))
            shown["runs"] = [
                {
                    "slot": _when(r.slot, tz),
                    "outcome": r.outcome,
                    "job": r.jobid,
                    "rows": r.rowcount,
                    "detail": r.detail,
                }
                for r in runs
            ]
            print(json.dumps(shown, indent=2, default=str))
        elif action in ("pause", "resume"):
            status, what = (
                (PAUSED, audit.SCHEDULE_PAUSED) if action == "pause" else (ACTIVE, audit.SCHEDULE_RESUMED)
            )
            with engine.begin() as conn:
                row = schedules.get(conn, args.schedule)
                if row is None:
                    return fail(f"schedule {args.schedule} does not exist")
                schedules.set_status(conn, args.schedule, status, at)
                if status == ACTIVE:  # the next slot from now; slots missed while paused do not fire
                    schedules.set_next(
                        conn, args.schedule, lastslot=at, nextrun=recurrence_of(row).next_slot(at)
                    )
                audit.record(
                    conn,
                    tables,
                    actor=actor,
                    action=what,
                    now=at,
                    companyid=int(row.companyid),
                    detail={"schedule": args.schedule},
                )
            print(f"schedule {args.schedule} {status}")
        elif action == "preview":
            found = preview_schedule(engine, repo, config, args.schedule, at=at)
            unit = "users" if found.sample is not None and "attachment" not in found.sample else "rows"
            print(f"would send now: {found.count} {unit}")
            print(f"recipients: {len(found.recipients)}")
            if found.sample is None:
                print("no sample: nobody to mail")
            else:
                body = found.sample["text"] or found.sample["html"]
                print(f"To: {found.sample['to']}\nSubject: {found.sample['subject']}\n\n{body}")
                if "attachment" in found.sample:
                    print(f"\nAttachment: {found.sample['attachment']}")
        elif action == "run-now":
            with engine.connect() as conn:
                row = schedules.get(conn, args.schedule)
            if row is None:
                return fail(f"schedule {args.schedule} does not exist")
            result = run_schedule(
                engine,
                repo,
                config,
                args.schedule,
                at=at,
                actor=actor,
                upload=attachment_uploader(config),
                now_slot=True,
            )
            print(_run_line(result, str(row.timezone)))
            return 1 if result.outcome == "failed" else 0
    except (ScheduleError, TimingError, DatabaseUnavailable, IomadSchemaNotFound) as exc:
        return fail(str(exc))
    finally:
        engine.dispose()
    return 0


__all__ = ["BridgeRepo", "register", "run"]
