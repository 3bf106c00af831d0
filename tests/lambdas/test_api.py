"""API handler: signed batch intake, public certificate verification, one-click unsubscribe."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lambdas.handlers import api
from offload_contract import encode_message
from offload_contract.signing import (
    decode_root_secret,
    derive_company_key,
    generate_root_secret,
    sign_request,
)
from tests.lambdas.conftest import FANOUT_BATCH, Aws, FakeContext

ROOT = generate_root_secret()
STAGE_PATH = "/prod/v1/batches"


def rest_event(method: str, path: str, resource: str, body: bytes = b"", headers: dict | None = None,
               params: dict | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "resource": resource,
        "path": path.removeprefix("/prod"),
        "httpMethod": method,
        "headers": headers or {},
        "multiValueHeaders": {},
        "queryStringParameters": None,
        "pathParameters": params,
        "requestContext": {
            "path": path,
            "stage": "prod",
            "httpMethod": method,
            "requestId": "r",
            "resourcePath": resource,
        },
        "body": body.decode("utf-8") if body else None,
        "isBase64Encoded": False,
    }


@pytest.fixture
def configured(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Aws:
    arn = aws.secrets.create_secret(
        Name="offload-hmac", SecretString=json.dumps({"current": "k2026", "keysets": {"k2026": ROOT}})
    )["ARN"]
    monkeypatch.setenv("HMAC_SECRET_ARN", arn)
    from lambdas.common.settings import settings

    settings.cache_clear()
    api.intake.cache_clear()
    return aws


def signed(message: dict[str, Any], company_id: int, message_type: str = "email_batch") -> tuple[bytes, dict]:
    envelope = {
        "contract_version": 1,
        "message_type": message_type,
        "message_id": "sub-1",
        "sent_at": 1,
        "message": message,
    }
    body = encode_message(envelope)
    key = derive_company_key(decode_root_secret(ROOT), company_id)
    return body, sign_request(key, f"k2026.c{company_id}", "POST", STAGE_PATH, body)


def call(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = api.handler(event, FakeContext())
    return response["statusCode"], json.loads(response["body"])


def test_signed_batch_is_enqueued_and_replay_or_forgery_is_refused(configured: Aws) -> None:
    body, headers = signed(FANOUT_BATCH, 7)
    status, answer = call(rest_event("POST", STAGE_PATH, "/v1/batches", body, headers))
    assert status == 202 and answer["batch_id"] == FANOUT_BATCH["batch_id"]
    (queued,) = configured.drain(configured.jobs_url)
    assert json.loads(queued["Body"]) == FANOUT_BATCH
    assert call(rest_event("POST", STAGE_PATH, "/v1/batches", body, headers)) == (
        401,
        {"error": "replayed_nonce"},
    )
    tampered = body.replace(b"noreply@acme.example", b"evil@acme.example")
    assert (
        call(rest_event("POST", STAGE_PATH, "/v1/batches", tampered, headers))[1]["error"]
        == "body_hash_mismatch"
    )
    other_body, other_headers = signed(FANOUT_BATCH, 8)  # company 8's key for company 7's batch
    assert call(rest_event("POST", STAGE_PATH, "/v1/batches", other_body, other_headers)) == (
        403, {"error": "company_mismatch"},
    )  # fmt: skip
    bad = dict(FANOUT_BATCH, recipients=[])
    bad_body, bad_headers = signed(bad, 7)
    status, answer = call(rest_event("POST", STAGE_PATH, "/v1/batches", bad_body, bad_headers))
    assert status == 400 and answer["error"] == "contract_violation" and answer["path"] == "recipients"
    assert configured.drain(configured.jobs_url) == []


def test_certificate_verification_and_one_click_unsubscribe(configured: Aws) -> None:
    from lambdas.common.idempotency import IdempotencyStore

    store = IdempotencyStore(configured.dynamodb, "offload-idempotency")
    store.put_item(
        "cert#AB12CD34EF56",
        {
            "learner_name": {"S": "محمد"},
            "course_name": {"S": "Safety"},
            "completed_at": {"N": "1795361900"},
            "key": {"S": "certificates/company-7/j/r.pdf"},
        },
    )
    resource = "/v1/certificates/verify/{code}"
    status, answer = call(
        rest_event(
            "GET", "/prod/v1/certificates/verify/AB12CD34EF56", resource, params={"code": "AB12CD34EF56"}
        )
    )
    assert status == 200 and answer["learner_name"] == "محمد" and "key" not in answer
    assert (
        call(
            rest_event(
                "GET", "/prod/v1/certificates/verify/NOPE12345678", resource, params={"code": "NOPE12345678"}
            )
        )[0]
        == 404
    )
    from offload_contract.unsubscribe import make_token

    token = make_token(decode_root_secret(ROOT), "k2026", 7, "r-1", "j-9")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    path = f"/prod/v1/unsubscribe/{token}"
    event = rest_event(
        "POST", path, "/v1/unsubscribe/{token}", b"List-Unsubscribe=One-Click", form, {"token": token}
    )
    assert call(event) == (200, {"unsubscribed": True})
    assert store.get_item("unsub#c7#j-9#r-1") is not None


def test_deeply_nested_json_from_a_key_holder_is_a_400_and_nothing_is_queued(configured: Aws) -> None:
    body = b"[" * 100_000 + b"]" * 100_000  # json.loads raises RecursionError, not ValueError
    key = derive_company_key(decode_root_secret(ROOT), 7)
    headers = sign_request(key, "k2026.c7", "POST", STAGE_PATH, body)
    assert call(rest_event("POST", STAGE_PATH, "/v1/batches", body, headers)) == (
        400, {"error": "malformed_json"},
    )  # fmt: skip
    assert configured.drain(configured.jobs_url) == []
