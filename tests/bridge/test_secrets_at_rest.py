"""Temporary passwords at rest: AES-256-GCM, bound to the recipient, never shown."""

from __future__ import annotations

import pytest

from moodle_bridge.storage.secrets_at_rest import SecretBox, SecretError, associated_data


def test_roundtrip_and_binding() -> None:
    box = SecretBox(bytes(32))
    sealed = box.seal("?4:#F_L3fu", associated_data(5, "e1:user:a@example.com"))
    assert "?4:#F_L3fu" not in sealed
    assert sealed.startswith("v1.")
    assert box.open(sealed, associated_data(5, "e1:user:a@example.com")) == "?4:#F_L3fu"
    with pytest.raises(SecretError) as moved:
        box.open(sealed, associated_data(6, "e1:user:a@example.com"))
    assert "?4:#F_L3fu" not in str(moved.value)
    with pytest.raises(SecretError):
        SecretBox(bytes([1] * 32)).open(sealed, associated_data(5, "e1:user:a@example.com"))


def test_nonces_differ_and_key_is_never_shown() -> None:
    box = SecretBox(bytes(range(32)))
    aad = associated_data(1, "k")
    assert box.seal("x", aad) != box.seal("x", aad)
    assert "***" in repr(box)
    with pytest.raises(ValueError, match="32 bytes"):
        SecretBox(b"short")
