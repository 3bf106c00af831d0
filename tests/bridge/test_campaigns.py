"""Re-engagement campaigns: rules, audience per trigger, the per-user ledger, suppression and the
path to the queue, on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa

from iomad_sim.iomad_schema import create_iomad_schema, metadata_for
from moodle_bridge.commands.tick import build_submitters
from moodle_bridge.pipeline.outbox import Outbox
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.results.suppression import record_suppressions
from moodle_bridge.sources.campaigns.rules import DAY, RuleError, parse_rule
from moodle_bridge.sources.campaigns.runner import CampaignError, audience_count, preview, run_campaign
from moodle_bridge.sources.iomad.schema import IomadTables
from moodle_bridge.storage.campaign_repo import PAUSED, CampaignRepo
from offload_contract.unsubscribe import verify_token
from tests.bridge.conftest import drain, make_config, with_queues

NOW = 1_780_000_000
COURSE = 2
CM_FINAL_QUIZ = 99
TEMPLATE = {
    "subject": "We miss you, {{ firstname }}",
    "html": "<p>Hello {{ fullname }}, {{ coursename }} is waiting.</p>",
    "text": "Hello {{ fullname }}, {{ coursename }} is waiting.",
}


def rule(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"trigger": {"kind": "inactive_site", "days": 30}, "template": dict(TEMPLATE)}
    base.update(changes)
    return base


class Site:
    """An IOMAD site with company 1 (cloud), company 2, a course and learners in known states."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.iomad: IomadTables = create_iomad_schema(engine)
        self.meta = metadata_for(self.iomad)
        self.t = {name.removeprefix("mdl_"): table for name, table in self.meta.tables.items()}
        self._enrol_ids = 0
        with engine.begin() as conn:
            conn.execute(
                self.t["course"].insert(), [{"id": COURSE, "fullname": "Safety 101", "shortname": "s"}]
            )
            conn.execute(self.t["enrol"].insert(), [{"id": 1, "enrol": "license", "courseid": COURSE}])
            conn.execute(
                self.t["company"].insert(),
                [{"id": c, "name": f"Company {c}", "shortname": f"c{c}"} for c in (1, 2)],
            )
            conn.execute(
                self.t["department"].insert(),
                [
                    {"id": 100, "name": "Top", "shortname": "top", "company": 1, "parent": 0},
                    {"id": 101, "name": "Sales", "shortname": "sales", "company": 1, "parent": 100},
                    {"id": 200, "name": "Top", "shortname": "top", "company": 2, "parent": 0},
                ],
            )

    def user(
        self,
        uid: int,
        *,
        company: int = 1,
        department: int | None = None,
        lastaccess: int = 0,
        created: int = NOW - 400 * DAY,
        managertype: int = 0,
        deleted: int = 0,
        email: str | None = None,
    ) -> int:
        with self.engine.begin() as conn:
            conn.execute(
                self.t["user"].insert(),
                [
                    {
                        "id": uid,
                        "username": f"u{uid}",
                        "firstname": f"First{uid}",
                        "lastname": f"Last{uid}",
                        "email": f"u{uid}@example.com" if email is None else email,
                        "mnethostid": 1,
                        "confirmed": 1,
                        "deleted": deleted,
                        "lastaccess": lastaccess,
                        "timecreated": created,
                    }
                ],
            )
            conn.execute(
                self.t["company_users"].insert(),
                [
                    {
                        "companyid": company,
                        "userid": uid,
                        "managertype": managertype,
                        "departmentid": department or company * 100,
                    }
                ],
            )
        return uid

    def enrol(
        self, uid: int, since: int, *, access: int | None = None, started: int = 0, done: int = 0
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.t["user_enrolments"].insert(),
                [{"enrolid": 1, "userid": uid, "timestart": since, "timecreated": since}],
            )
            if access is not None:
                conn.execute(
                    self.t["user_lastaccess"].insert(),
                    [{"userid": uid, "courseid": COURSE, "timeaccess": access}],
                )
            if started or done:
                conn.execute(
                    self.t["course_completions"].insert(),
                    [
                        {
                            "userid": uid,
                            "course": COURSE,
                            "timeenrolled": since,
                            "timestarted": started,
                            "timecompleted": done or None,
                        }
                    ],
                )

    def complete_module(self, uid: int, cmid: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.t["course_modules_completion"].insert(),
                [{"coursemoduleid": cmid, "userid": uid, "completionstate": 1, "timemodified": NOW}],
            )


