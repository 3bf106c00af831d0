"""/metrics, /healthz and JSON logs on the real receiver app, on every database engine."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from dataclasses import replace
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from moodle_bridge.config import AwsConfig, BridgeConfig, KeysConfig
from moodle_bridge.logs import configure_logging, log_context
from moodle_bridge.operations.health import HealthProbe
from moodle_bridge.operations.metrics import observe_tick
from moodle_bridge.operations.probes import aws_clients
from moodle_bridge.results.receiver import RESULTS_PATH, create_app
from moodle_bridge.storage.database import StatementCounter
from tests.results.factory import NOW, create_job, make_tables, result, result_batch
from tests.results.test_receiver import CLOCK, OTHER_ROOT, ROOT, envelope, signed


def _config(**keys: Any) -> BridgeConfig:
    return replace(BridgeConfig(), keys=KeysConfig(**(keys or {"current": "k1", "keysets": {"k1": ROOT}})))


def _sample(text: str, name: str, labels: str = "") -> float:
    """The value of one series in Prometheus text (0 when absent)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def world(db_engine: sa.Engine) -> Any:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, company_id=7, recipients=4, email_id_start=None)
        conn.execute(
            tables.claims.insert().values(
                emailid=555, companyid=7, state="claimed", originaldue=NOW, timeclaimed=CLOCK - 100
            )
        )
        conn.execute(
            tables.batches.insert().values(
                jobid=job.job_id,
                batchkey="pending-1",
                status="pending",
                target="sqs",
                recipientcount=1,
                lasterror="SQS: ServiceUnavailable",
                timecreated=CLOCK - 40,
            )
        )
    return db_engine, tables, job


def test_metrics_show_the_pipeline_and_the_callbacks(world: Any) -> None:
    engine, tables, job = world
    app = create_app(engine, tables, _config(), clock=lambda: CLOCK)
    with TestClient(app) as client:
        before = client.get("/metrics").text
        batch = result_batch(
            7,
            [
                result(job, 0, "sent"),
                result(job, 1, "sent"),
                result(job, 2, "bounced", message_id="m2"),
                result(job, 3, "complained", message_id="m3"),
            ],
            batch_id=job.batch_key,
        )
        body = envelope(batch)
        assert client.post(RESULTS_PATH, content=body, headers=signed(body)).status_code == 200
        forged = client.post(RESULTS_PATH, content=body, headers=signed(body, root=OTHER_ROOT))
        assert forged.status_code == 401
        counter = StatementCounter(engine)
        with counter.measure():
            response = client.get("/metrics")
        counter.close()
    assert counter.count == 7  # docs/operations.md: seven queries per scrape, none per row
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _sample(text, "mrco_database_up") == 1
    accepted = 'outcome="accepted",reason="ok"'
    rejected = 'outcome="rejected",reason="bad_signature"'
    assert (
        _sample(text, "mrco_callbacks_total", accepted) - _sample(before, "mrco_callbacks_total", accepted)
        == 1
    )
    assert (
        _sample(text, "mrco_callbacks_total", rejected) - _sample(before, "mrco_callbacks_total", rejected)
        == 1
    )
    assert _sample(text, "mrco_results_ingested_total") == 4
    assert _sample(text, "mrco_result_reports_total") == 1
    assert _sample(text, "mrco_outbox_batches", 'status="pending"') == 1
    assert _sample(text, "mrco_outbox_oldest_pending_age_seconds") == 40
    assert _sample(text, "mrco_outbox_batches_failing") == 1
    assert _sample(text, "mrco_oldest_parked_row_age_seconds") == 100
    assert _sample(text, "mrco_claims", 'state="claimed"') == 1
    assert "# TYPE mrco_claims gauge" in text  # a state's count goes down as rows settle
    assert _sample(text, "mrco_recipients_reached", 'company="7"') == 4
    assert _sample(text, "mrco_bounce_rate", 'company="7"') == 0.25
    assert _sample(text, "mrco_complaint_rate", 'company="7"') == 0.25
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                sa.select(tables.jobs.c.status, sa.func.count()).group_by(tables.jobs.c.status)
            ).all()
        )
    for status, count in statuses.items():
        assert _sample(text, "mrco_jobs", f'status="{status}"') == count
    assert "@" not in text and ROOT not in text  # no address, no key


def test_openmetrics_on_request_and_tick_counters(world: Any) -> None:
    engine, tables, _ = world

    class Claim:
        claimed = 5
        left_local = {"below_threshold": 3, "not_routed": 2}

    class Outbox:
        retried = 2
        abandoned = 0

    class Report:
        claim = Claim()
        outbox = Outbox()

    with TestClient(create_app(engine, tables, _config(), clock=lambda: CLOCK)) as client:
        before = client.get("/metrics").text
        observe_tick(Report())
        response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    text = response.text
    assert text.rstrip().endswith("# EOF")
    left = 'reason="below_threshold"'
    assert (
        _sample(text, "mrco_rows_left_local_total", left)
        - _sample(before, "mrco_rows_left_local_total", left)
        == 3
    )
    assert _sample(text, "mrco_submit_errors_total") - _sample(before, "mrco_submit_errors_total") == 2
    assert _sample(text, "mrco_claim_pass_rows_total") - _sample(before, "mrco_claim_pass_rows_total") == 5


