"""``WorkerObjects`` without a Worker: keys are checked before anything is sent, and a Cloudflare
company's scheduled report fails its run with one line (nothing recorded) when its file cannot go
to the Worker. The routes themselves: tests/bridge/test_worker_objects_e2e.py (wrangler dev)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from moodle_bridge.config import CloudflareConfig, KeysConfig
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.campaigns.rules import DAY
from moodle_bridge.sources.schedules import runner
from moodle_bridge.storage.migrations import migrate
from moodle_bridge.transports.worker_objects import key_company
from offload_contract.signing import generate_root_secret
from tests.bridge.conftest import make_config
from tests.bridge.test_campaigns import Site
from tests.bridge.test_schedules import SLOT1, T0, report_values


@pytest.mark.parametrize(
    "key",
    [
        "contents/company-7/../company-8/x.json",
        "contents/company-7/./x.json",
        "contents/company-7//x.json",
        "contents/company-7/a%2Fb.json",
        "contents/company-7/a b.json",
        "contents/x.json",
        "contents/company-x/j/x.json",
        "contents/company-7/" + "a" * 1020,
    ],
)
def test_keys_outside_the_layout_are_never_sent(key: str) -> None:
    with pytest.raises(ValueError):
        key_company(key)


def test_keys_name_their_company() -> None:
    assert key_company("contents/company-7/j1/e12.json") == 7
    assert key_company("certificates/company-12/j-1/r-3.pdf") == 12


def _cloudflare_report(db_engine: sa.Engine, repo: Any) -> Site:
    site = Site(db_engine)
    migrate(site.engine, "mdl_")
    site.user(30, managertype=1, lastaccess=T0)
    site.user(10, lastaccess=T0)
    site.enrol(10, T0 - 60 * DAY, started=T0 - 50 * DAY, done=T0 - DAY)
    with site.engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, provider="cloudflare"), "test")
        runner.create_schedule(conn, repo, report_values(format="csv"), actor="test", at=T0)
    return site


def _jobs(site: Site, repo: Any) -> int:
    with site.engine.connect() as conn:
        return len(conn.execute(sa.select(repo.t.jobs)).all())


def test_a_cloudflare_report_that_cannot_go_to_the_worker_fails_its_run_with_one_line(
    db_engine: sa.Engine, db_url: Any, repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = _cloudflare_report(db_engine, repo)
    config = make_config(db_url)
    [no_url] = runner.run_due(site.engine, repo, config, at=SLOT1 + 60, upload=None)
    assert no_url.outcome == "failed" and "MRCO_CLOUDFLARE_INTAKE_URL" in " ".join(no_url.notes)
    worker = replace(
        config,
        keys=KeysConfig(current="k1", keysets={"k1": generate_root_secret()}),
        cloudflare=CloudflareConfig(intake_url="http://127.0.0.1:9"),
    )
    monkeypatch.setattr(runner, "WORKER_ATTACHMENT_BYTES", 10)
    [too_big] = runner.run_due(site.engine, repo, worker, at=SLOT1 + 1000, upload=None)
    assert too_big.outcome == "failed" and "the Worker mails at most 10" in " ".join(too_big.notes)
    monkeypatch.undo()
    [unreachable] = runner.run_due(site.engine, repo, worker, at=SLOT1 + 2000, upload=None)
    assert unreachable.outcome == "failed" and "worker objects put" in " ".join(unreachable.notes)
    assert _jobs(site, repo) == 0
