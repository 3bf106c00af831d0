"""Where a packed batch goes: SQS directly, the API Gateway intake, or the Worker intake.

Every target takes the exact encoded contract message and returns the id the queue
assigned once it has *accepted* the message; anything else raises ``SubmitError``. Errors
carry the target and the status or error code only, never the body (it may hold a
temporary password).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from offload_contract import ContractError, validate
from offload_contract.codec import decode_message, encode_message
from offload_contract.limits import CONTRACT_VERSION
from offload_contract.signing import derive_company_key, make_key_id, sign_request

#: Transport libraries that log request bodies at DEBUG (botocore logs SendMessage bodies,
#: which hold the user's own copy of a password mail). They are capped at WARNING whenever a
#: submitter exists, whatever the root logger's level.
_BODY_LOGGING_LOGGERS = ("botocore", "boto3", "urllib3", "httpx", "httpcore", "s3transfer")


def quiet_transport_loggers() -> None:
    for name in _BODY_LOGGING_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


class SubmitError(Exception):
    """The target did not accept the batch. ``retryable`` False means retrying cannot help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Submitter(Protocol):
    #: sqs | api_gateway | worker (stored on the outbox row).
    target: str

    def submit(self, message_type: str, batch_id: str, company_id: int, body: bytes) -> str:
        """Hand ``body`` (an encoded email_batch or certificate_batch) to the queue."""


def build_envelope(message_type: str, batch_id: str, body: bytes, sent_at: int | None = None) -> bytes:
    """The signed HTTPS body: ``{contract_version, message_type, message_id, sent_at, message}``."""
    envelope = {
        "contract_version": CONTRACT_VERSION,
        "message_type": message_type,
        "message_id": batch_id,
        "sent_at": int(time.time()) if sent_at is None else sent_at,
        "message": decode_message(body),
    }
    return encode_message(envelope)


class SqsSubmitter:
    """One ``SendMessage`` per batch.

    A batch may be up to 1 MiB, and ``SendMessageBatch`` limits the *sum* of its entries
    to the same size as a single message, so batching several packed batches into one call
    would only work for small ones; one call per batch keeps a failure scoped to one batch.
    """

    target = "sqs"

    def __init__(self, client: Any, queue_urls: Mapping[str, str]) -> None:
        quiet_transport_loggers()
        self._client = client
        self._queues = dict(queue_urls)

    def submit(self, message_type: str, batch_id: str, company_id: int, body: bytes) -> str:
        url = self._queues.get(message_type)
        if not url:
            raise SubmitError(f"no SQS queue configured for {message_type}", retryable=False)
        try:
            response = self._client.send_message(
                QueueUrl=url,
                MessageBody=body.decode("utf-8"),
                MessageAttributes={
                    "batch_id": {"DataType": "String", "StringValue": batch_id},
                    "company_id": {"DataType": "Number", "StringValue": str(company_id)},
                },
            )
        except Exception as exc:  # botocore raises many kinds; all mean "not accepted"
            code = (
                getattr(exc, "response", {}).get("Error", {}).get("Code")
                if hasattr(exc, "response")
                else None
            )
            raise SubmitError(f"sqs: {code or type(exc).__name__}") from None
        return str(response["MessageId"])


