"""The dashboard's campaign pages in-process on SQLite: list, detail, create/edit, preview, pause,
resume and run-now, each through the CLI's own functions; company scope, CSRF and audit."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from iomad_sim.iomad_schema import metadata_for
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.campaigns import rules
from moodle_bridge.sources.campaigns.rules import DAY
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.campaign_repo import CampaignRepo
from tests.web.conftest import Site, with_campaign_sending
from tests.web.world import NOW

CSRF = re.compile(r'name="csrf" value="([^"]+)"')

FORM = {
    "name": "Come back",
    "trigger_kind": "inactive_site",
    "days": "30",
    "subject": "We miss you, {{ firstname }}",
    "html": "<p>Hello {{ fullname }}, your courses are waiting.</p>",
    "text": "Hello {{ fullname }}, your courses are waiting.",
    "recipients": "user",
    "every_days": "7",
    "max_reminders": "2",
}


def _csrf(client: TestClient, path: str = "/campaigns") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match
    return match.group(1)


def _audit(site: Site, action: str) -> list[Any]:
    a = site.world.tables.audit_log
    with site.engine.connect() as conn:
        return list(conn.execute(sa.select(a).where(a.c.action == action).order_by(a.c.id)).all())


def _campaign(site: Site, campaign_id: int) -> Any:
    with site.engine.connect() as conn:
        return CampaignRepo(site.world.tables).get(conn, campaign_id)


def _route_to_cloud(site: Site) -> Site:
    repo = BridgeRepo(site.world.tables)
    with site.engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        for company in site.world.companies:
            repo.save_settings(conn, CompanySettings(company, cloudenabled=True), "test")
    state = site.app.state.dashboard
    state.config = with_campaign_sending(state.config)
    return site


@pytest.fixture
def cloud_site(site: Site) -> Site:
    """Both companies routed to the cloud, with what a campaign job needs to be built (SQLite)."""
    return _route_to_cloud(site)


def test_run_now_and_the_cycle_figures_on_every_engine(site_on: Site) -> None:
    """The campaign pages' own SQL (the per-cycle figures) on SQLite, MariaDB and PostgreSQL."""
    site = _route_to_cloud(site_on)
    w = site.world
    c1 = w.companies[0]
    manager = site.signed_in(w.managers[c1], c1)
    campaign = _create(manager, every_days="0", max_reminders="1")
    assert manager.post(f"/campaigns/{campaign}/run-now", data={"csrf": _csrf(manager)}).status_code == 303
    members = len(w.learners[c1]) + 2
    with site.engine.connect() as conn:
        (figures,) = CampaignRepo(w.tables).cycles(conn, campaign)
    assert (figures.cycle, figures.users, figures.recipients, figures.sent) == (0, members, members, 0)
    assert [status for _, status in figures.jobs] == ["pending"]
    page = manager.get(f"/campaigns/{campaign}")
    assert '<tr data-cycle="0">' in page.text and ">0 users<" in page.text


def _create(client: TestClient, **changes: str) -> int:
    response = client.post("/campaigns/new", data={**FORM, **changes, "csrf": _csrf(client)})
    assert response.status_code == 303, response.text
    match = re.search(r"/campaigns/(\d+)\?", response.headers["location"])
    assert match, response.headers["location"]
    return int(match.group(1))


