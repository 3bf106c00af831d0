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
    ("rate", "latency_ms", "parallel", "expected"),
    [
        (1, 100, 8, 2),  # the ESM's minimum
        (14, 100, 8, 2),
        (50, 100, 8, 2),  # 1.5 x 50 / 80 per invocation = 0.94
        (200, 100, 8, 4),  # 1.5 x 200 / 80 = 3.75
        (200, 250, 8, 10),  # slower sends need more invocations: 1.5 x 200 / 32 = 9.4
        (200, 100, 1, 30),  # one call at a time: 1.5 x 200 / 10
        (1000, 100, 8, 19),
        (10_000, 2000, 1, 1000),  # the ESM's maximum
    ],
)
def test_sender_concurrency_comes_from_rate_latency_and_parallel_sends(
    rate: float, latency_ms: float, parallel: int, expected: int
) -> None:
    config = OffloadConfig(
        env_name="dev", ses_send_rate=rate, send_latency_ms=latency_ms, sender_parallel_sends=parallel
    )
    assert config.per_invocation_send_rate == parallel * 1000 / latency_ms
    assert config.sender_max_concurrency == expected
    capacity = config.sender_max_concurrency * config.per_invocation_send_rate
    if expected not in (2, 1000):  # unclamped: capacity >= 1.5 x rate, and one fewer would not be
        assert capacity >= 1.5 * rate > (config.sender_max_concurrency - 1) * config.per_invocation_send_rate


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
        ({"send_latency_ms": 0}, "send_latency_ms"),
        ({"sender_parallel_sends": 0}, "sender_parallel_sends"),
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