class _SignedHttpsSubmitter:
    target = "https"

    def __init__(
        self,
        url: str,
        keyset: str,
        root_secret: bytes,
        *,
        client: httpx.Client | None = None,
        timeout: float = 20.0,
    ) -> None:
        quiet_transport_loggers()
        self._url = url
        self._path = urlsplit(url).path or "/"
        self._keyset = keyset
        self._root = root_secret
        self._client = client or httpx.Client(timeout=timeout)

    def _extra_headers(self, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        return headers

    def submit(self, message_type: str, batch_id: str, company_id: int, body: bytes) -> str:
        envelope = build_envelope(message_type, batch_id, body)
        key_id = make_key_id(self._keyset, company_id)
        headers = sign_request(
            derive_company_key(self._root, company_id), key_id, "POST", self._path, envelope
        )
        headers["Content-Type"] = "application/json"
        headers = self._extra_headers(envelope, headers)
        try:
            response = self._client.post(self._url, content=envelope, headers=headers)
        except httpx.HTTPError as exc:
            raise SubmitError(f"{self.target}: {type(exc).__name__}") from None
        if response.status_code >= 300:
            retryable = response.status_code in (408, 409, 425, 429) or response.status_code >= 500
            raise SubmitError(f"{self.target}: HTTP {response.status_code}", retryable=retryable)
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        message_id = answer.get("message_id") if isinstance(answer, dict) else None
        return str(message_id or batch_id)


#: The Worker's routes under its base URL (cloudflare/src/routes.js).
WORKER_INTAKE_PATH = "/v1/batches"
WORKER_CAPABILITIES_PATH = "/v1/capabilities"
WORKER_PULL_PATH = "/v1/results/pull"
WORKER_REVOKE_PATH = "/v1/certificates/revoke"


def worker_base_url(url: str) -> str:
    """The Worker's base URL from what the operator gave: the base itself or its intake URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError("the Cloudflare Worker URL must be an http(s) URL, e.g. https://offload.example.org")
    path = parts.path.rstrip("/")
    if path.endswith(WORKER_INTAKE_PATH):
        path = path[: -len(WORKER_INTAKE_PATH)]
    return f"{parts.scheme}://{parts.netloc}{path}"


class WorkerSubmitter(_SignedHttpsSubmitter):
    """The Cloudflare Worker: its HTTPS intake, its capabilities and its results pull route.

    ``url`` may be the Worker's base URL (what docs/cloudflare.md asks for) or its intake URL;
    every request is signed with the company key of the current key set.
    """

    target = "worker"

    def __init__(
        self,
        url: str,
        keyset: str,
        root_secret: bytes,
        *,
        client: httpx.Client | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.base_url = worker_base_url(url)
        super().__init__(
            self.base_url + WORKER_INTAKE_PATH, keyset, root_secret, client=client, timeout=timeout
        )

    def _signed(self, method: str, path: str, company_id: int, body: bytes) -> httpx.Response:
        full_path = urlsplit(self.base_url).path + path
        headers = sign_request(
            derive_company_key(self._root, company_id),
            make_key_id(self._keyset, company_id),
            method,
            full_path,
            body,
        )
        if body:
            headers["Content-Type"] = "application/json"
        try:
            return self._client.request(method, self.base_url + path, content=body or None, headers=headers)
        except httpx.HTTPError as exc:
            raise SubmitError(f"worker: {type(exc).__name__}") from None

    def _json(self, response: httpx.Response, what: str) -> Any:
        if response.status_code != 200:
            code = ""
            try:
                answer = response.json()
                code = f" {answer.get('error')}" if isinstance(answer, dict) and answer.get("error") else ""
            except ValueError:
                pass
            retryable = response.status_code in (408, 425, 429) or response.status_code >= 500
            raise SubmitError(f"worker {what}: HTTP {response.status_code}{code}", retryable=retryable)
        try:
            return response.json()
        except ValueError:
            raise SubmitError(f"worker {what}: the answer is not JSON") from None

    def capabilities(self, company_id: int) -> dict[str, Any]:
        """What the deployed Worker can process for ``company_id`` (contract ``capabilities``)."""
        answer = self._json(self._signed("GET", WORKER_CAPABILITIES_PATH, company_id, b""), "capabilities")
        try:
            validate("capabilities", answer)
        except ContractError as exc:
            raise SubmitError(f"worker capabilities: {exc}", retryable=False) from None
        return dict(answer)

    def pull_results(
        self, company_id: int, ack_through: int | None, max_entries: int = 100
    ) -> dict[str, Any]:
        """Acknowledge what is committed (``ack_through``) and fetch the next kept result batches."""
        body = encode_message({"ack_through": ack_through, "max": max_entries})
        answer = self._json(self._signed("POST", WORKER_PULL_PATH, company_id, body), "results pull")
        if not isinstance(answer, dict) or not isinstance(answer.get("entries"), list):
            raise SubmitError("worker results pull: unexpected answer", retryable=False)
        return dict(answer)

    def set_certificate_revoked(self, company_id: int, code: str, reason: str | None) -> bool:
        """Revoke (``reason`` given) or reinstate one of the company's certificates the Worker
        rendered; False when the Worker holds no certificate with this code for the company."""
        ask: dict[str, Any] = {"code": code, "revoke": reason is not None}
        if reason is not None:
            ask["reason"] = reason
        response = self._signed("POST", WORKER_REVOKE_PATH, company_id, encode_message(ask))
        if response.status_code == 404:
            return False
        self._json(response, "certificate revocation")
        return True


class ApiGatewaySubmitter(_SignedHttpsSubmitter):
    """The API Gateway intake ``POST /v1/batches``: IAM (SigV4) plus the contract's HMAC headers."""

    target = "api_gateway"

    def __init__(
        self,
        url: str,
        keyset: str,
        root_secret: bytes,
        *,
        region: str,
        credentials: Any,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(url, keyset, root_secret, client=client)
        self._region = region
        self._credentials = credentials

    def _extra_headers(self, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        request = AWSRequest(method="POST", url=self._url, data=body, headers=headers)
        SigV4Auth(self._credentials, "execute-api", self._region).add_auth(request)
        return dict(request.headers.items())