def test_manager_creates_previews_pauses_resumes_and_runs_a_campaign(cloud_site: Site) -> None:
    site = cloud_site
    w = site.world
    c1 = w.companies[0]
    manager = site.signed_in(w.managers[c1], c1)

    # Bad input: the form comes back with the reason (naming the field) and what was typed.
    bad = manager.post("/campaigns/new", data={**FORM, "days": "thirty", "csrf": _csrf(manager)})
    assert bad.status_code == 400
    assert "trigger.days must be a whole number" in bad.text
    assert 'value="Come back"' in bad.text and "your courses are waiting" in bad.text
    bad = manager.post(
        "/campaigns/new",
        data={**FORM, "subject": "Hi {{ firstname", "csrf": _csrf(manager)},
    )
    assert bad.status_code == 400 and "template: syntax error" in bad.text
    with site.engine.connect() as conn:
        assert CampaignRepo(w.tables).list(conn) == []

    campaign = _create(manager)
    row = _campaign(site, campaign)
    assert (row.companyid, row.status, row.name) == (c1, "active", "Come back")
    created = _audit(site, "campaign_created")
    assert [(r.actor, r.companyid) for r in created] == [(f"dashboard:{w.managers[c1]}", c1)]
    assert created[0].sourceaddress is not None

    listing = manager.get("/campaigns")
    assert f"/campaigns/{campaign}" in listing.text and "Come back" in listing.text
    detail = manager.get(f"/campaigns/{campaign}")
    assert detail.status_code == 200
    # Every member of company 1 (8 learners, its manager, the department manager) never logged in
    # and was created more than 30 days before NOW.
    learners = len(w.learners[c1]) + 2
    assert f">{learners} users<" in detail.text
    assert "Nobody reminded yet." in detail.text

    # Preview: the audience and one rendered mail; nothing is sent or recorded.
    first = w.learners[c1][0]
    shown = manager.get(f"/campaigns/{campaign}/preview", params={"user": first})
    assert shown.status_code == 200
    assert f'data-field="audience">{learners}<' in shown.text
    assert "We miss you, " in shown.text and "{{" not in shown.text
    assert "&lt;p&gt;Hello" in shown.text  # the HTML part is shown as source, not rendered
    with site.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(w.tables.jobs)).scalar() == 3

    # Pause and resume, audited through the CLI's function.
    assert manager.post(f"/campaigns/{campaign}/pause", data={"csrf": _csrf(manager)}).status_code == 303
    assert _campaign(site, campaign).status == "paused"
    refused = manager.post(f"/campaigns/{campaign}/run-now", data={"csrf": _csrf(manager)})
    assert "is+paused" in refused.headers["location"]
    assert manager.post(f"/campaigns/{campaign}/resume", data={"csrf": _csrf(manager)}).status_code == 303
    assert _campaign(site, campaign).status == "active"
    assert len(_audit(site, "campaign_paused")) == len(_audit(site, "campaign_resumed")) == 1

    # Run now: one job for this cycle's audience, recorded in the ledger; a second run adds nothing.
    ran = manager.post(f"/campaigns/{campaign}/run-now", data={"csrf": _csrf(manager)})
    assert ran.status_code == 303
    after = manager.get(ran.headers["location"].removeprefix("https://testserver"))
    assert f"recipients ({learners} to send" in after.text and "the next tick submits it" in after.text
    cycle = NOW // (7 * DAY)  # weekly, counted from start 0
    assert f'<tr data-cycle="{cycle}">' in after.text
    assert f">{learners}</td>" in after.text
    assert ">0 users<" in after.text  # everyone was reminded this cycle
    again = manager.post(f"/campaigns/{campaign}/run-now", data={"csrf": _csrf(manager)})
    assert "nobody+matches" in again.headers["location"]
    runs = _audit(site, "campaign_run")
    assert len(runs) == 2 and runs[0].jobid is not None and runs[1].jobid is None
    with site.engine.connect() as conn:
        ledger = CampaignRepo(w.tables).ledger_counts(conn, campaign)
    assert ledger == {cycle: learners}

    # Edit: the stored rule changes, validated the same way; the form is prefilled.
    form = manager.get(f"/campaigns/{campaign}/edit")
    assert 'value="Come back"' in form.text and 'name="every_days" inputmode="numeric" value="7"' in form.text
    bad = manager.post(
        f"/campaigns/{campaign}/edit", data={**FORM, "max_reminders": "0", "csrf": _csrf(manager)}
    )
    assert bad.status_code == 400 and "cadence.max_reminders must be between 1 and 100" in bad.text
    saved = manager.post(
        f"/campaigns/{campaign}/edit", data={**FORM, "name": "Come back soon", "csrf": _csrf(manager)}
    )
    assert saved.status_code == 303
    assert _campaign(site, campaign).name == "Come back soon"
    assert [r.actor for r in _audit(site, "campaign_updated")] == [f"dashboard:{w.managers[c1]}"]