@pytest.fixture
def site(db_engine: sa.Engine) -> Site:
    return Site(db_engine)


@pytest.fixture
def bridge(site: Site, db_url: Any, repo: Any, aws: dict[str, Any]) -> dict[str, Any]:
    from moodle_bridge.storage.migrations import migrate

    migrate(site.engine, "mdl_")
    config = replace(
        with_queues(make_config(db_url), aws),
        submit=replace(
            make_config(db_url).submit, unsubscribe_url_base="https://api.example.com/v1/unsubscribe"
        ),
    )
    with site.engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
    return {"config": config, "repo": repo, "campaigns": CampaignRepo(repo.t)}


def create(bridge: dict[str, Any], engine: sa.Engine, document: dict[str, Any], company: int = 1) -> int:
    parsed = parse_rule(document)
    with engine.begin() as conn:
        return int(
            bridge["campaigns"].create(
                conn, companyid=company, name="test", rule_json=parsed.to_json(), actor="test", at=NOW
            )
        )


def recipients_of(engine: sa.Engine, repo: Any, jobid: int) -> list[tuple[str, str, str | None]]:
    r = repo.t.recipients
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(r.c.address, r.c.status, r.c.errorcode).where(r.c.jobid == jobid).order_by(r.c.address)
        ).all()
    return [(str(a), str(s), c) for a, s, c in rows]


