"""Plain-Moodle list jobs and the tick command's behaviour as a cron job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from moodle_bridge.cli import main
from moodle_bridge.pipeline.ticklock import tick_lock
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from offload_contract import validate
from tests.bridge.conftest import PASSWORD_KEY, drain

T = build_bridge_tables("mdl_")


@pytest.fixture
def site(tmp_path, monkeypatch, aws):
    url = f"sqlite:///{tmp_path / 'moodle.sqlite3'}"
    env = {
        "MRCO_DATABASE_URL": url,
        "MRCO_SITE": "moodle",
        "MRCO_KEYSETS": "k1=" + "A" * 43,
        "MRCO_KEYSET_CURRENT": "k1",
        "MRCO_SENDER_ADDRESS": "noreply@example.com",
        "MRCO_PASSWORD_KEY": PASSWORD_KEY,
        "MRCO_JOBS_QUEUE_URL": aws["jobs"],
        "MRCO_AWS_REGION": "eu-west-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    assert main(["migrate"]) == 0
    assert main(["company", "set", "0", "--cloud", "on"]) == 0
    assert main(["company", "global", "on"]) == 0
    return tmp_path, url


def _write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


@pytest.mark.sqlite
def test_csv_list_job_records_every_bad_row_and_sends_the_rest(site, aws, capsys) -> None:
    tmp, url = site
    tmpl = _write(tmp / "t.html", "<p>Dear {{ name }}, your course {{ course }} starts soon.</p>")
    csv = _write(
        tmp / "r.csv",
        "email,name,course\n"
        "ann@example.com,Ann,Safety\n"
        ",Nobody,Safety\n"
        "not-an-address,Bad,Safety\n"
        "ANN@example.com,Ann again,Safety\n"
        "bob@example.com,Bob,\n"
        "cy@example.com,Cy,First aid\n",
    )
    capsys.readouterr()
    assert main(["submit-list", "--template", str(tmpl), "--subject", "Hello {{ name }}", str(csv)]) == 0
    assert "6 recipients, 3 to send" in capsys.readouterr().out
    assert main(["tick"]) == 0
    (message,) = drain(aws)
    validate("email_batch", message)
    assert [r["to"] for r in message["recipients"]] == [
        "ann@example.com",
        "bob@example.com",
        "cy@example.com",
    ]
    content = next(iter(message["contents"].values()))
    assert content["kind"] == "template" and "{{ name }}" in content["html"]
    assert message["recipients"][2]["data"]["course"] == "First aid"
    engine = create_bridge_engine(url)
    with engine.connect() as conn:
        outcomes = {r.address: (r.status, r.errorcode) for r in conn.execute(sa.select(T.recipients))}
    engine.dispose()
    assert outcomes[""] == ("failed", "empty_address")
    assert outcomes["not-an-address"] == ("failed", "invalid_address")
    assert outcomes["ANN@example.com"] == ("skipped", "duplicate_address")
    assert outcomes["ann@example.com"] == ("queued", None)


@pytest.mark.sqlite
def test_json_list_with_missing_variable_is_a_recorded_template_error(site, aws, capsys) -> None:
    tmp, url = site
    tmpl = _write(tmp / "t.html", "<p>{{ code }}</p>")
    data = _write(
        tmp / "r.json", json.dumps([{"email": "a@example.com", "code": "X1"}, {"email": "b@example.com"}])
    )
    assert main(["submit-list", "--template", str(tmpl), "--subject", "Code", "--submit", str(data)]) == 0
    (message,) = drain(aws)
    assert [r["to"] for r in message["recipients"]] == ["a@example.com"]
    engine = create_bridge_engine(url)
    with engine.connect() as conn:
        failed = conn.execute(sa.select(T.recipients).where(T.recipients.c.status == "failed")).one()
    engine.dispose()
    assert failed.errorcode == "template_error" and failed.address == "b@example.com"


@pytest.mark.sqlite
def test_unusable_inputs_fail_with_one_clear_line(site, capsys) -> None:
    tmp, _url = site
    good = _write(tmp / "t.html", "<p>hi</p>")
    csv = _write(tmp / "r.csv", "email\na@example.com\n")
    broken = _write(tmp / "b.html", "<p>{% if %}</p>")
    assert main(["submit-list", "--template", str(broken), "--subject", "s", str(csv)]) == 1
    assert "template syntax error" in capsys.readouterr().err
    assert main(["submit-list", "--template", str(tmp / "missing.html"), "--subject", "s", str(csv)]) == 1
    assert "FileNotFoundError" in capsys.readouterr().err
    no_email = _write(tmp / "n.csv", "mail\na@example.com\n")
    assert main(["submit-list", "--template", str(good), "--subject", "s", str(no_email)]) == 1
    assert "'email' column" in capsys.readouterr().err
    assert main(["submit-list", "--company", "9", "--template", str(good), "--subject", "s", str(csv)]) == 1
    assert "no_company_settings" in capsys.readouterr().err


@pytest.mark.sqlite
def test_second_tick_exits_cleanly_while_one_runs(site, capsys) -> None:
    _tmp, url = site
    engine = create_bridge_engine(url)
    with tick_lock(engine, "mdl_"):
        assert main(["tick"]) == 0
        assert "another tick is running" in capsys.readouterr().out
    engine.dispose()
    assert main(["tick"]) == 0
    assert "moodle-offload tick:" in capsys.readouterr().out


@pytest.mark.sqlite
def test_tick_errors_are_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MRCO_DATABASE_URL", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    assert main(["tick"]) == 2  # not migrated: a configuration error
    assert "run `moodle-offload migrate`" in capsys.readouterr().err
    assert main(["migrate"]) == 0
    capsys.readouterr()
    assert main(["tick"]) == 1  # no IOMAD tables and site = iomad
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no IOMAD tables found" in err[0]
    monkeypatch.setenv("MRCO_DATABASE_URL", "mysql+pymysql://nobody@127.0.0.1:1/none")
    assert main(["tick"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot connect" in err[0]


def test_progress_bars_render_without_a_terminal() -> None:
    from moodle_bridge.commands.tick import _progress

    with _progress(True) as make:
        assert make is not None
        update = make("claiming IOMAD rows")
        for done in range(1, 4):
            update(done, 3)
    with _progress(False) as none:
        assert none is None


@pytest.mark.sqlite
def test_tick_prints_the_reconciliation_summary_unless_quiet(site, capsys) -> None:
    capsys.readouterr()
    assert main(["tick"]) == 0
    out = capsys.readouterr().out
    assert "reconciled: 0 results ingested from 0 messages, 0 quarantined, 0 jobs flagged overdue" in out
    assert "A" * 43 not in out and "sqs" not in out.lower()  # no key material, no queue URLs
    assert main(["tick", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
