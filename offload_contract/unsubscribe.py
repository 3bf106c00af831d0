"""Signed one-click unsubscribe tokens, bound to (company, recipient, campaign).

A token is the path segment of a ``List-Unsubscribe`` URL (RFC 8058), so it is URL-safe text:

    <keyset>.c<company_id>.<base64url(recipient)>.<base64url(campaign)>.<base64url(tag)>

``tag`` is the first 16 bytes of HMAC-SHA256 under the company's unsubscribe key,
HKDF(root, salt, "unsubscribe-key:v1:company:<id>"), over
``MRCO-UNSUB-1 LF company LF recipient LF campaign``. The key is separate from the callback
signing key (another HKDF ``info``), so a token can never stand in for a request signature.
Changing any part of a token (company, recipient, campaign or tag) makes it invalid; a forged
or altered token changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

from offload_contract.signing import KDF_SALT, hkdf_sha256

SCHEME: Final = "MRCO-UNSUB-1"
TAG_BYTES: Final = 16
_IDENTIFIER = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_TOKEN = re.compile(
    r"^([a-z0-9-]{1,16})\.c([0-9]{1,19})\.([A-Za-z0-9_-]{2,86})\.([A-Za-z0-9_-]{2,86})\.([A-Za-z0-9_-]{22})$"
)
#: Longest token: 16 + 21 + 86 + 86 + 22 + 4 dots.
MAX_TOKEN_CHARS: Final = 235


#: The bridge names a campaign job's mail ``job<id>`` in its tokens; the cloud turns that back into
#: the contract ``job_id`` of the ``unsubscribed`` result it reports (docs/campaigns.md).
_JOB_CAMPAIGN = re.compile(r"^job([0-9]{1,18})$")


def campaign_for_job(job_id: int) -> str:
    """The campaign id the bridge signs into the tokens of job ``job_id``'s recipients."""
    if job_id < 0:
        raise ValueError("job ids are >= 0")
    return f"job{job_id}"


def job_of_campaign(campaign_id: str) -> str | None:
    """The contract ``job_id`` a campaign id names (``job12`` -> ``"12"``), or None for any other id."""
    match = _JOB_CAMPAIGN.match(campaign_id)
    return match.group(1) if match else None


class TokenError(ValueError):
    """The token is malformed, names an unknown key set, or its tag does not match."""


@dataclass(frozen=True)
class Unsubscribe:
    keyset: str
    company_id: int
    recipient_id: str
    campaign_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unsubscribe_key(root_secret: bytes, company_id: int) -> bytes:
    if company_id < 0:
        raise ValueError("company_id must be >= 0")
    return hkdf_sha256(root_secret, KDF_SALT, f"unsubscribe-key:v1:company:{company_id}".encode("ascii"))


def _tag(key: bytes, company_id: int, recipient_id: str, campaign_id: str) -> bytes:
    message = "\n".join((SCHEME, str(company_id), recipient_id, campaign_id)).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).digest()[:TAG_BYTES]


def make_token(root_secret: bytes, keyset: str, company_id: int, recipient_id: str, campaign_id: str) -> str:
    """The token for one recipient of one campaign (job) of one company."""
    if not (_IDENTIFIER.match(recipient_id) and _IDENTIFIER.match(campaign_id)):
        raise ValueError("recipient and campaign ids are contract identifiers ([A-Za-z0-9._:-]{1,64})")
    if not re.match(r"^[a-z0-9-]{1,16}$", keyset):
        raise ValueError("key set names are 1-16 characters of a-z, 0-9 and '-'")
    tag = _tag(unsubscribe_key(root_secret, company_id), company_id, recipient_id, campaign_id)
    parts = (keyset, f"c{company_id}", _b64(recipient_id.encode()), _b64(campaign_id.encode()), _b64(tag))
    return ".".join(parts)


def verify_token(token: str, roots: Mapping[str, bytes]) -> Unsubscribe:
    """The (company, recipient, campaign) a genuine token names; ``TokenError`` otherwise."""
    match = _TOKEN.match(token) if len(token) <= MAX_TOKEN_CHARS else None
    if match is None:
        raise TokenError("malformed token")
    keyset, company_text, recipient_b64, campaign_b64, tag_b64 = match.groups()
    root = roots.get(keyset)
    if root is None:
        raise TokenError("unknown key set")
    try:
        recipient_id = _unb64(recipient_b64).decode("utf-8")
        campaign_id = _unb64(campaign_b64).decode("utf-8")
        tag = _unb64(tag_b64)
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed token") from None
    if not (_IDENTIFIER.match(recipient_id) and _IDENTIFIER.match(campaign_id)) or len(tag) != TAG_BYTES:
        raise TokenError("malformed token")
    company_id = int(company_text)
    expected = _tag(unsubscribe_key(root, company_id), company_id, recipient_id, campaign_id)
    if not hmac.compare_digest(expected, tag):
        raise TokenError("bad tag")
    # Canonical form only: one token per (company, recipient, campaign), no padding variants.
    if token != make_token(root, keyset, company_id, recipient_id, campaign_id):
        raise TokenError("non-canonical token")
    return Unsubscribe(keyset, company_id, recipient_id, campaign_id)


@cache
def _pages() -> dict[str, Any]:
    text = resources.files("offload_contract").joinpath("pages/unsubscribe.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def page(name: str) -> str:
    """A human unsubscribe page (``confirm``, ``done``, ``invalid``, ``unavailable``): static HTML,
    the same bytes the Worker serves (``offload_contract/pages/unsubscribe.json``)."""
    return str(_pages()["pages"][name])


def page_security_policy() -> str:
    """The Content-Security-Policy the pages are served with: no scripts, posts to itself only."""
    return str(_pages()["content_security_policy"])