# --- rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"template": TEMPLATE}, "trigger must be an object"),
        (rule(trigger={"kind": "sometimes", "days": 3}), "trigger.kind must be one of"),
        (rule(trigger={"kind": "not_started", "days": 3}), "trigger.course must be a whole number"),
        (rule(trigger={"kind": "inactive_site", "days": -1}), "trigger.days must be between 0 and 3650"),
        (rule(trigger={"kind": "not_completed", "days": 3, "course": 2}), "needs either deadline or licence"),
        (rule(template={"subject": "x", "html": "{% if %}"}), "template: syntax error"),
        (rule(template={"subject": "", "html": "x"}), "template needs a subject"),
        (rule(cadence={"every_days": 0, "max_reminders": 3}), "a one-off campaign"),
        (rule(recipients="everyone"), "recipients must be one of"),
        (rule(suppress_course_completion=True), "needs a trigger with a course"),
        (rule(colour="red"), "unknown field(s) colour"),
        (rule(audience={"cohorts": ["x"]}), "audience.cohorts[] must be a whole number"),
    ],
)
def test_a_rule_that_cannot_run_is_refused_naming_the_field(document: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_rule(document)


def test_cycles_count_whole_intervals_from_the_start() -> None:
    weekly = parse_rule(rule(cadence={"every_days": 7, "max_reminders": 3}, start=NOW))
    assert [weekly.cycle(NOW + d * DAY) for d in (0, 6, 7, 13, 14)] == [0, 0, 1, 1, 2]
    assert parse_rule(rule()).cycle(NOW + 900 * DAY) == 0


# --- audience ------------------------------------------------------------------------------


def test_inactive_site_finds_the_inactive_and_never_seen_company_users_only(site: Site, bridge) -> None:
    site.user(10, lastaccess=NOW - 40 * DAY)
    site.user(11, lastaccess=NOW - 2 * DAY)
    site.user(12, lastaccess=0, created=NOW - 60 * DAY)  # never logged in, account is old
    site.user(13, lastaccess=0, created=NOW - 5 * DAY)  # never logged in, account is new
    site.user(14, company=2, lastaccess=NOW - 40 * DAY)
    site.user(15, lastaccess=NOW - 40 * DAY, deleted=1)
    site.user(16, lastaccess=NOW - 40 * DAY, email="")
    cid = create(bridge, site.engine, rule())
    count, sample = preview(site.engine, bridge["repo"], bridge["config"], cid, at=NOW)
    assert count == 2
    assert sample is not None and sample["to"] == "u10@example.com"
    assert sample["subject"] == "We miss you, First10"


def test_course_triggers_and_suppressions(site: Site, bridge) -> None:
    site.user(20)
    site.enrol(20, NOW - 20 * DAY)  # enrolled 20 days ago, never started
    site.user(21)
    site.enrol(21, NOW - 20 * DAY, access=NOW - 19 * DAY)  # looked at the course
    site.user(22)
    site.enrol(22, NOW - 5 * DAY)  # enrolled recently
    site.user(23)
    site.enrol(23, NOW - 20 * DAY, started=NOW - 15 * DAY, done=NOW - 1 * DAY)  # completed
    site.user(24)
    site.enrol(24, NOW - 20 * DAY)
    site.complete_module(24, CM_FINAL_QUIZ)  # suppresstarget done
    site.user(25)  # not enrolled
    not_started = create(
        bridge,
        site.engine,
        rule(trigger={"kind": "not_started", "days": 14, "course": COURSE}, suppresstarget=CM_FINAL_QUIZ),
    )
    count, sample = preview(site.engine, bridge["repo"], bridge["config"], not_started, at=NOW)
    assert (count, sample and sample["to"]) == (1, "u20@example.com")
    assert sample is not None and "Safety 101 is waiting" in sample["text"]

    inactive = create(
        bridge, site.engine, rule(trigger={"kind": "inactive_course", "days": 10, "course": COURSE})
    )
    # 20 and 24 never accessed, 23 finished without a lastaccess row; 21 accessed 19 days ago.
    assert preview(site.engine, bridge["repo"], bridge["config"], inactive, at=NOW)[0] == 4
    suppressed = create(
        bridge,
        site.engine,
        rule(
            trigger={"kind": "inactive_course", "days": 10, "course": COURSE},
            suppress_course_completion=True,
            suppresstarget=CM_FINAL_QUIZ,
        ),
    )
    assert preview(site.engine, bridge["repo"], bridge["config"], suppressed, at=NOW)[0] == 2  # 20 and 21

    deadline = create(
        bridge,
        site.engine,
        rule(trigger={"kind": "not_completed", "days": 7, "course": COURSE, "deadline": NOW + 5 * DAY}),
    )
    assert preview(site.engine, bridge["repo"], bridge["config"], deadline, at=NOW)[0] == 4  # all but 23
    early = NOW - 10 * DAY
    assert preview(site.engine, bridge["repo"], bridge["config"], deadline, at=early)[0] == 0
    # The dashboard's count (one COUNT, no rows) finds what a run's audience finds, rule by rule.
    for cid, expected in ((not_started, 1), (inactive, 4), (suppressed, 2), (deadline, 4)):
        assert audience_count(site.engine, bridge["repo"], bridge["config"], cid, at=NOW) == expected
    assert audience_count(site.engine, bridge["repo"], bridge["config"], deadline, at=early) == 0


# --- running -------------------------------------------------------------------------------


def test_a_cap_of_one_reminder_holds_across_cycles(site: Site, bridge) -> None:
    """Weekly with ``max_reminders`` 1: one reminder in all (docs/campaigns.md), not one a week."""
    site.user(10, lastaccess=NOW - 40 * DAY)
    site.user(11, lastaccess=NOW - 40 * DAY)
    cid = create(bridge, site.engine, rule(cadence={"every_days": 7, "max_reminders": 1}, start=NOW))
    first = run_campaign(site.engine, bridge["repo"], bridge["config"], cid, at=NOW, actor="test")
    assert (first.cycle, first.pending) == (0, 2)
    for week in (1, 2):
        at = NOW + week * 7 * DAY
        assert audience_count(site.engine, bridge["repo"], bridge["config"], cid, at=at) == 0
        later = run_campaign(site.engine, bridge["repo"], bridge["config"], cid, at=at, actor="test")
        assert (later.cycle, later.audience, later.jobid) == (week, 0, None)


def test_once_per_cycle_capped_and_paused(site: Site, bridge) -> None:
    site.user(10, lastaccess=NOW - 40 * DAY)
    cid = create(bridge, site.engine, rule(cadence={"every_days": 7, "max_reminders": 2}, start=NOW))
    assert audience_count(site.engine, bridge["repo"], bridge["config"], cid, at=NOW) == 1
    first = run_campaign(site.engine, bridge["repo"], bridge["config"], cid, at=NOW, actor="test")
    assert (first.cycle, first.audience, first.pending) == (0, 1, 1)
    again = run_campaign(site.engine, bridge["repo"], bridge["config"], cid, at=NOW + DAY, actor="test")
    assert (again.audience, again.jobid) == (0, None)  # same cycle: the ledger has the user
    assert audience_count(site.engine, bridge["repo"], bridge["config"], cid, at=NOW + 7 * DAY) == 1
    second = run_campaign(site.engine, bridge["repo"], bridge["config"], cid, at=NOW + 7 * DAY, actor="test")
    assert (second.cycle, second.pending) == (1, 1)
    assert audience_count(site.engine, bridge["repo"], bridge["config"], cid, at=NOW + 7 * DAY) == 0
    assert audience_count(site.engine, bridge["repo"], bridge["config"], cid, at=NOW + 14 * DAY) == 0  # cap
    third = run_campaign(site.engine, bridge["repo"], bridge["config"], cid, at=NOW + 14 * DAY, actor="test")
    assert third.audience == 0  # max_reminders reached
    with site.engine.begin() as conn:
        assert bridge["campaigns"].ledger_counts(conn, cid) == {0: 1, 1: 1}
        bridge["campaigns"].set_status(conn, cid, PAUSED, NOW)
    with pytest.raises(CampaignError, match="is paused"):
        run_campaign(site.engine, bridge["repo"], bridge["config"], cid, at=NOW + 21 * DAY, actor="test")


def test_a_run_killed_before_its_commit_leaves_nothing_and_the_next_run_sends_once(
    site: Site, bridge
) -> None:
    for uid in (10, 11, 12):
        site.user(uid, lastaccess=NOW - 40 * DAY)
    cid = create(bridge, site.engine, rule())
    repo = bridge["repo"]
    with (
        mock.patch.object(CampaignRepo, "record_ledger", side_effect=SystemExit("bridge killed")),
        pytest.raises(SystemExit),
    ):
        run_campaign(site.engine, repo, bridge["config"], cid, at=NOW, actor="test")
    with site.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(repo.t.jobs)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(repo.t.campaign_ledger)).scalar() == 0
    report = run_campaign(site.engine, repo, bridge["config"], cid, at=NOW, actor="test")
    assert report.pending == 3
    assert run_campaign(site.engine, repo, bridge["config"], cid, at=NOW + 60, actor="test").jobid is None
    with site.engine.connect() as conn:
        per_user = conn.execute(
            sa.select(repo.t.recipients.c.userid, sa.func.count()).group_by(repo.t.recipients.c.userid)
        ).all()
    assert sorted(per_user) == [(10, 1), (11, 1), (12, 1)]


