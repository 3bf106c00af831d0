"""Bridge configuration: a TOML file plus ``MRCO_*`` environment variables (which win).

Every setting and its ``MRCO_*`` variable is documented in docs/bridge.md ("Configuration");
a test checks that every name in ``ENV_VARS`` appears there. Secrets (key sets, the password
key, the database password, AWS keys) come from the environment, a file, a systemd credential
or AWS Secrets Manager / SSM (``moodle_bridge.secret_sources``, docs/INSTALL.md); they are
never printed: ``BridgeConfig.describe()`` masks them and shows where each came from.
"""

from __future__ import annotations

import base64
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from moodle_bridge.secret_sources import (
    AWS_CREDENTIAL_NAMES,
    SECRET_NAMES,
    AwsAccess,
    ClientFactory,
    SecretSourceError,
    parse_keyset_document,
    resolve_secret,
    split_password_keys,
)
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
    #: Moodle's $CFG->dataroot: where a schedule's report going through Moodle's own mail is
    #: written for IOMAD to attach (docs/schedules.md). Empty: such reports are not sent.
    moodle_dataroot: str = ""
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
    #: The SES account's MaxSendRate (recipients/s), as the stack's ses_send_rate: job ETAs.
    ses_send_rate: float = 0.0
    #: The sender's DynamoDB table (stack output ``IdempotencyTableName``): cancel records and the
    #: deadline reconciliation read/write it (moodle_bridge/transports/cloud_records.py).
    idempotency_table: str = ""
    #: The bridge user's access key (secret sources, docs/INSTALL.md); empty: boto3's default chain.
    access_key_id: str = ""
    secret_access_key: str = ""


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
class DashboardConfig:
    #: Shared with the Moodle plugin local_mrcloud (base64url, >= 32 bytes); signs sign-in links.
    shared_key: str = ""
    #: The dashboard's address as users reach it (behind the site's proxy); sign-in links start here.
    public_url: str = "http://127.0.0.1:8766"
    bind_host: str = "127.0.0.1"
    bind_port: int = 8766
    #: A session lasts this long; rights are re-read from Moodle's tables every ``recheck_seconds``.
    session_seconds: int = 8 * 3600
    recheck_seconds: int = 300


@dataclass(frozen=True)
class KeysConfig:
    current: str = ""
    #: key set name -> root secret (base64url, >= 32 bytes). MRCO_KEYSETS="k2026=...,k2025=...".
    keysets: Mapping[str, str] = field(default_factory=dict)

    #: Seal key sets: the user's own copy of a password mail leaves the bridge encrypted under
    #: them (offload_contract/sealing.py); only the email sender can read them in the cloud.
    #: MRCO_SEAL_KEYSETS="s2026=...", MRCO_SEAL_KEYSET_CURRENT.
    seal_current: str = ""
    seal_keysets: Mapping[str, str] = field(default_factory=dict)

    def root_secrets(self) -> dict[str, bytes]:
        return {name: decode_root_secret(value) for name, value in self.keysets.items()}

    def seal_root(self) -> tuple[str, bytes] | None:
        """(name, root) of the current seal key set, or None when sealing is not configured."""
        if not self.seal_keysets:
            return None
        name = self.seal_current or next(iter(self.seal_keysets))
        return name, decode_root_secret(self.seal_keysets[name])


