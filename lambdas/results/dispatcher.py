"""POST a result_batch to the bridge as a signed envelope (docs/callback-auth.md).

Raises on anything but 2xx, so the SQS record is retried and, after the queue's
maxReceiveCount, kept in the results DLQ for the bridge to drain during reconciliation.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from lambdas.common.keys import KeySets
from offload_contract import decode_message, encode_message, validate
from offload_contract.signing import parse_key_id, sign_request

TIMEOUT_SECONDS = 10


class CallbackError(Exception):
    """The bridge did not accept the callback; the record will be retried."""


def build_envelope(result_batch: dict[str, Any], now: int) -> bytes:
    envelope = {
        "contract_version": 1,
        "message_type": "result_batch",
        "message_id": result_batch["report_id"],
        "sent_at": now,
        "message": result_batch,
    }
    validate("envelope", envelope)
    return encode_message(envelope)


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    if urlsplit(url).scheme not in ("https", "http"):
        raise CallbackError("callback URL must be http(s)")
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise CallbackError(f"callback unreachable ({type(exc).__name__})") from None


class CallbackDispatcher:
    def __init__(
        self,
        keys: Callable[[], KeySets],
        *,
        sender: Callable[[str, bytes, dict[str, str]], int] = post,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._send = sender
        self._clock = clock

    def dispatch(self, body: str | bytes, callback_url: str, key_id: str) -> int:
        result_batch = decode_message(body)
        validate("result_batch", result_batch)
        _, company_id = parse_key_id(key_id)
        if company_id != result_batch["company_id"]:
            raise CallbackError("key id names another company than the result batch")
        now = int(self._clock())
        envelope = build_envelope(result_batch, now)
        signing_key_id, key = self._keys().signing_key(company_id)
        headers = sign_request(
            key, signing_key_id, "POST", urlsplit(callback_url).path or "/", envelope, timestamp=now
        )
        headers["Content-Type"] = "application/json"
        status = self._send(callback_url, envelope, headers)
        if not 200 <= status < 300:
            raise CallbackError(f"bridge answered HTTP {status}")
        return status
