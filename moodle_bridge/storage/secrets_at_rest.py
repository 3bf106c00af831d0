"""Temporary passwords at rest: AES-256-GCM with the configured key, bound to the recipient.

The stored form is ``v1.<base64url(nonce ‖ ciphertext ‖ tag)>``. The associated data names
the job and the recipient's dedupe key, so a ciphertext copied onto another recipient row
does not decrypt. Errors never include the plaintext or the key.

Rotation: the box seals with its current key and opens with the current key or any previous
one (AES-GCM's tag tells which), so passwords sealed before a key change stay readable until
their rows are final and swept (docs/INSTALL.md, "Rotating the password key").
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "v1."
_NONCE_BYTES = 12


class SecretError(Exception):
    """A stored secret could not be decrypted (wrong key, tampered, or moved)."""


def associated_data(jobid: int, dedupekey: str) -> bytes:
    return f"mrcloud-secret:v1:job:{jobid}:{dedupekey}".encode()


class SecretBox:
    def __init__(self, key: bytes, previous: Sequence[bytes] = ()) -> None:
        if len(key) != 32 or any(len(k) != 32 for k in previous):
            raise ValueError("the password key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self._openers = (self._aead, *(AESGCM(k) for k in previous))

    def __repr__(self) -> str:  # never show the key
        return "SecretBox(***)"

    def seal(self, plaintext: str, aad: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), aad)
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def open(self, stored: str, aad: bytes) -> str:
        if not stored.startswith(_PREFIX):
            raise SecretError("stored secret has an unknown format")
        body = stored[len(_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            raise SecretError("stored secret is not valid base64url") from None
        for aead in self._openers:
            try:
                return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad).decode("utf-8")
            except (InvalidTag, ValueError):
                continue
        raise SecretError("stored secret does not decrypt with the configured key")
