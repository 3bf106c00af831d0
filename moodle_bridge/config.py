"""Bridge configuration: a TOML file plus ``MRCO_*`` environment variables (which win).

Every setting and its ``MRCO_*`` variable is documented in docs/bridge.md ("Configuration");
a test checks that every name in ``ENV_VARS`` appears there. Secrets (key sets, the password
key) should come from the environment or a file readable only by the Moodle user; they are
never printed: ``BridgeConfig.describe()`` masks them.
"""

from __future__ import annotations

import base64
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from offload_contract.limits import DEFAULT_RECIPIENTS_PER_BATCH
from offload_contract.signing import decode_root_secret

DEFAULT_CONFIG_PATHS = (Path("moodle-offload.toml"), Path("/etc/moodle-offload/config.toml"))


class ConfigError(ValueError):
    """The configuration is missing or invalid; the message says which setting and why."""


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///moodle-offload.sqlite3"
    prefix: str = "mdl_"
    #: Moodle's $CFG->dbname: part of the key of Moodle's cron locks on MySQL/MariaDB.
    moodle_dbname: str = ""
    #: iomad: claim IOMAD's queue (tick stops if no IOMAD schema is found); moodle: a plain
    #: Moodle site, only list jobs (submit-list) go through the pipeline.
    site: str = "iomad"


@dataclass(frozen=True)
class AwsConfig:
    region: str = "eu-west-1"
    #: Only for emulators (moto) or VPC endpoints; empty means the AWS default.
    endpoint_url: str = ""
    jobs_queue_url: str = ""
    certificates_queue_url: str = ""
    results_queue_url: str = ""
    results_dlq_url: str = ""
    content_bucket: str = ""
    api_gateway_url: str = ""
    #: The sender's DynamoDB table (stack output ``IdempotencyTableName``): cancel records and the
    #: deadline reconciliation read/write it (moodle_bridge/transports/cloud_records.py).
    idempotency_table: str = ""


@dataclass(frozen=True)
class CloudflareConfig:
    intake_url: str = ""


@dataclass(frozen=True)
class SubmitConfig:
    #: How AWS-routed batches are submitted: sqs (direct) or api_gateway (signed HTTPS).
    aws_mode: str = "sqs"
    max_recipients: int = DEFAULT_RECIPIENTS_PER_BATCH
    #: Outbox retry backoff: first delay and cap, in seconds.
    retry_base_seconds: int = 15
    retry_max_seconds: int = 900
    #: Default From address and name when the company has none (company set --sender-address).
    sender_address: str = ""
    sender_name: str = ""
    #: Base URL printed on certificates for verification (the API's /v1/certificates/verify).
    verify_url_base: str = ""
    #: Base of campaign mail's one-click unsubscribe URLs (the API's /v1/unsubscribe).
    unsubscribe_url_base: str = ""
    #: IOMAD rows claimed per transaction (claim, park, jobs, recipients, outbox in one go).
    claim_chunk_rows: int = 2000
    #: Batches of a lease group handed to the queue at once (network round trips overlap).
    concurrency: int = 8


@dataclass(frozen=True)
class CallbackConfig:
    #: The URL the cloud calls back (must reach `moodle-offload serve`).
    public_url: str = "http://127.0.0.1:8765/callbacks/v1/results"
    bind_host: str = "127.0.0.1"
    bind_port: int = 8765
    max_body_bytes: int = 5 * 1024 * 1024
    window_seconds: int = 300
    #: push: the cloud calls back; pull: `tick` drains the results queue (sites the cloud cannot reach).
    results_mode: str = "push"


@dataclass(frozen=True)
class KeysConfig:
    current: str = ""
    #: key set name -> root secret (base64url, >= 32 bytes). MRCO_KEYSETS="k2026=...,k2025=...".
    keysets: Mapping[str, str] = field(default_factory=dict)

    def root_secrets(self) -> dict[str, bytes]:
        return {name: decode_root_secret(value) for name, value in self.keysets.items()}


