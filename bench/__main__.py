"""``make bench``: run every benchmark module, then summarise bench/results/*.json in docs/benchmarks.md.

Each module runs in its own process (``python -m bench.<name>``) so one's memory and
imports do not skew another's figures. Modules that are not present yet are skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR

MODULES = (
    "contract_bench",
    "iomad_bench",
    "bridge_bench",
    "results_bench",
    "lambdas_bench",
    "tick_bench",
    "offload_share_bench",
    "faults_bench",
    "campaigns_bench",
    "migration_lock_bench",
    "dashboard_bench",
    "receiver_attack_bench",
    "pacing_bench",
    "worker_certificates_bench",
)
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _rows(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Flatten nested figures into (dotted name, value) rows."""
    if isinstance(value, dict):
        rows: list[tuple[str, str]] = []
        for key, inner in value.items():
            rows += _rows(f"{prefix}.{key}" if prefix else str(key), inner)
        return rows
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        rows = []
        for index, inner in enumerate(value):
            label = inner.get("engine") or inner.get("name") or str(index)
            rows += _rows(f"{prefix}[{label}]" if prefix else f"[{label}]", inner)
        return rows
    return [
        (prefix or "value", json.dumps(value, ensure_ascii=False) if isinstance(value, list) else str(value))
    ]


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return [*lines, ""]


