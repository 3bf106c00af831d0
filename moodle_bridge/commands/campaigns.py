"""``moodle-offload campaigns``: re-engagement campaigns (docs/campaigns.md).

list | show | create | edit | pause | resume | preview | run-now | run-due. Every change is audited.
Preview renders one sample mail and sends nothing; it prints no temporary password (campaign
mail never carries one) and no other user's data than the sample's address.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from moodle_bridge.commands._common import cli_actor, fail, open_database
from moodle_bridge.config import BridgeConfig
from moodle_bridge.sources.campaigns.manage import (
    RUN_EVERY_SECONDS,
    create_campaign,
    report_line,
    run_and_audit,
    set_campaign_status,
    update_campaign,
)
from moodle_bridge.sources.campaigns.rules import RuleError
from moodle_bridge.sources.campaigns.runner import CampaignError, preview
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound
from moodle_bridge.storage.campaign_repo import ACTIVE, PAUSED, CampaignRepo
from moodle_bridge.storage.database import DatabaseUnavailable, check_connection


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("campaigns", help="re-engagement campaigns over Moodle's own tables")
    sub = parser.add_subparsers(dest="campaigns_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="every campaign, one line each").set_defaults(handler=run)
    for name, text in (
        ("show", "a campaign's rule and how many users each cycle reminded"),
        ("pause", "stop a campaign from running"),
        ("resume", "let a paused campaign run again"),
        ("run-now", "plan this cycle's reminders now (the outbox sends them)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("campaign", type=int)
        p.set_defaults(handler=run)
    create = sub.add_parser("create", help="store a campaign rule (JSON file, see docs/campaigns.md)")
    create.add_argument("--company", type=int, required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--rule", type=Path, required=True, help="the rule as a JSON file")
    create.set_defaults(handler=run)
    edit = sub.add_parser("edit", help="replace a campaign's name and/or rule (validated as at create)")
    edit.add_argument("campaign", type=int)
    edit.add_argument("--name")
    edit.add_argument("--rule", type=Path, help="the new rule as a JSON file")
    edit.set_defaults(handler=run)
    prev = sub.add_parser("preview", help="audience count and one rendered sample mail; sends nothing")
    prev.add_argument("campaign", type=int)
    prev.add_argument("--user", type=int, help="render for this Moodle user id (default: the first match)")
    prev.set_defaults(handler=run)
    sub.add_parser(
        "run-due", help="run every active campaign not run in the last hour (cron/timer)"
    ).set_defaults(handler=run)


def _read_rule(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except (FileNotFoundError, UnicodeDecodeError) as exc:
        raise RuleError(f"rule file {path}: {type(exc).__name__}") from None


def run(args: argparse.Namespace, config: BridgeConfig) -> int:
    action = args.campaigns_command
    engine, tables, repo = open_database(config)
    campaigns = CampaignRepo(tables)
    actor, at = cli_actor(), int(time.time())
    try:
        check_connection(engine)
        if action == "create":
            rule_text = _read_rule(args.rule)
            with engine.begin() as conn:
                campaignid = create_campaign(
                    conn,
                    repo,
                    companyid=args.company,
                    name=args.name,
                    rule_text=rule_text,
                    actor=actor,
                    at=at,
                )
            print(
                f"campaign {campaignid} created (active); "
                f"`moodle-offload campaigns preview {campaignid}` shows who it reaches"
            )
        elif action == "edit":
            if args.name is None and args.rule is None:
                return fail("say what to change: --name and/or --rule")
            new_rule = _read_rule(args.rule) if args.rule is not None else None
            with engine.begin() as conn:
                update_campaign(
                    conn, repo, args.campaign, name=args.name, rule_text=new_rule, actor=actor, at=at
                )
            print(f"campaign {args.campaign} changed")
        elif action == "list":
            with engine.connect() as conn:
                rows = campaigns.list(conn)
            if not rows:
                print("no campaigns")
            for row in rows:
                rule = json.loads(row.rule)
                last = (
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(row.timelastrun))
                    if row.timelastrun
                    else "never"
                )
                print(
                    f"{row.id:>5}  company {row.companyid:<5} {row.status:<7} "
                    f"{rule['trigger']['kind']:<16} last run {last}  {row.name}"
                )
        elif action == "show":
            with engine.connect() as conn:
                found = campaigns.get(conn, args.campaign)
                if found is None:
                    return fail(f"campaign {args.campaign} does not exist")
                counts = campaigns.ledger_counts(conn, args.campaign)
            print(
                json.dumps(
                    {
                        "id": found.id,
                        "company": found.companyid,
                        "name": found.name,
                        "status": found.status,
                        "rule": json.loads(found.rule),
                        "reminded_per_cycle": counts,
                    },
                    indent=2,
                )
            )
        elif action in ("pause", "resume"):
            status = PAUSED if action == "pause" else ACTIVE
            with engine.begin() as conn:
                set_campaign_status(conn, repo, args.campaign, status, actor=actor, at=at)
            print(f"campaign {args.campaign} {status}")
        elif action == "preview":
            count, sample = preview(engine, repo, config, args.campaign, at=at, userid=args.user)
            print(f"audience now: {count} users")
            if sample is None:
                print("no sample: nobody matches" + (f" among user {args.user}" if args.user else ""))
            else:
                print(
                    f"To: {sample['to']}\nSubject: {sample['subject']}\n\n{sample['text'] or sample['html']}"
                )
        elif action == "run-now":
            print(report_line(run_and_audit(engine, repo, config, args.campaign, actor=actor, at=at)))
        elif action == "run-due":
            with engine.connect() as conn:
                due = [
                    r.id
                    for r in campaigns.list(conn)
                    if r.status == ACTIVE
                    and (r.timelastrun is None or at - r.timelastrun >= RUN_EVERY_SECONDS)
                ]
            failed = 0
            for campaignid in due:
                try:
                    print(report_line(run_and_audit(engine, repo, config, campaignid, actor=actor, at=at)))
                except (CampaignError, RuleError) as exc:
                    failed += 1
                    print(f"moodle-offload: campaign {campaignid}: {exc}")
            if not due:
                print("no campaign is due")
            return 1 if failed else 0
    except (RuleError, CampaignError, DatabaseUnavailable, IomadSchemaNotFound) as exc:
        return fail(str(exc))
    finally:
        engine.dispose()
    return 0
