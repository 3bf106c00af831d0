"""What the bridge concludes from the Worker's capabilities (the contract's own examples)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moodle_bridge.transports.capabilities import WorkerCheck, refusal
from offload_contract import validate

EXAMPLES = json.loads(
    (Path(__file__).resolve().parents[2] / "offload_contract/vectors/messages.json").read_text("utf-8")
)["examples"]
CAPABILITIES = next(e["message"] for e in EXAMPLES if e["message_type"] == "capabilities" and e["valid"])


def _with(**email: object) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(json.dumps(CAPABILITIES))
    answer["email"].update(email)
    validate("capabilities", answer)
    return answer


def test_email_list_and_campaign_jobs_go_when_the_worker_takes_them() -> None:
    for job_type in ("email", "list", "campaign"):
        assert refusal(CAPABILITIES, job_type) is None


def test_certificates_are_refused_with_what_the_worker_does_process() -> None:
    assert refusal(CAPABILITIES, "certificate") == (
        "the Cloudflare Worker does not process certificate jobs (certificate_batch); "
        "it processes email_batch"
    )


@pytest.mark.parametrize(
    ("email", "job_type", "expected"),
    [
        ({"categories": ["transactional"]}, "campaign", "has no provider for campaign mail"),
        ({"categories": []}, "email", "has no provider for transactional mail"),
        ({"content_kinds": ["reference"]}, "list", "does not accept rendered contents"),
    ],
)
def test_missing_categories_and_content_kinds_are_named(email, job_type, expected) -> None:
    assert expected in (refusal(_with(**email), job_type) or "")


def test_an_unconfigured_worker_refuses_every_type_in_one_line() -> None:
    line = WorkerCheck(None)(7, "email")
    assert line == (
        "company 7: the Cloudflare Worker URL is not configured "
        "(cloudflare.intake_url / MRCO_CLOUDFLARE_INTAKE_URL)"
    )
