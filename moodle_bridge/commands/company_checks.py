"""What ``company set`` checks before it saves: the company exists in IOMAD, SES may send from
the sender address, and the Worker can send mail before a company is routed to Cloudflare.

Each check answers ``None`` (fine), or one line saying what is wrong and what to do. A check
that cannot reach its service says so in a note and does not block (SES), or blocks (the
Worker: routing mail to a provider that cannot send holds the mail until cancelled by hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
from botocore.exceptions import BotoCoreError, ClientError

from moodle_bridge.config import BridgeConfig
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound, detect_iomad

#: The Worker's capability document (served by the Worker; docs/cloudflare.md): JSON with a
#: boolean ``email`` that is true once the Worker can send mail.
CAPABILITIES_PATH = "/v1/capabilities"


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


def worker_can_send(config: BridgeConfig, *, client: httpx.Client | None = None) -> Check:
    """``--provider cloudflare`` only when the Worker says it can send mail."""
    intake = config.cloudflare.intake_url
    if not intake:
        return Check(
            "no Cloudflare Worker is configured (cloudflare.intake_url): this company stays on aws. "
            "Fix: deploy the Worker and set cloudflare.intake_url first"
        )
    base = intake.split("/v1/", 1)[0].rstrip("/")
    try:
        http = client or httpx.Client(timeout=5)
        try:
            response = http.get(base + CAPABILITIES_PATH)
        finally:
            if client is None:
                http.close()
        document = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError) as exc:
        return Check(
            f"the Cloudflare Worker did not answer {CAPABILITIES_PATH} ({type(exc).__name__}): this company "
            "stays on aws. Fix: check cloudflare.intake_url and the Worker's deployment"
        )
    if isinstance(document, dict) and document.get("email") is True:
        return Check()
    return Check(
        "the Cloudflare Worker cannot send mail yet (its capabilities do not include email): this "
        "company stays on aws, so no mail is held. Fix: deploy a Worker that can send, then run this "
        "command again"
    )
