"""Store-only certificates end to end on every engine, AWS in moto: the bridge finds a completion
IOMAD did not mail, the real renderer Lambda stores its PDF and reports ``rendered`` without any
SES call, the bridge ingests the result, and the job's ZIP holds the PDF."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from lambdas.handlers import certificate_renderer
from moodle_bridge.commands.certificate_download import write_zip
from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.config import AwsConfig, CallbackConfig
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.pipeline.store_only import GRACE_SECONDS
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from moodle_bridge.storage.migrations import migrate
from moodle_bridge.transports.certificate_store import S3Certificates
from tests.bridge.conftest import make_config
from tests.bridge.iomad_world import IomadWorld
from tests.lambdas.conftest import ENV, REGION, Aws, FakeContext, sqs_event

T = build_bridge_tables("mdl_")


@pytest.fixture
def bridge(db_url: URL) -> Iterator[sa.Engine]:
    engine = create_bridge_engine(db_url)
    migrate(engine, "mdl_")
    try:
        yield engine
    finally:
        engine.dispose()


def test_store_only_completion_is_rendered_stored_and_never_mailed(
    aws: Aws, bridge: sa.Engine, db_url: URL, tmp_path: Path
) -> None:
    certificate_renderer.renderer.cache_clear()
    repo = BridgeRepo(T)
    world = IomadWorld.create(bridge)
    world.add_company(1)
    world.add_user(10, "lea@example.com", "Lea", "Rner", companyid=1)
    world.add_user(11, "ole@example.com", "Ole", "Sen", companyid=1)
    world.add_course(5, "Workplace Safety 101")
    with bridge.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True, allowcertificates=True), "test")
    done = int(time.time()) - GRACE_SECONDS - 60
    world.complete(10, 5, 1, done)
    world.complete(11, 5, 1, done + 1)
    config = replace(
        make_config(db_url, verify_url_base="https://offload.example/v1/certificates/verify/"),
        aws=AwsConfig(
            region=REGION,
            certificates_queue_url=aws.certificates_url,
            jobs_queue_url=aws.jobs_url,
            results_queue_url=aws.results_url,
            content_bucket=ENV["CERTIFICATE_BUCKET"],
        ),
        callbacks=replace(CallbackConfig(), results_mode="pull"),
    )
    submitters = build_submitters(config, sqs_client=aws.sqs)
    first = run_tick(bridge, config, submitters=submitters)
    assert first.store_only is not None and first.store_only.certificates == 2
    (jobid,) = first.store_only.jobs

    messages = aws.drain(aws.certificates_url)
    assert len(messages) == 1
    certificate_renderer.handler(sqs_event(*(m["Body"] for m in messages)), FakeContext())
    # Stored, verifiable, and nobody mailed: no email batch forwarded, no SES call.
    assert aws.drain(aws.jobs_url) == []
    assert aws.ses.sent_messages() == []
    listing = aws.s3.list_objects_v2(
        Bucket=ENV["CERTIFICATE_BUCKET"], Prefix=f"certificates/company-1/{jobid}/"
    )
    assert len(listing.get("Contents", [])) == 2

    run_tick(bridge, config, submitters=submitters)  # pulls the results (pull mode) and settles
    with bridge.connect() as conn:
        rows = conn.execute(
            sa.select(T.recipients.c.status, T.recipients.c.artifactkey).where(T.recipients.c.jobid == jobid)
        ).all()
        job = repo.job(conn, jobid)
    assert {r.status for r in rows} == {"rendered"} and all(r.artifactkey for r in rows)
    assert job is not None and job.status == "completed" and int(job.recipientssent) == 2

    output = tmp_path / "job.zip"
    count, _ = write_zip(bridge, repo, S3Certificates(config, aws.s3), jobid, output)
    assert count == 2
    with zipfile.ZipFile(output) as archive:
        assert archive.testzip() is None
        assert all(archive.read(n).startswith(b"%PDF-") for n in archive.namelist())
        assert sorted(n.split("-", 2)[2] for n in archive.namelist()) == [
            "lea@example.com.pdf",
            "ole@example.com.pdf",
        ]

    # A later pass finds nothing new: one certificate per completion.
    again = run_tick(bridge, config, submitters=submitters)
    assert again.store_only is not None and again.store_only.certificates == 0
    certificate_renderer.renderer.cache_clear()
