"""Benchmark: claim, create and submit a 50,000-recipient IOMAD queue on MariaDB.

Run alone with ``python -m bench.bridge_bench [--recipients N]``. Figures go to
``bench/results/bridge.json``:

- ``claim``: the claim pass (select due rows, expand the fan-out, park, claims, jobs,
  recipients, outbox batches) — wall time and statements sent to the server;
- ``submit``: the outbox building every batch from the recipient rows and IOMAD's rows and
  handing it to a submitter; measured once with a counting submitter (pure bridge + DB cost)
  and the SQS cost measured separately on moto (in-process), per batch;
- ``baseline``: IOMAD's own email cron (the simulation, per-row queries as the PHP does) on a
  sample of the same kind of rows with a no-op sink, extrapolated linearly to the full queue.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

from iomad_sim import scratch_databases
from iomad_sim.iomad_cron import run_iomad_email_cron
from iomad_sim.iomad_schema import create_iomad_schema
from iomad_sim.iomad_seed import SeedSpec, seed_iomad
from iomad_sim.smtp_sink import RecordingSmtpSink
from moodle_bridge.config import BridgeConfig, DatabaseConfig, KeysConfig, SubmitConfig
from moodle_bridge.pipeline.claiming import ClaimPass
from moodle_bridge.pipeline.iomad_contents import IomadRowContents
from moodle_bridge.pipeline.outbox import Outbox
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import StatementCounter, create_bridge_engine
from moodle_bridge.storage.migrations import migrate
from moodle_bridge.storage.secrets_at_rest import SecretBox
from moodle_bridge.transports.targets import SqsSubmitter
from offload_contract.signing import generate_root_secret

SERVER = os.environ.get("MRCO_BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/")
RESULTS = Path(__file__).parent / "results" / "bridge.json"
#: seed_iomad queues user_create + license_allocated per learner; both are "user templates",
#: so each row goes to the learner and the company's manager: 4 recipients per learner.
RECIPIENTS_PER_LEARNER = 4


class CountingSubmitter:
    target = "sqs"

    def __init__(self) -> None:
        self.batches = 0
        self.bytes = 0

    def submit(self, message_type: str, batch_id: str, company_id: int, body: bytes) -> str:
        self.batches += 1
        self.bytes += len(body)
        return f"m-{batch_id}"


def _database() -> tuple[sa.Engine, URL]:
    url = scratch_databases.create_database("mariadb", "bench", SERVER)
    return create_bridge_engine(url), url


def _drop(url: URL) -> None:
    scratch_databases.drop_database("mariadb", url, SERVER)


def _config(engine: sa.Engine) -> BridgeConfig:
    return BridgeConfig(
        database=DatabaseConfig(url=engine.url.render_as_string(hide_password=False)),
        keys=KeysConfig(
            current="bench",
            keysets={"bench": generate_root_secret()},
            seal_keysets={"s1": generate_root_secret()},
        ),
        submit=replace(SubmitConfig(), sender_address="noreply@example.com"),
        password_key=base64.b64encode(os.urandom(32)).decode("ascii"),
    )


def _seed(engine: sa.Engine, learners: int, companies: int) -> Any:
    tables = create_iomad_schema(engine)
    spec = SeedSpec(
        companies=companies,
        users_per_company=max(1, learners // companies),
        now=int(time.time()) - 60,
        seed=7,
    )
    return tables, seed_iomad(engine, tables, spec)


def bench_bridge(recipients: int) -> dict[str, Any]:
    engine, url = _database()
    try:
        learners = recipients // RECIPIENTS_PER_LEARNER
        companies = 5
        t0 = time.perf_counter()
        tables, _seeded = _seed(engine, learners, companies)
        seed_seconds = time.perf_counter() - t0
        migrate(engine, "mdl_")
        repo = BridgeRepo(build_bridge_tables("mdl_"))
        config = _config(engine)
        with engine.begin() as conn:
            repo.set_offload_enabled(conn, True)
            for cid in range(1, companies + 1):
                repo.save_settings(conn, CompanySettings(cid, cloudenabled=True), "bench")
        box = SecretBox(config.password_key_bytes())
        counter = StatementCounter(engine)

        counter.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        claim = ClaimPass(engine, repo, tables, config, box=box).run()
        claim_seconds = time.perf_counter() - t0
        claim_cpu = time.process_time() - c0
        claim_statements = counter.count
        claim_verbs = dict(counter.by_verb)

        submitter = CountingSubmitter()
        counter.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        outbox = Outbox(engine, repo, config, {"sqs": submitter}, iomad=IomadRowContents(tables), box=box)
        report = outbox.submit_due()
        submit_seconds = time.perf_counter() - t0
        submit_cpu = time.process_time() - c0
        submit_statements = counter.count
        counter.close()

        sqs = _sqs_cost(engine, repo, config, tables, box, sample=min(20, report.submitted))
        overlap = _overlap_gain(engine, repo, config, tables, box, report.submitted)
        total = claim_seconds + submit_seconds
        return {
            "recipients_target": recipients,
            "rows_claimed": claim.claimed,
            "recipients": claim.recipients,
            "batches": claim.batches,
            "jobs": len(claim.jobs),
            "seed_seconds": round(seed_seconds, 2),
            "claim": {
                "seconds": round(claim_seconds, 3),
                "bridge_cpu_seconds": round(claim_cpu, 3),
                "statements": claim_statements,
                "by_verb": claim_verbs,
            },
            "submit_db_only": {
                "seconds": round(submit_seconds, 3),
                "bridge_cpu_seconds": round(submit_cpu, 3),
                "statements": submit_statements,
                "statements_per_batch": round(submit_statements / max(1, report.submitted), 2),
                "batches_submitted": report.submitted,
                "bytes": submitter.bytes,
            },
            "claim_create_submit_seconds": round(total, 3),
            "sqs_moto_seconds_per_batch": sqs,
            "queue_latency_model": overlap,
            "claim_create_submit_with_sqs_seconds_estimate": round(total + sqs * report.submitted, 3),
            "database": url.database,
            "load_average": list(os.getloadavg()),
        }
    finally:
        engine.dispose()
        _drop(url)


def _sqs_cost(
    engine: sa.Engine, repo: BridgeRepo, config: BridgeConfig, tables: Any, box: SecretBox, sample: int
) -> float:
    """Seconds per SendMessage of a real packed batch to SQS (moto in-process)."""
    if sample == 0:
        return 0.0
    import boto3  # noqa: PLC0415
    from moto import mock_aws  # noqa: PLC0415

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with mock_aws():
        client = boto3.client("sqs", region_name="eu-west-1")
        url = client.create_queue(QueueName="jobs", Attributes={"MaximumMessageSize": "1048576"})["QueueUrl"]
        submitter = SqsSubmitter(client, {"email_batch": url})
        outbox = Outbox(engine, repo, config, {}, iomad=IomadRowContents(tables), box=box)
        with engine.connect() as conn:
            bodies = [(row, outbox.build(conn, row)[0]) for row in repo.batch_rows(conn, limit=sample)]
        t0 = time.perf_counter()
        for batch, body in bodies:
            submitter.submit(batch.messagetype, batch.batchkey, batch.companyid, body)
        return round((time.perf_counter() - t0) / len(bodies), 4)


class LatencySubmitter(CountingSubmitter):
    """A queue that answers after a fixed network round trip (a model, not a measurement)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def submit(self, message_type: str, batch_id: str, company_id: int, body: bytes) -> str:
        time.sleep(self.seconds)
        return super().submit(message_type, batch_id, company_id, body)


