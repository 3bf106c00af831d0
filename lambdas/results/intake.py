"""The HTTPS intake and public endpoints behind API Gateway (``lambdas.handlers.api``).

* ``POST /v1/batches``: a signed contract envelope holding an email_batch or certificate_batch.
  The signature (docs/callback-auth.md) names the company; the batch must belong to it. Valid
  batches go to the jobs or certificates queue unchanged.
* ``GET /v1/certificates/verify/{code}``: public verification of a certificate code: an HTML page
  in the learner's language for browsers (the QR code), JSON for ``Accept: application/json``
  or ``?format=json``; a revoked certificate answers ``valid: false`` with ``revoked_at``.
* ``POST /v1/unsubscribe/{token}``: RFC 8058 one-click unsubscribe; records the token.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from lambdas.certificates import verification
from lambdas.common.idempotency import IdempotencyStore
from offload_contract import ContractError, decode_message, encode_message, validate
from offload_contract.limits import SQS_HEADROOM_BYTES, SQS_MAX_MESSAGE_BYTES
from offload_contract.signing import SignatureError, Verifier

CODE = re.compile(r"^[A-Z0-9]{8,32}$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class Intake:
    def __init__(
        self, *, verifier: Verifier, sqs: Any, jobs_url: str, certificates_url: str, store: IdempotencyStore
    ) -> None:
        self.verifier = verifier
        self.sqs = sqs
        self.queues = {"email_batch": jobs_url, "certificate_batch": certificates_url}
        self.store = store

    def submit(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        try:
            verified = self.verifier.verify("POST", path, headers, body)
        except SignatureError as exc:
            return Answer(401, {"error": exc.code})
        try:
            envelope = decode_message(body)
            validate("envelope", envelope)
            message_type = envelope["message_type"]
            if message_type not in self.queues:
                return Answer(400, {"error": "unsupported_message_type"})
            message = envelope["message"]
            validate(message_type, message)
        except ContractError as exc:
            return Answer(400, {"error": "contract_violation", "path": exc.path, "reason": exc.reason})
        except ValueError:
            return Answer(400, {"error": "malformed_json"})
        if message["company_id"] != verified.company_id:
            return Answer(403, {"error": "company_mismatch"})
        encoded = encode_message(message)
        if len(encoded) > SQS_MAX_MESSAGE_BYTES - SQS_HEADROOM_BYTES:
            return Answer(413, {"error": "too_large"})
        self.sqs.send_message(QueueUrl=self.queues[message_type], MessageBody=encoded.decode("utf-8"))
        return Answer(202, {"accepted": envelope["message_id"], "batch_id": message["batch_id"]})

    def verify_certificate(self, code: str) -> Answer:
        if not CODE.match(code):
            return Answer(404, {"valid": False})
        item = self.store.get_item(f"cert#{code}")
        if item is None:
            return Answer(404, {"valid": False})
        return Answer(200, verification.facts(code, item))

    def verify_page(self, code: str, accept_language: str = "") -> tuple[int, str]:
        """The human verify page (HTML) and its status: 200 valid or revoked, 404 unknown."""
        item = self.store.get_item(f"cert#{code}") if CODE.match(code) else None
        return (404 if item is None else 200), verification.page(code, item, accept_language)

    def unsubscribe(self, token: str) -> Answer:
        if not TOKEN.match(token):
            return Answer(404, {"error": "unknown_token"})
        self.store.put_item(f"unsub#{token}", {"at": {"N": str(int(time.time()))}})
        return Answer(200, {"unsubscribed": True})
