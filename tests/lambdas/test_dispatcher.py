"""Callback dispatcher: signed envelopes the bridge's Verifier accepts; non-2xx is retried."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from lambdas.handlers import callback_dispatcher
from lambdas.results.builder import recipient_result, result_batches
from offload_contract import encode_message
from offload_contract.signing import MemoryNonceStore, Verifier, decode_root_secret, generate_root_secret
from tests.lambdas.conftest import Aws, FakeContext, sqs_event

ROOT = generate_root_secret()


class Bridge(BaseHTTPRequestHandler):
    status = 200
    received: list[dict[str, Any]] = []
    verifier = Verifier({"k2026": decode_root_secret(ROOT)}, MemoryNonceStore())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        verified = self.verifier.verify("POST", self.path, dict(self.headers), body)
        Bridge.received.append({"key_id": verified.key_id, "envelope": json.loads(body)})
        self.send_response(Bridge.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def bridge():
    server = HTTPServer(("127.0.0.1", 0), Bridge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Bridge.received, Bridge.status = [], 200
    yield f"http://127.0.0.1:{server.server_port}/offload/callbacks/v1/results"
    server.shutdown()
    server.server_close()


def record_event(url: str, company_id: int = 7) -> dict:
    batch = result_batches(
        "email_sender", company_id, [recipient_result("j-1", "r-1", "sent", 1, provider_message_id="m")]
    )[0]
    event = sqs_event(encode_message(batch))
    event["Records"][0]["messageAttributes"] = {
        "callback_url": {"stringValue": url, "dataType": "String"},
        "key_id": {"stringValue": f"k2026.c{company_id}", "dataType": "String"},
    }
    return event


def test_signed_callback_is_accepted_by_the_bridge_verifier(aws: Aws, bridge: str, monkeypatch) -> None:
    arn = aws.secrets.create_secret(
        Name="offload-hmac", SecretString=json.dumps({"current": "k2026", "keysets": {"k2026": ROOT}})
    )["ARN"]
    monkeypatch.setenv("HMAC_SECRET_ARN", arn)
    from lambdas.common.settings import settings

    settings.cache_clear()
    callback_dispatcher.dispatcher.cache_clear()
    assert callback_dispatcher.handler(record_event(bridge), FakeContext()) == {"batchItemFailures": []}
    (got,) = Bridge.received
    assert got["key_id"] == "k2026.c7"
    assert got["envelope"]["message_type"] == "result_batch"
    assert got["envelope"]["message"]["results"][0]["provider_message_id"] == "m"
    Bridge.status = 503
    assert callback_dispatcher.handler(record_event(bridge), FakeContext()) == {
        "batchItemFailures": [{"itemIdentifier": "m-0"}]
    }


def test_key_id_of_another_company_is_refused(aws: Aws, bridge: str, monkeypatch) -> None:
    arn = aws.secrets.create_secret(
        Name="offload-hmac2", SecretString=json.dumps({"current": "k2026", "keysets": {"k2026": ROOT}})
    )["ARN"]
    monkeypatch.setenv("HMAC_SECRET_ARN", arn)
    from lambdas.common.settings import settings

    settings.cache_clear()
    callback_dispatcher.dispatcher.cache_clear()
    event = record_event(bridge)
    event["Records"][0]["messageAttributes"]["key_id"]["stringValue"] = "k2026.c8"
    assert callback_dispatcher.handler(event, FakeContext())["batchItemFailures"]
    assert Bridge.received == []
