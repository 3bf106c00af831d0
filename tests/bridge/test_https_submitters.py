"""HTTPS submission targets sign their envelopes so the real verifier accepts them."""

from __future__ import annotations

import json

import httpx
import pytest
from botocore.credentials import Credentials

from moodle_bridge.transports.targets import ApiGatewaySubmitter, SubmitError, WorkerSubmitter
from offload_contract.codec import encode_message
from offload_contract.signing import MemoryNonceStore, Verifier, decode_root_secret, generate_root_secret

ROOT = generate_root_secret()
BODY = encode_message(
    {"type": "email_batch", "batch_id": "j1-a1-b0", "recipients": [{"to": "a@example.com"}]}
)


def _capture(status: int = 202, answer: dict | None = None):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=answer if answer is not None else {"message_id": "q-1"})

    return seen, httpx.Client(transport=httpx.MockTransport(handler))


def test_worker_submission_is_a_signed_envelope_the_verifier_accepts() -> None:
    seen, client = _capture()
    submitter = WorkerSubmitter(
        "https://intake.example/v1/batches", "k1", decode_root_secret(ROOT), client=client
    )
    assert submitter.submit("email_batch", "j1-a1-b0", 7, BODY) == "q-1"
    (request,) = seen
    verified = Verifier({"k1": decode_root_secret(ROOT)}, MemoryNonceStore()).verify(
        "POST", request.url.path, dict(request.headers), request.content
    )
    assert verified.company_id == 7
    envelope = json.loads(request.content)
    assert envelope["message_type"] == "email_batch" and envelope["message_id"] == "j1-a1-b0"
    assert envelope["message"]["batch_id"] == "j1-a1-b0"


def test_api_gateway_submission_carries_sigv4_and_hmac() -> None:
    seen, client = _capture()
    submitter = ApiGatewaySubmitter(
        "https://abc.execute-api.eu-west-1.amazonaws.com/prod/v1/batches",
        "k1",
        decode_root_secret(ROOT),
        region="eu-west-1",
        credentials=Credentials("AKIDEXAMPLE", "secret"),
        client=client,
    )
    submitter.submit("certificate_batch", "j2-a1-b0", 3, BODY)
    (request,) = seen
    assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/execute-api/aws4_request" in request.headers["Authorization"]
    verified = Verifier({"k1": decode_root_secret(ROOT)}, MemoryNonceStore()).verify(
        "POST", request.url.path, dict(request.headers), request.content
    )
    assert verified.company_id == 3


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (429, True), (401, False), (400, False)])
def test_refusals_say_whether_retrying_helps_and_never_echo_the_body(status, retryable) -> None:
    _seen, client = _capture(status, {"error": "nope"})
    submitter = WorkerSubmitter(
        "https://intake.example/v1/batches", "k1", decode_root_secret(ROOT), client=client
    )
    with pytest.raises(SubmitError) as err:
        submitter.submit("email_batch", "j1-a1-b0", 7, BODY)
    assert err.value.retryable is retryable
    assert str(err.value) == f"worker: HTTP {status}"
