"""Run the Cloudflare Worker's test suite (cloudflare/test) inside workerd from pytest.

The Worker tests check the shared signing vectors and contract examples in the Workers
runtime itself (vitest + @cloudflare/vitest-pool-workers), so ``make test`` covers both
languages. ``make`` installs cloudflare/node_modules from the committed lock file first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

WORKER_DIR = Path(__file__).resolve().parent.parent / "cloudflare"
TIMEOUT_SECONDS = 300
#: The vector-driven suites alone hold more; fewer means files were not collected.
MIN_WORKER_TESTS = 90


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.mark.workerd
def test_worker_suite_passes_in_workerd() -> None:
    vitest = WORKER_DIR / "node_modules" / ".bin" / "vitest"
    if shutil.which("npx") is None or not vitest.exists():
        reason = "cloudflare/node_modules is not installed (run `make test`, which runs npm ci)"
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    env = {
        **os.environ,
        # Nothing may reach the network: no telemetry, no update checks, no registry lookups.
        "WRANGLER_SEND_METRICS": "false",
        "NO_UPDATE_NOTIFIER": "1",
        "npm_config_update_notifier": "false",
        "npm_config_offline": "true",
        "CI": "true",
        "NO_COLOR": "1",
        "FORCE_COLOR": "0",
    }
    try:
        completed = subprocess.run(
            ["npx", "--no-install", "vitest", "run"],
            cwd=WORKER_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout if isinstance(exc.stdout, str) else ""
        pytest.fail(f"vitest did not finish within {TIMEOUT_SECONDS}s\n{partial}")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"vitest failed (exit {completed.returncode}):\n{output}"
    # A misconfigured run that collects nothing must not pass: insist on the real suite.
    summary = re.search(r"^\s*Tests\s+(\d+) passed", output, re.MULTILINE)
    assert summary is not None, f"no vitest summary in the output:\n{output}"
    assert int(summary.group(1)) >= MIN_WORKER_TESTS, output
