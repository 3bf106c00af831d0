"""A Cloudflare job's certificates are read from the Worker's R2 (its signed object route), not
from S3: the dashboard picks the store by the job's provider. The read itself against the real
Worker is tested in tests/bridge/test_worker_objects_e2e.py (wrangler dev)."""

from __future__ import annotations

from dataclasses import replace

import sqlalchemy as sa

from moodle_bridge.config import CloudflareConfig, KeysConfig
from offload_contract.signing import generate_root_secret
from tests.web.conftest import Site
from tests.web.world import add_job


def _cloudflare_job(site: Site) -> tuple[int, int]:
    w = site.world
    c1 = w.companies[0]
    with site.engine.begin() as conn:
        job = add_job(conn, w.tables, c1, w.learners[c1], ["rendered"] * 2)
        conn.execute(w.tables.jobs.update().where(w.tables.jobs.c.id == job).values(provider="cloudflare"))
        r = w.tables.recipients
        rid = int(conn.execute(sa.select(sa.func.min(r.c.id)).where(r.c.jobid == job)).scalar_one())
        conn.execute(
            r.update().where(r.c.jobid == job).values(artifactkey=f"certificates/company-{c1}/{job}/x.pdf")
        )
    return job, rid


def test_a_cloudflare_jobs_certificates_come_from_the_worker_not_s3(site: Site) -> None:
    job, rid = _cloudflare_job(site)
    w = site.world
    client = site.signed_in(w.managers[w.companies[0]], w.companies[0])
    # No Worker URL configured: a clear 503 naming the setting (S3's would name the content bucket).
    one = client.get(f"/jobs/{job}/certificates/{rid}.pdf")
    assert one.status_code == 503 and "MRCO_CLOUDFLARE_INTAKE_URL" in one.text
    assert "MRCO_CONTENT_BUCKET" not in one.text
    archive = client.get(f"/jobs/{job}/certificates.zip")
    assert archive.status_code == 503 and "MRCO_CLOUDFLARE_INTAKE_URL" in archive.text

    # A Worker that does not answer: the download is refused as unavailable, nothing half-sent.
    state = site.app.state.dashboard
    state.config = replace(
        state.config,
        keys=KeysConfig(current="k1", keysets={"k1": generate_root_secret()}),
        cloudflare=CloudflareConfig(intake_url="http://127.0.0.1:9"),
    )
    state.worker_certificate_store = None
    down = client.get(f"/jobs/{job}/certificates/{rid}.pdf")
    assert down.status_code == 502 and "could not be read" in down.text
