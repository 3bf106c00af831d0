"""Where the bridge's secrets come from: the environment, a file, systemd credentials, or AWS.

Each secret is looked up in this order; the first source that has it wins:

1. ``MRCO_<NAME>``: the value itself in the environment;
2. ``MRCO_<NAME>_FILE``: a file holding the value (trailing newlines stripped);
3. ``$CREDENTIALS_DIRECTORY/<name>``: a systemd credential (``LoadCredential=<name>:...``);
4. a reference, ``MRCO_<NAME>_FROM`` or ``[secrets] <name>`` in the TOML file:
   ``secretsmanager:<secret id or ARN>[#<json key>]``, ``ssm:<parameter name>`` (decrypted) or
   ``file:<path>``;
5. the plain TOML setting, where one exists (``[keys.keysets]``, ``password_key``,
   ``[aws] access_key_id`` ...).

Only the *source* of a secret is ever shown (``config check``, ``describe``); errors name the
variable, file or secret id and the AWS error code, never the value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Secret name -> environment variable holding the value.
SECRET_NAMES: dict[str, str] = {
    "keysets": "MRCO_KEYSETS",
    "password_key": "MRCO_PASSWORD_KEY",
    "database_password": "MRCO_DATABASE_PASSWORD",
    "aws_access_key_id": "MRCO_AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "MRCO_AWS_SECRET_ACCESS_KEY",
    "dashboard_key": "MRCO_DASHBOARD_KEY",
}

#: Resolved first: the AWS look-ups of the other secrets use these credentials.
AWS_CREDENTIAL_NAMES = ("aws_access_key_id", "aws_secret_access_key")

REFERENCE_KINDS = ("secretsmanager", "ssm", "file")


class SecretSourceError(ValueError):
    """A configured secret source cannot be read; the message names the source, never a value."""


@dataclass(frozen=True)
class Secret:
    value: str
    #: Where it came from, for display: "environment MRCO_X", "file /run/...", "secretsmanager:id".
    source: str


#: (service, region, endpoint_url, access key id, secret key) -> boto3 client.
ClientFactory = Callable[[str, str, str, str, str], Any]


def _default_client(service: str, region: str, endpoint: str, key_id: str, secret: str) -> Any:
    import boto3  # noqa: PLC0415 - only when a secret lives in AWS
    from botocore.config import Config  # noqa: PLC0415

    kwargs: dict[str, Any] = {}
    if key_id and secret:
        kwargs.update(aws_access_key_id=key_id, aws_secret_access_key=secret)
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint or None,
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}),
        **kwargs,
    )


def _read_file(path: str, origin: str) -> str:
    try:
        return Path(path).read_text("utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SecretSourceError(
            f"{origin}: cannot read {path} ({exc.strerror or type(exc).__name__})"
        ) from None
    except UnicodeDecodeError:
        raise SecretSourceError(f"{origin}: {path} is not UTF-8 text") from None


@dataclass(frozen=True)
class AwsAccess:
    region: str
    endpoint_url: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""


def fetch_reference(
    reference: str, origin: str, aws: AwsAccess, client_factory: ClientFactory | None = None
) -> str:
    """The value a ``kind:target`` reference points at."""
    kind, sep, target = reference.partition(":")
    if not sep or kind not in REFERENCE_KINDS or not target:
        raise SecretSourceError(
            f"{origin}: a secret reference must be secretsmanager:<id>[#key], ssm:<name> or file:<path>"
        )
    if kind == "file":
        return _read_file(target, origin)
    factory = client_factory or _default_client
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    if kind == "ssm":
        try:
            client = factory("ssm", aws.region, aws.endpoint_url, aws.access_key_id, aws.secret_access_key)
            answer = client.get_parameter(Name=target, WithDecryption=True)
            return str(answer["Parameter"]["Value"])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise SecretSourceError(f"{origin}: SSM parameter {target}: {code}") from None
        except BotoCoreError as exc:
            raise SecretSourceError(f"{origin}: SSM parameter {target}: {type(exc).__name__}") from None
    secret_id, _, json_key = target.partition("#")
    try:
        client = factory(
            "secretsmanager", aws.region, aws.endpoint_url, aws.access_key_id, aws.secret_access_key
        )
        answer = client.get_secret_value(SecretId=secret_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise SecretSourceError(f"{origin}: Secrets Manager secret {secret_id}: {code}") from None
    except BotoCoreError as exc:
        raise SecretSourceError(
            f"{origin}: Secrets Manager secret {secret_id}: {type(exc).__name__}"
        ) from None
    value = answer.get("SecretString")
    if value is None:
        raise SecretSourceError(f"{origin}: Secrets Manager secret {secret_id} has no string value")
    if not json_key:
        return str(value)
    try:
        document = json.loads(value)
    except ValueError:
        raise SecretSourceError(f"{origin}: Secrets Manager secret {secret_id} is not JSON") from None
    if not isinstance(document, dict) or json_key not in document:
        raise SecretSourceError(f"{origin}: Secrets Manager secret {secret_id} has no key {json_key!r}")
    item = document[json_key]
    return item if isinstance(item, str) else json.dumps(item)


def resolve_secret(
    name: str,
    environ: Mapping[str, str],
    references: Mapping[str, str],
    aws: AwsAccess,
    client_factory: ClientFactory | None = None,
) -> Secret | None:
    """The secret ``name`` from the first source that has it (module docstring), or None."""
    var = SECRET_NAMES[name]
    if environ.get(var):
        return Secret(environ[var], f"environment {var}")
    if environ.get(f"{var}_FILE"):
        named = environ[f"{var}_FILE"]
        return Secret(_read_file(named, f"{var}_FILE"), f"file {named}")
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        credential = Path(credentials) / name
        if credential.is_file():
            return Secret(_read_file(str(credential), "systemd credential"), f"systemd credential {name}")
    reference, origin = "", ""
    if environ.get(f"{var}_FROM"):
        reference, origin = environ[f"{var}_FROM"], f"{var}_FROM"
    elif references.get(name):
        reference, origin = references[name], f"[secrets] {name}"
    if reference:
        return Secret(fetch_reference(reference, origin, aws, client_factory), reference)
    return None


def parse_keyset_document(text: str, origin: str) -> tuple[dict[str, str], str]:
    """Key sets and the current one from ``name=secret,...`` or the AWS stack's JSON.

    JSON is ``{"current": "k2", "keysets": {"k1": "...", "k2": "..."}}`` (the ``HmacKeys``
    secret's shape) or a plain ``{"k1": "..."}`` object. Returns (keysets, current or "").
    """
    stripped = text.strip()
    if not stripped.startswith("{"):
        out: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in stripped.split(","))):
            name, sep, secret = pair.partition("=")
            if not sep or not name.strip() or not secret.strip():
                raise SecretSourceError(f"{origin}: key sets must look like name=secret[,name=secret]")
            out[name.strip()] = secret.strip()
        return out, ""
    try:
        document = json.loads(stripped)
    except ValueError:
        raise SecretSourceError(f"{origin}: key sets are not valid JSON") from None
    if not isinstance(document, dict):
        raise SecretSourceError(f"{origin}: key sets must be a JSON object")
    current = document.get("current", "")
    sets = document.get("keysets", document if "current" not in document else None)
    if not isinstance(sets, dict) or not all(isinstance(v, str) for v in sets.values()):
        raise SecretSourceError(f'{origin}: expected {{"current": ..., "keysets": {{name: secret}}}}')
    if not isinstance(current, str):
        raise SecretSourceError(f"{origin}: current must be a key set name")
    return {str(k): v for k, v in sets.items()}, current


def split_password_keys(text: str) -> tuple[str, tuple[str, ...]]:
    """``KEY[,OLDKEY...]``: the first seals, every one opens (rotation keeps sealed rows readable)."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        return "", ()
    return keys[0], tuple(keys[1:])


def credentials_directory_names() -> tuple[str, ...]:
    """The systemd credential names the bridge looks for (for the units and the docs)."""
    return tuple(SECRET_NAMES)
