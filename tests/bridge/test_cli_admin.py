"""What a cron administrator sees (issue 12, item 7): one line naming the cause and the fix, a
non-zero exit when a person is needed, no tracebacks, human output by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa

from moodle_bridge.cli import main
from moodle_bridge.commands.tick import TickReport, summary
from moodle_bridge.pipeline.claiming import ClaimReport
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from tests.bridge.iomad_world import IomadWorld
from tests.bridge.test_submit_list_and_tick_cli import _write, site  # noqa: F401 - fixture

T = build_bridge_tables("mdl_")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.sqlite


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    return lines[0]


def test_version_and_commands_before_migrate(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("MRCO_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("moodle-offload ")
    # No configuration at all: nothing is created in the working directory.
    assert main(["migrate"]) == 2
    assert "no database is configured" in _one_line(capsys.readouterr().err)
    assert main(["company", "show"]) == 2
    assert "no database is configured" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "moodle-offload.sqlite3").exists()
    # A configured database that was never migrated.
    url = f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
    sa.create_engine(url).connect().close()  # the file exists, the tables do not
    monkeypatch.setenv("MRCO_DATABASE_URL", url)
    assert main(["company", "show"]) == 2
    assert "run `moodle-offload migrate` first" in _one_line(capsys.readouterr().err)
    assert main(["company", "set", "1", "--cloud", "on"]) == 2
    assert "migrate" in _one_line(capsys.readouterr().err)


def test_company_set_refuses_unknown_companies_unverified_senders_and_an_absent_worker(
    tmp_path, monkeypatch, capsys, aws
) -> None:
    url = f"sqlite:///{tmp_path / 'moodle.sqlite3'}"
    engine = sa.create_engine(url)
    world = IomadWorld.create(engine)
    world.add_company(7)
    engine.dispose()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MRCO_DATABASE_URL", url)
    monkeypatch.setenv("MRCO_JOBS_QUEUE_URL", aws["jobs"])
    monkeypatch.setenv("MRCO_AWS_REGION", "eu-west-1")
    assert main(["migrate"]) == 0
    capsys.readouterr()
    assert main(["company", "set", "8", "--cloud", "on"]) == 1
    assert "company 8 does not exist in IOMAD" in _one_line(capsys.readouterr().err)
    boto3.client("ses", region_name="eu-west-1").verify_domain_identity(Domain="acme.example")
    assert main(["company", "set", "7", "--cloud", "on", "--sender-address", "training@nope.example"]) == 1
    assert "SES has not verified training@nope.example" in _one_line(capsys.readouterr().err)
    assert main(["company", "set", "7", "--cloud", "on", "--sender-address", "training@acme.example"]) == 0
    assert "sender=training@acme.example" in capsys.readouterr().out
    # No Worker configured: the company stays on aws (transports/capabilities.py decides).
    assert main(["company", "set", "7", "--provider", "cloudflare"]) == 1
    assert "Cloudflare Worker URL is not configured" in _one_line(capsys.readouterr().err)


def test_lock_busy_is_said_as_such() -> None:
    text = summary(TickReport(claim=ClaimReport(lock_busy=True)))
    assert "IOMAD's email cron holds its lock" in text and "claimed 0 of 0" not in text


def test_tick_with_an_unreachable_aws_endpoint(site, monkeypatch, capsys) -> None:  # noqa: F811
    tmp, _url = site
    tmpl = _write(tmp / "t.html", "<p>Dear {{ name }}</p>")
    csv = _write(tmp / "r.csv", "email,name\nann@example.com,Ann\nbob@example.com,Bob\n")
    assert main(["submit-list", "--template", str(tmpl), "--subject", "Hi", str(csv)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("MRCO_AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MRCO_RESULTS_DLQ_URL", "http://127.0.0.1:9/123456789012/results-dlq")
    assert main(["tick"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "reconciled:" in captured.out  # the rest of the pass ran
    problems = captured.err.strip().splitlines()
    assert any("could not be submitted" in p and "Fix:" in p for p in problems), problems
    assert any("draining results" in p and "endpoint_url" in p for p in problems), problems
    assert main(["tick", "--quiet"]) == 1
    quiet = capsys.readouterr()
    assert quiet.out == "" and "draining results" in quiet.err  # the batches wait in backoff


def test_jobs_list_piped_into_head_and_human_output(site, capsys) -> None:  # noqa: F811
    tmp, _url = site
    tmpl = _write(tmp / "t.html", "<p>Dear {{ name }}</p>")
    rows = "".join(f"u{i}@example.com,U{i}\n" for i in range(3))
    csv = _write(tmp / "r.csv", "email,name\n" + rows)
    for _ in range(40):
        assert main(["submit-list", "--template", str(tmpl), "--subject", "Hi", str(csv)]) == 0
    capsys.readouterr()
    env = dict(os.environ)
    result = subprocess.run(  # noqa: S602 - a fixed pipeline, as an admin types it
        f"{sys.executable} -m moodle_bridge jobs list --limit 1000 | head -n 2",
        shell=True,
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert main(["jobs", "show", "1"]) == 0
    human = capsys.readouterr().out
    assert "created:" in human and " UTC" in human and "{" not in human


def test_switching_the_cloud_off_cancels_open_jobs_and_tells_the_cloud(
    tmp_path, monkeypatch, capsys, aws
) -> None:
    from tests.results.factory import create_job

    url = f"sqlite:///{tmp_path / 'moodle.sqlite3'}"
    engine = sa.create_engine(url)
    world = IomadWorld.create(engine)
    world.add_company(7)
    world.add_company(8)
    engine.dispose()
    table = "offload-idempotency"
    db = boto3.client("dynamodb", region_name="eu-west-1")
    db.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    monkeypatch.chdir(tmp_path)
    for key, value in {
        "MRCO_DATABASE_URL": url,
        "MRCO_JOBS_QUEUE_URL": aws["jobs"],
        "MRCO_AWS_REGION": "eu-west-1",
        "MRCO_IDEMPOTENCY_TABLE": table,
    }.items():
        monkeypatch.setenv(key, value)
    assert main(["migrate"]) == 0
    assert main(["company", "set", "7", "--cloud", "on"]) == 0
    assert main(["company", "set", "8", "--cloud", "on"]) == 0
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        seven = create_job(conn, T, company_id=7, recipients=3, email_id_start=None)
        eight = create_job(conn, T, company_id=8, recipients=2, email_id_start=None, batch_key="b-8")
    capsys.readouterr()
    assert main(["company", "set", "7", "--cloud", "off"]) == 0
    out = capsys.readouterr().out
    assert "1 open jobs cancelled" in out and "3 recipients already in the cloud" in out
    assert main(["company", "global", "off"]) == 0
    assert "1 open jobs cancelled" in capsys.readouterr().out
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(T.jobs))}
        actions = [a for (a,) in conn.execute(sa.select(T.audit_log.c.action))]
    engine.dispose()
    for job in (seven, eight):
        assert rows[job.job_id].status == "cancelling" and rows[job.job_id].timecancelsignalled is not None
        assert "Item" in db.get_item(TableName=table, Key={"id": {"S": f"cancel#{job.job_id}"}})
    assert actions.count("job_cancelled") == 2
