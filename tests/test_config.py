import re
from pathlib import Path

import pytest

from moodle_bridge.config import ENV_VARS, ConfigError, load_config
from moodle_bridge.secret_sources import SECRET_NAMES
from offload_contract.signing import generate_root_secret


def test_defaults_are_embedded_sqlite() -> None:
    config = load_config(environ={})
    assert config.database.url.startswith("sqlite:///")
    assert config.database.prefix == "mdl_"


def test_file_then_env_and_secrets_masked(tmp_path: Path) -> None:
    secret = generate_root_secret()
    path = tmp_path / "c.toml"
    path.write_text(f'[database]\nprefix = "m_"\n[keys]\ncurrent = "k1"\nkeysets = {{ k1 = "{secret}" }}\n')
    config = load_config(path, environ={"MRCO_MAX_RECIPIENTS": "50", "MRCO_PASSWORD_KEY": "A" * 43 + "="})
    assert config.database.prefix == "m_"
    assert config.submit.max_recipients == 50
    described = repr(config.describe())
    assert secret not in described and "A" * 43 not in described


@pytest.mark.parametrize(
    "env,match",
    [
        ({"MRCO_MAX_RECIPIENTS": "abc"}, "integer"),
        ({"MRCO_MAX_RECIPIENTS": "5000"}, "between 1 and 1000"),
        ({"MRCO_AWS_SUBMIT_MODE": "carrier-pigeon"}, "aws_mode"),
        ({"MRCO_KEYSETS": "k1=c2hvcnQ"}, "at least 32 bytes"),
        ({"MRCO_KEYSET_CURRENT": "nope"}, "not configured"),
        ({"MRCO_CONFIG": "/nonexistent/x.toml"}, "does not exist"),
    ],
)
def test_bad_settings_fail_clearly(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(environ=env)


def test_password_key_must_be_32_bytes() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        load_config(environ={"MRCO_PASSWORD_KEY": "c2hvcnQ="}).password_key_bytes()


def test_every_environment_variable_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "bridge.md").read_text("utf-8")
    documented = set(re.findall(r"\bMRCO_[A-Z0-9_]+\b", doc))
    assert sorted({*ENV_VARS, *SECRET_NAMES.values(), "MRCO_CONFIG"} - documented) == []
