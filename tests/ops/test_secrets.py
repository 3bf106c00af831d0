"""Every place docs/INSTALL.md says a secret may come from, read for real (moto for AWS)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count
from sqlalchemy.engine import make_url

from moodle_bridge.aws_session import aws_session, install_default_session
from moodle_bridge.config import BridgeConfig, ConfigError, load_config
from moodle_bridge.secret_sources import SECRET_NAMES
from moodle_bridge.storage.secrets_at_rest import SecretBox, SecretError, associated_data
from offload_contract.signing import generate_root_secret

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(100, 132))).decode()
ROOT1 = generate_root_secret()
ROOT2 = generate_root_secret()
DASHBOARD_KEY = generate_root_secret()
BASE = {"MRCO_DATABASE_URL": "mysql+pymysql://moodle@db.example/moodle"}


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


def _everything_shown(config) -> str:
    return json.dumps(config.describe()) + repr(config.secret_sources)


def test_environment_values() -> None:
    config = load_config(
        environ={
            **BASE,
            "MRCO_KEYSETS": f"k1={ROOT1}",
            "MRCO_KEYSET_CURRENT": "k1",
            "MRCO_PASSWORD_KEY": KEY_A,
            "MRCO_DATABASE_PASSWORD": "db-pass-äö",
            "MRCO_AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "MRCO_AWS_SECRET_ACCESS_KEY": "aws-secret-value",
        }
    )
    assert config.keys.keysets == {"k1": ROOT1}
    assert config.password_key_bytes() == bytes(range(32))
    assert "db-pass" in config.database.url  # url-encoded into the engine's URL
    assert config.aws.secret_access_key == "aws-secret-value"
    assert config.secret_sources["password_key"] == "environment MRCO_PASSWORD_KEY"
    shown = _everything_shown(config)
    for secret in (ROOT1, KEY_A, "db-pass", "aws-secret-value"):
        assert secret not in shown


def test_files_and_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "keysets").write_text(f"k1={ROOT1},k2={ROOT2}\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "password_key").write_text(KEY_A + "\n")
    (creds / "database_password").write_text("from-credential\n")
    (creds / "aws_access_key_id").write_text("AKIACRED")
    (creds / "aws_secret_access_key").write_text("cred-secret")
    (creds / "dashboard_key").write_text(DASHBOARD_KEY + "\n")
    config = load_config(
        environ={
            **BASE,
            "MRCO_KEYSETS_FILE": str(tmp_path / "keysets"),
            "MRCO_KEYSET_CURRENT": "k2",
            "CREDENTIALS_DIRECTORY": str(creds),
        }
    )
    assert config.keys.keysets == {"k1": ROOT1, "k2": ROOT2} and config.keys.current == "k2"
    assert config.password_key == KEY_A
    assert ":from-credential@" in config.database.url
    assert (config.aws.access_key_id, config.aws.secret_access_key) == ("AKIACRED", "cred-secret")
    assert config.secret_sources == {
        "keysets": f"file {tmp_path / 'keysets'}",
        "password_key": "systemd credential password_key",
        "database_password": "systemd credential database_password",
        "aws_access_key_id": "systemd credential aws_access_key_id",
        "aws_secret_access_key": "systemd credential aws_secret_access_key",
        "dashboard_key": "systemd credential dashboard_key",
    }
    assert config.dashboard.shared_key == DASHBOARD_KEY
    assert "from-credential" not in _everything_shown(config)
    assert DASHBOARD_KEY not in _everything_shown(config)


def test_the_environment_wins_over_a_file_which_wins_over_a_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "password_key").write_text(KEY_A)
    (tmp_path / "pk").write_text(KEY_B)
    env = {**BASE, "CREDENTIALS_DIRECTORY": str(creds)}
    assert load_config(environ=env).password_key == KEY_A
    assert load_config(environ={**env, "MRCO_PASSWORD_KEY_FILE": str(tmp_path / "pk")}).password_key == KEY_B
    assert (
        load_config(environ={**env, "MRCO_PASSWORD_KEY": KEY_A, "MRCO_PASSWORD_KEY_FILE": "/x"}).password_key
        == KEY_A
    )


def test_an_unreadable_file_names_the_file_not_a_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"MRCO_PASSWORD_KEY_FILE: cannot read .*/missing"):
        load_config(environ={**BASE, "MRCO_PASSWORD_KEY_FILE": str(tmp_path / "missing")})
    (tmp_path / "bad").write_text("k1=" + "x" * 5)
    with pytest.raises(ConfigError) as info:
        load_config(environ={**BASE, "MRCO_KEYSETS_FILE": str(tmp_path / "bad")})
    assert "xxxxx" not in str(info.value)


def test_secrets_manager_and_ssm(aws_env, tmp_path: Path) -> None:
    sm = boto3.client("secretsmanager", region_name="eu-west-1")
    ssm = boto3.client("ssm", region_name="eu-west-1")
    # The shape of the stack's HmacKeys secret (docs/AWS_SETUP.md §7).
    hmac = sm.create_secret(
        Name="offload/hmac", SecretString=json.dumps({"current": "k2", "keysets": {"k1": ROOT1, "k2": ROOT2}})
    )["ARN"]
    sm.create_secret(
        Name="offload/db", SecretString=json.dumps({"username": "moodle", "password": "sm-db-pw"})
    )
    ssm.put_parameter(Name="/offload/password-key", Value=f"{KEY_B},{KEY_A}", Type="SecureString")
    ssm.put_parameter(Name="/offload/aws-key-id", Value="AKIASSM", Type="SecureString")
    ssm.put_parameter(Name="/offload/aws-secret", Value="ssm-aws-secret", Type="SecureString")
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[database]\nurl = "postgresql+psycopg://moodle@db.example/moodle"\n'
        '[aws]\nregion = "eu-west-1"\n'
        "[secrets]\n"
        f'keysets = "secretsmanager:{hmac}"\n'
        'database_password = "secretsmanager:offload/db#password"\n'
        'password_key = "ssm:/offload/password-key"\n'
        'dashboard_key = "secretsmanager:offload/dashboard"\n'
    )
    sm.create_secret(Name="offload/dashboard", SecretString=ROOT1)
    config = load_config(
        toml,
        environ={
            "MRCO_AWS_ACCESS_KEY_ID_FROM": "ssm:/offload/aws-key-id",
            "MRCO_AWS_SECRET_ACCESS_KEY_FROM": "ssm:/offload/aws-secret",
        },
    )
    assert config.keys.keysets == {"k1": ROOT1, "k2": ROOT2}
    assert config.keys.current == "k2"  # the secret's current set signs
    assert ":sm-db-pw@" in config.database.url
    assert config.password_key == KEY_B and config.password_keys_previous == (KEY_A,)
    assert config.aws.access_key_id == "AKIASSM"
    assert config.secret_sources["keysets"] == f"secretsmanager:{hmac}"
    assert config.secret_sources["password_key"] == "ssm:/offload/password-key"
    assert config.dashboard.shared_key == ROOT1
    assert config.secret_sources["dashboard_key"] == "secretsmanager:offload/dashboard"
    shown = _everything_shown(config)
    for secret in (ROOT1, ROOT2, KEY_A, KEY_B, "sm-db-pw", "ssm-aws-secret"):
        assert secret not in shown
    # An explicit current set wins over the secret's.
    pinned = load_config(toml, environ={"MRCO_KEYSET_CURRENT": "k1"})
    assert pinned.keys.current == "k1"


def test_a_missing_aws_secret_fails_with_its_id_and_code(aws_env) -> None:
    with pytest.raises(ConfigError, match=r"Secrets Manager secret nope: ResourceNotFoundException"):
        load_config(environ={**BASE, "MRCO_KEYSETS_FROM": "secretsmanager:nope"})
    with pytest.raises(ConfigError, match=r"SSM parameter /nope: ParameterNotFound"):
        load_config(environ={**BASE, "MRCO_PASSWORD_KEY_FROM": "ssm:/nope"})
    with pytest.raises(ConfigError, match="secret reference must be"):
        load_config(environ={**BASE, "MRCO_PASSWORD_KEY_FROM": "vault:x"})


def test_unknown_secret_names_in_the_file_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[secrets]\nhmac = "file:/x"\n')
    with pytest.raises(ConfigError, match=r"\[secrets\] hmac: unknown secret"):
        load_config(toml, environ={})


def test_the_configured_aws_key_signs_every_boto3_client(aws_env) -> None:
    config = load_config(
        environ={
            **BASE,
            "MRCO_AWS_ACCESS_KEY_ID": "AKIABRIDGE",
            "MRCO_AWS_SECRET_ACCESS_KEY": "bridge-secret",
        }
    )
    assert aws_session(config).get_credentials().access_key == "AKIABRIDGE"
    try:
        install_default_session(config)
        client = boto3.client("sqs", region_name="eu-west-1")
        assert client._request_signer._credentials.access_key == "AKIABRIDGE"
    finally:
        boto3.DEFAULT_SESSION = None
    with pytest.raises(ConfigError, match="set together"):
        load_config(environ={**BASE, "MRCO_AWS_ACCESS_KEY_ID": "AKIAONLY"})


def test_every_secret_name_is_documented_in_install_md() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "INSTALL.md").read_text("utf-8")
    for name, var in SECRET_NAMES.items():
        assert var in doc and f"{var}_FILE" in doc and f"`{name}`" in doc, name


def test_password_key_rotation_keeps_sealed_passwords_readable() -> None:
    aad = associated_data(7, "e1:user:a@example.com")
    sealed_with_a = SecretBox(bytes(range(32))).seal("Temp!Pass1", aad)
    rotated = load_config(environ={**BASE, "MRCO_PASSWORD_KEY": f"{KEY_B},{KEY_A}"})
    box = SecretBox(rotated.password_key_bytes(), rotated.previous_password_keys())
    assert box.open(sealed_with_a, aad) == "Temp!Pass1"
    resealed = box.seal("New!Pass2", aad)
    with pytest.raises(SecretError):
        SecretBox(bytes(range(32))).open(resealed, aad)  # new seals use the new key
    with pytest.raises(SecretError):
        SecretBox(bytes(range(100, 132))).open(sealed_with_a, aad)  # the old key must be kept
    with pytest.raises(ConfigError, match="previous password key 1"):
        load_config(environ={**BASE, "MRCO_PASSWORD_KEY": f"{KEY_B},c2hvcnQ="})


def test_os_environ_is_not_changed_by_loading() -> None:
    before = dict(os.environ)
    load_config(environ={**BASE, "MRCO_PASSWORD_KEY": KEY_A})
    assert dict(os.environ) == before


# -- every secret from every source docs/INSTALL.md §3 lists ------------------------------------

SAMPLE_VALUES = {
    "keysets": f"k1={ROOT1}",
    "password_key": KEY_A,
    "database_password": "pw-from-source",
    "aws_access_key_id": "AKIAFROMSOURCE",
    "aws_secret_access_key": "aws-secret-from-source",
    "dashboard_key": DASHBOARD_KEY,
}
#: Set beside the secret under test: the AWS key id and secret key must come together.
PARTNER = {
    "aws_access_key_id": {"MRCO_AWS_SECRET_ACCESS_KEY": "partner-secret"},
    "aws_secret_access_key": {"MRCO_AWS_ACCESS_KEY_ID": "AKIAPARTNER"},
}


def _value_of(config: BridgeConfig, name: str) -> str:
    return {
        "keysets": lambda: ",".join(f"{k}={v}" for k, v in config.keys.keysets.items()),
        "password_key": lambda: config.password_key,
        "database_password": lambda: str(make_url(config.database.url).password),
        "aws_access_key_id": lambda: config.aws.access_key_id,
        "aws_secret_access_key": lambda: config.aws.secret_access_key,
        "dashboard_key": lambda: config.dashboard.shared_key,
    }[name]()


@pytest.mark.parametrize("source", ["environment", "file", "systemd credential", "_FROM file:", "[secrets]"])
@pytest.mark.parametrize("name", list(SECRET_NAMES))
def test_each_secret_from_each_source(name: str, source: str, tmp_path: Path) -> None:
    var, value = SECRET_NAMES[name], SAMPLE_VALUES[name]
    holder = tmp_path / "holder"
    holder.write_text(value + "\n")
    env = {**BASE, **PARTNER.get(name, {})}
    toml = tmp_path / "c.toml"
    toml.write_text("")
    expected_source = {
        "environment": f"environment {var}",
        "file": f"file {holder}",
        "systemd credential": f"systemd credential {name}",
        "_FROM file:": f"file:{holder}",
        "[secrets]": f"file:{holder}",
    }[source]
    if source == "environment":
        env[var] = value
    elif source == "file":
        env[f"{var}_FILE"] = str(holder)
    elif source == "systemd credential":
        creds = tmp_path / "credentials"
        creds.mkdir()
        holder.rename(creds / name)
        env["CREDENTIALS_DIRECTORY"] = str(creds)
    elif source == "_FROM file:":
        env[f"{var}_FROM"] = f"file:{holder}"
    else:
        toml.write_text(f'[secrets]\n{name} = "file:{holder}"\n')
    config = load_config(toml, environ=env)
    assert _value_of(config, name) == value
    assert config.secret_sources[name] == expected_source
    if name != "aws_access_key_id":  # an identifier, shown by `describe`; its secret key is not
        assert value not in _everything_shown(config)


def test_the_plain_settings_of_the_file_for_test_machines(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'password_key = "{KEY_A}"\n'
        '[database]\nurl = "mysql+pymysql://moodle@db.example/moodle"\n'
        f'[keys]\ncurrent = "k1"\n[keys.keysets]\nk1 = "{ROOT1}"\n'
        '[aws]\naccess_key_id = "AKIAINFILE"\nsecret_access_key = "file-aws-secret"\n'
        f'[dashboard]\nshared_key = "{DASHBOARD_KEY}"\n'
    )
    config = load_config(toml, environ={})
    assert config.keys.keysets == {"k1": ROOT1} and config.password_key == KEY_A
    assert (config.aws.access_key_id, config.aws.secret_access_key) == ("AKIAINFILE", "file-aws-secret")
    assert config.dashboard.shared_key == DASHBOARD_KEY
    assert config.secret_sources == {
        "keysets": "configuration file [keys.keysets]",
        "password_key": "configuration file",
        "aws_access_key_id": "configuration file [aws] access_key_id",
        "aws_secret_access_key": "configuration file [aws] secret_access_key",
        "dashboard_key": "configuration file [dashboard] shared_key",
    }
    # Every source above the file wins over it.
    assert load_config(toml, environ={"MRCO_PASSWORD_KEY": KEY_B}).password_key == KEY_B


@set_initial_no_auth_action_count(5)
@mock_aws
def test_the_aws_keys_found_first_fetch_the_other_secrets(monkeypatch) -> None:
    """INSTALL.md §3: the bridge's AWS keys (here from the environment) sign the Secrets Manager and
    SSM look-ups, not boto3's own chain. moto checks IAM here: only the bridge user may read."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    iam = boto3.client("iam")
    iam.create_user(UserName="bridge")
    iam.put_user_policy(
        UserName="bridge",
        PolicyName="read-secrets",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["ssm:GetParameter", "secretsmanager:GetSecretValue"],
                        "Resource": "*",
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="bridge")["AccessKey"]
    boto3.client("ssm").put_parameter(Name="/offload/password-key", Value=KEY_A, Type="SecureString")
    boto3.client("secretsmanager").create_secret(Name="offload/keysets", SecretString=f"k1={ROOT1}")
    references = {
        **BASE,
        "MRCO_AWS_REGION": "eu-west-1",
        "MRCO_PASSWORD_KEY_FROM": "ssm:/offload/password-key",
        "MRCO_KEYSETS_FROM": "secretsmanager:offload/keysets",
    }
    config = load_config(
        environ={
            **references,
            "MRCO_AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "MRCO_AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
    )
    assert config.password_key == KEY_A and config.keys.keysets == {"k1": ROOT1}
    # Without the bridge's keys the look-up goes through boto3's chain (the unknown "testing" key).
    with pytest.raises(ConfigError, match=r"^MRCO_KEYSETS_FROM: Secrets Manager secret offload/keysets: "):
        load_config(environ=references)
