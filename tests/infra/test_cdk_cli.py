"""The pinned CDK CLI reads the assembly of the pinned aws-cdk-lib, offline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk import cloud_assembly_schema

from infra.bundling import build_lambda_zip
from tests.infra.support import ROOT

CLI = ROOT / "node_modules" / "aws-cdk"


def _require_cli() -> None:
    if not (CLI / "package.json").exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("node_modules/aws-cdk is missing: `make setup` runs npm ci at the root")
        pytest.skip("the pinned CDK CLI is not installed (run make setup)")


def test_cli_pin_matches_the_lock_file() -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["aws-cdk"]
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "pin an exact version"
    assert lock["packages"]["node_modules/aws-cdk"]["version"] == pinned


def test_cli_supports_the_cloud_assembly_schema_of_aws_cdk_lib() -> None:
    _require_cli()
    bundle = (CLI / "lib" / "index.js").read_text(encoding="utf-8")
    match = re.search(r'cloud-assembly-schema/schema/version\.json"[^}]*?revision:\s*(\d+)', bundle, re.S)
    assert match, "could not find the CLI's bundled cloud-assembly schema version"
    library_major = int(cloud_assembly_schema.Manifest.version().split(".")[0])
    assert int(match.group(1)) >= library_major


def test_cdk_json_turns_off_notices_and_telemetry() -> None:
    cdk = json.loads((ROOT / "cdk.json").read_text())
    assert cdk["notices"] is False
    assert cdk["context"]["cli-telemetry"] is False
    assert cdk["app"].startswith(".venv/bin/python ")


def _offline_env() -> dict[str, str]:
    return {
        **os.environ,
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "CDK_DISABLE_VERSION_CHECK": "true",
        # Any attempt to reach the network fails at once through a dead proxy.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }


@pytest.mark.slow
@pytest.mark.cdk
def test_python_app_py_synthesizes_offline_with_the_cached_bundle(tmp_path: Path) -> None:
    build_lambda_zip(ROOT, "full")  # may use PyPI; the synth below must not touch the network
    env = {**_offline_env(), "CDK_OUTDIR": str(tmp_path / "out")}
    env.pop("CDK_CONTEXT_JSON", None)
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assets = list((tmp_path / "out").glob("asset.*.zip"))
    assert len(assets) == 1 and assets[0].stat().st_size > 5_000_000  # the full bundle, not sources only


@pytest.mark.slow
@pytest.mark.cdk
def test_npx_cdk_synth_works_offline(tmp_path: Path) -> None:
    _require_cli()
    npx = shutil.which("npx")
    assert npx
    env = _offline_env()
    result = subprocess.run(
        [
            npx,
            "--no-install",
            "cdk",
            "synth",
            "--quiet",
            "-c",
            "offload:bundle=source",
            "-o",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "out" / "ManiReportsOffload-dev.template.json").exists()
    assert "proxy" not in result.stderr.lower() and "ECONNREFUSED" not in result.stderr
