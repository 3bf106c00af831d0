"""The bridge's way into the Worker's R2 (``WorkerObjects``), against the real Worker under
``wrangler dev --local`` (workerd + Miniflare's R2): the signed object routes, a content too large
for a Cloudflare queue message sent by R2 reference, a certificate template stored by
``certificates template set`` and used by the Worker's renderer, and the Worker's PDFs read back
for the dashboard.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from demo.wrangler_dev import WorkerDev, WranglerUnavailable, wrangler_dev
from moodle_bridge.cli import main
from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.config import BridgeConfig, CloudflareConfig, KeysConfig
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.campaigns.rules import DAY
from moodle_bridge.sources.schedules.runner import attachment_key, create_schedule, run_due
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.migrations import migrate
from moodle_bridge.storage.schedule_repo import ScheduleRepo
from moodle_bridge.transports.targets import Submitter, WorkerSubmitter
from moodle_bridge.transports.worker_objects import WorkerObjectError, WorkerObjects, key_company
from moodle_bridge.web.certificates import WorkerCertificates, zip_stream
from offload_contract.codec import encode_message
from offload_contract.signing import (
    decode_root_secret,
    derive_company_key,
    generate_root_secret,
    sign_request,
)
from tests.bridge.conftest import make_config
from tests.bridge.iomad_world import IomadWorld
from tests.bridge.test_campaigns import Site
from tests.bridge.test_schedules import SLOT1, T0, report_values
from tests.web.world import add_job

pytestmark = pytest.mark.workerd

T = build_bridge_tables("mdl_")
ROOT = generate_root_secret()
REPO = Path(__file__).resolve().parents[2]
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


def _objects(worker_dev: WorkerDev) -> WorkerObjects:
    return WorkerObjects(worker_dev.base_url, "k1", decode_root_secret(ROOT))


def test_objects_round_trip_and_stay_within_the_signing_company(worker_dev: WorkerDev) -> None:
    objects = _objects(worker_dev)
    key = f"contents/company-7/j{time.time_ns()}/e1.json"
    body = json.dumps({"kind": "rendered", "subject": "Größe", "html": "<p>ü</p>" * 1000}).encode()
    stored = objects.put(key, body, "application/json")
    assert (stored.key, stored.bytes, stored.content_type) == (key, len(body), "application/json")
    assert objects.get(key) == body
    assert objects.get(f"contents/company-7/j{time.time_ns()}/missing.json") is None

    # Company 8's key cannot read or overwrite company 7's object: the Worker checks the scope.
    path = f"/v1/objects/{key}"
    key8 = derive_company_key(decode_root_secret(ROOT), 8)
    headers = sign_request(key8, "k1.c8", "GET", path, b"")
    answer = httpx.get(worker_dev.base_url + path, headers=headers, timeout=30)
    assert (answer.status_code, answer.json()["error"]) == (403, "key_out_of_scope")
    headers = sign_request(key8, "k1.c8", "PUT", path, b"forged")
    answer = httpx.put(worker_dev.base_url + path, content=b"forged", headers=headers, timeout=30)
    assert answer.status_code == 403
    assert objects.get(key) == body
    # A stranger's key set is refused; the bridge never sends a key outside the layout.
    stranger = WorkerObjects(worker_dev.base_url, "k1", decode_root_secret(generate_root_secret()))
    with pytest.raises(WorkerObjectError, match="HTTP 401 bad_signature"):
        stranger.get(key)
    for bad in ("contents/company-7/../company-8/x.json", "contents/x.json", "contents/company-7/a%2Fb"):
        with pytest.raises(ValueError):
            key_company(bad)
    with pytest.raises(WorkerObjectError, match="403 key_out_of_scope"):
        objects.put("certificates/company-7/j/r.pdf", b"%PDF", "application/pdf")


def _config(db_url: Any, worker_dev: WorkerDev) -> BridgeConfig:
    return replace(
        make_config(db_url), keys=KEYS, cloudflare=CloudflareConfig(intake_url=worker_dev.base_url)
    )


def _until_sent(
    engine: sa.Engine, config: BridgeConfig, submitters: dict[str, Submitter], count: int
) -> list[str]:
    deadline = time.monotonic() + 90
    statuses: list[str] = []
    while time.monotonic() < deadline:
        time.sleep(2)
        run_tick(engine, config, claim=False, submitters=submitters)
        with engine.connect() as conn:
            statuses = [r.status for r in conn.execute(sa.select(T.recipients.c.status))]
        if len(statuses) == count and all(s in ("sent", "failed") for s in statuses):
            break
    return statuses


def test_a_content_too_large_for_a_queue_message_goes_by_r2_reference(
    worker_dev: WorkerDev, bridge_engine, db_url, repo
) -> None:
    """A mail whose content alone is over the 120,000-byte Cloudflare batch: claimed (not given
    back to IOMAD), put into R2 through the object route, referenced with store r2, and sent
    whole by the Worker."""
    world = IomadWorld.create(bridge_engine)
    world.add_company(1)
    stamp = int(time.time() * 1000)
    address = f"big.{stamp}@example.com"
    world.add_user(10, address, "Zoë", "Large", companyid=1)
    with bridge_engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, provider="cloudflare"), "test")
    body = "<p>" + " ".join(f"Zeile {n} — ثبت {n:06d}" for n in range(9000)) + "</p>"
    assert len(body.encode()) > 200_000
    world.queue("license_allocated", 10, 1, subject="Large licence", body=body)

    config = _config(db_url, worker_dev)
    submitters = build_submitters(config)
    worker = submitters["worker"]
    assert isinstance(worker, WorkerSubmitter)
    submitted: list[bytes] = []
    submit = worker.submit

    def recording_submit(message_type: str, batch_id: str, company_id: int, message: bytes) -> str:
        submitted.append(message)
        return submit(message_type, batch_id, company_id, message)

    worker.submit = recording_submit  # type: ignore[method-assign,assignment]
    report = run_tick(bridge_engine, config, submitters=submitters)
    assert report.claim is not None and report.claim.claimed == 1
    assert report.outbox is not None and report.outbox.submitted == 1 and not report.outbox.errors
    (message,) = [json.loads(m) for m in submitted]
    assert len(submitted[0]) <= 120_000
    (content,) = message["contents"].values()
    assert content["kind"] == "reference" and content["ref"]["store"] == "r2"
    assert "bucket" not in content["ref"]
    assert content["ref"]["key"].startswith("contents/company-1/")

    assert _until_sent(bridge_engine, config, submitters, 1) == ["sent"]
    assert worker_dev.sent_to()[address] == 1
    assert worker_dev.html_to(address) == body


def _pdf_text(pdf: bytes, folder: Path) -> str:
    pdftotext = shutil.which("pdftotext")
    if pdftotext is None:  # pragma: no cover - scripts/bootstrap.sh installs poppler-utils
        pytest.skip("poppler's pdftotext is not installed")
    path = folder / "c.pdf"
    path.write_bytes(pdf)
    done = subprocess.run([pdftotext, str(path), "-"], capture_output=True, text=True, check=True)
    return " ".join(done.stdout.split())


def test_a_template_set_for_a_cloudflare_company_is_used_by_the_workers_renderer(
    worker_dev: WorkerDev, tmp_path, monkeypatch, capsys
) -> None:
    """``certificates template set`` validates the template and writes it (JSON and logo) into the
    Worker's R2; a certificate batch naming it renders with it; the PDF is read back through the
    object route as the dashboard reads it (one download, one ZIP)."""
    company = 5
    env = {
        "MRCO_DATABASE_URL": f"sqlite:///{tmp_path / 'b.sqlite3'}",
        "MRCO_SITE": "moodle",
        "MRCO_KEYSETS": f"k1={ROOT}",
        "MRCO_KEYSET_CURRENT": "k1",
        "MRCO_CLOUDFLARE_INTAKE_URL": worker_dev.base_url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert main(["migrate"]) == 0
    argv = [
        "company",
        "set",
        str(company),
        "--cloud",
        "on",
        "--provider",
        "cloudflare",
        "--certificates",
        "on",
    ]
    assert main(argv) == 0
    document = json.loads((REPO / "certificate_render/templates/default.json").read_text("utf-8"))
    document["name"] = "zebra"
    document["elements"][0]["text"] = "Zebra Institute Diploma"
    document["logo"]["image"] = "zebra-logo.png"
    logo = (
        Path(__file__).resolve().parents[2] / "certificate_render/templates/default-logo.png"
    ).read_bytes()
    (tmp_path / "zebra-logo.png").write_bytes(logo)
    (tmp_path / "zebra.json").write_text(json.dumps(document), "utf-8")
    capsys.readouterr()

    # An image the Worker cannot draw (not PNG or JPEG) is refused before anything is written.
    (tmp_path / "odd.json").write_text(
        json.dumps({**document, "logo": {**document["logo"], "image": "odd.gif"}})
    )
    gif = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (4, 4), "red").save(gif, "GIF")
    (tmp_path / "odd.gif").write_bytes(gif.getvalue())
    odd = ["certificates", "template", "set", "--company", str(company), "--template-id", "odd"]
    assert main([*odd, str(tmp_path / "odd.json")]) == 1
    assert "not PNG or JPEG" in capsys.readouterr().err
    assert _objects(worker_dev).get(f"templates/company-{company}/odd.json") is None

    set_ = ["certificates", "template", "set", "--company", str(company), "--template-id", "zebra"]
    assert main([*set_, str(tmp_path / "zebra.json")]) == 0
    assert "template 'zebra' of company 5 stored (1 images)" in capsys.readouterr().out
    assert _objects(worker_dev).get(f"templates/company-{company}/zebra-logo.png") == logo
    show = ["certificates", "template", "show", "--company", str(company), "--template-id", "zebra"]
    assert main(show) == 0
    assert json.loads(capsys.readouterr().out)["elements"][0]["text"] == "Zebra Institute Diploma"

    # A certificate batch naming the template, rendered by the Worker.
    job = f"tpl-{time.time_ns()}"
    code = f"Z{time.time_ns() % 10**12:012d}"
    batch = {
        "type": "certificate_batch",
        "contract_version": 1,
        "batch_id": f"b-{job}",
        "job_id": job,
        "company_id": company,
        "attempt": 1,
        "created_at": int(time.time()),
        "callback": {"url": "https://moodle.example/callbacks/v1/results", "key_id": f"k1.c{company}"},
        "sender": {"address": "noreply@example.org", "name": "Zebra"},
        "template_id": "zebra",
        "verify_url_base": "https://offload.example/v1/certificates/verify/",
        "delivery": "store_only",
        "contents": {"c-1": {"kind": "rendered", "subject": "Your certificate", "html": "<p>Done</p>"}},
        "recipients": [
            {
                "recipient_id": "r-1",
                "name": "Léa Ørsted",
                "content_id": "c-1",
                "certificate": {
                    "learner_name": "Léa Ørsted",
                    "course_name": "Ladders",
                    "completed_at": 1764400000,
                    "verification_code": code,
                },
            }
        ],
    }
    worker = WorkerSubmitter(worker_dev.base_url, "k1", decode_root_secret(ROOT))
    worker.submit("certificate_batch", f"b-{job}", company, encode_message(batch))
    deadline = time.monotonic() + 60
    results: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not results:
        time.sleep(1)
        entries = worker.pull_results(company, None)["entries"]
        results = [r for e in entries for r in e["result_batch"]["results"] if r["job_id"] == job]
    (result,) = results
    assert result["status"] == "rendered", result
    key = result["artifact"]["key"]
    assert key == f"certificates/company-{company}/{job}/r-1.pdf"

    # Read back as the dashboard reads a Cloudflare job's PDFs.
    config = SimpleNamespace(keys=KEYS, cloudflare=CloudflareConfig(intake_url=worker_dev.base_url))
    store = WorkerCertificates(config)  # type: ignore[arg-type]
    pdf = b"".join(store.open(key))
    assert pdf.startswith(b"%PDF") and len(pdf) == result["artifact"]["bytes"]
    text = _pdf_text(pdf, tmp_path)
    assert "Zebra Institute Diploma" in text and "Léa Ørsted" in text
    assert "Certificate of Completion" not in text
    row = SimpleNamespace(id=1, address="lea@example.org", artifactkey=key)
    archive = zipfile.ZipFile(io.BytesIO(b"".join(zip_stream(store, [row]))))
    (name,) = archive.namelist()
    assert archive.read(name) == pdf
    missing = SimpleNamespace(
        id=2, address="x@example.org", artifactkey=f"certificates/company-{company}/{job}/r-9.pdf"
    )
    with pytest.raises(WorkerObjectError, match="404"):
        b"".join(zip_stream(store, [missing]))

    # Revoked and reinstated from the bridge (`certificates revoke`): the Worker's verify route says so.
    engine = sa.create_engine(env["MRCO_DATABASE_URL"])
    with engine.begin() as conn:
        jobid = add_job(conn, T, company, [50], ["rendered"])
        conn.execute(
            T.jobs.update().where(T.jobs.c.id == jobid).values(jobtype="certificate", provider="cloudflare")
        )
        rid = conn.execute(sa.select(T.recipients.c.id).where(T.recipients.c.jobid == jobid)).scalar_one()
        conn.execute(
            T.certificates.insert().values(companyid=company, userid=50, recipientid=rid, verifycode=code)
        )
        conn.execute(T.recipients.update().where(T.recipients.c.id == rid).values(artifactkey=key))
    engine.dispose()
    # `certificates download` of the Cloudflare job: the ZIP streamed from the Worker's R2.
    zipped = tmp_path / "job.zip"
    assert main(["certificates", "download", str(jobid), "-o", str(zipped)]) == 0
    with zipfile.ZipFile(zipped) as job_zip:
        assert [job_zip.read(n) for n in job_zip.namelist()] == [pdf]
    link = f"{worker_dev.base_url}/v1/certificates/verify/{code}?format=json"
    assert httpx.get(link, timeout=30).json()["valid"] is True
    assert main(["certificates", "revoke", code, "--reason", "issued in error"]) == 0
    assert f"certificate {code} (company {company}" in capsys.readouterr().out
    revoked = httpx.get(link, timeout=30).json()
    assert revoked["valid"] is False and isinstance(revoked["revoked_at"], int)
    assert main(["certificates", "unrevoke", code, "--reason", "confirmed"]) == 0
    assert httpx.get(link, timeout=30).json()["valid"] is True
    # Another company's key cannot revoke it: the Worker answers 404 and nothing changes.
    other = WorkerSubmitter(worker_dev.base_url, "k1", decode_root_secret(ROOT))
    assert other.set_certificate_revoked(company + 1, code, "not mine") is False
    assert httpx.get(link, timeout=30).json()["valid"] is True


def test_a_scheduled_report_for_a_cloudflare_company_is_mailed_with_its_file_from_r2(
    worker_dev: WorkerDev, db_engine: sa.Engine, db_url: Any, repo: Any
) -> None:
    """The report file goes into the Worker's R2 through the object route (store r2); the Worker
    reads it back, checks its size and SHA-256 (a mismatch would fail the recipient) and mails it
    to the company manager once."""
    site = Site(db_engine)
    migrate(site.engine, "mdl_")
    boss = f"boss.{time.time_ns()}@example.com"
    # Company 2: the Worker is shared by this module's tests and keeps (job, recipient) ids per
    # company exactly once, and each test's bridge database starts its ids at 1.
    site.user(30, company=2, managertype=1, lastaccess=T0, email=boss)
    for uid in (10, 11):
        site.user(uid, company=2, lastaccess=T0)
        site.enrol(uid, T0 - 60 * DAY, started=T0 - 50 * DAY, done=T0 - DAY)
    with site.engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(2, cloudenabled=True, provider="cloudflare"), "test")
        sid = create_schedule(conn, repo, report_values(companyid=2, format="csv"), actor="test", at=T0)
    config = _config(db_url, worker_dev)
    [fired] = run_due(site.engine, repo, config, at=SLOT1 + 60, upload=None)
    assert (fired.outcome, fired.rows, fired.recipients) == ("queued", 2, 1), fired.notes
    with site.engine.connect() as conn:
        row = ScheduleRepo(repo.t).get(conn, sid)
        (job,) = conn.execute(sa.select(repo.t.jobs)).all()
    key = attachment_key(row, SLOT1)
    stored = _objects(worker_dev).get(key)
    assert stored is not None and b"First10" in stored and b"First11" in stored
    (attachment,) = json.loads(job.template)["attachments"]
    assert attachment["ref"]["store"] == "r2" and attachment["ref"]["key"] == key

    submitters = build_submitters(config)
    assert _until_sent(site.engine, config, submitters, 1) == ["sent"]
    assert worker_dev.sent_to()[boss] == 1
