"""Typed per-environment configuration of the AWS stack.

Values come from ``cdk.json`` (context key ``offload``, one block per environment) and may be
overridden by a JSON file named in the context key ``offload:config-file``. The environment is
chosen with ``-c env=prod`` (default ``dev``). No account id is ever part of the configuration:
the stack is environment-agnostic unless CDK_DEFAULT_ACCOUNT/REGION are set by the CLI.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

ENVIRONMENTS = ("dev", "prod")
CallbackMode = Literal["push", "pull"]

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: SESv2 SendBulkEmail accepts at most 50 destinations per call.
SES_BULK_DESTINATIONS = 50
#: Lambda SQS event source mapping: MaximumConcurrency must be 2..1000.
ESM_MIN_CONCURRENCY = 2
ESM_MAX_CONCURRENCY = 1000


class ConfigError(ValueError):
    """The stack configuration is invalid; the message says which key and why."""


@dataclass(frozen=True)
class TenantConfig:
    """One SES tenant per IOMAD company: its own reputation and suppression scope."""

    company_id: int
    name: str = ""

    def __post_init__(self) -> None:
        if self.company_id < 0:
            raise ConfigError("tenants[].company_id must be >= 0")
        if not self.name:
            object.__setattr__(self, "name", f"iomad-company-{self.company_id}")
        if not _TENANT_NAME.match(self.name):
            raise ConfigError(f"tenant name {self.name!r} must be 1-64 characters of A-Z a-z 0-9 _ -")


@dataclass(frozen=True)
class OffloadConfig:
    """Everything that differs between a dev and a prod deployment."""

    env_name: str
    #: The account's SES MaxSendRate (messages per second) this deployment may use.
    ses_send_rate: float = 1.0
    #: Recipients one email_sender invocation can push to SES per second when unthrottled
    #: (one SendBulkEmail call of 50 destinations takes roughly 0.5-1 s including rendering).
    per_invocation_send_rate: float = 50.0
    #: Default From address (must belong to a verified identity).
    sender_address: str = "no-reply@example.com"
    #: Optional domain identity with Easy DKIM, and its custom MAIL FROM sub-domain.
    domain: str | None = None
    mail_from_subdomain: str | None = "bounce"
    tenants: tuple[TenantConfig, ...] = ()
    #: Optional e-mail address subscribed to the alarm topic.
    alarm_email: str | None = None
    #: push: the callback dispatcher POSTs results to Moodle; pull: the bridge drains the queue.
    callback_mode: CallbackMode = "push"
    #: Base URLs the Lambdas put in mail (verify links, List-Unsubscribe); empty means "the API".
    public_base_url: str = ""
    log_retention_days: int = 30
    #: Reserve concurrency for the email sender (needs an account concurrency limit above 100).
    reserve_concurrency: bool = False
    #: Keep buckets, tables and secrets when the stack is deleted.
    retain_data: bool = False
    api_rate_limit: float = 50.0
    api_burst_limit: int = 100
    #: Tighter throttling of the two public routes (verify, unsubscribe).
    public_rate_limit: float = 10.0
    public_burst_limit: int = 20
    #: Per-client throttling of the public routes: a WAF web ACL with a rate-based rule (requests per
    #: source address per 5 minutes). Costs money (docs/AWS_SETUP.md); off means stage throttling only.
    public_waf: bool = True
    public_waf_limit_per_5min: int = 300
    #: Alarm when the oldest jobs/certificates message is older than this.
    backlog_alarm_minutes: int = 60
    #: Days after which certificate PDFs move to Standard-IA, and contents/ objects expire.
    certificate_ia_after_days: int = 90
    content_expire_after_days: int = 14
    tracing: bool = True
    #: SES review thresholds (bounce 5 %, complaint 0.1 %); alarms fire at these rates.
    bounce_rate_alarm: float = 0.05
    complaint_rate_alarm: float = 0.001
    #: Let the bridge's IAM user read the HMAC key secret (so key rotation needs no copy step).
    bridge_reads_hmac_secret: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.env_name not in ENVIRONMENTS:
            raise ConfigError(f"env must be one of {ENVIRONMENTS}, not {self.env_name!r}")
        if not 0 < self.ses_send_rate <= 10_000:
            raise ConfigError("ses_send_rate must be > 0 and <= 10000 (messages per second)")
        if not 0 < self.per_invocation_send_rate <= 1_000:
            raise ConfigError("per_invocation_send_rate must be > 0 and <= 1000")
        if not _EMAIL.match(self.sender_address):
            raise ConfigError(f"sender_address {self.sender_address!r} is not an e-mail address")
        if self.domain is not None and not _DOMAIN.match(self.domain):
            raise ConfigError(f"domain {self.domain!r} is not a lower-case DNS name")
        if self.mail_from_subdomain is not None and not re.match(
            r"^[a-z0-9-]{1,63}$", self.mail_from_subdomain
        ):
            raise ConfigError("mail_from_subdomain must be one DNS label")
        if self.alarm_email is not None and not _EMAIL.match(self.alarm_email):
            raise ConfigError(f"alarm_email {self.alarm_email!r} is not an e-mail address")
        if self.callback_mode not in ("push", "pull"):
            raise ConfigError("callback_mode must be 'push' or 'pull'")
        if self.public_base_url and not self.public_base_url.startswith("https://"):
            raise ConfigError("public_base_url must start with https://")
        if self.log_retention_days not in _RETENTION_DAYS:
            raise ConfigError(f"log_retention_days must be one of {sorted(_RETENTION_DAYS)}")
        if (
            min(self.api_rate_limit, self.api_burst_limit, self.public_rate_limit, self.public_burst_limit)
            <= 0
        ):
            raise ConfigError("api_* and public_* rate and burst limits must be positive")
        if not 10 <= self.public_waf_limit_per_5min <= 2_000_000_000:
            raise ConfigError("public_waf_limit_per_5min must be between 10 and 2e9 (WAF rate-based rules)")
        if self.backlog_alarm_minutes < 1:
            raise ConfigError("backlog_alarm_minutes must be >= 1")
        if self.certificate_ia_after_days < 30 or self.content_expire_after_days < 1:
            raise ConfigError(
                "certificate_ia_after_days >= 30 (S3 minimum) and content_expire_after_days >= 1"
            )
        if not 0 < self.bounce_rate_alarm < 1 or not 0 < self.complaint_rate_alarm < 1:
            raise ConfigError("alarm rates are fractions between 0 and 1")
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names) or len({t.company_id for t in self.tenants}) != len(names):
            raise ConfigError("tenants must have distinct names and company ids")

    @property
    def is_prod(self) -> bool:
        return self.env_name == "prod"

    @property
    def sender_max_concurrency(self) -> int:
        """ESM MaximumConcurrency of the email sender: ceil(send rate / per-invocation rate).

        Clamped to the ESM's allowed range 2..1000. The Lambdas pace themselves against the
        account rate as well (DynamoDB pacing items), so this bound keeps surplus invocations
        from sitting idle while waiting for send tokens.
        """
        wanted = math.ceil(self.ses_send_rate / self.per_invocation_send_rate)
        return max(ESM_MIN_CONCURRENCY, min(ESM_MAX_CONCURRENCY, wanted))

    @property
    def sender_reserved_concurrency(self) -> int | None:
        """Reserved concurrency equal to the ESM bound (so the ESM is never throttled)."""
        return self.sender_max_concurrency if self.reserve_concurrency else None


from infra.constructs import _RETENTION  # noqa: E402

_RETENTION_DAYS = frozenset(_RETENTION)


def _coerce(raw: dict[str, Any], env_name: str) -> OffloadConfig:
    known = {f.name for f in fields(OffloadConfig)} - {"env_name", "extra"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown configuration keys for {env_name}: {', '.join(unknown)}")
    values: dict[str, Any] = dict(raw)
    tenants_raw = values.pop("tenants", []) or []
    if not isinstance(tenants_raw, list):
        raise ConfigError("tenants must be a list of {company_id, name?} objects")
    try:
        tenants = tuple(TenantConfig(**t) for t in tenants_raw)
    except TypeError as exc:
        raise ConfigError(f"invalid tenant entry: {exc}") from exc
    try:
        return OffloadConfig(env_name=env_name, tenants=tenants, **values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def load_config(
    env_name: str, context_blocks: dict[str, Any] | None, config_file: str | Path | None = None
) -> OffloadConfig:
    """Merge ``context_blocks[env_name]`` with the file's ``[env_name]`` block (file wins)."""
    if env_name not in ENVIRONMENTS:
        raise ConfigError(f"env must be one of {ENVIRONMENTS}, not {env_name!r}")
    merged: dict[str, Any] = dict((context_blocks or {}).get(env_name) or {})
    if config_file:
        path = Path(config_file)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        merged.update(data.get(env_name) or {})
    return _coerce(merged, env_name)
