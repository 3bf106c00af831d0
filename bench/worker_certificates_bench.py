"""Certificates per CPU-second: the Worker's renderer against the Lambda's, in the same run.

The Worker's renderer module (cloudflare/src/certificate-renderer.js: pdf-lib, @pdf-lib/fontkit
subset fonts, qrcode-generator) runs under Node via cloudflare/scripts/render-certificate.mjs
(V8, the engine workerd embeds; Node's own CPU counters, user + system). The Lambda renderer
(certificate_render) renders the same recipient with the same default template in this
process. Rounds alternate between the two so both see the same machine; the least disturbed
round of each is kept. Only the scripts the Worker draws (Latin, Greek, Cyrillic) are measured:
the others stay with IOMAD on the Cloudflare path (docs/cloudflare.md, the script rule).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, environment
from certificate_render.fonts import FontLibrary
from certificate_render.renderer import render_certificate
from certificate_render.template import default_template

WORKER_SCRIPT = Path(__file__).resolve().parent.parent / "cloudflare" / "scripts" / "render-certificate.mjs"
VERIFY = "https://offload.example/v1/certificates/verify/AB12CD34EF"
CERT: dict[str, Any] = {
    "completed_at": 1795361900,
    "grade": "92",
    "verification_code": "AB12CD34EF",
    "issuer_name": "Acme Training Ltd",
}
SCRIPTS = {
    "latin": ("Zoë Ørsted-Łukasiewicz", "Workplace Safety 101"),
    "vietnamese": ("Nguyễn Thị Ánh", "An toàn lao động"),
    "greek": ("Ελένη Παπαδοπούλου", "Ασφάλεια στην εργασία"),
    "cyrillic": ("Жанна Иванова", "Охрана труда"),
}


def lambda_cpu(data: dict[str, Any], count: int, library: FontLibrary) -> tuple[float, int]:
    template = default_template()
    render_certificate(template, data, VERIFY, library)  # warm: static layer and glyphs
    cpu0 = time.process_time()
    size = 0
    for _ in range(count):
        size = len(render_certificate(template, data, VERIFY, library))
    return (time.process_time() - cpu0) / count, size


def worker_cpu(data: dict[str, Any], count: int, folder: Path) -> dict[str, Any]:
    job = folder / "job.json"
    job.write_text(json.dumps({"template": None, "data": data, "verify_url": VERIFY}), "utf-8")
    out = subprocess.run(
        ["node", str(WORKER_SCRIPT), "--bench", str(job), str(count)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    run: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return run


def main() -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    count, rounds = (5, 2) if quick else (20, 3)
    library = FontLibrary()
    rows: list[list[Any]] = []
    per_script: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (name, course) in SCRIPTS.items():
            data = dict(CERT, learner_name=name, course_name=course)
            best_lambda = best_worker = float("inf")
            lambda_bytes = worker_bytes = 0
            first = float("inf")
            for _ in range(rounds):
                cpu, lambda_bytes = lambda_cpu(data, count, library)
                best_lambda = min(best_lambda, cpu)
                run = worker_cpu(data, count, Path(tmp))
                best_worker = min(best_worker, run["cpu_seconds"] / run["certificates"])
                worker_bytes = run["bytes"] // run["certificates"]
                first = min(first, run["first_cpu_seconds"])
            figures = {
                "worker_per_cpu_second": round(1 / best_worker, 1),
                "lambda_per_cpu_second": round(1 / best_lambda, 1),
                "worker_to_lambda_ratio": round(best_lambda / best_worker, 3),
                "worker_first_certificate_cpu_ms": round(first * 1000, 1),
                "worker_bytes_per_pdf": worker_bytes,
                "lambda_bytes_per_pdf": lambda_bytes,
            }
            per_script[label] = figures
            rows.append(
                [
                    label,
                    figures["worker_per_cpu_second"],
                    figures["lambda_per_cpu_second"],
                    figures["worker_to_lambda_ratio"],
                    figures["worker_first_certificate_cpu_ms"],
                    round(worker_bytes / 1000, 1),
                    round(lambda_bytes / 1000, 1),
                ]
            )
    payload = {
        "benchmark": "worker_certificates",
        "tables": [
            {
                "title": "Worker renderer (pdf-lib, V8) against the Lambda renderer, same run, best rounds",
                "columns": [
                    "script",
                    "Worker per CPU s",
                    "Lambda per CPU s",
                    "Worker / Lambda",
                    "Worker first certificate (CPU ms, fresh isolate)",
                    "Worker KB",
                    "Lambda KB",
                ],
                "rows": rows,
            }
        ],
        "environment": environment(),
        "figures": {"per_script": per_script, "rounds": rounds, "certificates_per_round": count},
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "worker_certificates.json"
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(payload["figures"], indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