def test_managers_get_their_copy_and_unsubscribes_stop_campaigns_only(site: Site, bridge, aws) -> None:
    site.user(10, department=101, lastaccess=NOW - 40 * DAY)
    site.user(11, lastaccess=NOW - 40 * DAY)
    site.user(30, lastaccess=NOW, managertype=1)  # company manager
    site.user(31, department=101, lastaccess=NOW, managertype=2)  # Sales department manager
    repo = bridge["repo"]
    with site.engine.begin() as conn:
        record_suppressions(conn, repo.t, [(1, "U11@example.com", "unsubscribe")], source="test", now=NOW)
    cid = create(bridge, site.engine, rule(recipients="both"))
    report = run_campaign(site.engine, repo, bridge["config"], cid, at=NOW, actor="test")
    assert report.jobid is not None
    assert recipients_of(site.engine, repo, report.jobid) == [
        ("u10@example.com", "pending", None),
        ("u11@example.com", "skipped", "suppressed_unsubscribe"),
        ("u30@example.com", "pending", None),  # company manager, for learner 10
        ("u30@example.com", "pending", None),  # company manager, for learner 11
        ("u31@example.com", "pending", None),  # Sales manager, for learner 10 only
    ]

    submitted = Outbox(site.engine, repo, bridge["config"], build_submitters(bridge["config"])).submit_due()
    assert submitted.submitted == 1
    [batch] = drain(aws)
    assert batch["category"] == "campaign"
    roots = bridge["config"].keys.root_secrets()
    for entry in batch["recipients"]:
        token = entry["unsubscribe_url"].rsplit("/", 1)[1]
        assert entry["unsubscribe_url"].startswith("https://api.example.com/v1/unsubscribe/")
        named = verify_token(token, roots)
        assert (named.company_id, named.recipient_id, named.campaign_id) == (
            1,
            entry["recipient_id"],
            f"job{report.jobid}",
        )
    assert json.loads(json.dumps(batch))["recipients"][0]["data"]["role"] in ("user", "manager")


