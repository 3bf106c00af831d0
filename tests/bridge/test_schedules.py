"""Schedules: report and campaign schedules fired once per slot from the tick / service, their
reports (read-only over Moodle's tables), files by reference in S3, the ManiReports table, and
the CLI, on SQLite, MariaDB and PostgreSQL (AWS in moto)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import zipfile
from dataclasses import replace
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa

from moodle_bridge.commands.tick import attachment_uploader, build_submitters
from moodle_bridge.config import AwsConfig
from moodle_bridge.pipeline.outbox import Outbox
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.campaigns.rules import DAY, parse_rule
from moodle_bridge.sources.schedules import reports
from moodle_bridge.sources.schedules.runner import (
    ScheduleError,
    attachment_key,
    create_schedule,
    preview_schedule,
    run_due,
    run_schedule,
)
from moodle_bridge.storage import manireports
from moodle_bridge.storage.campaign_repo import CampaignRepo
from moodle_bridge.storage.migrations import migrate
from moodle_bridge.storage.schedule_repo import ScheduleRepo
from moodle_bridge.storage.types import ID
from offload_contract import validate
from tests.bridge.conftest import drain, make_config
from tests.bridge.test_campaigns import COURSE, TEMPLATE, Site

BUCKET = "offload-contents"
LONDON = "Europe/London"
#: Monday 1 June 2026, 12:00 UTC (13:00 in London, BST).
T0 = int(dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC).timestamp())
#: The first daily 07:00 London slot after T0: Tuesday 2 June 06:00 UTC.
SLOT1 = int(dt.datetime(2026, 6, 2, 6, tzinfo=dt.UTC).timestamp())


@pytest.fixture
def site(db_engine: sa.Engine) -> Site:
    return Site(db_engine)


@pytest.fixture
def bridge(site: Site, db_url: Any, repo: Any, aws: dict[str, Any]) -> dict[str, Any]:
    import boto3

    migrate(site.engine, "mdl_")
    s3 = boto3.client("s3", region_name="eu-west-1")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    base = make_config(db_url)
    config = replace(
        base,
        aws=replace(
            AwsConfig(),
            jobs_queue_url=aws["jobs"],
            certificates_queue_url=aws["certificates"],
            content_bucket=BUCKET,
            region="eu-west-1",
        ),
        submit=replace(base.submit, unsubscribe_url_base="https://api.example.com/v1/unsubscribe"),
    )
    with site.engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
    return {"config": config, "repo": repo, "s3": s3, "upload": attachment_uploader(config, s3_client=s3)}


def report_values(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "companyid": 1,
        "name": "Weekly completions",
        "action_type": "report",
        "cloud_preference": "auto",
        "frequency": "daily",
        "custom_interval": 0,
        "timeofday": 7 * 60,
        "timezone": LONDON,
        "startdate": "2026-06-01",
        "report": "completions",
        "format": "xlsx",
        "reportdays": 7,
        "skipifempty": True,
    }
    values.update(changes)
    return values


def create(bridge: dict[str, Any], engine: sa.Engine, **changes: Any) -> int:
    with engine.begin() as conn:
        return create_schedule(conn, bridge["repo"], report_values(**changes), actor="test", at=T0)


def people(site: Site) -> None:
    """Manager 30 of company 1; learners 10, 11 completed in the last week, 12 three weeks ago,
    20 (company 2) last week; 14 enrolled 30 days ago and never started."""
    site.user(30, managertype=1, lastaccess=T0)
    for uid, company in ((10, 1), (11, 1), (12, 1), (14, 1), (20, 2)):
        site.user(uid, company=company, lastaccess=T0)
    site.enrol(10, T0 - 60 * DAY, started=T0 - 50 * DAY, done=T0 - 2 * DAY)
    site.enrol(11, T0 - 60 * DAY, started=T0 - 50 * DAY, done=T0 - 1 * DAY)
    site.enrol(12, T0 - 60 * DAY, started=T0 - 50 * DAY, done=T0 - 21 * DAY)
    site.enrol(20, T0 - 60 * DAY, started=T0 - 50 * DAY, done=T0 - 1 * DAY)
    site.enrol(14, T0 - 30 * DAY)


def xlsx_text(body: bytes) -> str:
    """Every string of an .xlsx workbook (shared strings and inline strings), joined."""
    with zipfile.ZipFile(io.BytesIO(body)) as book:
        names = [n for n in book.namelist() if n.endswith(".xml")]
        return " ".join(book.read(n).decode("utf-8") for n in names)


def jobs_of(engine: sa.Engine, repo: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(repo.t.jobs).order_by(repo.t.jobs.c.id)).all())


def test_a_report_fires_once_per_slot_with_its_file_by_reference(site: Site, bridge, aws) -> None:
    people(site)
    repo, engine = bridge["repo"], site.engine
    sid = create(bridge, engine)
    assert run_due(engine, repo, bridge["config"], at=T0, upload=bridge["upload"]) == []  # not due yet
    [fired] = run_due(engine, repo, bridge["config"], at=SLOT1 + 60, upload=bridge["upload"])
    assert (fired.outcome, fired.slot, fired.rows, fired.recipients) == ("queued", SLOT1, 2, 1)
    # The period ends at the slot: 10 and 11 completed in the 7 days before it; 12 too long ago,
    # 20 in another company.
    with engine.connect() as conn:
        row = ScheduleRepo(repo.t).get(conn, sid)
    stored = bridge["s3"].get_object(Bucket=BUCKET, Key=attachment_key(row, SLOT1))
    body = stored["Body"].read()
    assert stored["ServerSideEncryption"] == "aws:kms"
    text = xlsx_text(body)
    assert "First10" in text and "First11" in text and "First12" not in text and "First20" not in text

    # Fired: the same pass again, a second bridge with a stale view, a restart: never twice.
    assert run_due(engine, repo, bridge["config"], at=SLOT1 + 120, upload=bridge["upload"]) == []
    with engine.begin() as conn:
        ScheduleRepo(repo.t).set_next(conn, sid, lastslot=None, nextrun=SLOT1)
        conn.execute(repo.t.schedules.update().values(lastslot=None))
    again = run_schedule(
        engine, repo, bridge["config"], sid, at=SLOT1 + 180, actor="b2", upload=bridge["upload"]
    )
    assert again.outcome == "already_fired"
    assert len(jobs_of(engine, repo)) == 1

    submitted = Outbox(engine, repo, bridge["config"], build_submitters(bridge["config"])).submit_due()
    assert submitted.submitted == 1
    [batch] = drain(aws)
    validate("email_batch", batch)
    [recipient] = batch["recipients"]
    assert recipient["to"] == "u30@example.com" and batch["category"] == "transactional"
    [attachment] = recipient["attachments"]
    assert attachment["ref"] == {
        "store": "s3",
        "bucket": BUCKET,
        "key": attachment_key(row, SLOT1),
        "sha256": hashlib.sha256(body).hexdigest(),
        "bytes": len(body),
        "content_type": reports.CONTENT_TYPES["xlsx"],
    }
    assert attachment["filename"] == "completions-2026-06-02.xlsx"
    assert len(json.dumps(batch)) < len(body) + 4000  # the file is named, never carried
    assert recipient["data"]["rows"] == 2

    # Down for four days: the latest missed slot fires once, the three before it are skipped.
    with engine.begin() as conn:  # as the first run left it (the stale-view check above reset it)
        ScheduleRepo(repo.t).set_next(conn, sid, lastslot=SLOT1, nextrun=SLOT1 + DAY)
    [late] = run_due(engine, repo, bridge["config"], at=SLOT1 + 4 * DAY + 60, upload=bridge["upload"])
    assert (late.outcome, late.slot) == ("queued", SLOT1 + 4 * DAY)
    assert "3 earlier missed slot(s) skipped" in late.notes[0]
    assert run_due(engine, repo, bridge["config"], at=SLOT1 + 4 * DAY + 120, upload=bridge["upload"]) == []


def test_dont_send_if_empty_routing_and_a_failing_bucket(site: Site, bridge) -> None:
    site.user(30, managertype=1, lastaccess=T0)
    repo, engine, config = bridge["repo"], site.engine, bridge["config"]
    empty = create(bridge, engine)
    sent_empty = create(bridge, engine, skipifempty=False, format="csv")
    reports_ = {r.scheduleid: r for r in run_due(engine, repo, config, at=SLOT1, upload=bridge["upload"])}
    assert reports_[empty].outcome == "empty" and reports_[empty].jobid is None
    assert reports_[sent_empty].outcome == "queued"
    csv_body = bridge["s3"].get_object(
        Bucket=BUCKET, Key=f"contents/company-1/schedule-{sent_empty}/{SLOT1}.csv"
    )
    assert csv_body["Body"].read().decode() == "user id,first name,last name,email,course,completed\r\n"

    # auto follows the company's threshold; cloud forces the cloud past it.
    with engine.begin() as conn:
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, threshold=5), "test")
    auto = create(bridge, engine, skipifempty=False)
    forced = create(bridge, engine, skipifempty=False, cloud_preference="cloud")
    reports_ = {r.scheduleid: r for r in run_due(engine, repo, config, at=SLOT1, upload=bridge["upload"])}
    assert reports_[auto].outcome == "not_sent" and "below_threshold" in reports_[auto].notes[0]
    assert reports_[forced].outcome == "queued"

    # No bucket: the run fails, records nothing, and is tried again later (not every pass).
    broken = create(bridge, engine, skipifempty=False, cloud_preference="cloud")
    no_bucket = replace(config, aws=replace(config.aws, content_bucket=""))
    [failed] = run_due(engine, repo, no_bucket, at=SLOT1, upload=None)
    assert failed.scheduleid == broken and failed.outcome == "failed"
    assert "content bucket" in failed.notes[0]
    assert run_due(engine, repo, config, at=SLOT1 + 60, upload=bridge["upload"]) == []
    [retried] = run_due(engine, repo, config, at=SLOT1 + 901, upload=bridge["upload"])
    assert (retried.scheduleid, retried.outcome, retried.slot) == (broken, "queued", SLOT1)

    # cloud that cannot reach the cloud is not sent (never silently Moodle's own mail).
    with engine.begin() as conn:
        repo.save_settings(conn, CompanySettings(1, cloudenabled=False), "test")
    cloud_only = create(bridge, engine, skipifempty=False, cloud_preference="cloud")
    ran = {r.scheduleid: r for r in run_due(engine, repo, config, at=SLOT1 + DAY, upload=bridge["upload"])}
    assert ran[cloud_only].outcome == "not_sent"
    assert (
        "cloud_preference cloud, but not routed to the cloud (company_cloud_disabled)"
        in ran[cloud_only].notes[0]
    )


def test_a_run_killed_before_its_commit_leaves_nothing_and_fires_once_after(site: Site, bridge) -> None:
    people(site)
    repo, engine = bridge["repo"], site.engine
    sid = create(bridge, engine)
    with (
        mock.patch("moodle_bridge.pipeline.jobs.add_recipients", side_effect=KeyboardInterrupt),
        pytest.raises(KeyboardInterrupt),
    ):
        run_due(engine, repo, bridge["config"], at=SLOT1, upload=bridge["upload"])
    assert jobs_of(engine, repo) == []
    with engine.connect() as conn:
        assert ScheduleRepo(repo.t).runs(conn, sid) == []
    [fired] = run_due(engine, repo, bridge["config"], at=SLOT1 + 30, upload=bridge["upload"])
    assert fired.outcome == "queued" and len(jobs_of(engine, repo)) == 1


def test_the_other_reports_read_moodle_and_the_bridge(site: Site, bridge) -> None:
    people(site)
    repo, engine = bridge["repo"], site.engine
    with engine.begin() as conn:
        conn.execute(
            site.t["companylicense"].insert(),
            [
                {"id": 5, "name": "Safety seats", "companyid": 1, "expirydate": T0 + 10 * DAY},
                {"id": 6, "name": "Later", "companyid": 1, "expirydate": T0 + 90 * DAY},
            ],
        )
        conn.execute(
            site.t["companylicense_users"].insert(),
            [
                {"licenseid": 5, "userid": 14, "licensecourseid": COURSE},
                {"licenseid": 6, "userid": 10, "licensecourseid": COURSE},
            ],
        )
    not_started = create(bridge, engine, report="not_started", reportdays=14, format="csv")
    expiring = create(bridge, engine, report="licences_expiring", reportdays=30, format="csv")
    runs = {
        r.scheduleid: r for r in run_due(engine, repo, bridge["config"], at=SLOT1, upload=bridge["upload"])
    }
    assert runs[not_started].rows == 1 and runs[expiring].rows == 1

    def body(sid: int, slot: int = SLOT1) -> str:
        key = f"contents/company-1/schedule-{sid}/{slot}.csv"
        return str(bridge["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read().decode())

    assert "First14" in body(not_started) and "First10" not in body(not_started)
    assert "2026-05-02 13:00" in body(not_started)  # enrolled T0 - 30 days, in London time
    assert "Safety seats" in body(expiring) and "First14" in body(expiring) and "Later" not in body(expiring)

    # The mail the offload sent: the two report jobs above, one manager each, as queued now.
    with engine.begin() as conn:
        conn.execute(
            repo.t.recipients.update().where(repo.t.recipients.c.jobid == 1).values(status="delivered")
        )
        conn.execute(
            repo.t.recipients.update()
            .where(repo.t.recipients.c.jobid == 2)
            .values(status="bounced", errorcode="Permanent")
        )
    sent = create(bridge, engine, report="mail_sent", reportdays=7, format="csv", timeofday=8 * 60)
    [ran] = run_due(engine, repo, bridge["config"], at=SLOT1 + 3600, upload=bridge["upload"])
    assert (ran.scheduleid, ran.rows) == (sent, 2)
    lines = body(sent, SLOT1 + 3600).splitlines()
    assert [line.split(",")[4:] for line in lines[1:]] == [["sent", ""], ["bounced", "Permanent"]]


def test_report_cells_that_a_spreadsheet_would_run_are_neutralised() -> None:
    table = reports.ReportTable(("name",), [("=HYPERLINK(1)",), ("@x",), ("plain",)])
    assert reports.render(table, "csv").decode().splitlines() == ["name", "'=HYPERLINK(1)", "'@x", "plain"]
    assert "<f>" not in xlsx_text(reports.render(table, "xlsx"))  # never a formula cell


def test_an_email_schedule_runs_its_campaign_with_the_schedule_suppressions(site: Site, bridge) -> None:
    repo, engine = bridge["repo"], site.engine
    site.user(10, lastaccess=T0 - 400 * DAY)
    site.user(11, lastaccess=T0 - 400 * DAY)
    site.complete_module(11, 415)
    rule = parse_rule({"trigger": {"kind": "inactive_site", "days": 30}, "template": TEMPLATE})
    with engine.begin() as conn:
        cid = CampaignRepo(repo.t).create(
            conn, companyid=1, name="nudge", rule_json=rule.to_json(), actor="test", at=T0
        )
    sid = create(bridge, engine, action_type="email", campaignid=cid, report=None, suppresstarget=415)
    [fired] = run_due(engine, repo, bridge["config"], at=SLOT1, upload=bridge["upload"])
    assert (fired.outcome, fired.rows, fired.recipients) == ("queued", 1, 1)  # 11 completed cm 415
    with engine.connect() as conn:
        [run] = ScheduleRepo(repo.t).runs(conn, sid)
    assert (run.slot, run.outcome, run.jobid) == (SLOT1, "queued", fired.jobid)


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"action_type": "certificate", "report": None}, "needs --course"),
    ({"action_type": "certificate", "report": None, "courseid": 2, "cohortid": 0}, "cohort must be"),
    ({"action_type": "certificate", "courseid": 2}, "has no campaign and no report"),
    ({"courseid": 2}, "--course and --cohort belong to action_type certificate"),
    ({"action_type": "certificate", "report": None, "courseid": 2, "companyid": 2}, "AWS only"),
    (
        {"action_type": "certificate", "report": None, "courseid": 2, "cloud_preference": "local"},
        "local cannot issue certificates: they are rendered in the cloud",
    ),
    ({"report": "everything"}, "report must be one of"),
    ({"format": "pdf"}, "format must be one of"),
    ({"reportdays": 0}, "report days must be between"),
    ({"frequency": "custom"}, "custom_interval must be between"),
    ({"timezone": "Nowhere/Else"}, "not an IANA time zone"),
    ({"startdate": "June"}, "YYYY-MM-DD"),
    ({"action_type": "email", "report": None}, "needs --campaign"),
    ({"action_type": "email", "report": None, "campaignid": 99}, "campaign 99 does not exist"),
    ({"companyid": 9}, "company 9 has no settings"),
    ({"name": "  "}, "--name must not be empty"),
]


def test_a_schedule_that_cannot_run_is_refused_at_create_naming_the_field(site: Site, bridge) -> None:
    with site.engine.begin() as conn:
        bridge["repo"].save_settings(conn, CompanySettings(2, cloudenabled=True, provider="cloudflare"), "t")
    for changes, message in REFUSED:
        with pytest.raises(ScheduleError, match=message):
            create(bridge, site.engine, **changes)
    with site.engine.connect() as conn:
        assert ScheduleRepo(bridge["repo"].t).list(conn) == []


def test_the_manireports_table_is_extended_and_read(db_engine: sa.Engine) -> None:
    """A site with ManiReports: migrate adds the plan's five columns; its rows are read."""
    meta = sa.MetaData()
    table = sa.Table(
        "mdl_manireports_schedules",
        meta,
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("userid", sa.BigInteger, nullable=False, server_default="2"),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("reporttype", sa.String(100), nullable=False, server_default="course_completion"),
        sa.Column("format", sa.String(10), nullable=False, server_default="csv"),
        sa.Column("frequency", sa.String(20), nullable=False, server_default="daily"),
        sa.Column("enabled", sa.SmallInteger, nullable=False, server_default="1"),
        sa.Column("lastrun", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("nextrun", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("timecreated", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("timemodified", sa.BigInteger, nullable=False, server_default="0"),
    )
    meta.create_all(db_engine)
    with db_engine.begin() as conn:
        conn.execute(table.insert(), [{"name": "Completions", "format": "xlsx", "frequency": "weekly"}])
    migrate(db_engine, "mdl_")
    with db_engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("mdl_manireports_schedules")}
        assert {c for c, _, _ in manireports.PLAN_COLUMNS} <= columns
        [row] = manireports.read(conn, "mdl_")
    assert (row.name, row.format, row.frequency, row.cloud_preference, row.action_type) == (
        "Completions",
        "xlsx",
        "weekly",
        "auto",
        "email",
    )
    assert (row.custom_interval, row.suppresstarget, row.suppress_course_completion) == (0, 0, False)
    with db_engine.begin() as conn:
        assert manireports.extend(conn, "mdl_") == []  # idempotent


def test_the_service_loop_fires_due_schedules(site: Site, bridge) -> None:
    from moodle_bridge.service import Service

    people(site)
    engine = site.engine
    create(bridge, engine)
    service = Service(
        engine,
        bridge["config"],
        submitters=build_submitters(bridge["config"]),
        report_upload=bridge["upload"],
        clock=lambda: SLOT1 + 5,
    )
    first = service.pass_once(reconcile_now=True)
    assert [r.outcome for r in first.schedules] == ["queued"] and first.busy
    assert first.outbox is not None and first.outbox.submitted == 1  # submitted in the same pass
    assert service.pass_once(reconcile_now=True).schedules == []


def test_preview_shows_what_would_be_sent_and_sends_nothing(site: Site, bridge) -> None:
    people(site)
    repo, engine = bridge["repo"], site.engine
    sid = create(bridge, engine)
    found = preview_schedule(engine, repo, bridge["config"], sid, at=SLOT1)
    assert found.count == 2 and found.recipients == ["u30@example.com"]
    assert found.sample is not None and found.sample["subject"].startswith("Weekly completions: 2 rows")
    assert "Hello First30" in found.sample["text"]
    assert jobs_of(engine, repo) == []
    with engine.connect() as conn:
        assert ScheduleRepo(repo.t).runs(conn, sid) == []


def test_the_cli_creates_lists_previews_runs_pauses_and_imports(tmp_path, monkeypatch, capsys, aws) -> None:
    import boto3

    from moodle_bridge.cli import main
    from tests.bridge.conftest import PASSWORD_KEY

    url = f"sqlite:///{tmp_path / 'moodle.sqlite3'}"
    site = Site(sa.create_engine(url))
    people(site)
    meta = sa.MetaData()
    plugin = sa.Table(
        "mdl_manireports_schedules",
        meta,
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("userid", sa.BigInteger, nullable=False, server_default="2"),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("reporttype", sa.String(100), nullable=False),
        sa.Column("format", sa.String(10), nullable=False, server_default="csv"),
        sa.Column("frequency", sa.String(20), nullable=False, server_default="daily"),
        sa.Column("enabled", sa.SmallInteger, nullable=False, server_default="1"),
    )
    meta.create_all(site.engine)
    with site.engine.begin() as conn:
        conn.execute(
            plugin.insert(),
            [
                {"name": "Plugin completions", "reporttype": "course_completion"},
                {"name": "SCORM", "reporttype": "scorm_summary"},
            ],
        )
        conn.execute(
            site.t["company"].update().where(site.t["company"].c.id == 1).values(timezone="Asia/Tokyo")
        )
    site.engine.dispose()
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    for key, value in {
        "MRCO_DATABASE_URL": url,
        "MRCO_KEYSETS": "k1=" + "A" * 43,
        "MRCO_KEYSET_CURRENT": "k1",
        "MRCO_SENDER_ADDRESS": "noreply@example.com",
        "MRCO_PASSWORD_KEY": PASSWORD_KEY,
        "MRCO_JOBS_QUEUE_URL": aws["jobs"],
        "MRCO_AWS_REGION": "eu-west-1",
        "MRCO_CONTENT_BUCKET": BUCKET,
    }.items():
        monkeypatch.setenv(key, value)
    assert main(["migrate"]) == 0
    assert main(["company", "set", "1", "--cloud", "on"]) == 0
    assert main(["company", "global", "on"]) == 0
    capsys.readouterr()
    create_args = ["schedules", "create", "--company", "1", "--report", "completions", "--days", "3650"]
    assert main([*create_args, "--name", "All completions", "--format", "xlsx", "--time", "06:30"]) == 0
    out = capsys.readouterr().out
    assert "schedule 1 created (active), daily at 06:30 Asia/Tokyo" in out  # the company's zone
    assert main([*create_args, "--name", "x", "--timezone", "Mars/Base"]) == 1
    assert "not an IANA time zone" in capsys.readouterr().err
    assert main(["schedules", "create", "--company", "1", "--from-manireports", "2"]) == 1
    assert "'scorm_summary' has no bridge report" in capsys.readouterr().err
    assert (
        main(["schedules", "create", "--company", "1", "--from-manireports", "1", "--action", "report"]) == 1
    )
    # The plugin row's action_type (default email) wins, and an email schedule needs a campaign.
    assert "an email schedule needs --campaign" in capsys.readouterr().err
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mdl_manireports_schedules SET action_type = 'report' WHERE id = 1"))
    assert main(["schedules", "create", "--company", "1", "--from-manireports", "1"]) == 0
    assert "schedule 2 created" in capsys.readouterr().out
    assert main(["schedules", "list"]) == 0
    out = capsys.readouterr().out
    assert "All completions" in out and "Plugin completions" in out
    assert "manireports_schedules 2: SCORM (scorm_summary" in out

    assert main(["schedules", "preview", "1"]) == 0
    out = capsys.readouterr().out
    assert "would send now: 3 rows" in out and "recipients: 1" in out and "To: u30@example.com" in out
    assert "Attachment: completions.xlsx: 3 rows" in out
    assert main(["schedules", "run-now", "1"]) == 0
    assert "queued, job 1 with 1 recipients (3 rows)" in capsys.readouterr().out
    assert main(["schedules", "pause", "1"]) == 0
    assert main(["schedules", "run-now", "1"]) == 1
    assert "is paused" in capsys.readouterr().err
    assert main(["schedules", "resume", "1"]) == 0
    capsys.readouterr()
    assert main(["schedules", "show", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "active" and shown["runs"][-1]["outcome"] == "queued"
    with engine.connect() as conn:
        actions = [
            a for (a,) in conn.execute(sa.text("SELECT action FROM mdl_mrcloud_audit_log ORDER BY id"))
        ]
        linked = conn.execute(
            sa.text("SELECT manireportsid, report FROM mdl_mrcloud_schedules WHERE id = 2")
        ).one()
    engine.dispose()
    assert [a for a in actions if a.startswith("schedule")] == [
        "schedule_created",
        "schedule_created",
        "schedule_run",
        "schedule_paused",
        "schedule_resumed",
    ]
    assert tuple(linked) == (1, "completions")

    # A certificate schedule: every completion of course 2 in company 1 (10, 11, 12).
    certificates = ["schedules", "create", "--company", "1", "--action", "certificate", "--name", "Certs"]
    assert main([*certificates, "--course", "2"]) == 0
    assert "schedule 3 created" in capsys.readouterr().out
    assert main(["schedules", "preview", "3"]) == 0
    out = capsys.readouterr().out
    assert "would send now: 3 users" in out and "Subject: Your certificate: Safety 101" in out
    assert main([*certificates, "--course", "2", "--cohort", "0"]) == 1
    assert "cohort must be a cohort id" in capsys.readouterr().err
    assert main([*certificates, "--course", "2", "--cloud", "local"]) == 1
    assert "local cannot issue certificates" in capsys.readouterr().err

    # cloud_preference local: Moodle's own mail through IOMAD's queue, the file under the dataroot.
    assert main([*create_args, "--name", "Local completions", "--cloud", "local"]) == 0
    assert "schedule 4 created" in capsys.readouterr().out
    assert main(["schedules", "run-now", "4"]) == 0
    assert "not_sent (3 rows); kept local (cloud_preference local); a report" in capsys.readouterr().out
    (tmp_path / "moodledata").mkdir()
    monkeypatch.setenv("MRCO_MOODLE_DATAROOT", str(tmp_path / "moodledata"))
    assert main([*create_args, "--name", "Local completions 2", "--cloud", "local"]) == 0
    assert "schedule 5 created" in capsys.readouterr().out
    assert main(["schedules", "run-now", "5"]) == 0
    out = capsys.readouterr().out
    assert "queued_local, 1 rows in IOMAD's queue for Moodle's own mail (3 rows)" in out


def test_report_mail_skips_bounced_managers_but_not_campaign_unsubscribes(site: Site, bridge) -> None:
    from moodle_bridge.results.suppression import record_suppressions

    people(site)
    site.user(31, managertype=1, lastaccess=T0)
    repo, engine = bridge["repo"], site.engine
    with engine.begin() as conn:
        record_suppressions(
            conn,
            repo.t,
            [(1, "u30@example.com", "bounce"), (1, "u31@example.com", "unsubscribe")],
            source="t",
            now=T0,
        )
    create(bridge, engine)
    [fired] = run_due(engine, repo, bridge["config"], at=SLOT1, upload=bridge["upload"])
    r = repo.t.recipients
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(r.c.address, r.c.status).where(r.c.jobid == fired.jobid).order_by(r.c.address)
        )
        assert [tuple(x) for x in rows] == [("u30@example.com", "skipped"), ("u31@example.com", "pending")]


def test_a_report_over_the_row_cap_is_cut_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "MAX_ROWS", 2)
    table = reports._table(("n",), [(1,), (2,), (3,)])
    assert table.truncated and reports.render(table, "csv").decode().splitlines() == [
        "n",
        "1",
        "2",
        "(cut at 2 rows)",
    ]


def test_the_zone_is_the_company_s_else_the_creator_s_else_the_site_s(site: Site) -> None:
    from moodle_bridge.sources.schedules.runner import resolve_timezone

    site.user(40, lastaccess=T0)
    with site.engine.begin() as conn:
        conn.execute(
            site.t["user"].update().where(site.t["user"].c.id == 40).values(timezone="America/Chicago")
        )
        assert resolve_timezone(conn, "mdl_", site.iomad, 1, None) == "UTC"  # nothing set anywhere
        conn.execute(site.t["config"].insert(), [{"name": "timezone", "value": "Europe/Madrid"}])
        assert resolve_timezone(conn, "mdl_", site.iomad, 1, None) == "Europe/Madrid"
        assert resolve_timezone(conn, "mdl_", site.iomad, 1, 40) == "America/Chicago"
        conn.execute(site.t["config"].insert(), [{"name": "forcetimezone", "value": "Asia/Kolkata"}])
        assert resolve_timezone(conn, "mdl_", site.iomad, 1, 40) == "Asia/Kolkata"
        company = site.t["company"]
        conn.execute(company.update().where(company.c.id == 1).values(timezone="Pacific/Auckland"))
        assert resolve_timezone(conn, "mdl_", site.iomad, 1, 40) == "Pacific/Auckland"
        conn.execute(company.update().where(company.c.id == 1).values(timezone="99"))
        assert resolve_timezone(conn, "mdl_", site.iomad, 1, None) == "Europe/Madrid"


def test_the_tick_fires_due_schedules_before_its_outbox(site: Site, bridge) -> None:
    import time

    from moodle_bridge.commands.tick import run_tick

    people(site)
    now = int(time.time())
    start = dt.datetime.fromtimestamp(now - 5 * DAY, dt.UTC).date().isoformat()
    with site.engine.begin() as conn:
        create_schedule(
            conn,
            bridge["repo"],
            report_values(timezone="UTC", startdate=start, timeofday=0, reportdays=3650),
            actor="test",
            at=now - 3 * DAY,
        )
    report = run_tick(site.engine, bridge["config"], claim=False, report_upload=bridge["upload"])
    assert [r.outcome for r in report.schedules] == ["queued"]
    assert report.outbox is not None and report.outbox.submitted == 1
    assert (
        run_tick(site.engine, bridge["config"], claim=False, report_upload=bridge["upload"]).schedules == []
    )


def test_two_bridges_firing_the_same_slot_at_once_send_it_once(site: Site, bridge) -> None:
    """Bridge A holds its uncommitted run row (uploading) while bridge B, which read the schedule
    before A's commit, tries to take the same slot: B waits on the unique key and gives up."""
    import threading

    people(site)
    repo, engine, config = bridge["repo"], site.engine, bridge["config"]
    sid = create(bridge, engine)
    a_holds_slot, b_taking = threading.Event(), threading.Event()
    real_take = ScheduleRepo.take_slot
    outcomes: dict[str, str] = {}

    def take_slot(self: ScheduleRepo, conn: sa.Connection, scheduleid: int, slot: int, at: int) -> int:
        if threading.current_thread().name == "bridge-b":
            b_taking.set()
        return real_take(self, conn, scheduleid, slot, at)

    def upload_a(key: str, body: bytes, content_type: str) -> None:
        a_holds_slot.set()
        b_taking.wait(30)  # an event, not a sleep: B is about to insert the same slot
        bridge["upload"](key, body, content_type)

    def bridge_a() -> None:
        outcomes["a"] = run_schedule(engine, repo, config, sid, at=SLOT1, actor="a", upload=upload_a).outcome

    def bridge_b() -> None:
        a_holds_slot.wait(30)
        outcomes["b"] = run_schedule(
            engine, repo, config, sid, at=SLOT1, actor="b", upload=bridge["upload"]
        ).outcome

    with mock.patch.object(ScheduleRepo, "take_slot", take_slot):
        threads = [
            threading.Thread(target=bridge_a, name="bridge-a"),
            threading.Thread(target=bridge_b, name="bridge-b"),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert outcomes == {"a": "queued", "b": "already_fired"}
    assert len(jobs_of(engine, repo)) == 1
    with engine.connect() as conn:
        assert [r.outcome for r in ScheduleRepo(repo.t).runs(conn, sid)] == ["queued"]


# -- cloud_preference local: Moodle's own mail path (IOMAD's queue and cron) ------------------------


def iomad_rows(site: Site) -> list[Any]:
    e = site.iomad.email
    with site.engine.connect() as conn:
        return list(conn.execute(sa.select(e).order_by(e.c.id)).all())


def iomad_cron(site: Site, sink: Any, at: int) -> Any:
    from iomad_sim.iomad_cron import run_iomad_email_cron

    return run_iomad_email_cron(
        site.engine, "mdl_", site.engine.url.database or "", sink, tables=site.iomad, now=at
    )


def iomad_queues(site: Site, template: str, userid: int, at: int) -> int:
    """A row as IOMAD's own queue_for_cron() writes it (a template in its headers)."""
    from moodle_bridge.sources.iomad.headers import serialize_headers

    e = site.iomad.email
    headers = serialize_headers({"id": 1, "companyid": 1, "name": template, "disabled": 0})
    with site.engine.begin() as conn:
        key = conn.execute(
            e.insert().values(
                templatename=template,
                modifiedtime=at,
                subject="IOMAD's own",
                body="<p>b</p>",
                varsreplaced=1,
                companyid=1,
                courseid=1,
                userid=userid,
                senderid=-20,
                headers=headers,
                due=at,
            )
        ).inserted_primary_key
    assert key is not None
    return int(key[0])


def email_schedule(site: Site, bridge: dict[str, Any], preference: str) -> int:
    repo, engine = bridge["repo"], site.engine
    site.user(10, lastaccess=T0 - 400 * DAY)
    site.user(11, lastaccess=T0 - 400 * DAY)
    rule = parse_rule({"trigger": {"kind": "inactive_site", "days": 30}, "template": TEMPLATE})
    with engine.begin() as conn:
        cid = CampaignRepo(repo.t).create(
            conn, companyid=1, name="nudge", rule_json=rule.to_json(), actor="t", at=T0
        )
    return create(
        bridge, engine, action_type="email", campaignid=cid, report=None, cloud_preference=preference
    )


def test_a_local_email_schedule_queues_rendered_rows_that_iomad_sends_once_and_the_bridge_leaves(
    site: Site, bridge
) -> None:
    from iomad_sim.smtp_sink import RecordingSmtpSink
    from moodle_bridge.pipeline.claiming import ClaimPass
    from moodle_bridge.pipeline.worker_templates import render_for_worker
    from moodle_bridge.sources.iomad.headers import parse_headers

    repo, engine, config = bridge["repo"], site.engine, bridge["config"]
    sid = email_schedule(site, bridge, "local")  # company 1 is routed to the cloud: local wins
    site.user(30, managertype=1, lastaccess=T0)  # the learners' manager: IOMAD must not copy them
    # Killed before the commit: no IOMAD row, no run, no ledger; the slot fires once afterwards.
    with (
        mock.patch.object(ScheduleRepo, "finish_run", side_effect=KeyboardInterrupt),
        pytest.raises(KeyboardInterrupt),
    ):
        run_due(engine, repo, config, at=SLOT1, upload=None)
    assert iomad_rows(site) == []
    with engine.connect() as conn:
        assert ScheduleRepo(repo.t).runs(conn, sid) == []
        assert CampaignRepo(repo.t).ledger_counts(conn, 1) == {}

    [fired] = run_due(engine, repo, config, at=SLOT1 + 30, upload=None)
    assert (fired.outcome, fired.rows, fired.recipients, fired.jobid) == ("queued_local", 2, 2, None)
    assert "cloud_preference local" in fired.notes[0] and "mdl_email" in fired.notes[0]
    rows = iomad_rows(site)
    assert [
        (r.userid, r.templatename, r.sent, r.due, r.varsreplaced, r.senderid, r.companyid) for r in rows
    ] == [(u, "mrcloud_schedule", None, SLOT1 + 30, 1, -20, 1) for u in (10, 11)]
    expected = render_for_worker(
        {"kind": "template", **TEMPLATE},
        {
            "firstname": "First10",
            "lastname": "Last10",
            "fullname": "First10 Last10",
            "email": "u10@example.com",
            "coursename": "",
            "days_inactive": 400,
            "deadline": None,
            "role": "user",
        },
    )
    assert (rows[0].subject, rows[0].body) == (expected["subject"], expected["html"])
    headers = parse_headers(rows[0].headers)
    assert headers.template is not None and headers.template.name == "mrcloud_schedule"
    assert (headers.attachment, headers.to, headers.cc, headers.template.emailto) == (None, (), (), "")
    assert jobs_of(engine, repo) == []
    with engine.connect() as conn:
        [run] = ScheduleRepo(repo.t).runs(conn, sid)
        assert (run.outcome, run.rowcount, run.jobid) == ("queued_local", 2, None)
        assert CampaignRepo(repo.t).ledger_counts(conn, 1) == {fired_cycle(repo, engine): 2}

    # A cloud-routed claim pass beside them takes IOMAD's own row and leaves the bridge's.
    own = iomad_queues(site, "license_allocated", 10, SLOT1 + 30)
    claim = ClaimPass(engine, repo, site.iomad, config, clock=lambda: SLOT1 + 60).run()
    assert (claim.considered, claim.claimed) == (1, 1)
    assert [(r.id, r.due) for r in iomad_rows(site) if r.templatename == "mrcloud_schedule"] == [
        (rows[0].id, SLOT1 + 30),
        (rows[1].id, SLOT1 + 30),
    ]

    # IOMAD's cron sends each row once, to its user only; a second cron run sends nothing more.
    sink = RecordingSmtpSink()
    ran = iomad_cron(site, sink, SLOT1 + 120)
    assert sorted(ran.sent_rows) == [rows[0].id, rows[1].id] and own not in ran.sent_rows
    assert sorted((m.email_id, m.address, m.subject) for m in sink.messages) == [
        (rows[0].id, "u10@example.com", "We miss you, First10"),
        (rows[1].id, "u11@example.com", "We miss you, First11"),
    ]
    assert iomad_cron(site, sink, SLOT1 + 420).sent_rows == [] and len(sink.messages) == 2

    # The same slot again (a second bridge, a stale view): nothing more is queued.
    with engine.begin() as conn:
        conn.execute(repo.t.schedules.update().values(lastslot=None, nextrun=SLOT1))
    again = run_schedule(engine, repo, config, sid, at=SLOT1 + 30, actor="b2", upload=None)
    assert again.outcome == "already_fired"
    assert len([r for r in iomad_rows(site) if r.templatename == "mrcloud_schedule"]) == 2


def fired_cycle(repo: Any, engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.max(repo.t.campaign_ledger.c.cycle))).scalar_one())


def test_auto_on_a_company_kept_local_goes_to_iomad_and_strict_mode_leaves_the_rows(
    site: Site, bridge
) -> None:
    from iomad_sim.smtp_sink import RecordingSmtpSink
    from moodle_bridge.sources.iomad.queries import PARKED_DUE_BASE
    from moodle_bridge.storage.strict_mode import install_strict_mode

    repo, engine, config = bridge["repo"], site.engine, bridge["config"]
    email_schedule(site, bridge, "auto")
    with engine.begin() as conn:  # cloud-enabled (strict mode parks its rows), but 2 < threshold 50
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, threshold=50), "test")
    install_strict_mode(engine, site.iomad, "mdl_")
    parked = iomad_queues(site, "license_allocated", 10, SLOT1)
    [local] = run_due(engine, repo, config, at=SLOT1, upload=None)
    assert local.outcome == "queued_local" and "below_threshold" in local.notes[0]
    ours = [r for r in iomad_rows(site) if r.templatename == "mrcloud_schedule"]
    assert [(r.userid, r.due) for r in ours] == [(10, SLOT1), (11, SLOT1)]  # the trigger left them
    assert {r.id: r.due for r in iomad_rows(site)}[parked] >= PARKED_DUE_BASE  # and parked IOMAD's own
    sink = RecordingSmtpSink()
    assert sorted(iomad_cron(site, sink, SLOT1 + 60).sent_rows) == [r.id for r in ours]
    assert sorted(m.address for m in sink.messages) == ["u10@example.com", "u11@example.com"]


