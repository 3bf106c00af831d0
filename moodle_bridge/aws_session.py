"""The AWS credentials every boto3 client of the bridge uses.

When the bridge's access key comes from a secret source (``[aws] access_key_id`` ...,
docs/INSTALL.md), ``install_default_session`` makes it boto3's default session, so each
``boto3.client(...)`` in the bridge signs with it; otherwise boto3's own chain applies
(``AWS_*`` variables, ``~/.aws``, an instance or task role).
"""

from __future__ import annotations

import boto3

from moodle_bridge.config import BridgeConfig


def aws_session(config: BridgeConfig) -> boto3.Session:
    if config.aws.access_key_id and config.aws.secret_access_key:
        return boto3.Session(
            aws_access_key_id=config.aws.access_key_id,
            aws_secret_access_key=config.aws.secret_access_key,
            region_name=config.aws.region,
        )
    return boto3.DEFAULT_SESSION or boto3.Session(region_name=config.aws.region)


def install_default_session(config: BridgeConfig) -> None:
    """Make the configured access key boto3's default (no-op when none is configured)."""
    if config.aws.access_key_id and config.aws.secret_access_key:
        boto3.setup_default_session(
            aws_access_key_id=config.aws.access_key_id,
            aws_secret_access_key=config.aws.secret_access_key,
            region_name=config.aws.region,
        )