@dataclass(frozen=True)
class BridgeConfig:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    aws: AwsConfig = field(default_factory=AwsConfig)
    cloudflare: CloudflareConfig = field(default_factory=CloudflareConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    callbacks: CallbackConfig = field(default_factory=CallbackConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    #: AES-256-GCM key (base64) for temporary passwords at rest. MRCO_PASSWORD_KEY.
    password_key: str = ""
    #: Seconds a job may stay unfinished before reconciliation flags it.
    job_deadline_seconds: int = 6 * 3600

    def password_key_bytes(self) -> bytes:
        if not self.password_key:
            raise ConfigError("password_key (MRCO_PASSWORD_KEY) is required to offload mail with passwords")
        try:
            key = base64.b64decode(self.password_key, validate=True)
        except ValueError as exc:
            raise ConfigError("password_key must be base64") from exc
        if len(key) != 32:
            raise ConfigError("password_key must decode to 32 bytes (AES-256)")
        return key

    def describe(self) -> dict[str, Any]:
        """Settings for display, with every secret masked."""
        out: dict[str, Any] = {}
        for section in fields(self):
            value = getattr(self, section.name)
            if section.name == "password_key":
                out[section.name] = "***" if value else ""
            elif section.name == "keys":
                out["keys"] = {"current": value.current, "keysets": dict.fromkeys(value.keysets, "***")}
            elif hasattr(value, "__dataclass_fields__"):
                out[section.name] = {f.name: getattr(value, f.name) for f in fields(value)}
            else:
                out[section.name] = value
        return out


# Environment variable -> (section, key). Sections None are top-level fields.
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "MRCO_DATABASE_URL": ("database", "url"),
    "MRCO_DB_PREFIX": ("database", "prefix"),
    "MRCO_MOODLE_DBNAME": ("database", "moodle_dbname"),
    "MRCO_SITE": ("database", "site"),
    "MRCO_AWS_REGION": ("aws", "region"),
    "MRCO_AWS_ENDPOINT_URL": ("aws", "endpoint_url"),
    "MRCO_JOBS_QUEUE_URL": ("aws", "jobs_queue_url"),
    "MRCO_CERTIFICATES_QUEUE_URL": ("aws", "certificates_queue_url"),
    "MRCO_RESULTS_QUEUE_URL": ("aws", "results_queue_url"),
    "MRCO_RESULTS_DLQ_URL": ("aws", "results_dlq_url"),
    "MRCO_CONTENT_BUCKET": ("aws", "content_bucket"),
    "MRCO_IDEMPOTENCY_TABLE": ("aws", "idempotency_table"),
    "MRCO_API_GATEWAY_URL": ("aws", "api_gateway_url"),
    "MRCO_CLOUDFLARE_INTAKE_URL": ("cloudflare", "intake_url"),
    "MRCO_AWS_SUBMIT_MODE": ("submit", "aws_mode"),
    "MRCO_MAX_RECIPIENTS": ("submit", "max_recipients"),
    "MRCO_RETRY_BASE_SECONDS": ("submit", "retry_base_seconds"),
    "MRCO_RETRY_MAX_SECONDS": ("submit", "retry_max_seconds"),
    "MRCO_SENDER_ADDRESS": ("submit", "sender_address"),
    "MRCO_SENDER_NAME": ("submit", "sender_name"),
    "MRCO_VERIFY_URL_BASE": ("submit", "verify_url_base"),
    "MRCO_UNSUBSCRIBE_URL_BASE": ("submit", "unsubscribe_url_base"),
    "MRCO_CLAIM_CHUNK_ROWS": ("submit", "claim_chunk_rows"),
    "MRCO_SUBMIT_CONCURRENCY": ("submit", "concurrency"),
    "MRCO_JOB_DEADLINE_SECONDS": (None, "job_deadline_seconds"),
    "MRCO_CALLBACK_PUBLIC_URL": ("callbacks", "public_url"),
    "MRCO_CALLBACK_BIND_HOST": ("callbacks", "bind_host"),
    "MRCO_CALLBACK_BIND_PORT": ("callbacks", "bind_port"),
    "MRCO_RESULTS_MODE": ("callbacks", "results_mode"),
    "MRCO_KEYSET_CURRENT": ("keys", "current"),
    "MRCO_PASSWORD_KEY": (None, "password_key"),
}


def _coerce(current: Any, raw: Any, name: str) -> Any:
    if isinstance(current, bool):
        if isinstance(raw, bool):
            return raw
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if isinstance(current, int):
        try:
            return int(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be an integer") from exc
    return str(raw)


def _apply(config: BridgeConfig, section: str | None, key: str, raw: Any, name: str) -> BridgeConfig:
    if section is None:
        if key not in {f.name for f in fields(config)}:
            raise ConfigError(f"unknown setting {name}")
        return replace(config, **{key: _coerce(getattr(config, key), raw, name)})
    part = getattr(config, section)
    if key not in {f.name for f in fields(part)}:
        raise ConfigError(f"unknown setting {name}")
    if section == "keys" and key == "keysets":
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{name} must be a table of key set name = root secret")
        return replace(config, keys=replace(part, keysets={str(k): str(v) for k, v in raw.items()}))
    return replace(config, **{section: replace(part, **{key: _coerce(getattr(part, key), raw, name)})})


def parse_keysets(text: str) -> dict[str, str]:
    """Parse MRCO_KEYSETS: comma-separated name=secret pairs."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, secret = pair.partition("=")
        if not sep or not name.strip() or not secret.strip():
            raise ConfigError("MRCO_KEYSETS must look like name=secret[,name=secret]")
        out[name.strip()] = secret.strip()
    return out


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> BridgeConfig:
    """Defaults, then the TOML file (``path``, MRCO_CONFIG, or a default location), then env."""
    env = os.environ if environ is None else environ
    config = BridgeConfig()
    candidate = Path(path) if path else (Path(env["MRCO_CONFIG"]) if env.get("MRCO_CONFIG") else None)
    if candidate is not None and not candidate.is_file():
        raise ConfigError(f"configuration file {candidate} does not exist")
    if candidate is None:
        candidate = next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)
    if candidate is not None:
        try:
            document = tomllib.loads(candidate.read_text("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{candidate}: invalid TOML ({exc})") from None
        for key, value in document.items():
            if (
                isinstance(value, Mapping)
                and key in {f.name for f in fields(config)}
                and key != "password_key"
            ):
                for inner, raw in value.items():
                    config = _apply(config, key, inner, raw, f"[{key}] {inner}")
            else:
                config = _apply(config, None, key, value, key)
    for name, (section, key) in ENV_VARS.items():
        if name in env:
            config = _apply(config, section, key, env[name], name)
    if env.get("MRCO_KEYSETS"):
        config = replace(config, keys=replace(config.keys, keysets=parse_keysets(env["MRCO_KEYSETS"])))
    return validate_config(config)


def validate_config(config: BridgeConfig) -> BridgeConfig:
    if config.submit.aws_mode not in ("sqs", "api_gateway"):
        raise ConfigError("submit.aws_mode must be 'sqs' or 'api_gateway'")
    if config.database.site not in ("iomad", "moodle"):
        raise ConfigError("database.site must be 'iomad' or 'moodle'")
    if config.submit.claim_chunk_rows < 1:
        raise ConfigError("submit.claim_chunk_rows must be at least 1")
    if not 1 <= config.submit.concurrency <= 64:
        raise ConfigError("submit.concurrency must be between 1 and 64")
    if config.callbacks.results_mode not in ("push", "pull"):
        raise ConfigError("callbacks.results_mode must be 'push' or 'pull'")
    if not 1 <= config.submit.max_recipients <= 1000:
        raise ConfigError("submit.max_recipients must be between 1 and 1000")
    if not config.database.prefix.replace("_", "").isalnum():
        raise ConfigError("database.prefix may contain only letters, digits and '_'")
    try:
        config.keys.root_secrets()
    except ValueError as exc:
        raise ConfigError(f"keys.keysets: {exc}") from None
    if config.keys.current and config.keys.current not in config.keys.keysets:
        raise ConfigError("keys.current names a key set that is not configured")
    return config
