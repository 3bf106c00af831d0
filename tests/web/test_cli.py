"""``moodle-offload dashboard link`` and ``dashboard serve`` as an operator runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from moodle_bridge.cli import main
from offload_contract import dashboard_token
from tests.web.world import SHARED_KEY, build_world


def _env(db: Path, port: int) -> dict[str, str]:
    return {
        "MRCO_DATABASE_URL": f"sqlite:///{db}",
        "MRCO_DASHBOARD_KEY": SHARED_KEY,
        "MRCO_DASHBOARD_URL": f"http://127.0.0.1:{port}",
        "MRCO_DASHBOARD_BIND_PORT": str(port),
    }


def test_link_prints_a_one_time_url_and_needs_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name, value in _env(tmp_path / "x.sqlite3", 8766).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert main(["dashboard", "link", "--user", "2", "--company", "3"]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("http://127.0.0.1:8766/signin?token=")
    token = parse_qs(urlsplit(url).query)["token"][0]
    signin = dashboard_token.verify(SHARED_KEY, token, now=int(time.time()))
    assert (signin.user_id, signin.company_id) == (2, 3)
    assert signin.expires <= int(time.time()) + 60
    monkeypatch.delenv("MRCO_DASHBOARD_KEY")
    assert main(["dashboard", "link", "--user", "2"]) == 2
    assert "MRCO_DASHBOARD_KEY" in capsys.readouterr().err
    monkeypatch.setenv("MRCO_DASHBOARD_KEY", "too-short")
    assert main(["dashboard", "link", "--user", "2"]) == 2
    assert "dashboard.shared_key" in capsys.readouterr().err


def test_serve_answers_and_signs_in(tmp_path: Path) -> None:
    db = tmp_path / "site.sqlite3"
    engine = sa.create_engine(f"sqlite:///{db}")
    world = build_world(engine)
    engine.dispose()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**os.environ, **_env(db, port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "moodle_bridge", "dashboard", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "dashboard did not start"
            time.sleep(0.2)
        link = subprocess.run(
            [sys.executable, "-m", "moodle_bridge", "dashboard", "link", "--user", str(world.admin)],
            env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        first = httpx.get(link)
        assert first.status_code == 200 and "mrcloud_session=" in first.headers["set-cookie"]
        assert httpx.get(link).status_code == 403  # used once
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=10)
