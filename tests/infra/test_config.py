"""The typed stack configuration (no synthesis)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.config import ConfigError, OffloadConfig, TenantConfig, load_config
from tests.infra.support import ROOT


def _blocks() -> dict:
    blocks: dict = json.loads((ROOT / "cdk.json").read_text())["context"]["offload"]
    return blocks


def test_cdk_json_holds_valid_dev_and_prod_blocks() -> None:
    dev = load_config("dev", _blocks())
    prod = load_config("prod", _blocks())
    assert not dev.retain_data and prod.retain_data and prod.is_prod


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(1, 2), (14, 2), (100, 2), (101, 3), (500, 10), (1_000_000 / 1000, 20), (10_000, 200)],
)
def test_sender_concurrency_is_ceil_of_rate_over_per_invocation_rate(rate: float, expected: int) -> None:
    assert OffloadConfig(env_name="dev", ses_send_rate=rate).sender_max_concurrency == expected


def test_reserved_concurrency_only_when_asked() -> None:
    assert OffloadConfig(env_name="dev", ses_send_rate=300).sender_reserved_concurrency is None
    assert (
        OffloadConfig(
            env_name="prod", ses_send_rate=300, reserve_concurrency=True
        ).sender_reserved_concurrency
        == 6
    )


def test_file_overrides_context(tmp_path: Path) -> None:
    path = tmp_path / "offload.json"
    path.write_text(json.dumps({"prod": {"domain": "mail.example.org", "tenants": [{"company_id": 4}]}}))
    config = load_config("prod", _blocks(), path)
    assert config.domain == "mail.example.org"
    assert config.tenants == (TenantConfig(company_id=4, name="iomad-company-4"),)
    assert config.ses_send_rate == _blocks()["prod"]["ses_send_rate"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ses_send_rate": 0}, "ses_send_rate"),
        ({"domain": "Not A Domain"}, "domain"),
        ({"sender_address": "nobody"}, "sender_address"),
        ({"callback_mode": "carrier-pigeon"}, "callback_mode"),
        ({"log_retention_days": 13}, "log_retention_days"),
        ({"public_base_url": "http://plain.example.org"}, "https"),
        ({"tenants": [{"company_id": 1}, {"company_id": 1}]}, "distinct"),
        ({"tenants": [{"company_id": 1, "name": "bad name!"}]}, "tenant name"),
        ({"typo_key": 1}, "unknown configuration keys"),
    ],
)
def test_invalid_values_are_rejected_with_the_key_named(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("dev", {"dev": overrides})


def test_unknown_environment_and_bad_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="env must be one of"):
        load_config("staging", _blocks())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("dev", _blocks(), bad)
