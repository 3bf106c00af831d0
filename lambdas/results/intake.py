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
* ``POST /v1/unsubscribe/{token}``: RFC 8058 one-click unsubscribe (and the confirm button of the
  page below). The token is signed and bound to (company, recipient, campaign)
  (``offload_contract.unsubscribe``); only a genuine token records anything, under
  ``unsub#c<company>#<campaign>#<recipient>``, and is reported to the bridge as an
  ``unsubscribed`` result on the results queue (pushed by the dispatcher or pulled by the bridge,
  like every other result), so the bridge suppresses the address for the company's campaign mail.
* ``GET /v1/unsubscribe/{token}``: the human page, a confirm button that POSTs back. A GET never
  records anything: mail scanners fetch every link in a message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lambdas.certificates import verification
from lambdas.common.idempotency import IdempotencyStore
from lambdas.results.builder import recipient_result, result_batches
from lambdas.results.queue import ResultsQueue
from offload_contract import ContractError, decode_message, encode_message, validate
from offload_contract.cloud_keys import verification_key
from offload_contract.limits import SQS_HEADROOM_BYTES, SQS_MAX_MESSAGE_BYTES
from offload_contract.signing import SignatureError, Verifier, make_key_id
from offload_contract.unsubscribe import TokenError, Unsubscribe, job_of_campaign, page, verify_token

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
        results: ResultsQueue | None = None,
        clock: Any = time.time,
    ) -> None:
        self.results = results
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
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to decode
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

    def unsubscribe_page(self, token: str) -> tuple[int, str]:
        """GET: the confirm page for a genuine token (200), else the invalid-link page (404).
        Nothing is recorded: mail scanners and link previews fetch every URL in a message."""
        try:
            verify_token(token, self.roots)
        except TokenError:
            return 404, page("invalid")
        return 200, page("confirm")

    def unsubscribe(self, token: str) -> Answer:
        """POST: record a genuine token's unsubscribe and report it to the bridge. 404 for any other
        token (nothing written); 503 when the results queue refused the report (nothing written,
        the caller may post again)."""
        try:
            found = verify_token(token, self.roots)
        except TokenError:
            return Answer(404, {"error": "unknown_token"})
        now = int(self.clock())
        try:
            self._report(found, now)
        except Exception:  # SQS refused or could not be reached: say so, record nothing
            return Answer(503, {"error": "try_again"})
        key = f"unsub#c{found.company_id}#{found.campaign_id}#{found.recipient_id}"
        self.store.put_item(
            key,
            {
                "company_id": {"N": str(found.company_id)},
                "campaign_id": {"S": found.campaign_id},
                "recipient_id": {"S": found.recipient_id},
                "at": {"N": str(now)},
            },
        )
        return Answer(200, {"unsubscribed": True})

    def _report(self, found: Unsubscribe, now: int) -> None:
        """Publish an ``unsubscribed`` result for the token's job and recipient on the results queue.

        The job's route (callback URL and key id, remembered by the sender for 35 days) says where
        push mode delivers it. Without a route the message carries no callback URL: pull mode drains
        it as usual; in push mode the dispatcher cannot deliver it and it reaches the bridge through
        the results DLQ, which every tick drains."""
        job_id = job_of_campaign(found.campaign_id)
        if self.results is None or job_id is None or not found.recipient_id.isdigit():
            return  # not a bridge campaign job's token: there is nothing the bridge could match
        route = self.store.job_route(found.company_id, job_id)
        if route is not None and route[0] == found.company_id:
            callback_url, key_id = route[1], route[2]
        else:
            callback_url, key_id = "", make_key_id(found.keyset, found.company_id)
        result = recipient_result(job_id, found.recipient_id, "unsubscribed", 1, occurred_at=now)
        self.results.publish(result_batches("unsubscribe", found.company_id, [result]), callback_url, key_id)