def _overlap_gain(
    engine: sa.Engine, repo: BridgeRepo, config: BridgeConfig, tables: Any, box: SecretBox, batches: int
) -> dict[str, Any]:
    """The same submit pass with queue calls one at a time and overlapped, each over half of the
    (re-opened) batches, with every queue call taking ``latency`` seconds."""
    latency = 0.03  # an in-region SQS SendMessage of ~130 KB; far more from an on-premises Moodle
    t = repo.t
    with engine.begin() as conn:  # re-open the submitted batches (a bench-only reset)
        conn.execute(t.batches.update().values(status="pending", nexttry=0, leasetoken=None, tries=0))
        conn.execute(t.recipients.update().where(t.recipients.c.status == "queued").values(status="pending"))
    half = batches // 2
    out: dict[str, Any] = {"latency_seconds_per_call": latency, "batches_each": half}
    for name, concurrency in (("one_at_a_time", 1), ("overlapped", config.submit.concurrency)):
        run_config = replace(config, submit=replace(config.submit, concurrency=concurrency))
        outbox = Outbox(
            engine,
            repo,
            run_config,
            {"sqs": LatencySubmitter(latency)},
            iomad=IomadRowContents(tables),
            box=box,
        )
        t0 = time.perf_counter()
        outbox.submit_due(limit=half)
        out[name] = {"concurrency": concurrency, "seconds": round(time.perf_counter() - t0, 3)}
    out["speedup"] = round(out["one_at_a_time"]["seconds"] / out["overlapped"]["seconds"], 2)
    return out


