"""Sealed contents: a password mail's body travels encrypted end to end (docs/security.md).

The bridge seals the user's own copy of a password mail (IOMAD ``user_create``, ``user_reset``,
``password_update``) before it leaves; queues, dead-letter queues and object storage only ever
hold ciphertext. The email sender opens it right before rendering.

Keys: a *seal* key set (name + root secret of >= 32 bytes, like the signing key sets, but a
separate secret that only the bridge and the email sender can read). A company's seal key is
HKDF-SHA256(root, salt, "seal-key:v1:company:<id>"). AES-256-GCM, 12-byte random nonce; the
associated data binds the ciphertext to its key id, job and content id, so it cannot be moved
to another company, job or content. Errors never carry plaintext or keys.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from offload_contract.codec import decode_message, encode_message
from offload_contract.signing import KDF_SALT, hkdf_sha256, make_key_id, parse_key_id

SCHEME: Final = "MRCO-SEAL-1"
NONCE_BYTES: Final = 12


class SealError(Exception):
    """A sealed content cannot be opened (unknown key set, wrong company, tampered, moved)."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        super().__init__(detail)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal_key(root_secret: bytes, company_id: int) -> bytes:
    if company_id < 0:
        raise ValueError("company_id must be >= 0")
    return hkdf_sha256(root_secret, KDF_SALT, f"seal-key:v1:company:{company_id}".encode("ascii"))


def _aad(key_id: str, job_id: str, content_id: str) -> bytes:
    return "\n".join((SCHEME, key_id, job_id, content_id)).encode("utf-8")


def seal_content(
    root_secret: bytes,
    keyset: str,
    company_id: int,
    job_id: str,
    content_id: str,
    content: dict[str, Any],
    *,
    nonce: bytes | None = None,
) -> dict[str, Any]:
    """The ``sealed`` form of ``content`` (its size depends only on the plaintext's size).

    ``nonce`` is for the published test vectors only; a fresh random one is used otherwise."""
    key_id = make_key_id(keyset, company_id)
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError("the nonce must be 12 bytes")
    ciphertext = AESGCM(seal_key(root_secret, company_id)).encrypt(
        nonce, encode_message(content), _aad(key_id, job_id, content_id)
    )
    return {"kind": "sealed", "key_id": key_id, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}


def open_content(
    roots: Mapping[str, bytes], company_id: int, job_id: str, content_id: str, sealed: Mapping[str, Any]
) -> dict[str, Any]:
    """The content inside ``sealed``, for the batch's company, job and content id."""
    try:
        keyset, key_company = parse_key_id(str(sealed["key_id"]))
    except Exception:
        raise SealError("seal_invalid", "the sealed content names no valid key id") from None
    if key_company != company_id:
        raise SealError("seal_company_mismatch", "the sealed content belongs to another company")
    root = roots.get(keyset)
    if root is None:
        raise SealError("seal_key_unavailable", "the seal key set named by the content is not configured")
    try:
        nonce, ciphertext = _unb64(str(sealed["nonce"])), _unb64(str(sealed["ciphertext"]))
        plaintext = AESGCM(seal_key(root, company_id)).decrypt(
            nonce, ciphertext, _aad(str(sealed["key_id"]), job_id, content_id)
        )
        content = decode_message(plaintext)
    except (InvalidTag, ValueError, KeyError):
        raise SealError("seal_invalid", "the sealed content does not open (tampered or moved)") from None
    if not isinstance(content, dict) or content.get("kind") != "rendered":
        raise SealError("seal_invalid", "a sealed content must hold a rendered content")
    return content