def test_a_local_report_is_attached_by_iomad_from_the_dataroot_and_needs_it(
    site: Site, bridge, tmp_path
) -> None:
    import os
    import stat

    from iomad_sim.smtp_sink import RecordingSmtpSink
    from moodle_bridge.sources.iomad.headers import parse_headers
    from moodle_bridge.sources.schedules.local_reports import purge_report_files

    people(site)
    repo, engine = bridge["repo"], site.engine
    sid = create(bridge, engine, cloud_preference="local")
    empty = create(bridge, engine, cloud_preference="local", report="licences_expiring")  # no licences

    # No dataroot: not sent, the reason names the setting, nothing queued; the empty one stays empty.
    runs = {r.scheduleid: r for r in run_due(engine, repo, bridge["config"], at=SLOT1, upload=None)}
    assert runs[sid].outcome == "not_sent" and "moodle_dataroot (MRCO_MOODLE_DATAROOT" in runs[sid].notes[0]
    assert runs[empty].outcome == "empty"
    assert iomad_rows(site) == []

    # A dataroot the file cannot go into fails the run (nothing recorded), retried 15 minutes later.
    relative = replace(
        bridge["config"], database=replace(bridge["config"].database, moodle_dataroot="moodledata")
    )
    failed = {r.scheduleid: r for r in run_due(engine, repo, relative, at=SLOT1 + DAY, upload=None)}
    assert failed[sid].outcome == "failed" and "must be an absolute path" in failed[sid].notes[0]
    assert iomad_rows(site) == []

    dataroot = tmp_path / "moodledata"
    dataroot.mkdir()
    config = replace(
        bridge["config"], database=replace(bridge["config"].database, moodle_dataroot=str(dataroot))
    )
    assert failed[empty].outcome == "empty"  # don't send if empty still applies
    [fired] = run_due(engine, repo, config, at=SLOT1 + DAY + 901, upload=None)
    assert (fired.scheduleid, fired.outcome, fired.slot, fired.rows, fired.recipients) == (
        sid,
        "queued_local",
        SLOT1 + DAY,
        2,
        1,
    )
    [row] = iomad_rows(site)
    assert (row.userid, row.templatename, row.subject) == (
        30,
        "mrcloud_schedule",
        "Weekly completions: 2 rows (2026-06-03 07:00 BST)",
    )
    attachment = parse_headers(row.headers).attachment
    assert attachment is not None and attachment.filename == "completions-2026-06-03.xlsx"
    with engine.connect() as conn:
        runid = ScheduleRepo(repo.t).runs(conn, sid)[0].id
    path = dataroot / "temp" / "mrcloud_reports" / str(sid) / str(runid) / attachment.filename
    assert attachment.filepath == str(path) and os.path.isabs(attachment.filepath)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.stat().st_gid == dataroot.stat().st_gid
    body = path.read_bytes()
    assert "First10" in xlsx_text(body) and "First12" not in xlsx_text(body)

    sink = RecordingSmtpSink()
    assert iomad_cron(site, sink, SLOT1 + DAY + 960).sent_rows == [row.id]
    [mail] = sink.messages
    assert (mail.address, mail.attachment) == ("u30@example.com", attachment.filename)
    assert mail.attachment_sha256 == hashlib.sha256(body).hexdigest()

    # The same slot again queues nothing; the reconciliation pass deletes the file after 7 days.
    with engine.begin() as conn:
        conn.execute(repo.t.schedules.update().where(repo.t.schedules.c.id == sid).values(lastslot=None))
    assert (
        run_schedule(engine, repo, config, sid, at=SLOT1 + DAY, actor="b2", upload=None).outcome
        == "already_fired"
    )
    assert len(iomad_rows(site)) == 1
    written = path.stat().st_mtime
    assert purge_report_files(str(dataroot), now=written + 6 * DAY) == 0 and path.exists()
    assert purge_report_files(str(dataroot), now=written + 8 * DAY) == 1 and not path.exists()


