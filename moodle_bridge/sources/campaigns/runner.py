"""Run a campaign: find its audience, then create one job and its ledger rows in one transaction.

Exactly one reminder per (campaign, user, cycle):
- the run marks the campaign row first, which serialises overlapping runs;
- the audience query leaves out users already in the ledger for the cycle;
- the ledger rows, the job, its recipients and its outbox batches commit together. A bridge
  killed before the commit leaves nothing behind (the next run plans the same users again); one
  killed after it leaves a job that the outbox submits exactly once, like any other job.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.jobs import (
    PlannedRecipient,
    create_template_job,
    fill_template_job,
)
from moodle_bridge.pipeline.local_mail import queue_template_locally
from moodle_bridge.pipeline.outbox import BuildError
from moodle_bridge.pipeline.routing import Decision, decide
from moodle_bridge.sources.campaigns.audience import (
    AudienceMember,
    Manager,
    audience,
    audience_query,
    managers_of,
)
from moodle_bridge.sources.campaigns.moodle_tables import MoodleActivityTables, build_activity_tables
from moodle_bridge.sources.campaigns.rules import DAY, CampaignRule, compile_templates, rule_from_json
from moodle_bridge.sources.iomad.addresses import address_problem
from moodle_bridge.sources.iomad.schema import IomadGeneration, IomadTables, detect_iomad
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.campaign_repo import CampaignRepo
from moodle_bridge.transports.capabilities import worker_check


class CampaignError(RuntimeError):
    """The campaign cannot run now; the message says why and what to do."""


@dataclass
class RunReport:
    campaignid: int
    cycle: int
    audience: int = 0
    jobid: int | None = None
    recipients: int = 0
    pending: int = 0
    skipped: int = 0
    failed: int = 0
    #: rows queued in IOMAD's own queue (a schedule's run kept local); no job then
    local_rows: int = 0
    notes: list[str] = field(default_factory=list)


#: The ledger's job for users whose reminder was queued for IOMAD to send (no bridge job).
LOCAL_JOB = 0


def moodle_tables_for(iomad: IomadTables) -> MoodleActivityTables:
    licence = (
        "companylicense" if iomad.generation is IomadGeneration.LEGACY else "local_iomad_company_licenses"
    )
    return build_activity_tables(iomad.prefix, licence)


def template_data(
    member: AudienceMember, rule: CampaignRule, at: int, coursename: str | None
) -> dict[str, Any]:
    """The fields a campaign template can use (docs/campaigns.md lists them)."""
    last = member.lastaccess
    return {
        "firstname": member.firstname,
        "lastname": member.lastname,
        "fullname": f"{member.firstname} {member.lastname}".strip(),
        "email": member.email,
        "coursename": coursename or "",
        "days_inactive": (at - last) // DAY if last > 0 else None,
        "deadline": rule.trigger.deadline,
    }


def plan_recipients(
    rule: CampaignRule,
    members: list[AudienceMember],
    managers: dict[int, list[Manager]],
    templates: tuple[jinja2.Template, ...],
    contentkey: str,
    at: int,
    coursename: str | None,
) -> list[PlannedRecipient]:
    planned: list[PlannedRecipient] = []
    for m in members:
        data = template_data(m, rule, at, coursename)
        copies: list[tuple[str, str, str, dict[str, Any], int]] = []
        if rule.recipients in ("user", "both"):
            copies.append((f"user:{m.userid}", m.email, data["fullname"], {**data, "role": "user"}, m.userid))
        if rule.recipients in ("managers", "both"):
            for mgr in managers.get(m.userid, []):
                mgr_data = {
                    **data,
                    "role": "manager",
                    "manager_firstname": mgr.firstname,
                    "manager_lastname": mgr.lastname,
                }
                name = f"{mgr.firstname} {mgr.lastname}".strip()
                copies.append(
                    (f"user:{m.userid}:manager:{mgr.userid}", mgr.email, name, mgr_data, mgr.userid)
                )
        for key, address, name, values, addressee in copies:
            p = PlannedRecipient(
                dedupekey=key,
                role="campaign",
                address=address[:254],
                fullname=name,
                userid=m.userid,
                contentkey=contentkey,
                data=values,
                addressee=addressee,
            )
            problem = address_problem(address)
            if problem:
                p.status, p.errorcode, p.errormessage = "failed", problem, "no usable email address"
            else:
                try:
                    for template in templates:
                        template.render(**values)
                except jinja2.TemplateError as exc:
                    p.status, p.errorcode = "failed", "template_error"
                    p.errormessage = f"{type(exc).__name__}: {str(exc)[:200]}"
            planned.append(p)
    return planned


def _course_name(conn: sa.Connection, moodle: MoodleActivityTables, courseid: int | None) -> str | None:
    if courseid is None:
        return None
    value = conn.execute(sa.select(moodle.course.c.fullname).where(moodle.course.c.id == courseid)).scalar()
    return None if value is None else str(value)


#: ``cloud_preference`` values a schedule passes (docs/schedules.md); None: a campaign's own run.
LOCAL = "local"
CLOUD = "cloud"
AUTO = "auto"


def run_campaign(
    engine: sa.Engine,
    repo: BridgeRepo,
    config: BridgeConfig,
    campaignid: int,
    *,
    at: int,
    actor: str,
    iomad: IomadTables | None = None,
    rule_changes: Mapping[str, Any] | None = None,
) -> RunReport:
    """Plan this cycle's reminders of one campaign in one transaction; the outbox submits the job
    afterwards. A company the routing keeps local gets ``CampaignError``."""
    with engine.begin() as conn:
        return run_campaign_in(
            conn, repo, config, campaignid, at=at, actor=actor, iomad=iomad, rule_changes=rule_changes
        )


def run_campaign_in(
    conn: sa.Connection,
    repo: BridgeRepo,
    config: BridgeConfig,
    campaignid: int,
    *,
    at: int,
    actor: str,
    iomad: IomadTables | None = None,
    rule_changes: Mapping[str, Any] | None = None,
    cloud_preference: str | None = None,
) -> RunReport:
    """``run_campaign`` in the caller's transaction (a schedule's slot transaction).

    A schedule (docs/schedules.md) passes ``rule_changes`` (its ``suppresstarget`` and
    ``suppress_course_completion``) and its ``cloud_preference``: ``cloud`` ignores the
    company's threshold; ``local``, and ``auto`` when the routing keeps the company local, queue
    each recipient's rendered mail into IOMAD's own queue for its cron to send
    (``report.local_rows``; the ledger records those users with job 0). Without a preference (a
    campaign's own run) a company kept local gets ``CampaignError``."""
    campaigns = CampaignRepo(repo.t)
    row = campaigns.get(conn, campaignid)
    if row is None:
        raise CampaignError(f"campaign {campaignid} does not exist (see `moodle-offload campaigns list`)")
    rule = rule_from_json(str(row.rule))
    if rule_changes:
        rule = dataclasses.replace(rule, **rule_changes)
    report = RunReport(campaignid, rule.cycle(at))
    if at < rule.start:
        report.notes.append("the campaign has not started yet")
        return report
    if not campaigns.start_run(conn, campaignid, at):
        raise CampaignError(
            f"campaign {campaignid} is paused (`moodle-offload campaigns resume {campaignid}`)"
        )
    iomad = iomad or detect_iomad(conn, config.database.prefix)
    moodle = moodle_tables_for(iomad)
    companyid = int(row.companyid)
    members = audience(conn, moodle, iomad, repo.t, rule, companyid=companyid, campaignid=campaignid, now=at)
    report.audience = len(members)
    if not members:
        report.notes.append("nobody matches the rule this cycle")
        return report
    settings = repo.get_settings(conn, companyid)
    if cloud_preference == LOCAL:
        decision = Decision(False, "cloud_preference local")
    else:
        decision = decide(
            repo.offload_enabled(conn),
            settings,
            "email",
            2**62 if cloud_preference == CLOUD else len(members),
        )
    if not decision.offload:
        settings = None
    if settings is None and cloud_preference not in (LOCAL, AUTO):
        raise CampaignError(
            f"company {companyid} is not routed to the cloud for email ({decision.reason}); "
            "see `moodle-offload company show`"
        )
    if settings is not None and settings.provider == "cloudflare":
        refused = worker_check(config)(companyid, "campaign")
        if refused:
            raise CampaignError(f"{refused}; the campaign does not run")
    managers = (
        managers_of(conn, moodle, iomad, companyid, [m.userid for m in members])
        if rule.recipients != "user"
        else {}
    )
    template_json = json.dumps(
        {"subject": rule.template.subject, "html": rule.template.html, "text": rule.template.text}
    )
    coursename = _course_name(conn, moodle, rule.trigger.course)
    templates = compile_templates(rule.template)
    if settings is None:
        planned = plan_recipients(rule, members, managers, templates, "", at, coursename)
        queued = queue_template_locally(
            conn,
            repo,
            iomad,
            planned,
            companyid=companyid,
            category="campaign",
            template_json=template_json,
            at=at,
            courseid=rule.trigger.course,
        )
        campaigns.record_ledger(conn, campaignid, report.cycle, LOCAL_JOB, [m.userid for m in members], at)
        report.local_rows, report.recipients = queued.rows, len(planned)
        report.skipped, report.failed = queued.skipped, queued.failed
        report.notes.append(queued.note(decision.reason, iomad))
        return report
    try:
        new_job = create_template_job(
            conn,
            repo,
            config,
            settings,
            companyid=companyid,
            source="campaign",
            category="campaign",
            templatename=f"campaign:{campaignid}",
            template_json=template_json,
            actor=actor,
            at=at,
        )
    except BuildError as exc:
        raise CampaignError(str(exc)) from None
    jobid, contentkey = new_job.jobid, new_job.contentkey
    planned = plan_recipients(rule, members, managers, templates, contentkey, at, coursename)
    created = fill_template_job(conn, repo, config, new_job, planned)
    campaigns.record_ledger(conn, campaignid, report.cycle, jobid, [m.userid for m in members], at)
    audit.record(
        conn,
        repo.t,
        actor=actor,
        action=audit.JOB_CREATED,
        now=at,
        companyid=companyid,
        jobid=jobid,
        detail={
            "source": "campaign",
            "campaign": campaignid,
            "cycle": report.cycle,
            "recipients": created.recipients,
        },
    )
    report.jobid = jobid
    report.recipients = created.recipients
    report.pending = created.pending
    report.skipped = sum(1 for p in planned if p.status == "skipped")
    report.failed = created.recipients - created.pending - report.skipped
    return report


def audience_count(
    engine: sa.Engine, repo: BridgeRepo, config: BridgeConfig, campaignid: int, *, at: int
) -> int:
    """How many users the campaign's rule finds now (leaving out those already reminded this
    cycle or at their cap), as a run would; reads only. One COUNT over the run's audience query:
    no member comes back to Python, and without the run's ordering the database may start from
    the company's users."""
    with engine.connect() as conn:
        row = CampaignRepo(repo.t).get(conn, campaignid)
        if row is None:
            raise CampaignError(f"campaign {campaignid} does not exist")
        rule = rule_from_json(str(row.rule))
        iomad = detect_iomad(conn, config.database.prefix)
        members = audience_query(
            moodle_tables_for(iomad),
            iomad,
            repo.t,
            rule,
            companyid=int(row.companyid),
            campaignid=campaignid,
            now=at,
        ).order_by(None)
        return int(conn.execute(sa.select(sa.func.count()).select_from(members.subquery())).scalar_one())


def preview(
    engine: sa.Engine,
    repo: BridgeRepo,
    config: BridgeConfig,
    campaignid: int,
    *,
    at: int,
    userid: int | None = None,
) -> tuple[int, dict[str, str] | None]:
    """The audience count now, and one rendered sample mail (subject, html, text); sends nothing."""
    campaigns = CampaignRepo(repo.t)
    with engine.connect() as conn:
        row = campaigns.get(conn, campaignid)
        if row is None:
            raise CampaignError(f"campaign {campaignid} does not exist")
        rule = rule_from_json(str(row.rule))
        iomad = detect_iomad(conn, config.database.prefix)
        moodle = moodle_tables_for(iomad)
        members = audience(
            conn, moodle, iomad, repo.t, rule, companyid=int(row.companyid), campaignid=campaignid, now=at
        )
        sample = next((m for m in members if userid is None or m.userid == userid), None)
        if sample is None:
            return len(members), None
        values = {
            **template_data(sample, rule, at, _course_name(conn, moodle, rule.trigger.course)),
            "role": "user",
        }
    subject, html, text = compile_templates(rule.template)
    return len(members), {
        "to": sample.email,
        "subject": subject.render(**values),
        "html": html.render(**values),
        "text": text.render(**values),
    }