def _pacing_comparison() -> list[str]:
    """The pacing rows: the code before issue 19, the pollers as threads of one process, and the
    pollers as separate processes (``pacing.json``) with the harness's ceiling of the same run."""
    paths = [
        RESULTS_DIR / "pacing-before.json",
        RESULTS_DIR / "pacing-threads.json",
        RESULTS_DIR / "pacing-rerun.json",
        RESULTS_DIR / "pacing.json",
    ]
    if not all(p.exists() for p in paths[:2]):
        return []
    before, threads, rerun, processes = (
        {r["name"]: r for r in json.loads(p.read_text("utf-8"))["figures"]["rows"]} if p.exists() else {}
        for p in paths
    )

    def load(row: dict[str, Any]) -> str:
        return f" (load {row['load_average_1m']})" if "load_average_1m" in row else ""

    def cell(row: dict[str, Any] | None) -> str:
        if row is None:
            return "—"
        if row["name"].startswith("ceiling"):
            through = row.get("end_to_end_per_second", row.get("recipients_per_second"))
            return f"{through}/s end to end, {row['peak_second']} in the busiest second{load(row)}"
        unfinished = row["recipients"] - row.get("finished", row["recipients"])
        lost = max(0, row["lost"] - unfinished)  # older files counted the unfinished as lost
        stopped = f", **{unfinished} unfinished when the time budget ran out**" if unfinished else ""
        return (
            f"{row['steady_share']:.0%} / {row['end_to_end_share']:.0%} "
            f"({row['end_to_end_seconds']} s for {row['recipients']}), peak {row['peak_second']}, "
            f"{row['rate_throttles']} throttled calls, {lost} / {row['duplicated']}{stopped}{load(row)}"
        )

    def ceiling(row: dict[str, Any] | None) -> str:
        if row is None or "harness_ceiling_per_second" not in row:
            return "—"
        through = row["harness_ceiling_per_second"]
        measured = processes.get(f"ceiling/{row['mode']}/{row['pollers']} pollers", {})
        cpu = (
            f"{load(measured)}; CPU {measured['harness_cpu_ms_per_recipient']} ms per recipient, so at most "
            f"{measured['cpu_bound_per_second_on_2_free_cores']}/s on 2 free cores"
            if "harness_cpu_ms_per_recipient" in measured
            else ""
        )
        if row["harness_limited"] and row.get("goal_met"):
            return f"{through}/s, below rate / 0.9 in its own run, yet the row met the goal{cpu}"
        if row["harness_limited"]:
            return f"{through}/s: **below rate / 0.9, the harness is the limit here**{cpu}"
        return f"{through}/s ({through / row['rate']:.1f} times the rate){cpu}"

    lines = [
        "## pacing: before and after",
        "",
        "Steady share / end-to-end share of the SES rate (end to end: first call reaching SES to the last",
        "result), the busiest second as SES counted it, calls SES refused for the rate, lost / duplicated",
        "recipients. Goal: steady ≥ 95 % and end to end ≥ 90 % in every row, peak never over the rate.",
        "`before`: the code before issue 19. `threads`: the pollers as threads of one Python process",
        "(`pacing-threads.json`; `rerun`: rows run again alone on a quieter host, `pacing-rerun.json`).",
        "`processes`: each poller its own OS process, moto servers on loopback, SES's per-second count",
        "shared across the processes (`pacing.json`). `ceiling` rows, and the last column: the same",
        "harness, latencies and pollers in the same run with the rate out of the way (100,000/s),",
        "recipients per second end to end for the row's poller count and mode, with the CPU time all",
        "the harness's processes (pollers, moto servers, parent) spent per recipient and the rate that",
        "CPU time allows on two cores the bench has to itself (the latencies are sleeps, not CPU).",
        "`load`: the host's 1-minute load average when the row ended (2 cores, shared with other work).",
        "",
        "| row | before | threads | threads, rerun | processes | harness ceiling (processes, same run) |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys([*before, *threads, *processes]):
        cells = " | ".join(cell(run.get(name)) for run in (before, threads, rerun, processes))
        lines.append(f"| {name} | {cells} | {ceiling(processes.get(name))} |")
    return [*lines, ""]


def _dashboard_comparison() -> list[str]:
    """Each page's server time before the fixes of the pages added since issue 13
    (``dashboard-before.json``) beside the current run (``dashboard.json``), with the load average."""
    before_path, after_path = RESULTS_DIR / "dashboard-before.json", RESULTS_DIR / "dashboard.json"
    if not (before_path.exists() and after_path.exists()):
        return []
    before, after = (
        {p["name"]: p for p in json.loads(path.read_text("utf-8"))["figures"]["pages"]}
        for path in (before_path, after_path)
    )

    def cell(row: dict[str, Any] | None) -> str:
        if row is None:
            return "—"
        goal = "" if row["p95_ms"] <= 150 else " **over 150 ms**"
        samples = f", {row['samples']} samples" if row.get("samples", 40) < 40 else ""
        load = f" (load {row['load_average_1m']}{samples})" if "load_average_1m" in row else ""
        return f"{row['p50_ms']} / {row['p95_ms']} ms{goal}{load}"

    lines = [
        "## dashboard: before and after",
        "",
        "Server time p50 / p95 per page (goal: p95 ≤ 150 ms), MariaDB. `before`: the pages added since",
        "issue 13 as they were (`dashboard-before.json`); `after`: the current run (`dashboard.json`).",
        "`load`: the host's 1-minute load average when the row ended (2 cores, shared). Before, the",
        "campaign pages counted the audience on every view: compare them with the after rows",
        "`counted every view` as well as with the rows that show a kept count.",
        "",
        "| page | before | after |",
        "|---|---|---|",
    ]
    for name in dict.fromkeys([*before, *after]):
        lines.append(f"| {name} | {cell(before.get(name))} | {cell(after.get(name))} |")
    return [*lines, ""]


def summarise() -> str:
    lines = [
        "# Benchmark figures",
        "",
        "Written by `make bench` from `bench/results/*.json`. The machine is shared and noisy (2 vCPU):",
        "compare each figure with the baseline measured beside it in the same run, not across runs.",
        "",
        *_pacing_comparison(),
        *_dashboard_comparison(),
    ]
    for path in sorted(RESULTS_DIR.glob("*.json")):
        data = json.loads(path.read_text("utf-8"))
        name = data.get("benchmark", path.stem) if isinstance(data, dict) else path.stem
        lines += [f"## {name}", ""]
        # Optional readable tables: {"title", "columns", "rows"} each, before the raw figures.
        for table in data.get("tables", []) if isinstance(data, dict) else []:
            lines += [f"### {table['title']}", ""]
            lines.append("| " + " | ".join(table["columns"]) + " |")
            lines.append("|" + "---|" * len(table["columns"]))
            lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table["rows"]]
            lines.append("")
        body = data.get("figures", data) if isinstance(data, dict) else data
        if isinstance(body, dict) and isinstance(body.get("rows"), list):  # a table of runs
            lines += _table(body["rows"])
            body = {k: v for k, v in body.items() if k != "rows"}
        lines += ["| figure | value |", "|---|---|"]
        for key, value in _rows("", body):
            if key != "benchmark":
                lines.append(f"| {key} | {value} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", nargs="*", help="module names to run (default: all)")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite docs/benchmarks.md")
    args = parser.parse_args()
    failures = 0
    for name in [] if args.summary_only else args.only or MODULES:
        if importlib.util.find_spec(f"bench.{name}") is None:
            print(f"bench: {name} not present, skipped")
            continue
        print(f"bench: running {name}", flush=True)
        completed = subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False)
        if completed.returncode != 0:
            print(f"bench: {name} FAILED (exit {completed.returncode})")
            failures += 1
    DOC.write_text(summarise() + "\n", encoding="utf-8")
    print(f"bench: summary written to {DOC}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
