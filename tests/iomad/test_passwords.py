"""RC4 endecrypt (Moodle-compatible), iomad_temporary decoding, finding/redacting, masking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moodle_bridge.sources.iomad.passwords import (
    IOMAD_RC4_KEY,
    PASSWORD_TEMPLATES,
    REDACTION,
    Secret,
    decode_iomad_temporary,
    encode_iomad_temporary,
    endecrypt,
    find_password,
    php_urldecode,
    php_urlencode,
    redact,
)
from tests.iomad.helpers import SAMPLE, sample_email

VECTOR_STORED = "%85%D2%D2%F8%CA%24UH%D3%F9"
VECTOR_PLAIN = "?4:#F_L3fu"


def test_facts_vector_round_trips_byte_for_byte() -> None:
    assert decode_iomad_temporary(VECTOR_STORED).reveal() == VECTOR_PLAIN
    assert encode_iomad_temporary(VECTOR_PLAIN) == VECTOR_STORED
    assert endecrypt(IOMAD_RC4_KEY, VECTOR_PLAIN) == VECTOR_STORED
    assert endecrypt(IOMAD_RC4_KEY, VECTOR_STORED, "de") == VECTOR_PLAIN.encode()


def test_every_live_preference_decodes_to_the_password_in_its_user_create_body() -> None:
    prefs = {p["userid"]: p["value"] for p in SAMPLE["user_preferences"] if p["name"] == "iomad_temporary"}
    rows = [r for r in SAMPLE["email"] if r["templatename"] == "user_create"]
    assert len(rows) == 5
    for row in rows:
        password = decode_iomad_temporary(prefs[row["userid"]])
        assert find_password(row["body"], password), f"row {row['id']}"
        assert encode_iomad_temporary(password) == prefs[row["userid"]]
        # and nobody else's password is in this body
        others = [decode_iomad_temporary(v) for u, v in prefs.items() if u != row["userid"]]
        assert not any(find_password(row["body"], o) for o in others)


def test_php_urlencode_rules() -> None:
    assert php_urlencode(b"aZ09-_. ~*") == "aZ09-_.+%7E%2A"
    assert php_urlencode(bytes([0, 255])) == "%00%FF"
    assert php_urldecode("a+b%41%zz%4") == b"a bA%zz%4"  # invalid escapes stay as they are


@given(st.binary(max_size=64))
def test_rc4_round_trip_any_bytes(data: bytes) -> None:
    encoded = endecrypt(IOMAD_RC4_KEY, data)
    assert isinstance(encoded, str)
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.+%")
    assert endecrypt(IOMAD_RC4_KEY, encoded, "de") == data


@given(st.text(max_size=32))
def test_temporary_round_trip_any_text(password: str) -> None:
    assert decode_iomad_temporary(encode_iomad_temporary(password)).reveal() == password


def test_redact_handles_raw_and_escaped_html_forms() -> None:
    password = "a<b&c\"d'e"
    body = f'<p>password: {password}</p><p>again: a&lt;b&amp;c&quot;d&#x27;e</p><p>a&lt;b&amp;c"d&#039;e</p>'
    assert find_password(body, password)
    redacted = redact(body, Secret(password))
    assert not find_password(redacted, password)
    assert redacted.count(REDACTION) == 3
    assert redact(body, "") == body
    assert not find_password(body, "")


def test_redact_sample_body() -> None:
    row = sample_email(1)
    redacted = redact(row["body"], VECTOR_PLAIN)
    assert VECTOR_PLAIN not in redacted
    assert f"password: {REDACTION}</br>" in redacted
    assert "username: learner1.1795361815" in redacted


def test_password_templates() -> None:
    assert {"user_create", "user_reset", "password_update"} == PASSWORD_TEMPLATES


def test_secret_never_shows_itself() -> None:
    secret = decode_iomad_temporary(VECTOR_STORED)
    renderings = [repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{[secret]}", "%s" % secret]  # noqa: UP031
    for rendering in renderings:
        assert VECTOR_PLAIN not in rendering
        assert "****" in rendering
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(secret)
    error = ValueError(f"could not use {secret}")
    assert VECTOR_PLAIN not in str(error)
