"""Changes to schedules, shared by ``moodle-offload schedules`` and the dashboard.

Both callers go through these functions, so a schedule is validated, stored and audited the same
way whoever changes it; the caller only names the actor (``cli:<login>``, ``dashboard:<id>``) and,
for the dashboard, the source address. The request's fields are what the CLI's flags and the
dashboard's form both give (``ScheduleRequest``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.sources.iomad.schema import detect_iomad
from moodle_bridge.sources.schedules.runner import (
    ScheduleError,
    ScheduleRunReport,
    Uploader,
    create_schedule,
    recurrence_of,
    resolve_timezone,
    run_schedule,
)
from moodle_bridge.sources.schedules.timing import TimingError, parse_time_of_day, zone
from moodle_bridge.storage import audit, manireports
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.schedule_repo import ACTIVE, PAUSED, ScheduleRepo

#: ManiReports report types the bridge can send, and the bridge report each becomes.
MANIREPORTS_REPORTS = {"course_completion": "completions"}


@dataclass(frozen=True)
class ScheduleRequest:
    """A schedule as asked for (CLI flags or the dashboard's form), before validation."""

    companyid: int
    name: str | None = None
    action_type: str = "report"
    cloud_preference: str = "auto"
    frequency: str = "daily"
    custom_interval: int = 0
    time: str = "07:00"
    start: str | None = None
    timezone: str | None = None
    creator: int | None = None
    report: str | None = None
    format: str = "csv"
    reportdays: int = 7
    send_if_empty: bool = False
    campaignid: int | None = None
    suppresstarget: int = 0
    suppress_course_completion: bool = False
    from_manireports: int | None = None
    courseid: int | None = None  # action certificate
    cohortid: int | None = None  # action certificate, optional


def when(at: Any, zone_name: str) -> str:
    """An instant in the schedule's zone, as the CLI prints and the dashboard shows it."""
    if at is None:
        return "never"
    return dt.datetime.fromtimestamp(int(at), zone(zone_name)).strftime("%Y-%m-%d %H:%M %Z")


def schedule_values(conn: sa.Connection, prefix: str, request: ScheduleRequest, at: int) -> dict[str, Any]:
    """The request as the columns ``create_schedule`` validates: the time parsed, the zone resolved
    (the company's, else the creator's, else the site's), a ManiReports row copied if named."""
    iomad = detect_iomad(conn, prefix)
    try:
        timeofday = parse_time_of_day(request.time)
    except TimingError as exc:
        raise ScheduleError(str(exc)) from None
    values: dict[str, Any] = {
        "companyid": request.companyid,
        "name": request.name,
        "action_type": request.action_type,
        "cloud_preference": request.cloud_preference,
        "frequency": request.frequency,
        "custom_interval": request.custom_interval,
        "suppresstarget": request.suppresstarget,
        "suppress_course_completion": request.suppress_course_completion,
        "timeofday": timeofday,
        "report": request.report if request.action_type == "report" else None,
        "format": request.format,
        "reportdays": request.reportdays,
        "skipifempty": not request.send_if_empty,
        "campaignid": request.campaignid,
        "courseid": request.courseid,
        "cohortid": request.cohortid,
    }
    creator = request.creator
    if request.from_manireports is not None:
        matches = manireports.read(conn, prefix, [request.from_manireports])
        if not matches:
            raise ScheduleError(f"manireports_schedules has no row {request.from_manireports}")
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
    tz = request.timezone or resolve_timezone(conn, prefix, iomad, request.companyid, creator)
    try:
        today = dt.datetime.fromtimestamp(at, zone(tz)).date()
    except TimingError as exc:
        raise ScheduleError(str(exc)) from None
    values["timezone"] = tz
    values["startdate"] = request.start or today.isoformat()
    values["suppress_course_completion"] = bool(values["suppress_course_completion"])
    return values


def create_from_request(
    conn: sa.Connection,
    repo: BridgeRepo,
    config: BridgeConfig,
    request: ScheduleRequest,
    *,
    actor: str,
    at: int,
    source: str | None = None,
) -> int:
    """Validate, store and audit a new (active) schedule; raises ``ScheduleError`` naming the field
    and stores nothing then."""
    values = schedule_values(conn, config.database.prefix, request, at)
    return create_schedule(conn, repo, values, actor=actor, at=at, source=source)


def set_schedule_status(
    conn: sa.Connection,
    repo: BridgeRepo,
    scheduleid: int,
    status: str,
    *,
    actor: str,
    at: int,
    source: str | None = None,
) -> None:
    """Pause (``paused``) or resume (``active``) a schedule, audited. A resumed schedule fires at
    its next slot from now: slots missed while paused do not fire."""
    if status not in (ACTIVE, PAUSED):
        raise ScheduleError(f"status must be {ACTIVE} or {PAUSED}")
    schedules = ScheduleRepo(repo.t)
    row = schedules.get(conn, scheduleid)
    if row is None:
        raise ScheduleError(f"schedule {scheduleid} does not exist")
    schedules.set_status(conn, scheduleid, status, at)
    if status == ACTIVE:
        schedules.set_next(conn, scheduleid, lastslot=at, nextrun=recurrence_of(row).next_slot(at))
    audit.record(
        conn,
        repo.t,
        actor=actor,
        action=audit.SCHEDULE_PAUSED if status == PAUSED else audit.SCHEDULE_RESUMED,
        now=at,
        companyid=int(row.companyid),
        source=source,
        detail={"schedule": scheduleid},
    )


def run_now(
    engine: sa.Engine,
    repo: BridgeRepo,
    config: BridgeConfig,
    scheduleid: int,
    *,
    actor: str,
    at: int,
    upload: Uploader | None,
    source: str | None = None,
) -> ScheduleRunReport:
    """Fire the schedule once now (slot ``at``); the run is audited (``schedule_run``) by the
    runner, and the outbox sends the mail."""
    return run_schedule(
        engine, repo, config, scheduleid, at=at, actor=actor, upload=upload, now_slot=True, source=source
    )


def run_line(r: ScheduleRunReport, zone_name: str) -> str:
    """One line on what a run did, as the CLI prints it and the dashboard shows it."""
    slot = when(r.slot, zone_name) if r.slot is not None else "-"
    text = f"schedule {r.scheduleid} slot {slot}: {r.outcome}"
    if r.jobid is not None:
        text += f", job {r.jobid} with {r.recipients} recipients ({r.rows} rows)"
    elif r.outcome == "queued_local":
        text += f", {r.recipients} rows in IOMAD's queue for Moodle's own mail ({r.rows} rows)"
    elif r.outcome in ("empty", "not_sent"):
        text += f" ({r.rows} rows)"
    return text + (f"; {'; '.join(r.notes)}" if r.notes else "")
