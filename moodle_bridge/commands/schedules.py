"""``moodle-offload schedules``: campaigns and reports fired at a local time (docs/schedules.md).

list | show | create | pause | resume | preview | run-now. Every change is audited. Preview
renders one sample mail and sends, uploads and records nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from moodle_bridge.commands._common import cli_actor, fail, open_database
from moodle_bridge.commands.tick import attachment_uploader
from moodle_bridge.config import BridgeConfig
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound
from moodle_bridge.sources.schedules import reports
from moodle_bridge.sources.schedules.manage import (
    ScheduleRequest,
    create_from_request,
    run_line,
    run_now,
    set_schedule_status,
    when,
)
from moodle_bridge.sources.schedules.runner import (
    ACTIONS,
    CLOUD_PREFERENCES,
    ScheduleError,
    preview_schedule,
)
from moodle_bridge.sources.schedules.timing import FREQUENCIES, TimingError, format_time_of_day
from moodle_bridge.storage import manireports
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.database import DatabaseUnavailable, check_connection
from moodle_bridge.storage.schedule_repo import ACTIVE, PAUSED, ScheduleRepo


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
    create.add_argument(
        "--course", dest="courseid", type=int, help="action certificate: the course whose completions get one"
    )
    create.add_argument(
        "--cohort", dest="cohortid", type=int, help="action certificate: only this cohort's members"
    )
    create.add_argument("--from-manireports", type=int, metavar="ID", help="copy a manireports_schedules row")
    create.set_defaults(handler=run)


def _request(args: argparse.Namespace) -> ScheduleRequest:
    return ScheduleRequest(
        companyid=args.company,
        name=args.name,
        action_type=args.action_type,
        cloud_preference=args.cloud_preference,
        frequency=args.frequency,
        custom_interval=args.custom_interval,
        time=args.time,
        start=args.start,
        timezone=args.timezone,
        creator=args.creator,
        report=args.report,
        format=args.format,
        reportdays=args.reportdays,
        send_if_empty=args.send_if_empty,
        campaignid=args.campaignid,
        suppresstarget=args.suppresstarget,
        suppress_course_completion=args.suppress_course_completion,
        from_manireports=args.from_manireports,
        courseid=args.courseid,
        cohortid=args.cohortid,
    )


def run(args: argparse.Namespace, config: BridgeConfig) -> int:
    action = args.schedules_command
    engine, tables, repo = open_database(config)
    schedules = ScheduleRepo(tables)
    actor, at = cli_actor(), int(time.time())
    try:
        check_connection(engine)
        if action == "create":
            with engine.begin() as conn:
                scheduleid = create_from_request(conn, repo, config, _request(args), actor=actor, at=at)
                row = schedules.get(conn, scheduleid)
            if row is None:  # pragma: no cover - inserted just above
                return fail(f"schedule {scheduleid} vanished")
            tz = str(row.timezone)
            print(
                f"schedule {scheduleid} created (active), {row.frequency} at "
                f"{format_time_of_day(int(row.timeofday))} {tz}; first run {when(row.nextrun, tz)}"
            )
        elif action == "list":
            with engine.connect() as conn:
                rows = schedules.list(conn)
                foreign = manireports.read(conn, config.database.prefix)
            if not rows:
                print("no schedules")
            for row in rows:
                what = (
                    row.report
                    if row.action_type == "report"
                    else f"course {row.courseid}"
                    if row.action_type == "certificate"
                    else f"campaign {row.campaignid}"
                )
                print(
                    f"{row.id:>5}  company {row.companyid:<5} {row.status:<7} {row.action_type:<7} "
                    f"{what:<18} {row.frequency} {format_time_of_day(int(row.timeofday))} {row.timezone}  "
                    f"next {when(row.nextrun, str(row.timezone))}  {row.name}"
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
            shown["nextrun"] = when(row.nextrun, tz)
            shown["lastslot"] = when(row.lastslot, tz)
            shown["time"] = format_time_of_day(int(row.timeofday))
            shown["runs"] = [
                {
                    "slot": when(r.slot, tz),
                    "outcome": r.outcome,
                    "job": r.jobid,
                    "rows": r.rowcount,
                    "detail": r.detail,
                }
                for r in runs
            ]
            print(json.dumps(shown, indent=2, default=str))
        elif action in ("pause", "resume"):
            status = PAUSED if action == "pause" else ACTIVE
            with engine.begin() as conn:
                set_schedule_status(conn, repo, args.schedule, status, actor=actor, at=at)
            print(f"schedule {args.schedule} {status}")
        elif action == "preview":
            found = preview_schedule(engine, repo, config, args.schedule, at=at)
            print(f"would send now: {found.count} {found.unit}")
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
            result = run_now(
                engine, repo, config, args.schedule, at=at, actor=actor, upload=attachment_uploader(config)
            )
            print(run_line(result, str(row.timezone)))
            return 1 if result.outcome == "failed" else 0
    except (ScheduleError, TimingError, DatabaseUnavailable, IomadSchemaNotFound) as exc:
        return fail(str(exc))
    finally:
        engine.dispose()
    return 0


__all__ = ["BridgeRepo", "register", "run"]
