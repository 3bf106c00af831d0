"""The dashboard sign-in token Moodle's ``local_mrcloud`` plugin hands to the dashboard.

Spec (docs/dashboard.md "The sign-in token"); the PHP twin is
``moodle_plugin/local_mrcloud/classes/token.php`` and both check ``vectors/dashboard_token.json``:

    key     = HKDF-SHA256(ikm = shared secret (base64url, >= 32 bytes),
                          salt = "manireports-cloud-offload", info = "dashboard-signin:v1")
    payload = canonical JSON {"company", "exp", "jti", "uid", "v": 1} (sorted keys, no spaces,
              integers), base64url without padding
    token   = payload + "." + lowercase hex HMAC-SHA256(key, "MRCO-DASH-1\\n" + payload)

The HMAC covers the payload exactly as sent, so the verifier never re-encodes JSON. A token lives
at most ``MAX_LIFETIME_SECONDS``; its one-time id (``jti``) is burnt by the verifier's caller.
Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Final

from offload_contract.signing import KDF_SALT, decode_root_secret, hkdf_sha256

SCHEME: Final = "MRCO-DASH-1"
KDF_INFO: Final = b"dashboard-signin:v1"
MAX_LIFETIME_SECONDS: Final = 60
#: Clock difference tolerated between Moodle's web server and the dashboard.
CLOCK_SKEW_SECONDS: Final = 5
MAX_TOKEN_LENGTH: Final = 512

_JTI = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_PAYLOAD = re.compile(r"^[A-Za-z0-9_-]{1,400}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class TokenError(Exception):
    """The token is refused; ``code`` is stable and safe to show and audit."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


@dataclass(frozen=True)
class SignIn:
    user_id: int
    company_id: int  # 0: no company chosen (a site admin sees every company)
    expires: int
    jti: str


def derive_key(shared_secret: str) -> bytes:
    return hkdf_sha256(decode_root_secret(shared_secret), KDF_SALT, KDF_INFO)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def canonical_payload(user_id: int, company_id: int, expires: int, jti: str) -> str:
    return json.dumps(
        {"company": company_id, "exp": expires, "jti": jti, "uid": user_id, "v": 1},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _mac(key: bytes, payload: str) -> str:
    return hmac.new(key, f"{SCHEME}\n{payload}".encode("ascii"), hashlib.sha256).hexdigest()


def new_jti() -> str:
    return secrets.token_urlsafe(18)


def sign(
    shared_secret: str,
    user_id: int,
    company_id: int,
    *,
    now: int,
    lifetime: int = MAX_LIFETIME_SECONDS,
    jti: str | None = None,
) -> str:
    if user_id <= 0 or company_id < 0:
        raise ValueError("user id must be > 0 and company id >= 0")
    if not 0 < lifetime <= MAX_LIFETIME_SECONDS:
        raise ValueError(f"a sign-in token lives 1 to {MAX_LIFETIME_SECONDS} seconds")
    jti = new_jti() if jti is None else jti
    if not _JTI.match(jti):
        raise ValueError("jti must be 16-64 characters of base64url")
    payload = _b64(canonical_payload(user_id, company_id, now + lifetime, jti).encode("utf-8"))
    return f"{payload}.{_mac(derive_key(shared_secret), payload)}"


def verify(shared_secret: str, token: str, *, now: int) -> SignIn:
    """Check shape, signature and time. The caller must still burn ``jti`` (one use only)."""
    if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise TokenError("malformed", "the sign-in link is damaged")
    payload, mac = token.split(".")
    if not _PAYLOAD.match(payload) or not _HEX64.match(mac):
        raise TokenError("malformed", "the sign-in link is damaged")
    if not hmac.compare_digest(_mac(derive_key(shared_secret), payload), mac):
        raise TokenError("bad_signature", "the sign-in link was not signed with this dashboard's key")
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        raise TokenError("malformed", "the sign-in link is damaged") from None
    if not isinstance(data, dict) or data.get("v") != 1 or set(data) != {"company", "exp", "jti", "uid", "v"}:
        raise TokenError("malformed", "unknown sign-in token version")
    uid, company, exp, jti = data["uid"], data["company"], data["exp"], data["jti"]
    if not all(type(x) is int for x in (uid, company, exp)) or not isinstance(jti, str):
        raise TokenError("malformed", "the sign-in token has fields of the wrong type")
    if uid <= 0 or company < 0 or not _JTI.match(jti):
        raise TokenError("malformed", "the sign-in token names no valid user")
    if exp < now:
        raise TokenError("expired", "the sign-in link has expired; open the dashboard from Moodle again")
    if exp > now + MAX_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS:
        raise TokenError("too_long", "the sign-in link claims a lifetime longer than allowed")
    return SignIn(user_id=uid, company_id=company, expires=exp, jti=jti)
