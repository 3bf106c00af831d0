"""The HTTPS intake and public endpoints behind API Gateway (``lambdas.handlers.api``).

* ``POST /v1/batches``: a signed contract envelope holding an email_batch or certificate_batch.
  The signature (docs/callback-auth.md) names the company; the batch must belong to it. Valid
  batches go to the jobs or certificates queue unchanged.
* ``GET /v1/certificates/verify/{code}``: public verification of a certificate code: an HTML page
  in the learner's language for browsers (the QR code), JSON for ``Accept: application/json``
  or ``?format=json``; a revoked certificate answers ``valid: false`` with ``revoked_at``. Codes
  carry at least 60 bits (12 of 36 characters); every wrong code counts against the caller's
  address, and past ``VERIFY_FAILURES_PER_WINDOW`` in a window that caller gets 429, not everyone;
  every request (right code or wrong) counts too, and past ``VERIFY_REQUESTS_PER_WINDOW`` a minute
  that caller gets 429 as well.
* ``POST /v1/unsubscribe/{token}``: RFC 8058 one-click unsubscribe. The token is signed and bound
  to (company, recipient, campaign) (``offload_contract.unsubscribe``); only a genuine token
  records anything, under ``unsub#c<company>#<campaign>#<recipient>``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lambdas.certificates import verification
from lambdas.common.idempotency import IdempotencyStore
from offload_contract import ContractError, decode_message, encode_message, validate
from offload_contract.cloud_keys import verification_key
from offload_contract.limits import SQS_HEADROOM_BYTES, SQS_MAX_MESSAGE_BYTES
from offload_contract.signing import SignatureError, Verifier
from offload_contract.unsubscribe import TokenError, verify_token

#: 12 characters of [A-Z0-9] are 62 bits: shorter codes are never issued, so never looked up.
CODE = re.compile(r"^[A-Z0-9]{12,32}$")
#: Wrong verification codes one source address may try per window before it gets 429.
VERIFY_FAILURES_PER_WINDOW = 20
VERIFY_WINDOW_SECONDS = 600
#: Verify requests (page or JSON, right or wrong code) one source address may make per window:
#: a fixed-window counter per client in the table, so one client's flood answers 429 to it alone.
VERIFY_REQUESTS_PER_WINDOW = 60
VERIFY_REQUEST_WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class Intake:
    def __init__(
        self,
        *,
        verifier: Verifier,
        sqs: Any,
        jobs_url: str,
        certificates_url: str,
        store: IdempotencyStore,
        roots: Mapping[str, bytes] | None = None,
        clock: Any = time.time,
    ) -> None:
        self.verifier = verifier
        self.roots = dict(roots or {})
        self.clock = clock
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

    def _failure_key(self, source: str) -> str:
        window = int(self.clock()) // VERIFY_WINDOW_SECONDS
        return f"vfail#{source or 'unknown'}#{window}"

    def _over_request_limit(self, source: str) -> bool:
        """Count this request against its client's window; True past the limit."""
        window = int(self.clock()) // VERIFY_REQUEST_WINDOW_SECONDS
        count = self.store.add_failure(f"vreq#{source or 'unknown'}#{window}", VERIFY_REQUEST_WINDOW_SECONDS)
        return count > VERIFY_REQUESTS_PER_WINDOW

    def verify_certificate(self, code: str, source: str = "") -> Answer:
        if self._over_request_limit(source):
            return Answer(429, {"error": "too_many_requests"})
        failures = self._failure_key(source)
        if self.store.failures(failures) >= VERIFY_FAILURES_PER_WINDOW:
            return Answer(429, {"error": "too_many_wrong_codes"})
        item = self.store.get_item(verification_key(code)) if CODE.match(code) else None
        if item is None:
            self.store.add_failure(failures, VERIFY_WINDOW_SECONDS)
            return Answer(404, {"valid": False})
        return Answer(200, verification.facts(code, item))

    def verify_page(self, code: str, accept_language: str = "", source: str = "") -> tuple[int, str]:
        """The human verify page (HTML) and its status: 200 valid or revoked, 404 unknown, 429 when
        this caller has guessed too many wrong codes (the same count as the JSON answer) or made too
        many requests in the last window."""
        if self._over_request_limit(source):
            return 429, verification.page(code, None, accept_language)
        failures = self._failure_key(source)
        if self.store.failures(failures) >= VERIFY_FAILURES_PER_WINDOW:
            return 429, verification.page(code, None, accept_language)
        item = self.store.get_item(verification_key(code)) if CODE.match(code) else None
        if item is None:
            self.store.add_failure(failures, VERIFY_WINDOW_SECONDS)
        return (404 if item is None else 200), verification.page(code, item, accept_language)

    def unsubscribe(self, token: str) -> Answer:
        try:
            found = verify_token(token, self.roots)
        except TokenError:
            return Answer(404, {"error": "unknown_token"})
        key = f"unsub#c{found.company_id}#{found.campaign_id}#{found.recipient_id}"
        self.store.put_item(
            key,
            {
                "company_id": {"N": str(found.company_id)},
                "campaign_id": {"S": found.campaign_id},
                "recipient_id": {"S": found.recipient_id},
                "at": {"N": str(int(self.clock()))},
            },
        )
        return Answer(200, {"unsubscribed": True})
