"""Run the Cloudflare Worker's test suite (cloudflare/test) inside workerd from pytest.

The Worker tests check the shared signing vectors and contract examples in the Workers
runtime itself (vitest + @cloudflare/vitest-pool-workers), so ``make test`` covers both
languages. ``make`` installs cloudflare/node_modules from the committed lock file first.
"""

from __future__ import annotations

import json
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


def _require_node_modules(tool: str) -> None:
    if shutil.which("npx") is None or not (WORKER_DIR / "node_modules" / ".bin" / tool).exists():
        reason = "cloudflare/node_modules is not installed (run `make test`, which runs npm ci)"
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)


def _run_npx(*args: str) -> str:
    """Run a locally installed tool with npx (never fetching one); return its output on success."""
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
            ["npx", "--no-install", *args],
            cwd=WORKER_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout if isinstance(exc.stdout, str) else ""
        pytest.fail(f"`npx {' '.join(args)}` did not finish within {TIMEOUT_SECONDS}s\n{partial}")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, (
        f"`npx {' '.join(args)}` failed (exit {completed.returncode}):\n{output}"
    )
    return output


@pytest.mark.workerd
def test_worker_suite_passes_in_workerd() -> None:
    _require_node_modules("vitest")
    output = _run_npx("vitest", "run")
    # A misconfigured run that collects nothing must not pass: insist on the real suite.
    summary = re.search(r"^\s*Tests\s+(\d+) passed", output, re.MULTILINE)
    assert summary is not None, f"no vitest summary in the output:\n{output}"
    assert int(summary.group(1)) >= MIN_WORKER_TESTS, output


@pytest.mark.workerd
def test_worker_bundles_for_deployment_with_the_shared_schema(tmp_path: Path) -> None:
    """`wrangler deploy --dry-run` builds the exact bundle a deploy would upload, offline."""
    _require_node_modules("wrangler")
    output = _run_npx("wrangler", "deploy", "--dry-run", "--outdir", str(tmp_path))
    assert "env.EMAIL_QUEUE" in output
    assert "env.CERTIFICATE_QUEUE" in output
    assert "env.NONCES" in output
    bundle = (tmp_path / "index.js").read_text("utf-8")
    # The schema is inlined from offload_contract/schemas/v1, not from a copy.
    schema = json.loads(
        (WORKER_DIR.parent / "offload_contract/schemas/v1/contract.schema.json").read_text("utf-8")
    )
    definitions = schema["definitions"]
    assert json.dumps(definitions["key_id"]["pattern"]) in bundle
    assert definitions["email_batch"]["description"] in bundle
    assert "callback-key:v1:company:" in bundle
