"""The unsubscribe page and one-click POST through the real API handler (moto): a GET changes
nothing, a genuine POST is recorded and reported on the results queue as an ``unsubscribed`` result
(routed to the job's callback), and forged, altered or other people's tokens change nothing. The
tokens are the shared vectors the Worker is tested with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lambdas.common.idempotency import IdempotencyStore
from lambdas.handlers import api
from offload_contract import validate
from offload_contract.unsubscribe import page, page_security_policy
from tests.lambdas.conftest import ENV, Aws, FakeContext
from tests.lambdas.test_api import rest_event

ROOT_DIR = Path(__file__).resolve().parents[2]
V = json.loads((ROOT_DIR / "offload_contract/vectors/signing.json").read_text("utf-8"))["unsubscribe"]
RESOURCE = "/v1/unsubscribe/{token}"
CALLBACK = "https://moodle.example.org/offload/callbacks/v1/results"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def configured(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Aws:
    """The API with the vectors' key set as its HMAC secret."""
    secret = {"current": V["keyset"], "keysets": {V["keyset"]: V["root_secret_b64url"]}}
    arn = aws.secrets.create_secret(Name="offload-hmac", SecretString=json.dumps(secret))["ARN"]
    monkeypatch.setenv("HMAC_SECRET_ARN", arn)
    from lambdas.common.settings import settings

    settings.cache_clear()
    api.intake.cache_clear()
    return aws


def request(method: str, token: str, *, html: bool = False, body: bytes = b"") -> dict[str, Any]:
    headers = dict(FORM) if method == "POST" else {}
    if html:
        headers["Accept"] = "text/html,application/xhtml+xml"
    event = rest_event(method, f"/prod/v1/unsubscribe/{token}", RESOURCE, body, headers, {"token": token})
    response: dict[str, Any] = api.handler(event, FakeContext())
    return response


def one_click(token: str) -> tuple[int, dict[str, Any]]:
    response = request("POST", token, body=b"List-Unsubscribe=One-Click")
    return response["statusCode"], json.loads(response["body"])


def unsub_items(aws: Aws) -> list[str]:
    items = aws.dynamodb.scan(TableName=ENV["IDEMPOTENCY_TABLE"])["Items"]
    return sorted(i["id"]["S"] for i in items if i["id"]["S"].startswith("unsub#"))


def store(aws: Aws) -> IdempotencyStore:
    return IdempotencyStore(aws.dynamodb, ENV["IDEMPOTENCY_TABLE"])


def test_get_shows_the_confirm_page_and_changes_nothing(configured: Aws) -> None:
    response = request("GET", V["token"], html=True)
    assert response["statusCode"] == 200
    headers = dict(response.get("headers") or {})
    headers.update({k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()})
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == page_security_policy()
    assert headers["Cache-Control"] == "no-store"
    assert response["body"] == page("confirm")
    assert '<form method="post">' in response["body"] and V["token"] not in response["body"]
    # A mail scanner fetching the link twice: still nothing recorded or reported.
    assert request("GET", V["token"])["statusCode"] == 200
    assert unsub_items(configured) == []
    assert configured.drain(configured.results_url) == []


def test_get_of_a_forged_token_shows_the_invalid_page(configured: Aws) -> None:
    response = request("GET", V["rejected"][0]["token"])
    assert (response["statusCode"], response["body"]) == (404, page("invalid"))


def test_one_click_post_records_and_reports_to_the_jobs_callback(configured: Aws) -> None:
    store(configured).remember_job(
        V["job_id"], V["company_id"], CALLBACK, f"{V['keyset']}.c{V['company_id']}"
    )
    assert one_click(V["token"]) == (200, {"unsubscribed": True})
    assert unsub_items(configured) == [f"unsub#c{V['company_id']}#{V['campaign_id']}#{V['recipient_id']}"]
    [message] = configured.drain(configured.results_url)
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    assert attributes == {"callback_url": CALLBACK, "key_id": f"{V['keyset']}.c{V['company_id']}"}
    batch = json.loads(message["Body"])
    validate("result_batch", batch)
    assert (batch["company_id"], batch["reporter"]) == (V["company_id"], "unsubscribe")
    assert [(r["job_id"], r["recipient_id"], r["status"]) for r in batch["results"]] == [
        (V["job_id"], V["recipient_id"], "unsubscribed")
    ]


def test_the_pages_button_answers_the_done_page_and_without_a_route_pull_still_gets_it(
    configured: Aws,
) -> None:
    response = request("POST", V["token"], html=True, body=b"confirm=yes")
    assert (response["statusCode"], response["body"]) == (200, page("done"))
    [message] = configured.drain(configured.results_url)
    # No route: no callback URL (pull mode drains it; push mode gets it through the DLQ).
    assert {k: v["StringValue"] for k, v in message["MessageAttributes"].items()} == {
        "key_id": f"{V['keyset']}.c{V['company_id']}"
    }
    assert json.loads(message["Body"])["results"][0]["status"] == "unsubscribed"


@pytest.mark.parametrize("case", V["rejected"], ids=[c["why"] for c in V["rejected"]])
def test_forged_altered_and_other_peoples_tokens_change_nothing(
    configured: Aws, case: dict[str, str]
) -> None:
    assert one_click(case["token"]) == (404, {"error": "unknown_token"})
    html = request("POST", case["token"], html=True)
    assert (html["statusCode"], html["body"]) == (404, page("invalid"))
    assert unsub_items(configured) == []
    assert configured.drain(configured.results_url) == []


def test_a_results_queue_that_refuses_the_report_gets_503_and_nothing_is_recorded(configured: Aws) -> None:
    configured.sqs.delete_queue(QueueUrl=configured.results_url)
    assert one_click(V["token"]) == (503, {"error": "try_again"})
    response = request("POST", V["token"], html=True)
    assert (response["statusCode"], response["body"]) == (503, page("unavailable"))
    assert unsub_items(configured) == []


def test_in_push_mode_a_report_without_a_route_fails_in_the_dispatcher_so_it_goes_to_the_dlq(
    configured: Aws,
) -> None:
    """No route (a link clicked after the job's route expired): the dispatcher refuses the message,
    SQS redrives it to the results DLQ, and the bridge's tick drains the DLQ in push mode."""
    from lambdas.handlers import callback_dispatcher
    from tests.lambdas.conftest import sqs_event

    callback_dispatcher.dispatcher.cache_clear()
    assert one_click(V["token"]) == (200, {"unsubscribed": True})
    [message] = configured.drain(configured.results_url)
    event = sqs_event(message["Body"], source_arn="arn:aws:sqs:eu-west-1:123456789012:offload-results")
    event["Records"][0]["messageAttributes"] = {
        name: {"stringValue": value["StringValue"], "dataType": "String"}
        for name, value in message["MessageAttributes"].items()
    }
    assert callback_dispatcher.handler(event, FakeContext()) == {
        "batchItemFailures": [{"itemIdentifier": "m-0"}]
    }