def test_another_company_manager_cannot_see_or_change_a_campaign(cloud_site: Site) -> None:
    site = cloud_site
    w = site.world
    c1, c2 = w.companies
    campaign = _create(site.signed_in(w.managers[c1], c1))
    other = site.signed_in(w.managers[c2], c2)
    assert f"/campaigns/{campaign}" not in other.get("/campaigns").text
    for path in ("", "/preview", "/edit"):
        assert other.get(f"/campaigns/{campaign}{path}").status_code == 404
    token = _csrf(other)
    for action in ("pause", "run-now", "edit"):
        response = other.post(f"/campaigns/{campaign}/{action}", data={**FORM, "name": "Mine", "csrf": token})
        assert response.status_code == 404
    row = _campaign(site, campaign)
    assert (row.status, row.name, row.timelastrun) == ("active", "Come back", None)
    # Creating for company 1 is not possible either: a company manager's company is their own.
    mine = _create(other, company=str(c1))
    assert _campaign(site, mine).companyid == c2
    assert not _audit(site, "campaign_paused") and not _audit(site, "campaign_run")


def test_a_forged_csrf_token_is_refused_and_changes_nothing(cloud_site: Site) -> None:
    site = cloud_site
    w = site.world
    c1 = w.companies[0]
    manager = site.signed_in(w.managers[c1], c1)
    campaign = _create(manager)
    for data in ({"csrf": "forged"}, {}):
        assert manager.post(f"/campaigns/{campaign}/pause", data=data).status_code == 403
        assert manager.post(f"/campaigns/{campaign}/run-now", data=data).status_code == 403
        assert manager.post("/campaigns/new", data={**FORM, **data}).status_code == 403
    assert _campaign(site, campaign).status == "active"
    with site.engine.connect() as conn:
        assert len(CampaignRepo(w.tables).list(conn)) == 1
    # Another session's valid token is not this session's.
    token = _csrf(site.signed_in(w.admin))
    assert manager.post(f"/campaigns/{campaign}/pause", data={"csrf": token}).status_code == 403
    assert _campaign(site, campaign).status == "active"


def test_department_manager_reads_and_admin_sees_every_company(cloud_site: Site) -> None:
    site = cloud_site
    w = site.world
    c1, c2 = w.companies
    campaign = _create(site.signed_in(w.managers[c1], c1))
    dept = site.signed_in(w.department_manager, c1)
    assert f"/campaigns/{campaign}" in dept.get("/campaigns").text
    page = dept.get(f"/campaigns/{campaign}")
    assert page.status_code == 200 and "Run now" not in page.text
    assert dept.get(f"/campaigns/{campaign}/preview").status_code == 404
    assert dept.get("/campaigns/new").status_code == 404
    assert dept.post(f"/campaigns/{campaign}/pause", data={"csrf": _csrf(dept)}).status_code == 404
    assert _campaign(site, campaign).status == "active"

    admin = site.signed_in(w.admin)
    # A company without settings is refused with the CLI's message; nothing is stored.
    bad = admin.post("/campaigns/new", data={**FORM, "company": "77", "csrf": _csrf(admin)})
    assert bad.status_code == 400 and "company 77 has no settings" in bad.text
    theirs = _create(admin, company=str(c2))
    listing = admin.get("/campaigns").text
    assert f"/campaigns/{campaign}" in listing and f"/campaigns/{theirs}" in listing
    only_c2 = admin.get("/campaigns", params={"company": c2}).text
    assert f"/campaigns/{theirs}" in only_c2 and f'/campaigns/{campaign}"' not in only_c2
    assert admin.post(f"/campaigns/{campaign}/pause", data={"csrf": _csrf(admin)}).status_code == 303
    paused = _audit(site, "campaign_paused")
    assert [(r.actor, r.companyid) for r in paused] == [(f"dashboard:{w.admin}", c1)]


