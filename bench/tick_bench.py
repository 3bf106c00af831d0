"""An idle ``tick`` and an idle service pass: what the bridge costs Moodle's database when
nothing is due (a tick once a minute; ``moodle-offload run`` every few seconds).

Setup on MariaDB: a site whose queue already holds the rows of 10,000 learners, all offloaded
and settled by a first tick. Then an idle tick is timed (median of several) and its
statements counted. Baseline in the same run: IOMAD's own email cron (simulated exactly:
its query has no usable index and loads every due row) on the same database, also idle.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from bench.bridge_bench import CountingSubmitter, _config, _database, _drop, _seed
from bench.common import write_results
from iomad_sim.iomad_cron import run_iomad_email_cron
from iomad_sim.smtp_sink import RecordingSmtpSink
from moodle_bridge.commands.tick import run_tick
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.service import Service
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import StatementCounter
from moodle_bridge.storage.migrations import migrate


def bench_idle_tick(learners: int, rounds: int) -> dict[str, Any]:
    engine, url = _database()
    try:
        companies = 2
        tables, _ = _seed(engine, learners, companies)
        migrate(engine, "mdl_")
        repo = BridgeRepo(build_bridge_tables("mdl_"))
        config = _config(engine)
        with engine.begin() as conn:
            repo.set_offload_enabled(conn, True)
            repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "bench")
        submitter = CountingSubmitter()
        first = run_tick(engine, config, submitters={"sqs": submitter})
        claimed = first.claim.claimed if first.claim else 0
        counter = StatementCounter(engine)

        def timed_rounds(fn: Any) -> tuple[float, int]:
            walls, statements = [], []
            for _ in range(rounds):
                counter.reset()
                t0 = time.perf_counter()
                fn()
                walls.append(time.perf_counter() - t0)
                statements.append(counter.count)
            return statistics.median(walls), int(statistics.median(statements))

        # Company 2 stays local, so its rows are due for IOMAD; settle them the way IOMAD would
        # first, so both sides are measured idle.
        run_iomad_email_cron(engine, "mdl_", "moodle", RecordingSmtpSink(), tables=tables)
        tick_wall, tick_statements = timed_rounds(
            lambda: run_tick(engine, config, submitters={"sqs": submitter})
        )
        service = Service(engine, config, submitters={"sqs": submitter})
        service.pass_once(reconcile_now=False)  # warm: IOMAD schema detected, statements compiled
        pass_wall, pass_statements = timed_rounds(lambda: service.pass_once(reconcile_now=False))
        # Every full_probe_seconds (10 s) the probe looks at the whole queue table instead of the
        # ids above its watermark: the median above never sees that pass, so time it on its own.
        if service.claimer is not None:
            service.claimer.full_probe_seconds = 0
        full_wall, full_statements = timed_rounds(lambda: service.pass_once(reconcile_now=False))
        cron_wall, cron_statements = timed_rounds(
            lambda: run_iomad_email_cron(engine, "mdl_", "moodle", RecordingSmtpSink(), tables=tables)
        )
        counter.close()
        return {
            "learners": learners,
            "queue_rows_claimed_by_first_tick": claimed,
            "rounds": rounds,
            "idle_tick_ms_median": round(tick_wall * 1000, 1),
            "idle_tick_statements": tick_statements,
            "idle_service_pass_ms_median": round(pass_wall * 1000, 1),
            "idle_service_pass_statements": pass_statements,
            "idle_service_pass_goal": "<= 3 statements and <= 20 ms",
            "idle_service_pass_full_look_ms_median": round(full_wall * 1000, 1),
            "idle_service_pass_full_look_statements": full_statements,
            "baseline_idle_iomad_cron_ms_median": round(cron_wall * 1000, 1),
            "baseline_idle_iomad_cron_statements": cron_statements,
        }
    finally:
        engine.dispose()
        _drop(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tick_bench")
    parser.add_argument("--learners", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    figures = bench_idle_tick(args.learners, args.rounds)
    path = write_results("tick", figures)
    print(f"tick: {figures} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
