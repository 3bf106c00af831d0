"""Run the Cloudflare Worker's test suite (cloudflare/test) inside workerd from pytest.

The Worker tests check the shared signing vectors and contract examples in the Workers
runtime itself (vitest + @cloudflare/vitest-pool-workers), so ``make test`` covers both
languages. ``make`` installs cloudflare/node_modules from the committed lock file first.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from offload_contract import QueueLimits, encode_message, validate
from offload_contract.packing import PackItem, pack_batches
from offload_contract.signing import decode_root_secret, derive_company_key, make_key_id, sign_request

WORKER_DIR = Path(__file__).resolve().parent.parent / "cloudflare"
TIMEOUT_SECONDS = 300
#: The vector-driven suites alone hold more; fewer means files were not collected.
MIN_WORKER_TESTS = 160
#: A Worker script may be 3 MB after gzip on the Free plan (10 MB on Paid).
WORKER_FREE_PLAN_LIMIT_BYTES = 3 * 1024 * 1024


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require_node_modules(tool: str) -> None:
    if shutil.which("npx") is None or not (WORKER_DIR / "node_modules" / ".bin" / tool).exists():
        reason = "cloudflare/node_modules is not installed (run `make test`, which runs npm ci)"
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)


#: The Worker's test key sets (cloudflare/vitest.config.js): the first signing vector's root.
TEST_KEYSET = "k2026"
TEST_ROOT = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
#: Text the bridge really carries: Latin, Arabic, Chinese, Hebrew, emoji, and a lone surrogate
#: (which the codec writes as a JSON escape).
SAMPLE_TEXT = 'Zoë Ørsted — محمد الأحمد — 李小龍 — שָׁלוֹם — 🎓 ½ \ud800 <b>&amp;</b> "quoted"\n'


def _signed(name: str, company_id: int, envelope: dict[str, Any], expect_status: int) -> dict[str, Any]:
    """One request as the bridge would send it: Python codec, Python signer."""
    body = encode_message(envelope)
    key = derive_company_key(decode_root_secret(TEST_ROOT), company_id)
    headers = sign_request(key, make_key_id(TEST_KEYSET, company_id), "POST", "/v1/batches", body)
    batch = envelope["message"]
    return {
        "name": name,
        "headers": {**headers, "Content-Type": "application/json"},
        "body_b64": base64.b64encode(body).decode("ascii"),
        "batch_bytes": len(encode_message(batch)),
        "batch_id": batch["batch_id"],
        "expect_status": expect_status,
    }


def _envelope(batch: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "contract_version": 1,
        "message_type": batch["type"],
        "message_id": f"m-x-{n}",
        "sent_at": int(time.time()),
        "message": batch,
    }


def _cross_language_requests() -> list[dict[str, Any]]:
    """Python-packed, Python-signed submissions the Worker must accept byte for byte."""
    company = 3
    header: dict[str, Any] = {
        "type": "email_batch",
        "contract_version": 1,
        "job_id": "j-x-1",
        "company_id": company,
        "attempt": 1,
        "created_at": int(time.time()),
        "category": "transactional",
        "callback": {"url": "https://moodle.example/cb", "key_id": make_key_id(TEST_KEYSET, company)},
        "sender": {"address": "noreply@example.org", "name": "Acme — أكاديمية"},
    }
    rng = random.Random(20261122)
    items = [
        PackItem(
            {
                "recipient_id": f"r-{n}",
                "to": f"user{n}@example.org",
                "name": SAMPLE_TEXT[: rng.randint(3, 40)],
            },
            f"c-{n}",
            {
                "kind": "rendered",
                "subject": f"Hello {n} {SAMPLE_TEXT[:30]}",
                "html": SAMPLE_TEXT * rng.randint(20, 90),
            },
        )
        for n in range(400)
    ]
    for index, item in enumerate(items):
        item.recipient["content_id"] = f"c-{index}"
    packed = pack_batches(header, items, QueueLimits.cloudflare(), make_batch_id=lambda i: f"b-x-{i:04d}")
    requests = []
    for n, batch in enumerate(packed.batches[:3]):
        validate("email_batch", batch.message)
        requests.append(_signed(f"packed batch {n}", company, _envelope(batch.message, n), 202))
    messages = json.loads((WORKER_DIR.parent / "offload_contract/vectors/messages.json").read_text("utf-8"))
    certificate = next(e["message"] for e in messages["examples"] if e["message_type"] == "certificate_batch")
    requests.append(_signed("certificate batch", certificate["company_id"], _envelope(certificate, 99), 202))
    requests.append(
        _signed("signed by another company", certificate["company_id"] + 1, _envelope(certificate, 98), 403)
    )
    return requests


def _run_npx(*args: str, extra_env: dict[str, str] | None = None) -> str:
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
        **(extra_env or {}),
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
def test_worker_suite_passes_in_workerd(tmp_path: Path) -> None:
    """The whole Worker suite, including Python-signed, Python-packed submissions to the intake."""
    _require_node_modules("vitest")
    requests = _cross_language_requests()
    # The packer filled each batch close to its 120,000-byte budget: the edge the intake must take.
    assert max(r["batch_bytes"] for r in requests) > 110_000
    assert all(r["batch_bytes"] <= QueueLimits.cloudflare().max_bytes for r in requests)
    fixture = tmp_path / "cross-language-requests.json"
    fixture.write_text(json.dumps(requests), "utf-8")
    output = _run_npx("vitest", "run", extra_env={"MRCO_CROSS_LANGUAGE_REQUESTS": str(fixture)})
    # A misconfigured run that collects nothing must not pass: insist on the real suite.
    summary = re.search(r"^\s*Tests\s+(\d+) passed", output, re.MULTILINE)
    assert summary is not None, f"no vitest summary in the output:\n{output}"
    assert int(summary.group(1)) >= MIN_WORKER_TESTS, output
    assert "skipped" not in output, output


@pytest.mark.workerd
def test_worker_bundles_for_deployment_with_the_shared_schema(tmp_path: Path) -> None:
    """`wrangler deploy --dry-run` builds the exact bundle a deploy would upload, offline."""
    _require_node_modules("wrangler")
    output = _run_npx("wrangler", "deploy", "--dry-run", "--outdir", str(tmp_path))
    for binding in (
        "env.EMAIL_QUEUE",
        "env.CERTIFICATE_QUEUE",
        "env.RESULTS_QUEUE",
        "env.NONCES",
        "env.LEDGER (SendLedger)",
        "env.EVENT_INDEX (EventIndex)",
        "env.PACER (Pacer)",
        "env.RESULT_LOG (ResultLog)",
        "env.PUBLIC_RECORDS (PublicRecords)",
        "env.EMAIL",
        "env.OFFLOAD_BUCKET",
    ):
        assert binding in output, binding
    raw = (tmp_path / "index.js").read_bytes()
    # The Workers Free plan's limit is 3 MB after compression (Paid: 10 MB); keep well under it.
    # The certificate renderer (pdf-lib, fontkit, qrcode-generator) is most of the bundle (about
    # 690 KiB gzip in all); its fonts are not bundled but read from R2 (renderer/fonts/...).
    assert len(gzip.compress(raw)) < WORKER_FREE_PLAN_LIMIT_BYTES // 3
    assert "renderer/fonts/latin-Regular.ttf" in raw.decode("utf-8")
    match = re.search(r"Total Upload: [0-9.]+ KiB / gzip: ([0-9.]+) KiB", output)
    assert match is not None and float(match.group(1)) * 1024 < WORKER_FREE_PLAN_LIMIT_BYTES
    bundle = raw.decode("utf-8")
    # The schema is inlined from offload_contract/schemas/v1, not from a copy.
    schema = json.loads(
        (WORKER_DIR.parent / "offload_contract/schemas/v1/contract.schema.json").read_text("utf-8")
    )
    definitions = schema["definitions"]
    assert json.dumps(definitions["key_id"]["pattern"]) in bundle
    assert definitions["email_batch"]["description"] in bundle
    assert "callback-key:v1:company:" in bundle
