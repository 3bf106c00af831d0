"""What the bridge concludes from the Worker's capabilities (the contract's own examples)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moodle_bridge.transports.capabilities import WorkerCheck, refusal, uncovered
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


CERTIFICATES: dict[str, Any] = next(
    e["message"]
    for e in EXAMPLES
    if e["message_type"] == "capabilities"
    and e["valid"]
    and "certificate_batch" in e["message"]["message_types"]
)


def test_certificates_are_refused_by_a_worker_without_the_renderer() -> None:
    assert refusal(CAPABILITIES, "certificate") == (
        "the Cloudflare Worker does not process certificate jobs (certificate_batch); "
        "it processes email_batch"
    )


def test_certificates_go_to_a_worker_with_the_renderer_that_mails_attachments() -> None:
    assert refusal(CERTIFICATES, "certificate") is None
    no_attachments = json.loads(json.dumps(CERTIFICATES))
    no_attachments["email"]["attachments"] = False
    validate("capabilities", no_attachments)
    assert "does not mail attachments" in (refusal(no_attachments, "certificate") or "")


def test_the_script_rule_names_exactly_the_characters_the_worker_cannot_draw() -> None:
    assert (
        uncovered(CERTIFICATES, ["Zoë Łukasiewicz", "Жанна Иванова", "Ελένη", "Safety 101 (Level 3)"]) == []
    )
    # Decomposed accents are composed first, as the renderer does; spaces and joiners need no glyph.
    assert uncovered(CERTIFICATES, ["Zoe\u0308\u00a0\u200dO\u0308rsted\t"]) == []
    assert uncovered(CERTIFICATES, ["محمد", "Sarah שרה", "李"]) == [
        "U+0645",
        "U+062D",
        "U+062F",
        "U+05E9",
        "U+05E8",
        "U+05D4",
        "U+674E",
    ]
    # A Worker without the renderer draws nothing.
    assert uncovered(CAPABILITIES, ["A"]) == ["U+0041"]


def test_the_check_asks_the_worker_once_per_company() -> None:
    asked: list[int] = []

    class Worker:
        def capabilities(self, company_id: int) -> dict[str, Any]:
            asked.append(company_id)
            return CERTIFICATES

    check = WorkerCheck(Worker())  # type: ignore[arg-type]
    assert check(7, "certificate") is None
    assert check.certificate_refusal(7, ["شرح"]) == ["U+0634", "U+0631", "U+062D"]
    assert check.certificate_refusal(7, ["Ok"]) == []
    assert asked == [7]


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
