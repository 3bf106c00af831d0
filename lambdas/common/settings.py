"""Lambda settings, read once per container from the environment (names agreed in COMMON.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache


@dataclass(frozen=True)
class Settings:
    jobs_queue_url: str = ""
    certificates_queue_url: str = ""
    results_queue_url: str = ""
    idempotency_table: str = ""
    certificate_bucket: str = ""
    content_bucket: str = ""
    configuration_set_name: str = ""
    hmac_secret_arn: str = ""
    #: The seal key sets (offload_contract/sealing.py); only the email sender may read them.
    seal_secret_arn: str = ""
    sender_address: str = ""
    ses_max_send_rate: float | None = None
    verify_url_base: str = ""
    unsubscribe_url_base: str = ""
    #: Stop starting SES calls when less than this is left of the invocation (ms).
    safety_margin_ms: int = 15_000
    #: Attempts (per recipient) before a retryable failure becomes final.
    max_attempts: int = 8
    #: Server-side encryption for stored objects: "aws:kms" (with optional key id) or "AES256".
    sse_algorithm: str = "aws:kms"
    sse_kms_key_id: str = ""
    #: SES tenant per company id (``SES_TENANT_NAMES``, JSON ``{"<company id>": "<tenant>"}``, set by
    #: the stack when tenants are configured); it wins over a batch's ``ses_tenant``.
    ses_tenant_names: dict[str, str] = field(default_factory=dict)
    #: Crash-window recipients (lambdas/email/crash_window.py): look again after, give up after,
    #: and at most one SES event-pipeline probe per interval (seconds).
    crash_window_recheck_seconds: int = 60
    crash_window_give_up_seconds: int = 3600
    crash_window_probe_interval_seconds: int = 30
    #: SES calls the email sender makes side by side (``SENDER_PARALLEL_SENDS``, set by the stack).
    sender_parallel_sends: int = 8
    #: Secrets Manager name prefix of the companies' PAdES signing keys (``<prefix><company id>``,
    #: lambdas/certificates/signing.py); empty: certificates are not signed.
    signing_secret_prefix: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ) if env is None else env
        rate = e.get("SES_MAX_SEND_RATE", "").strip()
        return cls(
            jobs_queue_url=e.get("JOBS_QUEUE_URL", ""),
            certificates_queue_url=e.get("CERTIFICATES_QUEUE_URL", ""),
            results_queue_url=e.get("RESULTS_QUEUE_URL", ""),
            idempotency_table=e.get("IDEMPOTENCY_TABLE", ""),
            certificate_bucket=e.get("CERTIFICATE_BUCKET", ""),
            content_bucket=e.get("CONTENT_BUCKET", "") or e.get("CERTIFICATE_BUCKET", ""),
            configuration_set_name=e.get("CONFIGURATION_SET_NAME", ""),
            hmac_secret_arn=e.get("HMAC_SECRET_ARN", ""),
            seal_secret_arn=e.get("SEAL_SECRET_ARN", ""),
            sender_address=e.get("SENDER_ADDRESS", ""),
            ses_max_send_rate=float(rate) if rate else None,
            verify_url_base=e.get("VERIFY_URL_BASE", ""),
            unsubscribe_url_base=e.get("UNSUBSCRIBE_URL_BASE", ""),
            safety_margin_ms=int(e.get("SAFETY_MARGIN_MS", "15000")),
            max_attempts=int(e.get("MAX_SEND_ATTEMPTS", "8")),
            sse_algorithm=e.get("SSE_ALGORITHM", "aws:kms"),
            sse_kms_key_id=e.get("SSE_KMS_KEY_ID", ""),
            ses_tenant_names=_tenant_names(e.get("SES_TENANT_NAMES", "")),
            crash_window_recheck_seconds=int(e.get("CRASH_WINDOW_RECHECK_SECONDS", "60")),
            crash_window_give_up_seconds=int(e.get("CRASH_WINDOW_GIVE_UP_SECONDS", "3600")),
            crash_window_probe_interval_seconds=int(e.get("CRASH_WINDOW_PROBE_INTERVAL_SECONDS", "30")),
            sender_parallel_sends=max(1, int(e.get("SENDER_PARALLEL_SENDS", "8"))),
            signing_secret_prefix=e.get("SIGNING_SECRET_PREFIX", ""),
        )

    def require(self, *names: str) -> None:
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            raise RuntimeError("missing configuration: " + ", ".join(n.upper() for n in missing))


def _tenant_names(text: str) -> dict[str, str]:
    if not text.strip():
        return {}
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    if not isinstance(names, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in names.items()
    ):
        raise RuntimeError('SES_TENANT_NAMES must be a JSON object {"<company id>": "<tenant name>"}')
    return names


@cache
def settings() -> Settings:
    return Settings.from_env()
