"""HMAC-SHA256 request signing for every signed HTTP crossing (spec: docs/callback-auth.md).

Pure functions plus a ``Verifier`` that takes a nonce store, so the bridge (database),
the Lambdas (DynamoDB) and tests (memory) share one implementation. Only the standard
library is used, so the Lambda bundle pays nothing for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

SCHEME: Final = "MRCO-HMAC-SHA256-1"
HEADER_KEY_ID: Final = "X-Offload-Key-Id"
HEADER_TIMESTAMP: Final = "X-Offload-Timestamp"
HEADER_NONCE: Final = "X-Offload-Nonce"
HEADER_CONTENT_SHA256: Final = "X-Offload-Content-SHA256"
HEADER_SIGNATURE: Final = "X-Offload-Signature"
SIGNATURE_PREFIX: Final = "v1="

#: Accept a request whose timestamp is within this many seconds of our clock.
DEFAULT_WINDOW_SECONDS: Final = 300
#: HKDF salt: fixed, public, names the purpose so keys never collide with other uses.
KDF_SALT: Final = b"manireports-cloud-offload"
MIN_ROOT_SECRET_BYTES: Final = 32
#: A nonce outlives the last second its timestamp is accepted (timestamp + window) by this much,
#: so clock steps between servers sharing a nonce store cannot reopen the window.
NONCE_MARGIN_SECONDS: Final = 60
#: Derived company keys kept in memory (LRU). Key ids come from unauthenticated headers.
KEY_CACHE_SIZE: Final = 1024

_KEY_ID = re.compile(r"^([a-z0-9-]{1,16})\.c([0-9]{1,19})$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PATH = re.compile(r"^/[\x21-\x7e]*$")


class SignatureError(Exception):
    """A request failed authentication. ``code`` is stable and safe to log and audit."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF with SHA-256 (checked against the RFC's test case 1)."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF length out of range")
    prk = hmac.new(salt or b"\x00" * 32, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def decode_root_secret(encoded: str) -> bytes:
    """Decode a key set's root secret (base64url, padding optional); at least 32 bytes."""
    try:
        raw = base64.urlsafe_b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("root secret is not valid base64url") from exc
    if len(raw) < MIN_ROOT_SECRET_BYTES:
        raise ValueError(f"root secret must decode to at least {MIN_ROOT_SECRET_BYTES} bytes")
    return raw


def generate_root_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


def derive_company_key(root_secret: bytes, company_id: int) -> bytes:
    """The company's signing key: HKDF(root, salt, "callback-key:v1:company:<id>")."""
    if company_id < 0:
        raise ValueError("company_id must be >= 0")
    return hkdf_sha256(root_secret, KDF_SALT, f"callback-key:v1:company:{company_id}".encode("ascii"))


def make_key_id(keyset: str, company_id: int) -> str:
    key_id = f"{keyset}.c{company_id}"
    if not _KEY_ID.match(key_id):
        raise ValueError("key set names are 1-16 characters of a-z, 0-9 and '-'")
    return key_id


def parse_key_id(key_id: str) -> tuple[str, int]:
    match = _KEY_ID.match(key_id)
    if not match:
        raise SignatureError("malformed_header", f"{HEADER_KEY_ID} must look like <keyset>.c<company_id>")
    return match.group(1), int(match.group(2))


def canonical_string(
    method: str, path: str, key_id: str, timestamp: int, nonce: str, body_sha256: str
) -> str:
    """The exact text that is signed: seven lines joined by LF, no trailing newline."""
    return "\n".join((SCHEME, method.upper(), path, key_id, str(timestamp), nonce, body_sha256))


def compute_signature(key: bytes, canonical: str) -> str:
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def sign_request(
    key: bytes,
    key_id: str,
    method: str,
    path: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers to send with ``body``. ``path`` is the request path without query string."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = new_nonce() if nonce is None else nonce
    digest = hashlib.sha256(body).hexdigest()
    signature = compute_signature(key, canonical_string(method, path, key_id, timestamp, nonce, digest))
    return {
        HEADER_KEY_ID: key_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce,
        HEADER_CONTENT_SHA256: digest,
        HEADER_SIGNATURE: SIGNATURE_PREFIX + signature,
    }


class NonceStore(Protocol):
    def remember(self, key_id: str, nonce: str, expires_at: int) -> bool:
        """Record the nonce; return False if it was already recorded and not yet expired."""


class MemoryNonceStore:
    """A process-local nonce store for tests and single-process use."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[tuple[str, str], int] = {}
        self._clock = clock

    def remember(self, key_id: str, nonce: str, expires_at: int) -> bool:
        now = int(self._clock())
        if len(self._seen) > 10_000:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
        existing = self._seen.get((key_id, nonce))
        if existing is not None and existing > now:
            return False
        self._seen[(key_id, nonce)] = expires_at
        return True


@dataclass(frozen=True)
class VerifiedRequest:
    key_id: str
    keyset: str
    company_id: int
    timestamp: int
    nonce: str


def _header(headers: Mapping[str, str], name: str) -> str:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    raise SignatureError("missing_header", f"{name} is required")


def nonce_expiry(timestamp: int, window_seconds: int) -> int:
    """When a nonce may be forgotten: after the last second its timestamp can still be accepted.

    ``|now - timestamp| <= window`` accepts up to ``timestamp + window`` inclusive; stores treat
    ``expires_at <= now`` as expired, so the nonce must live strictly beyond that second.
    """
    return timestamp + window_seconds + NONCE_MARGIN_SECONDS


@dataclass(frozen=True)
class PendingRequest:
    """Headers that carry a valid signature over their claimed body digest; body not read yet."""

    key_id: str
    keyset: str
    company_id: int
    timestamp: int
    nonce: str
    claimed_digest: str


class Verifier:
    """Checks signed requests: key, ±window clock skew, HMAC, body hash, then the nonce.

    The HMAC covers the *claimed* body digest, so it is checked from the headers alone
    (``verify_headers``) before a byte of the body is read: unauthenticated callers cannot make
    a receiver buffer their bodies. ``complete`` then compares the body's real digest (constant
    time) and records the nonce, only for authenticated requests, so junk cannot fill the store.
    A nonce is kept until its timestamp can no longer be accepted, plus a margin (``nonce_expiry``).
    """

    def __init__(
        self,
        root_secrets: Mapping[str, bytes],
        nonce_store: NonceStore,
        *,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
        key_cache_size: int = KEY_CACHE_SIZE,
    ) -> None:
        self._roots = dict(root_secrets)
        self._nonces = nonce_store
        self._window = window_seconds
        self._clock = clock
        self._key_cache: OrderedDict[str, bytes] = OrderedDict()
        self._key_cache_size = max(1, key_cache_size)

    @property
    def key_cache_len(self) -> int:
        return len(self._key_cache)

    def key_for(self, key_id: str) -> bytes:
        cached = self._key_cache.get(key_id)
        if cached is not None:
            self._key_cache.move_to_end(key_id)
            return cached
        keyset, company_id = parse_key_id(key_id)
        root = self._roots.get(keyset)
        if root is None:
            raise SignatureError("unknown_key", "the key set named in the key id is not configured")
        key = derive_company_key(root, company_id)
        self._key_cache[key_id] = key
        while len(self._key_cache) > self._key_cache_size:
            self._key_cache.popitem(last=False)
        return key

    def verify_headers(self, method: str, path: str, headers: Mapping[str, str]) -> PendingRequest:
        """Everything that needs no body: shape, clock window, key set, and the HMAC."""
        key_id = _header(headers, HEADER_KEY_ID)
        raw_timestamp = _header(headers, HEADER_TIMESTAMP)
        nonce = _header(headers, HEADER_NONCE)
        claimed_digest = _header(headers, HEADER_CONTENT_SHA256)
        signature = _header(headers, HEADER_SIGNATURE)
        keyset, company_id = parse_key_id(key_id)
        if not _TIMESTAMP.match(raw_timestamp):
            raise SignatureError("malformed_header", f"{HEADER_TIMESTAMP} must be unix seconds")
        if not _NONCE.match(nonce):
            raise SignatureError("malformed_header", f"{HEADER_NONCE} must be 16-64 base64url characters")
        if not _HEX64.match(claimed_digest):
            raise SignatureError("malformed_header", f"{HEADER_CONTENT_SHA256} must be lowercase hex")
        if not signature.startswith(SIGNATURE_PREFIX) or not _HEX64.match(signature[len(SIGNATURE_PREFIX) :]):
            raise SignatureError("malformed_header", f"{HEADER_SIGNATURE} must be v1=<64 lowercase hex>")
        if not _PATH.match(path):
            raise SignatureError("malformed_request", "path must be absolute printable ASCII")
        timestamp = int(raw_timestamp)
        now = int(self._clock())
        if abs(now - timestamp) > self._window:
            raise SignatureError(
                "stale_timestamp", f"timestamp is more than {self._window}s from server time"
            )
        if keyset not in self._roots:
            raise SignatureError("unknown_key", "the key set named in the key id is not configured")
        expected = compute_signature(
            self.key_for(key_id), canonical_string(method, path, key_id, timestamp, nonce, claimed_digest)
        )
        if not hmac.compare_digest(expected, signature[len(SIGNATURE_PREFIX) :]):
            raise SignatureError("bad_signature", "signature does not match")
        return PendingRequest(key_id, keyset, company_id, timestamp, nonce, claimed_digest)

    def complete(self, pending: PendingRequest, body_sha256: str) -> VerifiedRequest:
        """Compare the received body's digest with the signed one, then record the nonce."""
        if not hmac.compare_digest(body_sha256, pending.claimed_digest):
            raise SignatureError("body_hash_mismatch", "body does not match its SHA-256 header")
        if not self._nonces.remember(
            pending.key_id, pending.nonce, nonce_expiry(pending.timestamp, self._window)
        ):
            raise SignatureError("replayed_nonce", "this nonce was already used")
        return VerifiedRequest(
            pending.key_id, pending.keyset, pending.company_id, pending.timestamp, pending.nonce
        )

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> VerifiedRequest:
        pending = self.verify_headers(method, path, headers)
        return self.complete(pending, hashlib.sha256(body).hexdigest())
