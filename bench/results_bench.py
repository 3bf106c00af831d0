"""Benchmark: ingest the results of 50,000 recipients on MariaDB (goal: <= 5 s).

Run alone: ``python -m bench.results_bench`` (writes ``bench/results/results.json``).

Set-up: 10 IOMAD-style jobs of 5,000 recipients (two recipients per IOMAD queue row, so 25,000
parked rows and claims), all ``queued``. Measured in one run:

* ``http_concurrency_1`` / ``_4``: 50 signed callbacks of 1,000 ``sent`` results each, POSTed to the
  real receiver (``moodle-offload serve``'s app on uvicorn, its own process, 127.0.0.1) one at a time
  and four at a time (the callback dispatcher runs concurrently), including signature checks, the
  nonce insert, contract validation, ingestion, counters, marking the IOMAD rows sent and closing
  the claims;
* ``direct``: the same 50 reports through ``ingest_result_batch`` (no HTTP);
* ``duplicates_again``: the same results again under new report ids (nothing changes);
* ``baseline``: a naive per-recipient ingestion (SELECT + UPDATE recipient + UPDATE job counter per
  result) on a 2,000-result sample, extrapolated to 50,000.

The database round trips are counted with bridge core's ``StatementCounter``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import URL

from iomad_sim import scratch_databases
from moodle_bridge.config import BridgeConfig, KeysConfig
from moodle_bridge.results.ingest import ingest_result_batch
from moodle_bridge.results.iomad_link import AdapterQueue
from moodle_bridge.results.receiver import RESULTS_PATH, create_app
from moodle_bridge.sources.iomad.queries import PARKED_DUE_BASE
from moodle_bridge.sources.iomad.schema import build_iomad_tables
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.database import StatementCounter, create_bridge_engine
from offload_contract.codec import encode_message
from offload_contract.signing import (
    decode_root_secret,
    derive_company_key,
    generate_root_secret,
    sign_request,
)

SERVER_URL = os.environ.get("MRCO_BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/")
JOBS = 10
PER_JOB = 5_000
PER_CALLBACK = 1_000
COMPANY = 7
BASELINE_SAMPLE = 2_000
OUT = Path(__file__).resolve().parent / "results" / "results.json"


def _create_database() -> tuple[URL, sa.Engine]:
    url = scratch_databases.create_database("mariadb", "bench_results", SERVER_URL)
    return url, create_bridge_engine(url)


def _drop_database(url: URL) -> None:
    scratch_databases.drop_database("mariadb", url, SERVER_URL)


def _seed(engine: sa.Engine, tables: BridgeTables, itables: Any, now: int) -> list[tuple[int, list[int]]]:
    jobs: list[tuple[int, list[int]]] = []
    with engine.begin() as conn:
        for j in range(JOBS):
            job_id = int(
                conn.execute(
                    tables.jobs.insert().values(
                        companyid=COMPANY,
                        jobtype="email",
                        source="iomad",
                        provider="aws",
                        status="queued",
                        recipientstotal=PER_JOB,
                        timecreated=now,
                        timemodified=now,
                        timesubmitted=now,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
            )
            first_email = 1 + j * PER_JOB // 2
            emails = list(range(first_email, first_email + PER_JOB // 2))
            for start in range(0, len(emails), 1000):
                part = emails[start : start + 1000]
                conn.execute(
                    itables.email.insert(),
                    [
                        {
                            "id": e,
                            "templatename": "user_create",
                            "modifiedtime": now,
                            "sent": None,
                            "subject": "s",
                            "body": "b",
                            "varsreplaced": 1,
                            "companyid": COMPANY,
                            "courseid": 1,
                            "userid": e,
                            "senderid": -20,
                            "headers": None,
                            "due": PARKED_DUE_BASE + now,
                        }
                        for e in part
                    ],
                )
                conn.execute(
                    tables.claims.insert(),
                    [
                        {
                            "emailid": e,
                            "companyid": COMPANY,
                            "jobid": job_id,
                            "templatename": "user_create",
                            "state": "claimed",
                            "originaldue": now,
                            "timeclaimed": now,
                        }
                        for e in part
                    ],
                )
            rows = [
                {
                    "jobid": job_id,
                    "companyid": COMPANY,
                    "emailid": first_email + i // 2,
                    "userid": i,
                    "role": "user" if i % 2 == 0 else "manager",
                    "address": f"learner{j}-{i}@example.org",
                    "dedupekey": f"d{i}",
                    "status": "queued",
                    "attempts": 1,
                    "batchid": None,
                    "timecreated": now,
                    "timemodified": now,
                }
                for i in range(PER_JOB)
            ]
            for start in range(0, len(rows), 1000):
                conn.execute(tables.recipients.insert(), rows[start : start + 1000])
            ids = [
                int(x)
                for x in conn.execute(
                    sa.select(tables.recipients.c.id)
                    .where(tables.recipients.c.jobid == job_id)
                    .order_by(tables.recipients.c.id)
                ).scalars()
            ]
            jobs.append((job_id, ids))
    return jobs


def _reset(engine: sa.Engine, tables: BridgeTables, itables: Any, now: int) -> None:
    r, j = tables.recipients, tables.jobs
    with engine.begin() as conn:
        conn.execute(
            r.update().values(status="queued", providermessageid=None, timefinal=None, timemodified=now)
        )
        conn.execute(
            j.update().values(status="queued", recipientssent=0, timecompleted=None, timemodified=now)
        )
        conn.execute(tables.claims.update().values(state="claimed", timefinal=None))
        conn.execute(itables.email.update().values(sent=None, due=PARKED_DUE_BASE + now))
        conn.execute(tables.result_reports.delete())
        conn.execute(tables.audit_log.delete())


def _reports(jobs: list[tuple[int, list[int]]], now: int, tag: str) -> list[dict[str, Any]]:
    out = []
    for job_id, ids in jobs:
        for start in range(0, len(ids), PER_CALLBACK):
            out.append(
                {
                    "type": "result_batch",
                    "contract_version": 1,
                    "report_id": f"{tag}-{job_id}-{start}",
                    "company_id": COMPANY,
                    "reporter": "email_sender",
                    "created_at": now,
                    "results": [
                        {
                            "job_id": str(job_id),
                            "recipient_id": str(rid),
                            "status": "sent",
                            "attempts": 1,
                            "occurred_at": now,
                            "provider_message_id": f"0100018f-{rid:012d}-ses",
                        }
                        for rid in ids[start : start + PER_CALLBACK]
                    ],
                }
            )
    return out


def _check(engine: sa.Engine, tables: BridgeTables) -> dict[str, Any]:
    with engine.connect() as conn:
        sent = conn.execute(
            sa.select(sa.func.count()).where(tables.recipients.c.status == "sent")
        ).scalar_one()
        counters = conn.execute(sa.select(sa.func.sum(tables.jobs.c.recipientssent))).scalar_one()
        completed = conn.execute(
            sa.select(sa.func.count()).where(tables.jobs.c.status == "completed")
        ).scalar_one()
        claims_done = conn.execute(
            sa.select(sa.func.count()).where(tables.claims.c.state == "completed")
        ).scalar_one()
    return {
        "recipients_sent": int(sent),
        "counter_sum": int(counters or 0),
        "jobs_completed": int(completed),
        "claims_completed": int(claims_done),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_direct(
    engine: sa.Engine, tables: BridgeTables, queue: AdapterQueue, reports: list[dict[str, Any]], now: int
) -> dict[str, Any]:
    counter = StatementCounter(engine)
    started = time.perf_counter()
    cpu_started = time.process_time()
    applied = duplicates = 0
    for report in reports:
        with engine.begin() as conn:
            out = ingest_result_batch(
                conn, tables, report, company_id=COMPANY, now=now, actor="bench", queue=queue
            )
        applied += out.applied
        duplicates += out.duplicates
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    counter.close()
    return {
        "seconds": round(seconds, 3),
        "python_cpu_seconds": round(cpu, 3),
        "statements": counter.count,
        "applied": applied,
        "duplicates": duplicates,
        "results_per_second": round(len(reports) * PER_CALLBACK / seconds),
    }


def _serve(url: str, root_b64: str, port: int) -> None:
    """The receiver as deployed: its own process, uvicorn on 127.0.0.1."""
    engine = create_bridge_engine(url, pool_size=8, max_overflow=4)
    itables = build_iomad_tables("mdl_")
    config = BridgeConfig(keys=KeysConfig(current="bench", keysets={"bench": root_b64}))
    app = create_app(engine, build_bridge_tables("mdl_"), config, queue=AdapterQueue(itables))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _run_http(
    engine: sa.Engine, reports: list[dict[str, Any]], root_b64: str, now: int, concurrency: int
) -> dict[str, Any]:
    port = _free_port()
    url = engine.url.render_as_string(hide_password=False)
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(url, root_b64, port), daemon=True
    )
    server.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        key = derive_company_key(decode_root_secret(root_b64), COMPANY)
        bodies = [
            encode_message(
                {
                    "contract_version": 1,
                    "message_type": "result_batch",
                    "message_id": r["report_id"],
                    "sent_at": now,
                    "message": r,
                }
            )
            for r in reports
        ]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:

            def post(body: bytes) -> int:
                headers = sign_request(key, f"bench.c{COMPANY}", "POST", RESULTS_PATH, body)
                response = client.post(
                    RESULTS_PATH, content=body, headers={**headers, "Content-Type": "application/json"}
                )
                response.raise_for_status()
                return int(response.json()["applied"])

            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                applied = sum(pool.map(post, bodies))
            seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.join(timeout=10)
    return {
        "seconds": round(seconds, 3),
        "concurrency": concurrency,
        "applied": applied,
        "callbacks": len(bodies),
        "body_bytes_each": len(bodies[0]),
        "results_per_second": round(len(reports) * PER_CALLBACK / seconds),
    }


def _run_baseline(
    engine: sa.Engine, tables: BridgeTables, reports: list[dict[str, Any]], now: int
) -> dict[str, Any]:
    """Naive ingestion: for each result SELECT the recipient, UPDATE it, UPDATE the job counter."""
    r, j = tables.recipients, tables.jobs
    sample = [item for report in reports for item in report["results"]][:BASELINE_SAMPLE]
    counter = StatementCounter(engine)
    started = time.perf_counter()
    for start in range(0, len(sample), PER_CALLBACK):
        with engine.begin() as conn:
            for item in sample[start : start + PER_CALLBACK]:
                rid = int(item["recipient_id"])
                status = conn.execute(sa.select(r.c.status).where(r.c.id == rid)).scalar_one()
                if status == "queued":
                    conn.execute(
                        r.update()
                        .where(r.c.id == rid)
                        .values(
                            status="sent",
                            providermessageid=item["provider_message_id"],
                            timefinal=now,
                            timemodified=now,
                        )
                    )
                    conn.execute(
                        j.update()
                        .where(j.c.id == int(item["job_id"]))
                        .values(recipientssent=j.c.recipientssent + 1)
                    )
    seconds = time.perf_counter() - started
    counter.close()
    per_result = seconds / len(sample)
    return {
        "sample": len(sample),
        "seconds": round(seconds, 3),
        "statements": counter.count,
        "extrapolated_seconds_for_50000": round(per_result * JOBS * PER_JOB, 2),
        "note": "no IOMAD settlement, no validation: a lower bound for the naive approach",
    }


def main() -> dict[str, Any]:
    now = int(time.time())
    load_start = [round(x, 2) for x in os.getloadavg()]
    url, engine = _create_database()
    try:
        tables = build_bridge_tables("mdl_")
        tables.metadata.create_all(engine)
        itables = build_iomad_tables("mdl_")
        itables.metadata.create_all(engine)
        queue = AdapterQueue(itables)
        seed_started = time.perf_counter()
        jobs = _seed(engine, tables, itables, now)
        seed_seconds = time.perf_counter() - seed_started
        with engine.connect() as conn:
            version = str(conn.execute(sa.text("SELECT version()")).scalar_one())

        root = generate_root_secret()
        runs: dict[str, Any] = {}
        for concurrency in (1, 4):
            _reset(engine, tables, itables, now)
            run = _run_http(engine, _reports(jobs, now, f"h{concurrency}"), root, now, concurrency)
            run["check"] = _check(engine, tables)
            runs[f"http_concurrency_{concurrency}"] = run
        duplicates = _run_direct(engine, tables, queue, _reports(jobs, now, "dup"), now)
        _reset(engine, tables, itables, now)
        direct = _run_direct(engine, tables, queue, _reports(jobs, now, "x"), now)
        direct["check"] = _check(engine, tables)
        _reset(engine, tables, itables, now)
        baseline = _run_baseline(engine, tables, _reports(jobs, now, "b"), now)
        figures = {
            "benchmark": "results ingestion",
            "database": f"MariaDB {version}",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": load_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "recipients": JOBS * PER_JOB,
            "results_per_callback": PER_CALLBACK,
            "iomad_rows": JOBS * PER_JOB // 2,
            "seed_seconds": round(seed_seconds, 2),
            **runs,
            "direct": direct,
            "duplicates_again": duplicates,
            "baseline_naive_per_recipient": baseline,
            "goal_seconds": 5.0,
            "goal_met_http": min(r["seconds"] for r in runs.values()) <= 5.0,
        }
    finally:
        engine.dispose()
        _drop_database(url)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