def bench_iomad_baseline(sample_recipients: int, full_recipients: int) -> dict[str, Any]:
    engine, url = _database()
    try:
        learners = sample_recipients // RECIPIENTS_PER_LEARNER
        tables, _ = _seed(engine, learners, 1)
        sink = RecordingSmtpSink()
        t0 = time.perf_counter()
        run = run_iomad_email_cron(engine, "mdl_", str(url.database), sink, tables=tables)
        seconds = time.perf_counter() - t0
        factor = full_recipients / max(1, run.messages)
        return {
            "sample_rows": len(run.sent_rows),
            "sample_messages": run.messages,
            "sample_seconds": round(seconds, 3),
            "extrapolated_seconds_for_full_queue": round(seconds * factor, 1),
            "note": "IOMAD's cron as simulated (per-row queries, no-op SMTP): real SMTP adds one "
            "transaction per message on top",
        }
    finally:
        engine.dispose()
        _drop(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge_bench")
    parser.add_argument("--recipients", type=int, default=50_000)
    parser.add_argument("--baseline-sample", type=int, default=2_000)
    args = parser.parse_args(argv)
    bridge = bench_bridge(args.recipients)
    baseline = bench_iomad_baseline(args.baseline_sample, bridge["recipients"])
    result = {
        "benchmark": "bridge claim + create + submit on MariaDB",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "bridge": bridge,
        "baseline_iomad_cron": baseline,
        "goal_seconds": 10,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    b = bridge
    claim, submit = b["claim"], b["submit_db_only"]
    print(
        f"bridge: {b['recipients']} recipients, {b['batches']} batches: claim {claim['seconds']} s "
        f"({claim['statements']} statements, {claim['bridge_cpu_seconds']} s CPU), "
        f"submit {submit['seconds']} s ({submit['statements']} statements, "
        f"{submit['bridge_cpu_seconds']} s CPU); total {b['claim_create_submit_seconds']} s; "
        f"SQS (moto) {b['sqs_moto_seconds_per_batch']} s/batch"
    )
    o = b["queue_latency_model"]
    print(
        f"submit with {o['latency_seconds_per_call'] * 1000:.0f} ms per queue call, "
        f"{o['batches_each']} batches: {o['one_at_a_time']['seconds']} s one at a time, "
        f"{o['overlapped']['seconds']} s overlapped ({o['speedup']}x)"
    )
    print(
        f"baseline IOMAD cron: {baseline['sample_messages']} messages in {baseline['sample_seconds']} s, "
        f"~{baseline['extrapolated_seconds_for_full_queue']} s for {b['recipients']}"
    )
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
