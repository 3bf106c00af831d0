"""The bridge against the real Worker under ``wrangler dev --local`` (workerd + Miniflare).

Queues, R2 and Durable Objects are Miniflare's; mail goes through Miniflare's own
``send_email`` binding (Cloudflare Email Service), which logs every message it is handed, so
the test can count what each recipient was sent. Results come back by the signed pull route.
Nothing reaches the network: wrangler runs with telemetry off and local bindings only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from demo.wrangler_dev import WorkerDev, WranglerUnavailable, wrangler_dev
from moodle_bridge.cli import main
from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.config import CloudflareConfig, KeysConfig
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.transports.capabilities import WorkerCheck
from moodle_bridge.transports.targets import WorkerSubmitter, worker_base_url
from offload_contract import validate
from offload_contract.signing import decode_root_secret, generate_root_secret
from offload_contract.unsubscribe import campaign_for_job, make_token, page, page_security_policy
from tests.bridge.conftest import make_config
from tests.bridge.iomad_world import IomadWorld

pytestmark = pytest.mark.workerd

T = build_bridge_tables("mdl_")
ROOT = generate_root_secret()
KEYS = KeysConfig(current="k1", keysets={"k1": ROOT})


@pytest.fixture
def db_engine_name() -> str:
    """One engine is enough here: the Worker is what is under test."""
    return "sqlite"


@pytest.fixture(scope="module")
def worker_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerDev]:
    keysets = {"current": "k1", "keysets": {"k1": ROOT}}
    try:
        folder = tmp_path_factory.mktemp("wrangler")
        with wrangler_dev(folder, keysets, {"RESULTS_MODE": "pull"}, renderer_assets=True) as dev:
            yield dev
    except WranglerUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes") or "did not" in str(exc):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def test_base_url_and_intake_url_both_reach_the_intake() -> None:
    assert worker_base_url("https://offload.example.org/") == "https://offload.example.org"
    assert worker_base_url("https://offload.example.org/v1/batches") == "https://offload.example.org"
    assert worker_base_url("https://example.org/mrco/") == "https://example.org/mrco"
    with pytest.raises(ValueError, match="http"):
        worker_base_url("offload.example.org")


def test_capabilities_are_signed_and_answered_by_the_worker(worker_dev: WorkerDev) -> None:
    worker = WorkerSubmitter(worker_dev.base_url, "k1", decode_root_secret(ROOT))
    answer = worker.capabilities(7)
    validate("capabilities", answer)
    # The renderer's fonts are in (Miniflare's) R2: the Worker renders certificates.
    assert answer["message_types"] == ["email_batch", "certificate_batch"]
    assert answer["certificates"]["scripts"] == ["Latn", "Grek", "Cyrl"]
    assert answer["results"]["mode"] == "pull"
    check = WorkerCheck(worker)
    assert check(7, "email") is None
    assert check(7, "certificate") is None
    assert check.certificate_refusal(7, ["Léa Ørsted", "Жанна"]) == []
    assert check.certificate_refusal(7, ["محمد"]) == ["U+0645", "U+062D", "U+062F"]
    stranger = WorkerSubmitter(worker_dev.base_url, "k1", decode_root_secret(generate_root_secret()))
    assert "HTTP 401 bad_signature" in (WorkerCheck(stranger)(7, "email") or "")


def test_company_set_refuses_what_the_worker_cannot_process(
    worker_dev: WorkerDev, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("MRCO_DATABASE_URL", f"sqlite:///{tmp_path / 'b.sqlite3'}")
    monkeypatch.setenv("MRCO_KEYSETS", f"k1={ROOT}")
    monkeypatch.setenv("MRCO_KEYSET_CURRENT", "k1")
    monkeypatch.setenv("MRCO_SITE", "moodle")  # no IOMAD here: company ids are not checked against it
    monkeypatch.chdir(tmp_path)
    assert main(["migrate"]) == 0
    capsys.readouterr()
    argv = ["company", "set", "7", "--cloud", "on", "--provider", "cloudflare", "--certificates", "on"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "URL is not configured" in err[0]
    monkeypatch.setenv("MRCO_CLOUDFLARE_INTAKE_URL", worker_dev.base_url)
    # The Worker renders certificates now: certificates on the Cloudflare provider are accepted.
    assert main(argv) == 0
    assert "provider=cloudflare" in capsys.readouterr().out


def test_tick_sends_and_certifies_through_the_worker_exactly_once_and_pulls_the_results(
    worker_dev: WorkerDev, bridge_engine, db_url, repo
) -> None:
    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    stamp = int(time.time() * 1000)
    addresses = [f"learner{n}.{stamp}@example.com" for n in range(5)]
    for n, address in enumerate(addresses):
        world.add_user(10 + n, address, "Léa", f"Rner{n}", companyid=1)
    world.add_course(5, "Safety 101")
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(
            conn,
            CompanySettings(1, cloudenabled=True, provider="cloudflare", allowcertificates=True),
            "test",
        )
    rows = [
        world.queue("license_allocated", 10 + n, 1, subject="Licence — ترخيص", body=f"<p>Seat {n}</p>")
        for n in range(5)
    ]
    at = int(time.time()) - 120
    world.complete(10, 5, 1, at)
    completion = world.queue("completion_course_user", 10, 1, courseid=5, body="<p>Done</p>", due=at)
    # A learner whose name the Worker's fonts cannot draw (Arabic): the script rule keeps the row with IOMAD.
    world.add_user(20, f"arabic.{stamp}@example.com", "محمد", "الأحمد", companyid=1)
    world.complete(20, 5, 1, at)
    arabic = world.queue("completion_course_user", 20, 1, courseid=5, body="<p>Done</p>", due=at)
    before = world.rows()

    config = replace(
        make_config(db_url), keys=KEYS, cloudflare=CloudflareConfig(intake_url=worker_dev.base_url)
    )
    submitters = build_submitters(config)
    worker = submitters["worker"]
    assert isinstance(worker, WorkerSubmitter)
    submitted: list[tuple[str, str, int, bytes]] = []
    submit = worker.submit

    def recording_submit(message_type: str, batch_id: str, company_id: int, body: bytes) -> str:
        submitted.append((message_type, batch_id, company_id, body))
        return submit(message_type, batch_id, company_id, body)

    worker.submit = recording_submit  # type: ignore[method-assign]
    report = run_tick(bridge_engine, config, submitters=submitters)
    assert report.claim is not None and report.outbox is not None
    assert report.claim.claimed == 6  # five licence mails and Léa's completion with its certificate
    assert report.outbox.submitted >= 2 and not report.outbox.errors
    assert "certificate_batch" in {message_type for message_type, *_ in submitted}
    # The Arabic name's row stays with IOMAD, with one clear line naming what cannot be drawn.
    (line,) = [note for note in report.notes if "cannot draw" in note]
    assert line == (
        "company 1: the Cloudflare Worker's certificate fonts cannot draw"
        " U+0645 U+062D U+062F U+0627 U+0644 U+0623 (1 certificate row(s)); those rows stay with IOMAD"
    )
    assert world.rows()[arabic] == before[arabic]

    # The Worker's queue consumer sends; the next ticks pull the results until all are in.
    deadline = time.monotonic() + 90
    statuses: list[str] = []
    while time.monotonic() < deadline:
        time.sleep(2)
        run_tick(bridge_engine, config, claim=False, submitters=submitters)
        with bridge_engine.connect() as conn:
            statuses = [r.status for r in conn.execute(sa.select(T.recipients.c.status))]
        if statuses and all(s == "sent" for s in statuses):
            break
    assert statuses == ["sent"] * 6, statuses
    sent = worker_dev.sent_to()
    # Léa got her licence mail and her completion mail (with the PDF attached), each once.
    assert {a: sent[a] for a in addresses} == {addresses[0]: 2, **dict.fromkeys(addresses[1:], 1)}
    # The certificate is in R2 under the S3 key layout, and the Worker's verify route answers its code.
    with bridge_engine.connect() as conn:
        (cert,) = conn.execute(sa.select(T.certificates)).all()
        (learner,) = conn.execute(
            sa.select(T.recipients.c.jobid, T.recipients.c.artifactkey).where(
                T.recipients.c.id == cert.recipientid
            )
        )
    assert learner.artifactkey == f"certificates/company-1/{learner.jobid}/{cert.recipientid}.pdf"
    verified = httpx.get(
        f"{worker_dev.base_url}/v1/certificates/verify/{cert.verifycode}?format=json", timeout=10
    ).json()
    assert verified["valid"] is True and verified["learner_name"] == "Léa Rner0"
    # The bridge settled IOMAD's rows as sent; the Worker's result log is drained.
    after = world.rows()
    assert all(after[eid].sent is not None for eid in [*rows, completion])
    assert worker.pull_results(1, None)["entries"] == []

    # The same batch submitted again (the bridge lost the 202) is accepted and sends nobody twice.
    assert submitted
    submit(*submitted[0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not worker.pull_results(1, None)["entries"]:
        time.sleep(1)
    assert {a: worker_dev.sent_to()[a] for a in addresses} == {
        addresses[0]: 2,
        **dict.fromkeys(addresses[1:], 1),
    }


def test_list_templates_are_rendered_by_the_bridge_for_the_worker(
    worker_dev: WorkerDev, tmp_path, monkeypatch, capsys
) -> None:
    env = {
        "MRCO_DATABASE_URL": f"sqlite:///{tmp_path / 'moodle.sqlite3'}",
        "MRCO_SITE": "moodle",
        "MRCO_KEYSETS": f"k1={ROOT}",
        "MRCO_KEYSET_CURRENT": "k1",
        "MRCO_SENDER_ADDRESS": "noreply@example.com",
        "MRCO_CLOUDFLARE_INTAKE_URL": worker_dev.base_url + "/v1/batches",  # the intake URL works too
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert main(["migrate"]) == 0
    assert main(["company", "set", "0", "--cloud", "on", "--provider", "cloudflare"]) == 0
    assert main(["company", "global", "on"]) == 0
    stamp = int(time.time() * 1000)
    ann, bob = f"ann.{stamp}@example.com", f"bob.{stamp}@example.com"
    template = tmp_path / "t.html"
    template.write_text("<p>Dear {{ name }}, {{ course }} starts soon.</p>", "utf-8")
    recipients = tmp_path / "r.csv"
    recipients.write_text(f"email,name,course\n{ann},Ann <b>,Safety & Health\n{bob},Bob,First aid\n", "utf-8")
    capsys.readouterr()
    argv = ["submit-list", "--template", str(template), "--subject", "Hello {{ name }}", str(recipients)]
    assert main(argv) == 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert main(["tick", "--quiet"]) == 0
        if worker_dev.sent_to()[bob] and worker_dev.sent_to()[ann]:
            break
        time.sleep(2)
    sent = worker_dev.sent_to()
    assert (sent[ann], sent[bob]) == (1, 1)
    html = worker_dev.html_to(ann)
    # Rendered by the bridge exactly as the AWS sender renders: HTML escaped, subject not.
    assert html == "<p>Dear Ann &lt;b&gt;, Safety &amp; Health starts soon.</p>"
    assert worker_dev.subject_to(ann) == "Hello Ann <b>"


def _campaign_recipient(engine: sa.Engine, repo: Any, company: int) -> tuple[int, str, str]:
    """A sent campaign recipient of ``company`` (provider cloudflare): (recipient id, address,
    the unsubscribe token the bridge signs into its mail)."""
    world = IomadWorld.create(engine)
    world.add_company(company)
    address = f"quits.{company}.{int(time.time() * 1000)}@example.com"
    now = int(time.time())
    with engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(company, cloudenabled=True, provider="cloudflare"), "test")
        stamps = {"timecreated": now, "timemodified": now}
        jobid = conn.execute(
            T.jobs.insert().values(
                companyid=company, jobtype="email", source="campaign", provider="cloudflare",
                category="campaign", status="completed", recipientstotal=1, recipientssent=1, **stamps,
            )
        ).inserted_primary_key[0]  # type: ignore[index]  # fmt: skip
        rid = conn.execute(
            T.recipients.insert().values(
                jobid=jobid, companyid=company, userid=10, role="user", address=address, dedupekey="u10",
                status="sent", attempts=1, **stamps,
            )
        ).inserted_primary_key[0]  # type: ignore[index]  # fmt: skip
    token = make_token(decode_root_secret(ROOT), "k1", company, str(rid), campaign_for_job(int(jobid)))
    return int(rid), address, token


def _tick_and_suppressions(engine: sa.Engine, db_url: Any, worker_dev: WorkerDev) -> list[tuple[Any, ...]]:
    config = replace(
        make_config(db_url), keys=KEYS, cloudflare=CloudflareConfig(intake_url=worker_dev.base_url)
    )
    report = run_tick(engine, config, claim=False, submitters=build_submitters(config))
    assert report.reconciled is not None
    s = T.suppressions
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(s.c.companyid, s.c.address, s.c.reason))]


def test_an_unsubscribe_on_the_worker_reaches_the_bridge_with_the_next_tick(
    worker_dev: WorkerDev, bridge_engine, db_url, repo
) -> None:
    """A link the bridge signed, opened on the real Worker: the page is the AWS page byte for byte
    and records nothing; the one-click POST is kept for the bridge (the Worker never sent this job,
    so it has no route to call back), and one tick puts the address in the company's suppression
    list for campaign mail, leaving the recipient's delivery status alone."""
    rid, address, token = _campaign_recipient(bridge_engine, repo, 2)
    link = f"{worker_dev.base_url}/v1/unsubscribe/{token}"

    shown = httpx.get(link, headers={"Accept": "text/html"}, timeout=30)
    assert (shown.status_code, shown.text) == (200, page("confirm"))
    assert shown.headers["content-security-policy"] == page_security_policy()
    *rest, tag = token.split(".")
    other_tag = ("B" if tag[0] == "A" else "A") + tag[1:]
    forged_link = f"{worker_dev.base_url}/v1/unsubscribe/{'.'.join([*rest, other_tag])}"
    forged = httpx.post(forged_link, content=b"List-Unsubscribe=One-Click", timeout=30)
    assert (forged.status_code, forged.json()) == (404, {"error": "unknown_token"})
    assert _tick_and_suppressions(bridge_engine, db_url, worker_dev) == []  # the GET recorded nothing
    clicked = httpx.post(
        link,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert (clicked.status_code, clicked.json()) == (200, {"unsubscribed": True})

    assert _tick_and_suppressions(bridge_engine, db_url, worker_dev) == [(2, address, "unsubscribe")]
    with bridge_engine.connect() as conn:
        assert (
            conn.execute(sa.select(T.recipients.c.status).where(T.recipients.c.id == rid)).scalar() == "sent"
        )


@pytest.mark.browser
def test_the_unsubscribe_pages_button_works_in_a_browser(
    worker_dev: WorkerDev, bridge_engine, db_url, repo
) -> None:
    """Chromium opens the link and presses the button: the page's own Content-Security-Policy lets the
    form post to itself, the person sees the done page, and the next tick suppresses the address."""
    chromium = os.environ.get("MRCO_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(chromium):  # pragma: no cover - scripts/bootstrap.sh installs it
        pytest.skip("Debian's chromium is not installed (scripts/bootstrap.sh)")
    sync_api = pytest.importorskip("playwright.sync_api")
    _, address, token = _campaign_recipient(bridge_engine, repo, 3)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page()
            tab.set_default_timeout(15_000)
            tab.goto(f"{worker_dev.base_url}/v1/unsubscribe/{token}")
            assert tab.title() == "Unsubscribe"
            tab.get_by_role("button", name="Unsubscribe").click()
            tab.wait_for_selector("text=You are unsubscribed")
            assert tab.title() == "You are unsubscribed"
        finally:
            browser.close()
    assert _tick_and_suppressions(bridge_engine, db_url, worker_dev) == [(3, address, "unsubscribe")]
