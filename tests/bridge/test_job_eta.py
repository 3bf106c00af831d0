"""The job ETA in ``jobs show`` comes from the SES account's rate (moodle_bridge/results/eta.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from moodle_bridge.commands.jobs import _eta
from moodle_bridge.config import ConfigError, load_config
from moodle_bridge.results.eta import eta_seconds, unsent
from moodle_bridge.storage.statuses import COUNTER_COLUMNS


def _job(status: str = "processing", **counters: int) -> SimpleNamespace:
    columns = dict.fromkeys(COUNTER_COLUMNS, 0)
    return SimpleNamespace(status=status, **{**columns, **counters})


def test_fifty_thousand_take_an_hour_at_a_new_accounts_rate_and_half_at_28() -> None:
    assert eta_seconds(50_000, 14) == 3572  # 59.5 minutes
    assert eta_seconds(50_000, 28) == 1786  # under 30 minutes: the plan's headline needs >= 28/s
    assert (eta_seconds(50_000, 27) or 0) > 30 * 60
    assert eta_seconds(10, 0) is None  # rate unknown: no guess


def test_unsent_counts_what_has_no_final_result_yet() -> None:
    counters = {"recipientstotal": 100, "recipientssent": 60, "recipientsfailed": 5, "recipientsskipped": 3}
    assert unsent(counters) == 32
    assert unsent({"recipientstotal": 5, "recipientssent": 7}) == 0


def test_jobs_show_gives_the_eta_at_the_configured_rate() -> None:
    config = load_config(environ={"MRCO_SES_SEND_RATE": "14"})
    assert config.aws.ses_send_rate == 14.0
    job = _job(recipientstotal=1000, recipientssent=300)
    assert _eta(job, config) == {"unsent": 700, "ses_send_rate": 14.0, "eta_seconds": 50}
    assert _eta(_job("completed", recipientstotal=10, recipientssent=10), config)["eta_seconds"] is None
    unknown = load_config(environ={})
    assert _eta(job, unknown) == {"unsent": 700, "ses_send_rate": None, "eta_seconds": None}


@pytest.mark.parametrize("raw", ["fast", "-1", "20000"])
def test_a_bad_rate_is_a_clear_configuration_error(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"(?i)ses_send_rate"):
        load_config(environ={"MRCO_SES_SEND_RATE": raw})