def _add_learner(site: Site, company: int) -> None:
    """One more never-seen learner of ``company`` in Moodle: the inactive_site audience grows by one."""
    meta = metadata_for(site.world.iomad)
    user, cu = meta.tables["mdl_user"], meta.tables[site.world.iomad.company_users.name]
    with site.engine.begin() as conn:
        uid = int(conn.execute(sa.select(sa.func.max(user.c.id))).scalar() or 0) + 1
        conn.execute(
            user.insert().values(
                id=uid, username=f"late{uid}", firstname="Late", lastname="Learner",
                email=f"late{uid}@example.org", confirmed=1, mnethostid=1,
            )
        )  # fmt: skip
        conn.execute(
            cu.insert().values(
                companyid=company, userid=uid, managertype=0, departmentid=site.world.child_department
            )
        )


def _audience(page: str) -> tuple[str, str]:
    """The page's audience figure and the time it was counted."""
    shown = re.search(r'data-field="audience">([^<]*)<', page)
    counted = re.search(r'data-field="audience-counted">([^<]*) · <a href="[^"]*\?count=now">', page)
    assert shown and counted, page
    return shown.group(1), counted.group(1)


def test_the_audience_count_is_shown_again_for_a_minute_and_counted_afresh_after_a_run_or_an_edit(
    cloud_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The campaign page keeps its audience count up to 60 s (with the time it was counted), so a
    reload does not run the audience query again; ``?count=now``, a run, an edit and the minute
    passing each count afresh. Showing the list or a kept count compiles no template."""
    site = cloud_site
    w = site.world
    c1 = w.companies[0]
    manager = site.signed_in(w.managers[c1], c1)
    campaign = _create(manager)
    members = len(w.learners[c1]) + 2
    assert _audience(manager.get(f"/campaigns/{campaign}").text) == (
        f"{members} users",
        "2027-01-15 08:00:00 UTC",
    )

    compiled: list[object] = []
    real_compile = rules.compile_templates

    def counting_compile(template: rules.CampaignTemplate) -> Any:
        compiled.append(template)
        return real_compile(template)

    monkeypatch.setattr(rules, "compile_templates", counting_compile)
    _add_learner(site, c1)
    site.clock.now += 59
    assert _audience(manager.get(f"/campaigns/{campaign}").text) == (
        f"{members} users",
        "2027-01-15 08:00:00 UTC",
    )
    assert manager.get("/campaigns").status_code == 200
    assert compiled == []  # a kept count and the list parse the stored rules without compiling them
    site.clock.now += 2  # 61 s after the count
    assert _audience(manager.get(f"/campaigns/{campaign}").text) == (
        f"{members + 1} users",
        "2027-01-15 08:01:01 UTC",
    )

    _add_learner(site, c1)
    assert _audience(manager.get(f"/campaigns/{campaign}").text)[0] == f"{members + 1} users"  # kept
    asked = manager.get(f"/campaigns/{campaign}", params={"count": "now"}).text
    assert _audience(asked)[0] == f"{members + 2} users"

    # A run reminds everyone in this cycle: the next view counts again (nobody left), not the kept figure.
    ran = manager.post(f"/campaigns/{campaign}/run-now", data={"csrf": _csrf(manager)})
    assert ran.status_code == 303
    assert _audience(manager.get(f"/campaigns/{campaign}").text)[0] == "0 users"

    # An edit changes the stored rule: counted afresh (a new learner, not reminded yet, is found).
    _add_learner(site, c1)
    assert _audience(manager.get(f"/campaigns/{campaign}").text)[0] == "0 users"  # kept
    saved = manager.post(f"/campaigns/{campaign}/edit", data={**FORM, "days": "31", "csrf": _csrf(manager)})
    assert saved.status_code == 303
    assert _audience(manager.get(f"/campaigns/{campaign}").text)[0] == "1 users"
