"""What ``company set`` checks before it saves: the company exists in IOMAD, and SES may send
from the sender address. (Whether the Cloudflare Worker can take a job type is asked by
``transports.capabilities``.)

Each check answers a ``Check``: a ``problem`` line saying what is wrong and what to do (the
command refuses), or a ``note`` when SES could not be asked (the command goes on and says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from botocore.exceptions import BotoCoreError, ClientError

from moodle_bridge.config import BridgeConfig
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound, detect_iomad


@dataclass(frozen=True)
class Check:
    problem: str | None = None
    note: str | None = None


def company_exists(conn: sa.Connection, config: BridgeConfig, company_id: int) -> Check:
    if config.database.site != "iomad":
        return Check()  # a plain Moodle site has no companies; list jobs use company 0
    try:
        tables = detect_iomad(conn, config.database.prefix)
    except IomadSchemaNotFound:
        return Check(
            f"IOMAD's tables were not found under prefix {config.database.prefix!r}, so company "
            f"{company_id} cannot be checked: check database.url and database.prefix (for a plain "
            'Moodle site set database.site = "moodle")'
        )
    c = tables.company
    if conn.execute(sa.select(c.c.id).where(c.c.id == company_id)).first() is None:
        return Check(f"company {company_id} does not exist in IOMAD: check the id (IOMAD: Companies > Edit)")
    return Check()


def _identity_verified(ses: Any, identity: str) -> bool | None:
    """True/False when SES knows the identity, None when it does not."""
    try:
        found = ses.get_email_identity(EmailIdentity=identity)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NotFoundException":
            return None
        raise
    return bool(found.get("VerifiedForSendingStatus")) or found.get("VerificationStatus") == "SUCCESS"


def sender_verified(config: BridgeConfig, address: str, *, ses: Any = None) -> Check:
    """The address, or its domain, must be a verified SES identity (when SES can be asked)."""
    if ses is None:
        if not (config.aws.jobs_queue_url or config.aws.api_gateway_url or config.aws.endpoint_url):
            return Check(
                note=f"AWS is not configured here, so SES was not asked whether {address} is verified"
            )
        import boto3  # noqa: PLC0415
        from botocore.config import Config as BotoConfig  # noqa: PLC0415

        ses = boto3.client(
            "sesv2",
            region_name=config.aws.region,
            endpoint_url=config.aws.endpoint_url or None,
            config=BotoConfig(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}),
        )
    domain = address.rsplit("@", 1)[-1]
    try:
        states = [_identity_verified(ses, address), _identity_verified(ses, domain)]
    except (ClientError, BotoCoreError) as exc:
        why = (
            exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else type(exc).__name__
        )
        return Check(
            note=f"SES could not be asked whether {address} is verified ({why}); make sure it is "
            "(docs/AWS_SETUP.md) before mail is sent from it"
        )
    if any(states):
        return Check()
    return Check(
        f"SES has not verified {address} or {domain} in {config.aws.region}: verify the address or its "
        "domain in SES (docs/AWS_SETUP.md), then run this command again"
    )