@pytest.mark.sqlite
def test_healthz_reports_database_and_cloud_targets(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'h.sqlite3'}")
    tables = make_tables(engine)
    with mock_aws():
        url = boto3.client("sqs", region_name="eu-west-1").create_queue(QueueName="jobs")["QueueUrl"]
        good = replace(_config(), aws=replace(AwsConfig(), jobs_queue_url=url))
        app = create_app(engine, tables, good, health=HealthProbe(engine, good, clients=aws_clients(good)))
        with TestClient(app) as client:
            ok = client.get("/healthz")
        assert ok.status_code == 200 and ok.json() == {
            "status": "ok",
            "database": "ok",
            "cloud": {"queue jobs": "ok"},
        }

        bad = replace(_config(), aws=replace(AwsConfig(), jobs_queue_url=url.replace("/jobs", "/gone")))
        app = create_app(engine, tables, bad, health=HealthProbe(engine, bad, clients=aws_clients(bad)))
        with TestClient(app) as client:
            degraded = client.get("/healthz")
        assert degraded.status_code == 200 and degraded.json()["status"] == "degraded"
        assert degraded.json()["cloud"] == {"queue gone": "unreachable"}

    broken = sa.create_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.sqlite3'}")
    with TestClient(create_app(broken, tables, _config())) as client:
        down = client.get("/healthz")
        metrics = client.get("/metrics").text
    assert down.status_code == 503 and down.json() == {"status": "unavailable", "database": "unreachable"}
    assert _sample(metrics, "mrco_database_up") == 0


def test_json_logs_carry_the_ids(world: Any) -> None:
    engine, tables, job = world
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    try:
        app = create_app(
            engine, tables, _config(current="k2", keysets={"k1": ROOT, "k2": OTHER_ROOT}), clock=lambda: CLOCK
        )
        with TestClient(app) as client:
            body = envelope(
                result_batch(7, [result(job, 0, "sent")], batch_id=job.batch_key, report_id="r-json")
            )
            forged = client.post(
                RESULTS_PATH, content=body, headers=signed(body, keyset="k1", root=OTHER_ROOT)
            )
            assert forged.status_code == 401
        with log_context(job_id=job.job_id, company_id=7):
            logging.getLogger("moodle_bridge.test").info("inside a job", extra={"batch_id": "j1-a1-b1"})
    finally:
        configure_logging("human", "WARNING")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines, "no log line"
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= set(line)
    rejection = next(line for line in lines if line["message"].startswith("callback rejected"))
    assert rejection["level"] == "warning" and rejection["reason"] == "bad_signature"
    assert rejection["key_id"] == "k1.c7" and rejection["status"] == 401
    inside = next(line for line in lines if line["message"] == "inside a job")
    assert inside["job_id"] == job.job_id and inside["company_id"] == 7 and inside["batch_id"] == "j1-a1-b1"
    assert ROOT not in stream.getvalue() and OTHER_ROOT not in stream.getvalue()


def test_hmac_key_set_rotation_keeps_in_flight_callbacks(world: Any) -> None:
    """docs/INSTALL.md, "Rotating the HMAC key set": add k2, switch, keep k1 for the window."""
    engine, tables, job = world
    # Step 2 of the rotation: both sets configured, k2 signs; a callback for a batch the cloud
    # took before the switch is still signed with k1 and must apply.
    both = _config(current="k2", keysets={"k1": ROOT, "k2": OTHER_ROOT})
    with TestClient(create_app(engine, tables, both, clock=lambda: CLOCK)) as client:
        old = envelope(result_batch(7, [result(job, 0, "sent")], batch_id=job.batch_key))
        assert (
            client.post(RESULTS_PATH, content=old, headers=signed(old, keyset="k1", root=ROOT)).status_code
            == 200
        )
        new = envelope(result_batch(7, [result(job, 1, "sent")], batch_id=job.batch_key))
        headers = signed(new, keyset="k2", root=OTHER_ROOT)
        assert client.post(RESULTS_PATH, content=new, headers=headers).status_code == 200
    # Step 4: k1 removed after the window; a late k1 callback is refused with a stable code.
    only_new = _config(current="k2", keysets={"k2": OTHER_ROOT})
    with TestClient(create_app(engine, tables, only_new, clock=lambda: CLOCK)) as client:
        late = envelope(result_batch(7, [result(job, 2, "sent")], batch_id=job.batch_key))
        refused = client.post(RESULTS_PATH, content=late, headers=signed(late, keyset="k1", root=ROOT))
    assert refused.status_code == 401 and refused.json()["error"] == "unknown_key"


def test_a_pass_in_this_process_feeds_the_process_counters(bridge_engine, db_url, repo, aws) -> None:
    """The long-running service runs passes in its own process: their figures reach /metrics."""
    from moodle_bridge.commands.tick import build_submitters, run_tick
    from moodle_bridge.operations.metrics import PROCESS_REGISTRY
    from tests.bridge.conftest import make_config, with_queues
    from tests.bridge.test_claim_and_submit import _setup

    world = _setup(bridge_engine, repo, threshold=5)
    world.queue("license_allocated", 10, 1)
    config = with_queues(make_config(db_url), aws)

    def value(name: str, **labels: str) -> float:
        return PROCESS_REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("mrco_rows_left_local_total", reason="below_threshold")
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.left_local.get("below_threshold") == 1
    assert value("mrco_rows_left_local_total", reason="below_threshold") - before == 1


def test_log_formats_human_by_default_json_off_a_terminal_in_auto() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    try:
        for fmt, stream, is_json in (
            ("human", io.StringIO(), False),
            ("auto", io.StringIO(), True),
            ("auto", Terminal(), False),
            ("json", Terminal(), True),
        ):
            configure_logging(fmt, "INFO", stream=stream)
            logging.getLogger("moodle_bridge.test").warning("hello", extra={"job_id": 5})
            line = stream.getvalue().strip()
            if is_json:
                assert json.loads(line)["job_id"] == 5, (fmt, line)
            else:
                assert line.endswith("WARNING moodle_bridge.test hello job_id=5"), (fmt, line)
    finally:
        configure_logging("human", "WARNING")
