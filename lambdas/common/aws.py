"""boto3 clients, created once per container (connection reuse across invocations)."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

#: Short timeouts and no hidden SDK retries for SES: retrying is our job (pacing, exactly
#: once), and a call must never outlive the safety margin kept before the Lambda timeout.
SES_CONFIG = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1, "mode": "standard"})
DEFAULT_CONFIG = Config(connect_timeout=3, read_timeout=15, retries={"max_attempts": 4, "mode": "standard"})


@cache
def client(service: str) -> Any:
    return boto3.client(service, config=SES_CONFIG if service == "sesv2" else DEFAULT_CONFIG)


def reset_clients() -> None:
    """Forget cached clients (tests switch moto accounts and regions)."""
    client.cache_clear()
