"""``moodle-offload certificates download``: a job's certificates as one ZIP, streamed from S3
(moto) into a file with bounded memory, readable by zipfile, with safe recipient-based names."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws

from moodle_bridge.cli import main
from moodle_bridge.commands.certificate_download import write_zip
from moodle_bridge.config import AwsConfig, BridgeConfig
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.transports.certificate_store import S3Certificates, file_name
from tests.bridge.conftest import make_config

BUCKET = "mrco-test-certificates"
REGION = "eu-west-1"
PDF_BYTES = 256 * 1024
TRAVERSAL = "../../etc/passwd@example.com"


@pytest.fixture
def s3() -> Iterator[Any]:
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with mock_aws():
            client = boto3.client("s3", region_name=REGION)
            client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
            yield client
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pdf(n: int) -> bytes:
    """A distinct body per certificate (the ZIP stores, so size is what travels)."""
    seed = hashlib.sha256(str(n).encode()).digest()
    return b"%PDF-1.7\n" + (seed * (PDF_BYTES // len(seed) + 1))[: PDF_BYTES - 16] + b"\n%%EOF\n"


def _job(engine: sa.Engine, repo: BridgeRepo, s3: Any, count: int, provider: str = "aws") -> tuple[int, dict]:
    """A certificate job with ``count`` rendered recipients (PDFs in S3) and one failed one."""
    t = repo.t
    with engine.begin() as conn:
        jobid = repo.create_job(
            conn, companyid=1, jobtype="certificate", source="iomad", category="transactional",
            provider=provider, status="completed", createdby="test", timedeadline=0,
        )  # fmt: skip
        rows = [
            {
                "jobid": jobid,
                "companyid": 1,
                "userid": 100 + i,
                "role": "user",
                "address": TRAVERSAL if i == 0 else f"learner{i}@example.com",
                "fullname": f"Learner {i}",
                "dedupekey": f"k{i}",
                "status": "rendered" if i < count else "failed",
                "artifactkey": f"certificates/company-1/{jobid}/{i}.pdf" if i < count else None,
                "timecreated": 1,
                "timemodified": 1,
            }
            for i in range(count + 1)
        ]
        conn.execute(t.recipients.insert(), rows)
        stored = conn.execute(
            sa.select(t.recipients.c.id, t.recipients.c.address, t.recipients.c.artifactkey)
            .where(t.recipients.c.jobid == jobid, t.recipients.c.artifactkey.is_not(None))
            .order_by(t.recipients.c.id)
        ).all()
    expected = {}
    for n, row in enumerate(stored):
        body = _pdf(n)
        s3.put_object(Bucket=BUCKET, Key=row.artifactkey, Body=body)
        expected[file_name(row)] = body
    return jobid, expected


def _config(db_url: Any) -> BridgeConfig:
    config = make_config(db_url)
    return replace(config, aws=AwsConfig(region=REGION, content_bucket=BUCKET))


def test_zip_of_many_certificates_streams_with_bounded_memory(
    bridge_engine, db_url, repo, s3, tmp_path: Path
) -> None:
    jobid, expected = _job(bridge_engine, repo, s3, 120)
    total = sum(len(b) for b in expected.values())
    store = S3Certificates(_config(db_url), boto3.client("s3", region_name=REGION))
    output = tmp_path / "job.zip"
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        count, written = write_zip(bridge_engine, repo, store, jobid, output)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 120 and written == output.stat().st_size > total
    # 30 MiB of PDFs went through; the process never held more than a small fraction of it.
    assert peak < total / 10, (peak, total)
    with zipfile.ZipFile(output) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert sorted(names) == sorted(expected)
        for name in names:
            assert "/" not in name and "\\" not in name and not name.startswith(".")
            assert archive.read(name) == expected[name]
    traversal = next(n for n in names if "passwd" in n)
    assert traversal == "certificate-" + traversal.split("-")[1] + "-____etc_passwd@example.com.pdf"
    assert not (tmp_path / "job.zip.part").exists()


def test_cli_download_writes_the_zip_and_refuses_clearly(
    bridge_engine, db_url, repo, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    jobid, expected = _job(bridge_engine, repo, s3, 3)
    cf_job, _ = _job(bridge_engine, repo, s3, 1, provider="cloudflare")
    for name in [k for k in os.environ if k.startswith("MRCO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MRCO_DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.setenv("MRCO_AWS_REGION", REGION)
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "certs.zip"
    assert main(["certificates", "download", str(jobid), "-o", str(output)]) == 1
    assert "MRCO_CONTENT_BUCKET" in capsys.readouterr().err and not output.exists()
    monkeypatch.setenv("MRCO_CONTENT_BUCKET", BUCKET)
    output.unlink(missing_ok=True)
    assert main(["certificates", "download", str(jobid), "-o", str(output)]) == 0
    out = capsys.readouterr().out
    assert f"wrote 3 certificates of job {jobid}" in out
    with zipfile.ZipFile(output) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == expected
    # Refusals: one line each, non-zero, nothing written.
    assert main(["certificates", "download", str(jobid), "-o", str(output)]) == 1
    assert "exists (use --force" in capsys.readouterr().err
    assert main(["certificates", "download", "999999", "-o", str(tmp_path / "x.zip")]) == 1
    assert "does not exist" in capsys.readouterr().err
    # A Cloudflare job's PDFs are read from the Worker's R2 (tests/bridge/test_worker_objects_e2e.py);
    # with no Worker URL configured it is refused.
    assert main(["certificates", "download", str(cf_job), "-o", str(tmp_path / "cf.zip")]) == 1
    assert "MRCO_CLOUDFLARE_INTAKE_URL" in capsys.readouterr().err
    assert not (tmp_path / "cf.zip").exists()
    s3.delete_object(Bucket=BUCKET, Key=f"certificates/company-1/{jobid}/1.pdf")
    assert main(["certificates", "download", str(jobid), "-o", str(output), "--force"]) == 1
    err = capsys.readouterr().err
    assert "could not be read" in err and "Traceback" not in err
    # The complete ZIP of the first download is still there; no partial file is left behind.
    with zipfile.ZipFile(output) as archive:
        assert len(archive.namelist()) == 3
    assert not (tmp_path / "certs.zip.part").exists()
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "cf.zip").exists()
