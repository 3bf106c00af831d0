"""Fault injection at scale: the whole pipeline with every cloud-side fault, exactly-once checked.

``python -m bench.faults_bench [--users N]`` writes bench/results/faults.json: recipients,
faults injected, duplicates, lost, wall time. ``--users`` is learners per company (two
companies: one offloaded to the cloud, one left to IOMAD's own cron); each learner yields
about six recipients (user_create, license_allocated, managers, supervisors).

Baseline in the same run: the same pipeline without faults at a tenth of the size, so the
cost of the faults (redelivery, SQS delays after throttling and leases) can be read off.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench.common import write_results
from demo.faults import CloudFaults, pipeline


def run(users: int, faults: CloudFaults) -> dict[str, Any]:
    started = time.perf_counter()
    with pipeline(users, faults=faults) as p:
        p.tick()
        p.settle(rounds=200)
        verdict = p.verdict()
        injected = {k: v for k, v in p.injected.items() if k != "ses calls"}
    wall = time.perf_counter() - started
    return {
        "users_per_company": users,
        "recipients": verdict.expected,
        "faults_injected": injected,
        **verdict.summary(),
        "wall_seconds": round(wall, 1),
        "recipients_per_second": round(verdict.expected / wall, 1),
        "ok": verdict.ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults_bench", description=__doc__)
    parser.add_argument(
        "--users", type=int, default=4200, help="learners per company (default 4200: about 50,000 recipients)"
    )
    args = parser.parse_args(argv)
    baseline = run(max(20, args.users // 10), CloudFaults())
    print(f"baseline (no faults): {baseline}")
    faulted = run(args.users, CloudFaults.everything())
    print(f"with faults: {faulted}")
    path = write_results("faults", {"with_faults": faulted, "baseline_no_faults": baseline})
    print(f"wrote {path}")
    return 0 if faulted["ok"] and baseline["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