def test_rows_an_older_strict_trigger_parks_are_handed_back_in_the_same_transaction(
    site: Site, bridge
) -> None:
    """A trigger from before the bridge queued local rows parks every cloud company's insert; the
    bridge unparks its own rows before the commit, so IOMAD's cron still sends them."""
    from iomad_sim.smtp_sink import RecordingSmtpSink
    from moodle_bridge.storage import strict_mode

    repo, engine, config = bridge["repo"], site.engine, bridge["config"]
    email_schedule(site, bridge, "local")
    current = strict_mode._condition

    def older(prefix: str, alias: str) -> str:
        return current(prefix, alias).replace(
            f" AND COALESCE({alias}.templatename, '') <> 'mrcloud_schedule'", ""
        )

    with mock.patch.object(strict_mode, "_condition", older):
        strict_mode.install_strict_mode(engine, site.iomad, "mdl_")
    parked = iomad_queues(site, "mrcloud_schedule", 10, SLOT1)  # inserted by hand: the old trigger parks it
    assert {r.id: r.due for r in iomad_rows(site)}[parked] > SLOT1 + 10**11
    [fired] = run_due(engine, repo, config, at=SLOT1, upload=None)
    assert fired.outcome == "queued_local"
    ours = [r for r in iomad_rows(site) if r.id != parked]
    assert [(r.userid, r.due) for r in ours] == [(10, SLOT1), (11, SLOT1)]
    sink = RecordingSmtpSink()
    assert sorted(iomad_cron(site, sink, SLOT1 + 60).sent_rows) == [r.id for r in ours]


def test_a_cloud_email_schedule_is_never_sent_locally(site: Site, bridge) -> None:
    repo, engine, config = bridge["repo"], site.engine, bridge["config"]
    email_schedule(site, bridge, "cloud")
    with engine.begin() as conn:
        repo.save_settings(conn, CompanySettings(1, cloudenabled=False), "test")
    [ran] = run_due(engine, repo, config, at=SLOT1, upload=None)
    assert (
        ran.outcome == "failed"
        and "not routed to the cloud for email (company_cloud_disabled)" in ran.notes[0]
    )
    assert iomad_rows(site) == [] and jobs_of(engine, repo) == []
