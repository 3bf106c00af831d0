"""``moodle-offload config check`` against moto in server mode, a real receiver and a real database.

moto lacks SESv2 GetAccount, so only that call is answered by a stand-in with the shape AWS
documents (the same approach as demo/ses_emulator.py); every other call reaches the moto server.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
import uvicorn
from moto.server import ThreadedMotoServer

from moodle_bridge.cli import main
from moodle_bridge.commands import config_check
from moodle_bridge.config import load_config
from moodle_bridge.operations import probes
from moodle_bridge.results.receiver import create_app
from moodle_bridge.sources.iomad.schema import IomadGeneration
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from moodle_bridge.storage.migrations import migrate
from offload_contract.signing import generate_root_secret
from tests.bridge.iomad_world import IomadWorld

pytestmark = pytest.mark.sqlite
ROOT = generate_root_secret()
PASSWORD_KEY = base64.b64encode(bytes(range(32))).decode()
DASHBOARD_KEY = generate_root_secret()


class _Http:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}
        self.raw = None
        self.content = b""


def with_get_account(
    make: probes.ClientMaker, *, production: bool = True, sent: float = 10.0
) -> probes.ClientMaker:
    def answer(model: Any, **_: Any) -> Any:
        if model.name != "GetAccount":
            return None
        return _Http(200), {
            "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": sent},
            "ProductionAccessEnabled": production,
            "SendingEnabled": True,
            "ResponseMetadata": {"HTTPStatusCode": 200},
        }

    def wrapped(service: str) -> Any:
        client = make(service)
        if service == "sesv2":
            client.meta.events.register("before-call.sesv2.GetAccount", answer)
        return client

    return wrapped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def site(tmp_path, monkeypatch, moto_url) -> Iterator[dict[str, Any]]:
    monkeypatch.chdir(tmp_path)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    for name in ("MRCO_CONFIG", "MRCO_KEYSETS", "MRCO_PASSWORD_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'moodle.sqlite3'}"
    engine = create_bridge_engine(url)
    IomadWorld.create(engine, generation=IomadGeneration.RENAMED)
    migrate(engine, "mdl_")
    sqs = boto3.client("sqs", region_name="eu-west-1", endpoint_url=moto_url)
    queue = sqs.create_queue(QueueName=f"jobs-{tmp_path.name}")["QueueUrl"]
    boto3.client("ses", region_name="eu-west-1", endpoint_url=moto_url).verify_domain_identity(
        Domain="mail.example.org"
    )
    port = _free_port()
    keyfile = tmp_path / "keysets"
    keyfile.write_text(f"k1={ROOT}\n")
    config_file = tmp_path / "moodle-offload.toml"
    config_file.write_text(
        f'[database]\nurl = "{url}"\n'
        f'[aws]\nregion = "eu-west-1"\nendpoint_url = "{moto_url}"\njobs_queue_url = "{queue}"\n'
        '[submit]\nsender_address = "noreply@mail.example.org"\n'
        f'[callbacks]\npublic_url = "http://127.0.0.1:{port}/callbacks/v1/results"\n'
        '[keys]\ncurrent = "k1"\n'
    )
    monkeypatch.setenv("MRCO_CONFIG", str(config_file))
    monkeypatch.setenv("MRCO_KEYSETS_FILE", str(keyfile))
    monkeypatch.setenv("MRCO_PASSWORD_KEY", PASSWORD_KEY)
    config = load_config()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine, build_bridge_tables("mdl_"), config),
            host="127.0.0.1",
            port=port,
            log_level="error",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield {"engine": engine, "queue": queue, "port": port, "moto": moto_url, "file": config_file}
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()


def test_a_ready_host_passes_every_check(site, monkeypatch, capsys) -> None:
    monkeypatch.setattr(
        config_check, "aws_clients", lambda config: with_get_account(probes.aws_clients(config))
    )
    monkeypatch.setenv("MRCO_DASHBOARD_KEY", DASHBOARD_KEY)
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1] == "all checks passed"
    checks = {line.split(":", 1)[0] for line in lines[:-1]}
    assert {
        "OK   configuration",
        "OK   HMAC key sets",
        "OK   password key",
        "OK   dashboard key",
        "OK   database",
        "OK   bridge tables",
        "OK   IOMAD",
        f"OK   queue jobs-{site['file'].parent.name}",
        "OK   SES sender noreply@mail.example.org",
        "OK   SES quota",
        "OK   SES sandbox",
        "OK   callback URL",
    } == checks
    assert "generation 5.1+" in out and "verified (domain mail.example.org)" in out
    assert f"from file {site['file'].parent / 'keysets'}" in out
    assert "OK   dashboard key: from environment MRCO_DASHBOARD_KEY" in out
    assert ROOT not in out and PASSWORD_KEY not in out and "testing" not in out
    assert DASHBOARD_KEY not in out


def test_each_problem_gets_one_failing_line_with_its_fix(site, monkeypatch, capsys) -> None:
    broken = site["file"].read_text()
    broken = broken.replace(site["queue"], site["queue"] + "-gone")
    broken = broken.replace("noreply@mail.example.org", "noreply@unverified.example.net")
    broken = broken.replace(f"127.0.0.1:{site['port']}/callbacks", f"127.0.0.1:{site['port']}/wrong")
    site["file"].write_text(broken)
    engine = sa.create_engine(f"sqlite:///{site['file'].parent / 'moodle.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mdl_mrcloud_config SET value = '1' WHERE name = 'schema_version'"))
    engine.dispose()
    monkeypatch.setattr(
        config_check,
        "aws_clients",
        lambda config: with_get_account(probes.aws_clients(config), production=False),
    )
    assert main(["config", "check"]) == 1
    out = capsys.readouterr().out
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 5, out
    text = "\n".join(failures)
    assert "bridge tables: schema version 1" in text and "FIX: moodle-offload migrate" in text
    assert "does not exist; FIX: aws.jobs_queue_url" in text
    assert "SES sender noreply@unverified.example.net: not verified" in text
    assert "SES sandbox: in the sandbox" in text
    assert "answered HTTP 404, not the receiver's 405" in text
    assert out.strip().endswith("5 check(s) failed")


def test_an_unreachable_database_and_receiver(site, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MRCO_DATABASE_URL", "mysql+pymysql://moodle:pw-not-shown@127.0.0.1:1/moodle")
    monkeypatch.setenv("MRCO_CALLBACK_PUBLIC_URL", "http://127.0.0.1:1/callbacks/v1/results")
    assert main(["config", "check", "--skip-aws"]) == 1
    out = capsys.readouterr().out
    assert "FAIL database: cannot connect to mysql+pymysql://moodle:***@127.0.0.1:1/moodle" in out
    assert "FAIL callback URL: http://127.0.0.1:1/callbacks/v1/results unreachable" in out
    assert "pw-not-shown" not in out


def test_a_cloudflare_site_gets_its_worker_intake_asked(site, monkeypatch, capsys) -> None:
    """No queues, no SES: the check asks the Worker's intake instead (any HTTP answer below 500)."""
    monkeypatch.setenv("MRCO_JOBS_QUEUE_URL", "")
    monkeypatch.setenv("MRCO_CLOUDFLARE_INTAKE_URL", f"http://127.0.0.1:{site['port']}/v1/jobs")
    assert main(["config", "check", "--skip-callback"]) == 0
    out = capsys.readouterr().out
    assert f"OK   Worker intake: http://127.0.0.1:{site['port']}/v1/jobs answers (HTTP 404)" in out
    assert "OK   queue " not in out and "SES" not in out
    monkeypatch.setenv("MRCO_CLOUDFLARE_INTAKE_URL", "http://127.0.0.1:1/v1/jobs")
    assert main(["config", "check", "--skip-callback"]) == 1
    out = capsys.readouterr().out
    assert "FAIL Worker intake: http://127.0.0.1:1/v1/jobs unreachable" in out
    assert "FIX: cloudflare.intake_url" in out


def test_a_used_up_daily_quota_fails_with_its_fix(site, monkeypatch, capsys) -> None:
    monkeypatch.setattr(
        config_check, "aws_clients", lambda config: with_get_account(probes.aws_clients(config), sent=50000.0)
    )
    assert main(["config", "check", "--skip-callback"]) == 1
    failures = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert failures == [
        "FAIL SES quota: 14/s, 50000 of 50000 sent in 24 h; daily quota used up: "
        "FIX: wait for the 24 h window or request a higher quota"
    ]
