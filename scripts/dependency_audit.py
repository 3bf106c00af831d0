"""Dependency audit for `make test`: pip-audit (the virtualenv) and npm audit (both npm trees).

Each audit ends in one of three verdicts, printed on one line each:

- ``clean``: the advisory service answered and knows no vulnerability in what is installed;
- ``VULNERABLE``: it answered with advisories (package, version, advisory ids, fixed versions);
- ``UNREACHABLE``: the service could not be asked (no network, a proxy without the audit endpoint,
  packages the service does not know). The audit then says so and how much it could not check.

The exit status is 0 unless ``AUDIT_STRICT=1`` *and* a known vulnerability was found. Failing every
build by default would make `make test` on a fixed commit pass today and fail tomorrow when an
advisory is published (and fail on machines that cannot reach the service at all); so CI reports
by default and a release pipeline sets AUDIT_STRICT=1 (docs/security.md, "Dependency audit").
Bounded: each audit has a time limit and the script never installs anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_SECONDS = 180


def _run(command: list[str], cwd: Path) -> tuple[int | None, str, str]:
    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {TIMEOUT_SECONDS} s"
    except OSError as exc:
        return None, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def pip_audit() -> tuple[str, str]:
    executable = Path(sys.executable).with_name("pip-audit")
    if not executable.exists():
        return "UNREACHABLE", "pip-audit is not installed in this virtualenv (dev extra)"
    code, out, err = _run(
        [str(executable), "--local", "--skip-editable", "--progress-spinner", "off", "--format", "json"], ROOT
    )
    if code is None:
        return "UNREACHABLE", f"pip-audit: {err}"
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError:
        first = (err.strip().splitlines() or ["no output"])[-1][:200]
        return "UNREACHABLE", f"pip-audit could not ask the advisory service ({first})"
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if "skip_reason" in d]
    vulnerable = [d for d in deps if d.get("vulns")]
    if vulnerable:
        lines = [
            f"{d['name']} {d.get('version', '?')}: "
            + ", ".join(
                f"{v['id']} (fixed in {', '.join(v.get('fix_versions') or ['-'])})" for v in d["vulns"]
            )
            for d in vulnerable
        ]
        return "VULNERABLE", "pip-audit: " + "; ".join(lines)
    if deps and len(skipped) == len(deps):
        return "UNREACHABLE", f"pip-audit: the advisory service could audit none of {len(deps)} packages"
    note = f" ({len(skipped)} of {len(deps)} packages not known to the service)" if skipped else ""
    return "clean", f"pip-audit: {len(deps) - len(skipped)} packages audited, no known vulnerability{note}"


def npm_audit(tree: Path) -> tuple[str, str]:
    name = str(tree.relative_to(ROOT)) or "."
    if not (tree / "package-lock.json").exists():
        return "clean", f"npm audit {name}: no package-lock.json, nothing to audit"
    npm = shutil.which("npm")
    if npm is None:
        return "UNREACHABLE", f"npm audit {name}: npm is not installed"
    code, out, err = _run([npm, "audit", "--json", "--audit-level=low"], tree)
    if code is None:
        return "UNREACHABLE", f"npm audit {name}: {err}"
    try:
        report: dict[str, Any] = json.loads(out) if out.strip() else {}
    except ValueError:
        report = {}
    if "metadata" not in report:
        reason = str(report.get("message") or (err.strip().splitlines() or ["no answer"])[-1])[:200]
        return "UNREACHABLE", f"npm audit {name}: the advisory endpoint did not answer ({reason})"
    counts = report["metadata"].get("vulnerabilities", {})
    total = sum(int(v) for k, v in counts.items() if k != "total")
    if total:
        names = ", ".join(sorted(report.get("vulnerabilities", {}))[:20])
        return "VULNERABLE", f"npm audit {name}: {total} advisories ({names})"
    return "clean", f"npm audit {name}: no known vulnerability"


def main() -> int:
    results = [pip_audit(), npm_audit(ROOT / "cloudflare"), npm_audit(ROOT)]
    for verdict, detail in results:
        print(f"dependency audit: {verdict}: {detail}")
    unreachable = sum(1 for verdict, _ in results if verdict == "UNREACHABLE")
    if unreachable:
        print(
            f"dependency audit: {unreachable} of {len(results)} audits could not reach their advisory "
            "service; those dependencies were NOT checked in this run"
        )
    vulnerable = any(verdict == "VULNERABLE" for verdict, _ in results)
    if vulnerable and os.environ.get("AUDIT_STRICT") == "1":
        print("dependency audit: failing (AUDIT_STRICT=1 and known vulnerabilities)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
