"""Fixtures for the bridge core: migrated databases, configuration, SQS in moto."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws
from sqlalchemy.engine import URL

from moodle_bridge.config import AwsConfig, BridgeConfig, DatabaseConfig, KeysConfig, SubmitConfig
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from moodle_bridge.storage.migrations import migrate
from offload_contract.signing import generate_root_secret

PASSWORD_KEY = base64.b64encode(bytes(range(32))).decode()


#: The seal key set of the bridge tests (offload_contract/sealing.py): tests open sealed contents with it.
SEAL_ROOT = generate_root_secret()


def make_config(url: URL | str, **submit: Any) -> BridgeConfig:
    return BridgeConfig(
        database=DatabaseConfig(
            url=url if isinstance(url, str) else url.render_as_string(hide_password=False)
        ),
        keys=KeysConfig(
            current="k1",
            keysets={"k1": generate_root_secret()},
            seal_current="s1",
            seal_keysets={"s1": SEAL_ROOT},
        ),
        submit=replace(SubmitConfig(), sender_address="noreply@example.com", **submit),
        password_key=PASSWORD_KEY,
    )


@pytest.fixture
def bridge_engine(db_url: URL) -> Iterator[sa.Engine]:
    engine = create_bridge_engine(db_url)
    migrate(engine, "mdl_")
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def repo() -> BridgeRepo:
    return BridgeRepo(build_bridge_tables("mdl_"))


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with mock_aws():
            sqs = boto3.client("sqs", region_name="eu-west-1")
            jobs = sqs.create_queue(QueueName="jobs", Attributes={"MaximumMessageSize": "1048576"})[
                "QueueUrl"
            ]
            certs = sqs.create_queue(QueueName="certificates", Attributes={"MaximumMessageSize": "1048576"})[
                "QueueUrl"
            ]
            yield {"sqs": sqs, "jobs": jobs, "certificates": certs}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def with_queues(config: BridgeConfig, aws: dict[str, Any]) -> BridgeConfig:
    return replace(
        config,
        aws=replace(AwsConfig(), jobs_queue_url=aws["jobs"], certificates_queue_url=aws["certificates"]),
    )


def drain(aws: dict[str, Any], queue: str = "jobs") -> list[dict[str, Any]]:
    """Every message body on the queue (decoded), deleting them."""
    from offload_contract.codec import decode_message

    out: list[dict[str, Any]] = []
    while True:
        got = aws["sqs"].receive_message(QueueUrl=aws[queue], MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return out
        for m in got:
            out.append(decode_message(m["Body"]))
            aws["sqs"].delete_message(QueueUrl=aws[queue], ReceiptHandle=m["ReceiptHandle"])
