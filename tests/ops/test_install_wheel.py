"""docs/INSTALL.md end to end: the wheel into a fresh virtualenv, a database user holding only the
printed grants on a MariaDB database, secrets as systemd credentials, migrate, the service
started, and real HTTP requests to /healthz and /metrics; then ``config check`` passes."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from iomad_sim import scratch_databases as databases
from moodle_bridge.secret_sources import SECRET_NAMES
from offload_contract.signing import generate_root_secret
from tests.bridge.iomad_world import IomadWorld

pytestmark = [pytest.mark.slow, pytest.mark.install, pytest.mark.mariadb]

ROOT = Path(__file__).resolve().parents[2]
WHEEL_SOURCES = (
    "pyproject.toml",
    "README.md",
    "constraints.txt",
    "offload_contract",
    "moodle_bridge",
    "certificate_render",
)
NOT_SHIPPED = ("lambdas", "infra", "iomad_sim", "demo", "tests", "bench", "scripts")
NOT_INSTALLED = ("moto", "pytest", "aws_cdk", "aws_lambda_powertools", "fpdf", "hypothesis", "cdk_nag")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def build_wheel(tmp_path: Path) -> Path:
    """Built from a copy of only the files the wheel needs (as the Dockerfile's build stage does)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in WHEEL_SOURCES:
        source = ROOT / name
        if source.is_dir():
            # The fonts (27 MB, built by make setup) are left out here, as a wheel built from a
            # clean checkout has none; `certificates template preview --fonts` then names them.
            shutil.copytree(
                source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.ttf", "*.otf")
            )
        else:
            shutil.copy2(source, src / name)
    done = _run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(src)],
        dict(os.environ),
        src,
        300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("moodle_offload-*.whl")
    return wheel


def test_the_wheel_installs_beside_moodle_and_runs_as_a_service(tmp_path: Path) -> None:
    status = databases.probe("mariadb")
    if not status.reachable:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true requires every database engine: {status.detail}")
        pytest.skip(f"MariaDB unreachable: {status.detail}")

    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert tops == {
        "moodle_bridge",
        "offload_contract",
        "certificate_render",
        wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info",
    }

    venv = tmp_path / "opt" / "moodle-offload"
    assert (
        _run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], dict(os.environ), tmp_path
        ).returncode
        == 0
    )
    install = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-compile",
            "--disable-pip-version-check",
            "-c",
            str(ROOT / "constraints.txt"),
            str(wheel),
        ],
        dict(os.environ),
        tmp_path,
        300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    site = next((venv / "lib").glob("python3*/site-packages"))
    present = {p.name for p in site.iterdir()}
    assert not present & {*NOT_SHIPPED, *NOT_INSTALLED}, present & {*NOT_SHIPPED, *NOT_INSTALLED}
    command = str(venv / "bin" / "moodle-offload")
    # A clean environment: nothing from this checkout or its virtualenv is importable.
    base_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    helped = _run([command, "--help"], base_env, tmp_path)
    assert helped.returncode == 0 and "config" in helped.stdout and "migrate" in helped.stdout

    # Step 1: Moodle's database, and the bridge's user with the grants `config grants` prints.
    admin_url = databases.create_database("mariadb", label="install")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    user, password = f"mrco_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    server = None
    try:
        world = IomadWorld.create(admin)
        world.add_company(1)
        granted = _run(
            [command, "config", "grants", "--user", user, "--host", "%"],
            {**base_env, "MRCO_DATABASE_URL": admin_url.render_as_string(hide_password=False)},
            tmp_path,
        )
        assert granted.returncode == 0, granted.stderr
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
            for line in granted.stdout.splitlines():
                if line.startswith("GRANT "):
                    conn.execute(sa.text(line))

        # Step 2: the sample config, with secrets as systemd credentials.
        port = _free_port()
        etc = tmp_path / "etc"
        etc.mkdir()
        bridge_url = (
            make_url(admin_url).set(username=user, password=None).render_as_string(hide_password=False)
        )
        replacements = {
            "url = ": f'url = "{bridge_url}"',
            "public_url = ": f'public_url = "http://127.0.0.1:{port}/callbacks/v1/results"',
            "bind_port = ": f"bind_port = {port}",
            "moodle_dbname = ": f'moodle_dbname = "{make_url(admin_url).database}"',
        }
        aws_only = (
            "jobs_queue_url",
            "certificates_queue_url",
            "results_queue_url",
            "results_dlq_url",
            "content_bucket",
        )
        lines = [
            next((new for prefix, new in replacements.items() if line.startswith(prefix)), line)
            for line in (ROOT / "deploy" / "moodle-offload.sample.toml").read_text().splitlines()
            if not line.startswith(aws_only)
        ]
        (etc / "config.toml").write_text("\n".join(lines) + "\n")
        creds = tmp_path / "credentials"
        creds.mkdir(mode=0o700)
        root_secret = generate_root_secret()
        (creds / "keysets").write_text(f"k1={root_secret}\n")
        (creds / "password_key").write_text("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
        (creds / "database_password").write_text(password + "\n")
        env = {**base_env, "MRCO_CONFIG": str(etc / "config.toml"), "CREDENTIALS_DIRECTORY": str(creds)}

        # Step 3: migrate, safe on every deploy.
        for _ in range(2):
            migrated = _run([command, "migrate"], env, tmp_path)
            assert migrated.returncode == 0, migrated.stderr
        assert "nothing to do" in migrated.stdout

        # Step 4: the service (what the systemd unit starts), and real HTTP requests to it.
        log = (tmp_path / "serve.log").open("w")
        server = subprocess.Popen(
            [command, "serve"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health is not None, (tmp_path / "serve.log").read_text()[-3000:]
        assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok"}
        metrics = httpx.get(f"{base}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert (
            "mrco_database_up 1.0" in metrics.text
            and "mrco_outbox_oldest_pending_age_seconds" in metrics.text
        )

        checked = _run([command, "config", "check", "--skip-aws"], env, tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "OK   callback URL" in checked.stdout and "OK   IOMAD: found" in checked.stdout
        assert "from systemd credential database_password" in checked.stdout
        shown = checked.stdout + checked.stderr + (tmp_path / "serve.log").read_text()
        assert password not in shown and root_secret not in shown
        assert set(SECRET_NAMES) >= {"keysets", "password_key", "database_password"}
    finally:
        if server is not None:
            server.terminate()
            server.wait(15)
        log_text = (tmp_path / "serve.log").read_text() if (tmp_path / "serve.log").exists() else ""
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()
        databases.drop_database("mariadb", admin_url)
    # The service logs one JSON object per line (log_format = "json" in the sample).
    entries = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    assert any("Uvicorn running" in e["message"] for e in entries)
