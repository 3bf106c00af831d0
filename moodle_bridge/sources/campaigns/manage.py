"""Changes to campaigns, shared by ``moodle-offload campaigns`` and the dashboard.

Both callers go through these functions, so a campaign is validated, stored and audited the same
way whoever changes it; the caller only names the actor (``cli:<login>``, ``dashboard:<id>``) and,
for the dashboard, the source address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.sources.campaigns.rules import DAY, CampaignRule, RuleError, rule_from_json
from moodle_bridge.sources.campaigns.runner import CampaignError, RunReport, run_campaign
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.campaign_repo import ACTIVE, PAUSED, CampaignRepo

#: A campaign is evaluated at most this often by ``run-due``; the ledger keeps each user to one
#: reminder per cycle however often it runs, so this only bounds the audience queries.
RUN_EVERY_SECONDS = 3600
MAX_NAME_CHARS = 255


def clean_name(name: str) -> str:
    cleaned = " ".join(str(name).split())[:MAX_NAME_CHARS]
    if not cleaned:
        raise RuleError("name must not be empty")
    return cleaned


def _require_settings(conn: sa.Connection, repo: BridgeRepo, companyid: int) -> None:
    if repo.get_settings(conn, companyid) is None:
        raise RuleError(f"company {companyid} has no settings; run `moodle-offload company set {companyid}`")


def create_campaign(
    conn: sa.Connection,
    repo: BridgeRepo,
    *,
    companyid: int,
    name: str,
    rule_text: str,
    actor: str,
    at: int,
    source: str | None = None,
) -> int:
    """Validate and store a new (active) campaign, and audit it; raises ``RuleError``."""
    rule = rule_from_json(rule_text)
    _require_settings(conn, repo, companyid)
    cleaned = clean_name(name)
    campaignid = CampaignRepo(repo.t).create(
        conn, companyid=companyid, name=cleaned, rule_json=rule.to_json(), actor=actor, at=at
    )
    audit.record(
        conn,
        repo.t,
        actor=actor,
        action=audit.CAMPAIGN_CREATED,
        now=at,
        companyid=companyid,
        source=source,
        detail={"campaign": campaignid, "name": cleaned, "trigger": rule.trigger.kind},
    )
    return campaignid


def update_campaign(
    conn: sa.Connection,
    repo: BridgeRepo,
    campaignid: int,
    *,
    name: str | None,
    rule_text: str | None,
    actor: str,
    at: int,
    source: str | None = None,
) -> None:
    """Replace a campaign's name and/or rule (validated as at create), and audit it. The ledger
    stays: users already reminded in the current cycle are not reminded again by the new rule."""
    campaigns = CampaignRepo(repo.t)
    row = campaigns.get(conn, campaignid)
    if row is None:
        raise CampaignError(f"campaign {campaignid} does not exist")
    rule = rule_from_json(rule_text if rule_text is not None else str(row.rule))
    cleaned = clean_name(name if name is not None else str(row.name))
    campaigns.update(conn, campaignid, name=cleaned, rule_json=rule.to_json(), at=at)
    audit.record(
        conn,
        repo.t,
        actor=actor,
        action=audit.CAMPAIGN_UPDATED,
        now=at,
        companyid=int(row.companyid),
        source=source,
        detail={"campaign": campaignid, "name": cleaned, "trigger": rule.trigger.kind},
    )


def set_campaign_status(
    conn: sa.Connection,
    repo: BridgeRepo,
    campaignid: int,
    status: str,
    *,
    actor: str,
    at: int,
    source: str | None = None,
) -> None:
    """Pause (``paused``) or resume (``active``) a campaign, and audit it."""
    if status not in (ACTIVE, PAUSED):
        raise CampaignError(f"status must be {ACTIVE} or {PAUSED}")
    campaigns = CampaignRepo(repo.t)
    row = campaigns.get(conn, campaignid)
    if row is None:
        raise CampaignError(f"campaign {campaignid} does not exist")
    campaigns.set_status(conn, campaignid, status, at)
    audit.record(
        conn,
        repo.t,
        actor=actor,
        action=audit.CAMPAIGN_PAUSED if status == PAUSED else audit.CAMPAIGN_RESUMED,
        now=at,
        companyid=int(row.companyid),
        source=source,
        detail={"campaign": campaignid},
    )


def run_and_audit(
    engine: sa.Engine,
    repo: BridgeRepo,
    config: BridgeConfig,
    campaignid: int,
    *,
    actor: str,
    at: int,
    source: str | None = None,
) -> RunReport:
    """``run-now``: plan this cycle's reminders (the outbox submits them), then audit the run."""
    report = run_campaign(engine, repo, config, campaignid, at=at, actor=actor)
    with engine.begin() as conn:
        row = CampaignRepo(repo.t).get(conn, campaignid)
        audit.record(
            conn,
            repo.t,
            actor=actor,
            action=audit.CAMPAIGN_RUN,
            now=at,
            companyid=int(row.companyid) if row is not None else None,
            jobid=report.jobid,
            source=source,
            detail={"campaign": campaignid, "cycle": report.cycle, "audience": report.audience},
        )
    return report


def report_line(r: RunReport) -> str:
    """One line on what a run did, as the CLI prints it and the dashboard shows it."""
    if r.jobid is None:
        return f"campaign {r.campaignid} cycle {r.cycle}: {'; '.join(r.notes) or 'nothing to send'}"
    return (
        f"campaign {r.campaignid} cycle {r.cycle}: job {r.jobid} with {r.recipients} recipients "
        f"({r.pending} to send, {r.skipped} skipped, {r.failed} failed) for {r.audience} users"
    )


@dataclass(frozen=True)
class Schedule:
    """When a campaign runs next, from what the bridge records (``timelastrun``, the rule)."""

    cycle: int
    #: When ``run-due`` next evaluates it (None: paused); may be in the past (due now).
    next_run: int | None
    #: When the next cycle begins (None: a one-off campaign).
    next_cycle: int | None


def schedule_of(row: Any, rule: CampaignRule, now: int) -> Schedule:
    cycle = rule.cycle(now)
    every = rule.cadence.every_days * DAY
    next_cycle = rule.start + (cycle + 1) * every if every else None
    if now < rule.start:
        next_cycle = rule.start
    next_run: int | None = None
    if row.status == ACTIVE:
        last = int(row.timelastrun or 0)
        next_run = max(last + RUN_EVERY_SECONDS if last else now, rule.start)
    return Schedule(cycle, next_run, next_cycle)
