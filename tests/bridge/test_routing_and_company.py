"""Routing decision (pure) and the `company` command, with every change audited."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from moodle_bridge.cli import main
from moodle_bridge.pipeline.routing import CompanySettings, decide
from tests.bridge.iomad_world import IomadWorld

ON = CompanySettings(companyid=1, cloudenabled=True, allowemail=True, allowcertificates=True, threshold=10)


@pytest.mark.parametrize(
    ("global_on", "settings", "job_type", "count", "expected"),
    [
        (False, ON, "email", 100, "global_switch_off"),
        (True, None, "email", 100, "no_company_settings"),
        (True, CompanySettings(1, cloudenabled=False), "email", 100, "company_cloud_disabled"),
        (True, CompanySettings(1, cloudenabled=True, allowemail=False), "email", 100, "emails_not_allowed"),
        (
            True,
            CompanySettings(1, cloudenabled=True, allowcertificates=False),
            "certificate",
            100,
            "certificates_not_allowed",
        ),
        (True, ON, "email", 9, "below_threshold"),
        (True, ON, "email", 10, "offload"),
        (True, ON, "certificate", 10, "offload"),
    ],
)
def test_decide_is_exactly_the_seed_rule(global_on, settings, job_type, count, expected) -> None:
    decision = decide(global_on, settings, job_type, count)
    assert decision.reason == expected
    assert decision.offload == (expected == "offload")


def test_settings_reject_unknown_provider_and_negative_threshold() -> None:
    with pytest.raises(ValueError, match="provider"):
        CompanySettings(1, provider="gcp")
    with pytest.raises(ValueError, match="threshold"):
        CompanySettings(1, threshold=-1)


@pytest.mark.sqlite
def test_company_command_sets_shows_and_audits(tmp_path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'b.sqlite3'}"
    monkeypatch.setenv("MRCO_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    world_engine = sa.create_engine(url)
    IomadWorld.create(world_engine).add_company(7)  # company set refuses companies IOMAD lacks
    world_engine.dispose()
    assert main(["migrate"]) == 0
    # No Worker is configured: refused with one line, nothing saved.
    assert main(["company", "set", "7", "--cloud", "on", "--provider", "cloudflare"]) == 1
    assert "Cloudflare Worker URL is not configured" in capsys.readouterr().err
    assert (
        main(
            [
                "company",
                "set",
                "7",
                "--cloud",
                "on",
                "--provider",
                "aws",
                "--threshold",
                "50",
                "--certificates",
                "on",
                "--sender-address",
                "training@example.com",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "company 7: local" in out  # global switch still off
    assert "global switch is off" in out
    assert main(["company", "global", "on"]) == 0
    assert main(["company", "show", "7"]) == 0
    out = capsys.readouterr().out
    assert "company 7: cloud (email, certificate)" in out
    assert "provider=aws" in out
    assert "threshold=50" in out
    assert main(["company", "show", "8"]) == 0
    assert "no settings row, stays local" in capsys.readouterr().out
    assert main(["company", "set", "7", "--emails", "off"]) == 0
    capsys.readouterr()
    assert main(["company", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["global"] is True
    assert shown["companies"][0]["allowemail"] is False
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        audit = conn.execute(
            sa.text("SELECT actor, action, companyid, detail FROM mdl_mrcloud_audit_log ORDER BY id")
        ).all()
    engine.dispose()
    actions = [a.action for a in audit]
    assert actions == ["company_settings_created", "global_switch_on", "company_settings_changed"]
    assert all(a.actor.startswith("cli:") for a in audit)
    assert json.loads(audit[2].detail) == {"allowemail": False}


@pytest.mark.sqlite
def test_company_command_rejects_bad_values(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MRCO_DATABASE_URL", f"sqlite:///{tmp_path / 'b.sqlite3'}")
    monkeypatch.setenv("MRCO_SITE", "moodle")
    assert main(["migrate"]) == 0
    with pytest.raises(SystemExit):
        main(["company", "set", "1", "--threshold", "-3"])
    with pytest.raises(SystemExit):
        main(["company", "set", "1", "--cloud", "maybe"])
    assert main(["company", "set", "1", "--sender-address", "nope"]) == 1
    assert "sender-address" in capsys.readouterr().err
