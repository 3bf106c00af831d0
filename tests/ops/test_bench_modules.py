"""``make bench`` runs every benchmark module in bench/ (a module left out of the list is never
measured by it, and its figures in docs/benchmarks.md go stale)."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import MODULES

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_make_bench_runs_every_benchmark_module() -> None:
    present = {p.stem for p in BENCH.glob("*_bench.py")}
    assert present - set(MODULES) == set()
    assert set(MODULES) - present == set()
    assert "offload_share_bench" in MODULES  # issue 11: the offload share is measured in make bench
