"""Certificates of a job: list, one PDF, a streamed ZIP of all, read from S3 (moto in-process)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import replace

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws

from moodle_bridge.web.certificates import S3Certificates
from tests.web.conftest import Site
from tests.web.world import add_job

BUCKET = "mrco-test-certificates"


@pytest.fixture
def certified(site: Site) -> Iterator[tuple[Site, int, dict[int, bytes]]]:
    w = site.world
    c1 = w.companies[0]
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        with site.engine.begin() as conn:
            job = add_job(conn, w.tables, c1, w.learners[c1], ["rendered"] * 4 + ["failed"])
            r = w.tables.recipients
            ids = [
                int(x)
                for x in conn.execute(sa.select(r.c.id).where(r.c.jobid == job).order_by(r.c.id)).scalars()
            ]
            pdfs = {}
            for rid in ids[:4]:
                key = f"certificates/c{c1}/{job}/{rid}.pdf"
                pdfs[rid] = b"%PDF-1.7\n" + f"certificate {rid}".encode() * 2000 + b"\n%%EOF\n"
                s3.put_object(Bucket=BUCKET, Key=key, Body=pdfs[rid])
                conn.execute(r.update().where(r.c.id == rid).values(artifactkey=key))
        store_config = replace(site.config, aws=replace(site.config.aws, content_bucket=BUCKET))
        site.app.state.dashboard.certificate_store = S3Certificates(
            store_config, boto3.client("s3", region_name="eu-west-1")
        )
        yield site, job, pdfs


def test_list_single_download_and_zip(certified: tuple[Site, int, dict[int, bytes]]) -> None:
    site, job, pdfs = certified
    w = site.world
    client = site.signed_in(w.managers[w.companies[0]], w.companies[0])
    listing = client.get(f"/jobs/{job}/certificates")
    assert listing.status_code == 200 and listing.text.count('.pdf" download>') == 4
    first = min(pdfs)
    one = client.get(f"/jobs/{job}/certificates/{first}.pdf")
    assert one.status_code == 200 and one.content == pdfs[first]
    assert one.headers["content-type"] == "application/pdf"
    assert f"certificate-{first}-learner" in one.headers["content-disposition"]
    archive = client.get(f"/jobs/{job}/certificates.zip")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        assert z.testzip() is None
        contents = {int(name.split("-")[1]): z.read(name) for name in z.namelist()}
    assert contents == pdfs
    a = w.tables.audit_log
    with site.engine.connect() as conn:
        actions = list(conn.execute(sa.select(a.c.action).where(a.c.jobid == job)).scalars())
    assert actions.count("certificate_downloaded") == 1 and actions.count("certificates_downloaded") == 1


def test_other_company_and_missing_certificates_are_404(
    certified: tuple[Site, int, dict[int, bytes]],
) -> None:
    site, job, pdfs = certified
    w = site.world
    other = site.signed_in(w.managers[w.companies[1]], w.companies[1])
    assert other.get(f"/jobs/{job}/certificates").status_code == 404
    assert other.get(f"/jobs/{job}/certificates/{min(pdfs)}.pdf").status_code == 404
    assert other.get(f"/jobs/{job}/certificates.zip").status_code == 404
    mine = site.signed_in(w.managers[w.companies[0]], w.companies[0])
    failed = max(pdfs) + 1  # the failed recipient has no certificate
    assert mine.get(f"/jobs/{job}/certificates/{failed}.pdf").status_code == 404
    assert mine.get(f"/jobs/{w.jobs['done']}/certificates.zip").status_code == 404


def test_a_missing_object_is_a_clear_error(certified: tuple[Site, int, dict[int, bytes]]) -> None:
    site, job, pdfs = certified
    w = site.world
    boto3.client("s3", region_name="eu-west-1").delete_object(
        Bucket=BUCKET, Key=f"certificates/c{w.companies[0]}/{job}/{min(pdfs)}.pdf"
    )
    client = site.signed_in(w.admin)
    response = client.get(f"/jobs/{job}/certificates/{min(pdfs)}.pdf")
    assert response.status_code == 502 and "could not be read" in response.text