def test_transactional_mail_is_not_suppressed_by_an_unsubscribe(site: Site, bridge) -> None:
    from moodle_bridge.pipeline.jobs import PlannedRecipient, skip_suppressed

    repo = bridge["repo"]
    with site.engine.begin() as conn:
        record_suppressions(conn, repo.t, [(1, "a@example.com", "unsubscribe")], source="test", now=NOW)
        record_suppressions(conn, repo.t, [(1, "b@example.com", "unsubscribe")], source="test", now=NOW)
        record_suppressions(conn, repo.t, [(1, "b@example.com", "bounce")], source="test", now=NOW)
        planned = [PlannedRecipient(f"k{a}", "user", f"{a}@example.com") for a in "abc"]
        assert skip_suppressed(conn, repo, 1, planned) == 1  # b bounced since: stops everything
        assert [p.status for p in planned] == ["pending", "skipped", "pending"]
        planned = [PlannedRecipient(f"k{a}", "user", f"{a}@example.com") for a in "abc"]
        assert skip_suppressed(conn, repo, 1, planned, category="campaign") == 2


def test_the_cli_creates_previews_runs_and_pauses_a_campaign(tmp_path, monkeypatch, capsys, aws) -> None:
    from moodle_bridge.cli import main
    from tests.bridge.conftest import PASSWORD_KEY

    url = f"sqlite:///{tmp_path / 'moodle.sqlite3'}"
    site = Site(sa.create_engine(url))
    site.user(10, lastaccess=NOW - 400 * DAY)
    site.engine.dispose()
    for key, value in {
        "MRCO_DATABASE_URL": url,
        "MRCO_KEYSETS": "k1=" + "A" * 43,
        "MRCO_KEYSET_CURRENT": "k1",
        "MRCO_SENDER_ADDRESS": "noreply@example.com",
        "MRCO_PASSWORD_KEY": PASSWORD_KEY,
        "MRCO_JOBS_QUEUE_URL": aws["jobs"],
        "MRCO_AWS_REGION": "eu-west-1",
        "MRCO_UNSUBSCRIBE_URL_BASE": "https://api.example.com/v1/unsubscribe",
    }.items():
        monkeypatch.setenv(key, value)
    assert main(["migrate"]) == 0
    assert main(["company", "set", "1", "--cloud", "on"]) == 0
    assert main(["company", "global", "on"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rule(recipients="nobody")))
    assert main(["campaigns", "create", "--company", "1", "--name", "x", "--rule", str(bad)]) == 1
    assert "recipients must be one of" in capsys.readouterr().err
    good = tmp_path / "rule.json"
    good.write_text(json.dumps(rule()))
    assert main(["campaigns", "create", "--company", "1", "--name", "Come back", "--rule", str(good)]) == 0
    capsys.readouterr()
    assert main(["campaigns", "preview", "1"]) == 0
    out = capsys.readouterr().out
    assert "audience now: 1 users" in out and "Subject: We miss you, First10" in out
    assert main(["campaigns", "run-now", "1"]) == 0
    assert "job 1 with 1 recipients (1 to send" in capsys.readouterr().out
    assert main(["campaigns", "run-due"]) == 0
    assert "no campaign is due" in capsys.readouterr().out  # it ran less than an hour ago
    assert main(["campaigns", "pause", "1"]) == 0
    assert main(["campaigns", "run-now", "1"]) == 1
    assert "is paused" in capsys.readouterr().err
    assert main(["campaigns", "list"]) == 0
    assert "paused" in capsys.readouterr().out
    # edit: validated as at create; a refused rule changes nothing.
    assert main(["campaigns", "edit", "1", "--rule", str(bad)]) == 1
    assert "recipients must be one of" in capsys.readouterr().err
    assert main(["campaigns", "edit", "1"]) == 1
    assert "--name and/or --rule" in capsys.readouterr().err
    assert main(["campaigns", "edit", "1", "--name", "  Come   back soon "]) == 0
    assert "campaign 1 changed" in capsys.readouterr().out
    assert main(["campaigns", "show", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "Come back soon" and shown["rule"]["recipients"] == "user"
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        actions = [
            a for (a,) in conn.execute(sa.text("SELECT action FROM mdl_mrcloud_audit_log ORDER BY id"))
        ]
    engine.dispose()
    assert [a for a in actions if a.startswith("campaign")] == [
        "campaign_created",
        "campaign_run",
        "campaign_paused",
        "campaign_updated",
    ]
