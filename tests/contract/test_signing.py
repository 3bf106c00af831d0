import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload_contract import signing
from offload_contract.signing import MemoryNonceStore, SignatureError, Verifier

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "offload_contract/vectors/signing.json").read_text("utf-8"))
CASES = VECTORS["cases"]


def test_hkdf_matches_rfc5869_case1() -> None:
    v = VECTORS["rfc5869_case1"]
    okm = signing.hkdf_sha256(
        bytes.fromhex(v["ikm_hex"]), bytes.fromhex(v["salt_hex"]), bytes.fromhex(v["info_hex"]), v["length"]
    )
    assert okm.hex() == v["okm_hex"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_byte_for_byte(case: dict) -> None:
    root = signing.decode_root_secret(case["root_secret_b64url"])
    key = signing.derive_company_key(root, case["company_id"])
    assert key.hex() == case["derived_key_hex"]
    assert signing.make_key_id(case["keyset"], case["company_id"]) == case["key_id"]
    body = base64.b64decode(case["body_b64"])
    assert body == case["body_utf8"].encode("utf-8")
    headers = signing.sign_request(
        key,
        case["key_id"],
        case["method"],
        case["path"],
        body,
        timestamp=case["timestamp"],
        nonce=case["nonce"],
    )
    assert headers[signing.HEADER_CONTENT_SHA256] == case["body_sha256_hex"]
    canonical = signing.canonical_string(
        case["method"],
        case["path"],
        case["key_id"],
        case["timestamp"],
        case["nonce"],
        case["body_sha256_hex"],
    )
    assert canonical == case["canonical_string"]
    assert headers[signing.HEADER_SIGNATURE] == case["signature_header"]


def _verifier(now: int, store: MemoryNonceStore | None = None) -> Verifier:
    roots = {c["keyset"]: signing.decode_root_secret(c["root_secret_b64url"]) for c in CASES}
    return Verifier(roots, store or MemoryNonceStore(clock=lambda: now), clock=lambda: now)


def _request(case: dict) -> tuple[str, str, dict[str, str], bytes]:
    headers = {
        signing.HEADER_KEY_ID: case["key_id"],
        signing.HEADER_TIMESTAMP: str(case["timestamp"]),
        signing.HEADER_NONCE: case["nonce"],
        signing.HEADER_CONTENT_SHA256: case["body_sha256_hex"],
        signing.HEADER_SIGNATURE: case["signature_header"],
    }
    return case["method"], case["path"], headers, base64.b64decode(case["body_b64"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vectors_verify(case: dict) -> None:
    verified = _verifier(case["timestamp"]).verify(*_request(case))
    assert verified.company_id == case["company_id"]


@pytest.mark.parametrize("rejection", VECTORS["rejections"], ids=[r["name"] for r in VECTORS["rejections"]])
def test_rejection_vectors(rejection: dict) -> None:
    method, path, headers, body = _request(CASES[rejection["base_case"]])
    mutate = rejection["mutate"]
    if "body_append_utf8" in mutate:
        body += mutate["body_append_utf8"].encode("utf-8")
    if "key_id" in mutate:
        headers[signing.HEADER_KEY_ID] = mutate["key_id"]
    if mutate.get("signature_upper"):
        headers[signing.HEADER_SIGNATURE] = "v1=" + headers[signing.HEADER_SIGNATURE][3:].upper()
    clock = [rejection.get("first_now", rejection["now"])]
    roots = {c["keyset"]: signing.decode_root_secret(c["root_secret_b64url"]) for c in CASES}
    verifier = Verifier(roots, MemoryNonceStore(clock=lambda: clock[0]), clock=lambda: clock[0])
    if rejection.get("replay"):
        verifier.verify(method, path, headers, body)
        clock[0] = rejection["now"]
    if rejection["expect_error"] is None:
        verifier.verify(method, path, headers, body)
        return
    with pytest.raises(SignatureError) as info:
        verifier.verify(method, path, headers, body)
    assert info.value.code == rejection["expect_error"]


def test_headers_are_case_insensitive_and_missing_header_is_named() -> None:
    method, path, headers, body = _request(CASES[0])
    lowered = {k.lower(): v for k, v in headers.items()}
    _verifier(CASES[0]["timestamp"]).verify(method, path, lowered, body)
    del lowered["x-offload-nonce"]
    with pytest.raises(SignatureError, match="X-Offload-Nonce") as info:
        _verifier(CASES[0]["timestamp"]).verify(method, path, lowered, body)
    assert info.value.code == "missing_header"


def test_signature_is_bound_to_method_and_path() -> None:
    method, path, headers, body = _request(CASES[0])
    for other_method, other_path in (("PUT", path), (method, "/callbacks/v1/other")):
        with pytest.raises(SignatureError) as info:
            _verifier(CASES[0]["timestamp"]).verify(other_method, other_path, headers, body)
        assert info.value.code == "bad_signature"


def test_invalid_signature_does_not_consume_nonce() -> None:
    method, path, headers, body = _request(CASES[0])
    now = CASES[0]["timestamp"]
    store = MemoryNonceStore(clock=lambda: now)
    forged = dict(headers, **{signing.HEADER_SIGNATURE: "v1=" + "0" * 64})
    with pytest.raises(SignatureError):
        _verifier(now, store).verify(method, path, forged, body)
    _verifier(now, store).verify(method, path, headers, body)


def test_nonce_expires_after_twice_the_window() -> None:
    now = [1_000_000]
    store = MemoryNonceStore(clock=lambda: now[0])
    assert store.remember("k.c1", "n" * 16, now[0] + 600)
    assert not store.remember("k.c1", "n" * 16, now[0] + 600)
    now[0] += 601
    assert store.remember("k.c1", "n" * 16, now[0] + 600)


def test_root_secret_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        signing.decode_root_secret(base64.urlsafe_b64encode(b"short").decode())
    assert len(signing.decode_root_secret(signing.generate_root_secret())) == 32


@given(
    body=st.binary(max_size=2048),
    company=st.integers(min_value=0, max_value=2**40),
    path=st.from_regex(r"/[a-z0-9/_-]{0,40}", fullmatch=True),
)
def test_round_trip_any_body(body: bytes, company: int, path: str) -> None:
    root = bytes(range(32))
    key_id = signing.make_key_id("k1", company)
    headers = signing.sign_request(
        signing.derive_company_key(root, company), key_id, "POST", path, body, timestamp=2_000_000_000
    )
    verifier = Verifier(
        {"k1": root}, MemoryNonceStore(clock=lambda: 2_000_000_000), clock=lambda: 2_000_000_000
    )
    assert verifier.verify("POST", path, headers, body).company_id == company


def test_key_cache_is_bounded_lru_and_unknown_key_sets_never_enter_it() -> None:
    roots = {"k1": bytes(range(32))}
    verifier = Verifier(roots, MemoryNonceStore(), key_cache_size=8)
    for company in range(1_000):  # every distinct key id an unauthenticated request may name
        verifier.key_for(f"k1.c{company}")
    assert verifier.key_cache_len == 8
    for company in range(1_000):
        with pytest.raises(SignatureError):
            verifier.key_for(f"nope.c{company}")
    assert verifier.key_cache_len == 8
    # Recently used ids survive; the key is always the derived one.
    hot = verifier.key_for("k1.c1")
    for company in range(2, 9):
        verifier.key_for(f"k1.c{1000 + company}")
    assert verifier.key_for("k1.c1") is hot
    assert hot == signing.derive_company_key(roots["k1"], 1)


def test_signature_is_checked_from_headers_before_the_body() -> None:
    """verify_headers needs no body: a stranger's request is refused before it is read."""
    method, path, headers, body = _request(CASES[0])
    verifier = _verifier(CASES[0]["timestamp"])
    pending = verifier.verify_headers(method, path, headers)
    forged = dict(headers, **{signing.HEADER_SIGNATURE: "v1=" + "0" * 64})
    with pytest.raises(SignatureError) as info:
        verifier.verify_headers(method, path, forged)
    assert info.value.code == "bad_signature"
    import hashlib

    with pytest.raises(SignatureError) as info:
        verifier.complete(pending, hashlib.sha256(body + b" ").hexdigest())
    assert info.value.code == "body_hash_mismatch"
    assert verifier.complete(pending, hashlib.sha256(body).hexdigest()).company_id == CASES[0]["company_id"]


def test_sealing_vector_byte_for_byte_and_bound_to_company_job_and_content() -> None:
    from offload_contract.sealing import SealError, open_content, seal_content

    v = VECTORS["sealing"]
    root = signing.decode_root_secret(v["root_secret_b64url"])
    sealed = seal_content(
        root,
        v["keyset"],
        v["company_id"],
        v["job_id"],
        v["content_id"],
        v["content"],
        nonce=bytes.fromhex(v["nonce_hex"]),
    )
    assert sealed == v["sealed"]
    roots = {v["keyset"]: root}
    assert open_content(roots, v["company_id"], v["job_id"], v["content_id"], v["sealed"]) == v["content"]
    for company, job, content_id in ((8, v["job_id"], v["content_id"]), (7, "j-8", "e-1"), (7, "j-7", "e-2")):
        with pytest.raises(SealError):
            open_content(roots, company, job, content_id, v["sealed"])
