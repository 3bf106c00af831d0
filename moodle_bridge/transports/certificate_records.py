"""The bridge's writes to the cloud's certificate verification records and templates.

**Revocation** marks ``cert#<code>`` in the sender's table (``aws.idempotency_table``; the key
comes from ``offload_contract.cloud_keys``) with ``revoked_at`` and ``revoked_reason``, or removes
both (unrevoke). The public verify route reads the same item, so its page says "revoked" at once.
The write is direct, not through a signed API route: the bridge already holds credentials for
this table (cancel records, reconciliation), and its IAM user may only ``UpdateItem`` items whose
key starts with ``cert#`` (infra/constructs/api.py ``BridgeAccess``, statement ``RevokeCertificates``).
The update is conditional on the record existing and belonging to the company, so it never
creates a record or touches another company's certificate.

**Cloudflare**: the Worker keeps its own verification records (Durable Object ``PublicRecords``);
``WorkerCertificateRecords`` revokes through its signed ``POST /v1/certificates/revoke``, which only
changes a certificate of the signing key's company.

**Templates** go to the certificate bucket (``aws.content_bucket``) under
``templates/company-<id>/`` (certificate_render/template.py), where the renderer reads them;
the bridge's IAM user may read and write only that prefix (statement ``CertificateTemplates``).
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from moodle_bridge.transports.targets import SubmitError, WorkerSubmitter
from offload_contract.cloud_keys import verification_key

MAX_REASON = 500


class CertificateCloudError(Exception):
    """The cloud could not be reached or refused the call. The message is one safe line."""


def _why(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    return type(exc).__name__


class CertificateRecords:
    def __init__(self, client: Any, table: str, *, clock: Any = time.time) -> None:
        self._db = client
        self._table = table
        self._clock = clock

    def set_revoked(self, code: str, company_id: int, reason: str | None) -> bool:
        """Revoke (``reason`` given) or reinstate (``reason`` None) a company's certificate.

        False when no record with this code belongs to the company (nothing is written)."""
        key = {"id": {"S": verification_key(code)}}
        values: dict[str, Any] = {":company": {"N": str(int(company_id))}}
        if reason is not None:
            expression = "SET revoked_at = :at, revoked_reason = :why"
            values[":at"] = {"N": str(int(self._clock()))}
            values[":why"] = {"S": reason[:MAX_REASON]}
        else:
            expression = "REMOVE revoked_at, revoked_reason"
        try:
            self._db.update_item(
                TableName=self._table,
                Key=key,
                UpdateExpression=expression,
                ConditionExpression="attribute_exists(id) AND company_id = :company",
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise CertificateCloudError(f"cannot update the verification record: {_why(exc)}") from None
        except BotoCoreError as exc:
            raise CertificateCloudError(f"cannot update the verification record: {_why(exc)}") from None
        return True


class WorkerCertificateRecords:
    """The Worker's verification records, through its signed revocation route."""

    def __init__(self, worker: WorkerSubmitter) -> None:
        self._worker = worker

    def set_revoked(self, code: str, company_id: int, reason: str | None) -> bool:
        try:
            return self._worker.set_certificate_revoked(
                company_id, code, None if reason is None else reason[:MAX_REASON]
            )
        except SubmitError as exc:
            raise CertificateCloudError(f"cannot update the Worker's verification record: {exc}") from None


def worker_certificate_records(config: Any) -> WorkerCertificateRecords | None:
    """The Worker's records for ``cloudflare.intake_url``, or None when the Worker is not configured."""
    root = config.keys.root_secrets().get(config.keys.current) if config.keys.current else None
    if root is None or not config.cloudflare.intake_url:
        return None
    return WorkerCertificateRecords(WorkerSubmitter(config.cloudflare.intake_url, config.keys.current, root))


def certificate_records_from_config(config: Any) -> CertificateRecords | None:
    """``CertificateRecords`` for ``aws.idempotency_table``, or None when it is not configured."""
    table = getattr(config.aws, "idempotency_table", "")
    if not table:
        return None
    import boto3  # noqa: PLC0415
    from botocore.config import Config as BotoConfig  # noqa: PLC0415

    client = boto3.client(
        "dynamodb",
        region_name=config.aws.region,
        endpoint_url=config.aws.endpoint_url or None,
        config=BotoConfig(
            connect_timeout=5, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"}
        ),
    )
    return CertificateRecords(client, table)


def template_s3_client(config: Any) -> Any:
    """An S3 client for the certificate bucket (``aws.content_bucket``)."""
    import boto3  # noqa: PLC0415

    return boto3.client("s3", region_name=config.aws.region, endpoint_url=config.aws.endpoint_url or None)
