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
    "faults_bench",
    "campaigns_bench",
    "migration_lock_bench",
    "dashboard_bench",
    "receiver_attack_bench",
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


def summarise() -> str:
    lines = [
        "# Benchmark figures",
        "",
        "Written by `make bench` from `bench/results/*.json`. The machine is shared and noisy (2 vCPU):",
        "compare each figure with the baseline measured beside it in the same run, not across runs.",
        "",
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
        lines += ["| figure | value |", "|---|---|"]
        body = data.get("figures", data) if isinstance(data, dict) else data
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
