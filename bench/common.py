"""Helpers shared by the benchmarks: timing, environment notes and result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

RESULTS_DIR = Path(__file__).resolve().parent / "results"
T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """Run ``fn`` once; return (result, wall seconds, CPU seconds of this process)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - wall0, time.process_time() - cpu0


def best_of(runs: int, fn: Callable[[], Any]) -> float:
    """Best wall time of ``runs`` runs: the least noisy figure on a shared machine."""
    best = float("inf")
    for _ in range(runs):
        _, wall, _ = timed(fn)
        best = min(best, wall)
    return best


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, figures: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(), "figures": figures}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