@dataclass(frozen=True)
class BridgeConfig:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    aws: AwsConfig = field(default_factory=AwsConfig)
    cloudflare: CloudflareConfig = field(default_factory=CloudflareConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    callbacks: CallbackConfig = field(default_factory=CallbackConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    #: AES-256-GCM key (base64) for temporary passwords at rest. MRCO_PASSWORD_KEY.
    password_key: str = ""
    #: Earlier password keys, still used to open passwords sealed before a rotation.
    password_keys_previous: tuple[str, ...] = ()
    #: Secret name -> where it came from (never the value), for ``config check``.
    secret_sources: Mapping[str, str] = field(default_factory=dict)
    #: The TOML file read, if any.
    config_file: str = ""
    #: Seconds a job may stay unfinished before reconciliation flags it.
    job_deadline_seconds: int = 6 * 3600
    #: human (text lines), json (one object per line), auto (human on a terminal, else json).
    log_format: str = "human"
    #: DEBUG, INFO, WARNING, ERROR; empty: INFO for the services (serve, run), WARNING otherwise.
    log_level: str = ""

    def password_key_bytes(self) -> bytes:
        if not self.password_key:
            raise ConfigError("password_key (MRCO_PASSWORD_KEY) is required to offload mail with passwords")
        return _decode_password_key(self.password_key, "password_key")

    def previous_password_keys(self) -> tuple[bytes, ...]:
        return tuple(
            _decode_password_key(k, f"previous password key {n}")
            for n, k in enumerate(self.password_keys_previous, start=1)
        )

    def describe(self) -> dict[str, Any]:
        """Settings for display, with every secret masked."""
        out: dict[str, Any] = {}
        for section in fields(self):
            value = getattr(self, section.name)
            if section.name == "password_key":
                out[section.name] = "***" if value else ""
            elif section.name == "dashboard":
                out["dashboard"] = {f.name: getattr(value, f.name) for f in fields(value)}
                out["dashboard"]["shared_key"] = "***" if value.shared_key else ""
            elif section.name == "password_keys_previous":
                out[section.name] = ["***"] * len(value)
            elif section.name == "secret_sources":
                out[section.name] = dict(value)
            elif section.name == "database":
                out["database"] = {f.name: getattr(value, f.name) for f in fields(value)}
                out["database"]["url"] = masked_url(value.url)
            elif section.name == "aws":
                out["aws"] = {f.name: getattr(value, f.name) for f in fields(value)}
                out["aws"]["secret_access_key"] = "***" if value.secret_access_key else ""
            elif section.name == "keys":
                out["keys"] = {
                    "current": value.current,
                    "keysets": dict.fromkeys(value.keysets, "***"),
                    "seal_current": value.seal_current,
                    "seal_keysets": dict.fromkeys(value.seal_keysets, "***"),
                }
            elif hasattr(value, "__dataclass_fields__"):
                out[section.name] = {f.name: getattr(value, f.name) for f in fields(value)}
            else:
                out[section.name] = value
        return out


def _decode_password_key(text: str, name: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ConfigError(f"{name} must be base64") from exc
    if len(key) != 32:
        raise ConfigError(f"{name} must decode to 32 bytes (AES-256)")
    return key


def masked_url(url: str) -> str:
    """A database URL with its password replaced by ``***``."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415 - keep config importable without it

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split(":", 1)[0] + ":***"


# Environment variable -> (section, key). Sections None are top-level fields.
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "MRCO_DATABASE_URL": ("database", "url"),
    "MRCO_DB_PREFIX": ("database", "prefix"),
    "MRCO_MOODLE_DBNAME": ("database", "moodle_dbname"),
    "MRCO_MOODLE_DATAROOT": ("database", "moodle_dataroot"),
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
    "MRCO_SES_SEND_RATE": ("aws", "ses_send_rate"),
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
    "MRCO_SEAL_KEYSET_CURRENT": ("keys", "seal_current"),
    "MRCO_DASHBOARD_URL": ("dashboard", "public_url"),
    "MRCO_DASHBOARD_BIND_HOST": ("dashboard", "bind_host"),
    "MRCO_DASHBOARD_BIND_PORT": ("dashboard", "bind_port"),
    "MRCO_DASHBOARD_SESSION_SECONDS": ("dashboard", "session_seconds"),
    "MRCO_DASHBOARD_RECHECK_SECONDS": ("dashboard", "recheck_seconds"),
    "MRCO_LOG_FORMAT": (None, "log_format"),
    "MRCO_LOG_LEVEL": (None, "log_level"),
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
    if isinstance(current, float):
        try:
            return float(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be a number") from exc
    return str(raw)


def _apply(config: BridgeConfig, section: str | None, key: str, raw: Any, name: str) -> BridgeConfig:
    if section is None:
        if key not in {f.name for f in fields(config)} or key in ("secret_sources", "config_file"):
            raise ConfigError(f"unknown setting {name}")
        if key == "password_keys_previous":
            if not isinstance(raw, list | tuple) or not all(isinstance(k, str) for k in raw):
                raise ConfigError(f"{name} must be a list of base64 keys")
            return replace(config, password_keys_previous=tuple(raw))
        return replace(config, **{key: _coerce(getattr(config, key), raw, name)})
    part = getattr(config, section)
    if key not in {f.name for f in fields(part)}:
        raise ConfigError(f"unknown setting {name}")
    if section == "keys" and key in ("keysets", "seal_keysets"):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{name} must be a table of key set name = root secret")
        return replace(config, keys=replace(part, **{key: {str(k): str(v) for k, v in raw.items()}}))
    return replace(config, **{section: replace(part, **{key: _coerce(getattr(part, key), raw, name)})})


def parse_keysets(text: str) -> dict[str, str]:
    """Parse MRCO_KEYSETS: comma-separated name=secret pairs (or the AWS secret's JSON)."""
    try:
        return parse_keyset_document(text, "MRCO_KEYSETS")[0]
    except SecretSourceError as exc:
        raise ConfigError(str(exc)) from None


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    client_factory: ClientFactory | None = None,
) -> BridgeConfig:
    """Defaults, then the TOML file (``path``, MRCO_CONFIG, or a default location), then env,
    then the secrets from their sources (``moodle_bridge.secret_sources``)."""
    env = os.environ if environ is None else environ
    references: dict[str, str] = {}
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
        references = _secret_references(document.pop("secrets", {}))
        config = replace(config, config_file=str(candidate))
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
    try:
        config = _resolve_secrets(config, env, references, client_factory)
    except SecretSourceError as exc:
        raise ConfigError(str(exc)) from None
    if env.get("MRCO_SEAL_KEYSETS"):
        sealing = parse_keysets(env["MRCO_SEAL_KEYSETS"])
        config = replace(config, keys=replace(config.keys, seal_keysets=sealing))
    return validate_config(config)


def _secret_references(table: Any) -> dict[str, str]:
    if not isinstance(table, Mapping):
        raise ConfigError("[secrets] must be a table of name = reference")
    unknown = sorted(set(table) - set(SECRET_NAMES))
    if unknown:
        raise ConfigError(f"[secrets] {unknown[0]}: unknown secret (known: {', '.join(SECRET_NAMES)})")
    return {str(k): str(v) for k, v in table.items()}


def _resolve_secrets(
    config: BridgeConfig,
    env: Mapping[str, str],
    references: Mapping[str, str],
    client_factory: ClientFactory | None,
) -> BridgeConfig:
    sources: dict[str, str] = {}
    aws = config.aws
    found = {}
    for name in AWS_CREDENTIAL_NAMES:
        access = AwsAccess(config.aws.region, config.aws.endpoint_url)
        found[name] = resolve_secret(name, env, references, access, client_factory)
    if found["aws_access_key_id"] is not None:
        aws = replace(aws, access_key_id=found["aws_access_key_id"].value)
        sources["aws_access_key_id"] = found["aws_access_key_id"].source
    if found["aws_secret_access_key"] is not None:
        aws = replace(aws, secret_access_key=found["aws_secret_access_key"].value)
        sources["aws_secret_access_key"] = found["aws_secret_access_key"].source
    for name, setting in (
        ("aws_access_key_id", "access_key_id"),
        ("aws_secret_access_key", "secret_access_key"),
    ):
        if name not in sources and getattr(aws, setting):
            sources[name] = f"configuration file [aws] {setting}"
    if bool(aws.access_key_id) != bool(aws.secret_access_key):
        raise ConfigError("aws access_key_id and secret_access_key must be set together")
    config = replace(config, aws=aws)
    access = AwsAccess(aws.region, aws.endpoint_url, aws.access_key_id, aws.secret_access_key)

    keysets = resolve_secret("keysets", env, references, access, client_factory)
    if keysets is not None:
        sets, current = parse_keyset_document(keysets.value, keysets.source)
        explicit_current = "MRCO_KEYSET_CURRENT" in env or config.keys.current
        config = replace(
            config,
            keys=replace(
                config.keys,
                keysets=sets,
                current=config.keys.current if explicit_current else current,
            ),
        )
        sources["keysets"] = keysets.source
    elif config.keys.keysets:
        sources["keysets"] = "configuration file [keys.keysets]"

    password = resolve_secret("password_key", env, references, access, client_factory)
    text = password.value if password is not None else config.password_key
    if text:
        current_key, previous = split_password_keys(text)
        config = replace(
            config,
            password_key=current_key,
            password_keys_previous=previous or config.password_keys_previous,
        )
        sources["password_key"] = password.source if password is not None else "configuration file"

    db_password = resolve_secret("database_password", env, references, access, client_factory)
    if db_password is not None:
        config = replace(
            config,
            database=replace(config.database, url=_with_password(config.database.url, db_password.value)),
        )
        sources["database_password"] = db_password.source

    dashboard_key = resolve_secret("dashboard_key", env, references, access, client_factory)
    if dashboard_key is not None:
        config = replace(config, dashboard=replace(config.dashboard, shared_key=dashboard_key.value))
        sources["dashboard_key"] = dashboard_key.source
    elif config.dashboard.shared_key:
        sources["dashboard_key"] = "configuration file [dashboard] shared_key"
    return replace(config, secret_sources=sources)


def _with_password(url: str, password: str) -> str:
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError("database.url is not a valid SQLAlchemy URL") from None
    if parsed.get_backend_name() == "sqlite":
        raise ConfigError("database_password is set but database.url is SQLite (no password)")
    return parsed.set(password=password).render_as_string(hide_password=False)


def validate_config(config: BridgeConfig) -> BridgeConfig:
    if config.submit.aws_mode not in ("sqs", "api_gateway"):
        raise ConfigError("submit.aws_mode must be 'sqs' or 'api_gateway'")
    if config.database.site not in ("iomad", "moodle"):
        raise ConfigError("database.site must be 'iomad' or 'moodle'")
    if not 0 <= config.aws.ses_send_rate <= 10_000:
        raise ConfigError("aws.ses_send_rate must be between 0 (unknown) and 10000 per second")
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
    if config.dashboard.shared_key:
        try:
            decode_root_secret(config.dashboard.shared_key)
        except ValueError as exc:
            raise ConfigError(f"dashboard.shared_key: {exc}") from None
    if not 60 <= config.dashboard.recheck_seconds <= config.dashboard.session_seconds:
        raise ConfigError("dashboard.recheck_seconds must be at least 60 and at most session_seconds")
    if not config.dashboard.public_url.startswith(("https://", "http://")):
        raise ConfigError("dashboard.public_url must be an http(s) URL")
    if config.keys.current and config.keys.current not in config.keys.keysets:
        raise ConfigError("keys.current names a key set that is not configured")
    try:
        config.keys.seal_root()
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"keys.seal_keysets: {exc}") from None
    if config.keys.seal_current and config.keys.seal_current not in config.keys.seal_keysets:
        raise ConfigError("keys.seal_current names a seal key set that is not configured")
    if config.log_format not in ("human", "json", "auto"):
        raise ConfigError("log_format must be 'human', 'json' or 'auto'")
    if config.log_level.upper() not in ("", "DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level must be DEBUG, INFO, WARNING or ERROR")
    if config.password_key:
        config.password_key_bytes()
        config.previous_password_keys()
    return config
