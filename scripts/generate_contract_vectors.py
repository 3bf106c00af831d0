"""Regenerate offload_contract/vectors/*.json. The test suite fails if the files drift.

Run: .venv/bin/python scripts/generate_contract_vectors.py
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from offload_contract.codec import encode_message  # noqa: E402
from offload_contract.sealing import seal_content  # noqa: E402
from offload_contract.signing import (  # noqa: E402
    canonical_string,
    compute_signature,
    derive_company_key,
    make_key_id,
)
from offload_contract.unsubscribe import make_token  # noqa: E402

# Fixed, published test secrets. Never use them in a deployment.
ROOT_SECRET_A = bytes(range(32))
ROOT_SECRET_B = hashlib.sha256(b"manireports-offload test key set b").digest()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def case(
    name: str,
    root: bytes,
    keyset: str,
    company: int,
    method: str,
    path: str,
    ts: int,
    nonce: str,
    body: bytes,
) -> dict[str, object]:
    key = derive_company_key(root, company)
    key_id = make_key_id(keyset, company)
    digest = hashlib.sha256(body).hexdigest()
    canonical = canonical_string(method, path, key_id, ts, nonce, digest)
    return {
        "name": name,
        "root_secret_b64url": b64url(root),
        "keyset": keyset,
        "company_id": company,
        "derived_key_hex": key.hex(),
        "key_id": key_id,
        "method": method,
        "path": path,
        "timestamp": ts,
        "nonce": nonce,
        "body_b64": base64.b64encode(body).decode("ascii"),
        "body_utf8": body.decode("utf-8"),
        "body_sha256_hex": digest,
        "canonical_string": canonical,
        "signature_header": "v1=" + compute_signature(key, canonical),
    }


def main() -> None:
    results = {
        "type": "result_batch",
        "contract_version": 1,
        "report_id": "rep-0001",
        "company_id": 7,
        "reporter": "email_sender",
        "created_at": 1795361900,
        "results": [
            {
                "job_id": "job-1",
                "recipient_id": "r-1",
                "status": "sent",
                "attempts": 1,
                "occurred_at": 1795361899,
                "provider_message_id": "0100018f-abc",
            }
        ],
    }
    envelope = {
        "contract_version": 1,
        "message_type": "result_batch",
        "message_id": "msg-0001",
        "sent_at": 1795361900,
        "message": results,
    }
    non_ascii = {
        "type": "result_batch",
        "contract_version": 1,
        "report_id": "rep-0002",
        "company_id": 42,
        "reporter": "certificate_renderer",
        "created_at": 1795361950,
        "results": [
            {
                "job_id": "job-2",
                "recipient_id": "r-2",
                "status": "failed",
                "attempts": 3,
                "occurred_at": 1795361949,
                "error": {
                    "code": "InvalidAddress",
                    "permanent": True,
                    "message": "Zoë Ørsted — محمد الأحمد — 李小龍 — שָׁלוֹם — 🎓 ½ \u00a0é",
                },
            }
        ],
    }
    vectors = {
        "description": "HMAC-SHA256 request signing vectors (docs/callback-auth.md). Body bytes: body_b64; "
        "body_utf8 is the same bytes as text. Python (tests/contract) and the Worker (cloudflare/test) check "
        "every field byte for byte.",
        "scheme": "MRCO-HMAC-SHA256-1",
        "kdf": {
            "algorithm": "HKDF-SHA256",
            "salt_utf8": "manireports-cloud-offload",
            "info_template": "callback-key:v1:company:{company_id}",
            "length": 32,
        },
        "window_seconds": 300,
        "nonce_margin_seconds": 60,
        "cases": [
            case(
                "ascii envelope",
                ROOT_SECRET_A,
                "k2026",
                7,
                "POST",
                "/callbacks/v1/results",
                1795361900,
                "bm9uY2Utbm9uY2UtMDAwMQ",
                encode_message(envelope),
            ),
            case(
                "non-ascii body (Latin, Arabic, Chinese, Hebrew, emoji)",
                ROOT_SECRET_A,
                "k2026",
                42,
                "POST",
                "/callbacks/v1/results",
                1795361950,
                "Zm9vYmFyLWJhei1xdXV4LTAy",
                encode_message(
                    {
                        "contract_version": 1,
                        "message_type": "result_batch",
                        "message_id": "msg-0002",
                        "sent_at": 1795361950,
                        "message": non_ascii,
                    }
                ),
            ),
            case(
                "empty body, company 0 (plain Moodle), second key set",
                ROOT_SECRET_B,
                "rot-b",
                0,
                "GET",
                "/v1/jobs/job-3/results",
                1700000000,
                "AAAAAAAAAAAAAAAAAAAAAA",
                b"",
            ),
            case(
                "intake submission with query-free path",
                ROOT_SECRET_B,
                "rot-b",
                123456789,
                "POST",
                "/v1/batches",
                1795000000,
                "_-_-_-_-_-_-_-_-_-_-_-_-",
                '{"note":"line1\\nline2","raw":"tab\there \u2028 \u05d0"}'.encode(),
            ),
        ],
        "rejections": [
            {
                "name": "body tampered after signing",
                "base_case": 0,
                "mutate": {"body_append_utf8": " "},
                "now": 1795361900,
                "expect_error": "body_hash_mismatch",
            },
            {
                "name": "signature from another company's key",
                "base_case": 0,
                "mutate": {"key_id": "k2026.c8"},
                "now": 1795361900,
                "expect_error": "bad_signature",
            },
            {
                "name": "timestamp 301 s old",
                "base_case": 0,
                "mutate": {},
                "now": 1795362201,
                "expect_error": "stale_timestamp",
            },
            {
                "name": "timestamp 301 s in the future",
                "base_case": 0,
                "mutate": {},
                "now": 1795361599,
                "expect_error": "stale_timestamp",
            },
            {
                "name": "exactly 300 s old is accepted",
                "base_case": 0,
                "mutate": {},
                "now": 1795362200,
                "expect_error": None,
            },
            {
                "name": "unknown key set",
                "base_case": 0,
                "mutate": {"key_id": "nope.c7"},
                "now": 1795361900,
                "expect_error": "unknown_key",
            },
            {
                "name": "replayed nonce",
                "base_case": 1,
                "mutate": {},
                "replay": True,
                "now": 1795361950,
                "expect_error": "replayed_nonce",
            },
            {
                # Stamped 300 s ahead, first seen at once, replayed when the same timestamp is exactly
                # 300 s old: still inside the window, so the nonce must still be remembered.
                "name": "replay at the far edge of the window (first seen 300 s early, replayed 600 s later)",
                "base_case": 0,
                "mutate": {},
                "replay": True,
                "first_now": 1795361600,
                "now": 1795362200,
                "expect_error": "replayed_nonce",
            },
            {
                "name": "uppercase hex signature",
                "base_case": 0,
                "mutate": {"signature_upper": True},
                "now": 1795361900,
                "expect_error": "malformed_header",
            },
        ],
    }
    rfc5869 = {
        "ikm_hex": "0b" * 22,
        "salt_hex": "000102030405060708090a0b0c",
        "info_hex": "f0f1f2f3f4f5f6f7f8f9",
        "length": 42,
        "okm_hex": "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    }
    vectors["rfc5869_case1"] = rfc5869
    sealed_content = {
        "kind": "rendered",
        "subject": "Votre compte — حسابك",
        "html": "<p>username: zoë</br>password: Xq7#mP2v!Lw9</p>",
    }
    vectors["sealing"] = {
        "description": "A sealed content (offload_contract/sealing.py) with a fixed nonce: Python seals to "
        "exactly this, the Worker opens it; changing company, job or content id must fail.",
        "root_secret_b64url": b64url(ROOT_SECRET_A),
        "keyset": "s1",
        "company_id": 7,
        "job_id": "j-7",
        "content_id": "e-1",
        "content": sealed_content,
        "nonce_hex": bytes(range(12)).hex(),
        "sealed": seal_content(ROOT_SECRET_A, "s1", 7, "j-7", "e-1", sealed_content, nonce=bytes(range(12))),
    }
    genuine = make_token(ROOT_SECRET_A, "k2026", 7, "34", "job12")
    keyset, company, recipient, campaign, tag = genuine.split(".")
    other_person = make_token(ROOT_SECRET_A, "k2026", 7, "35", "job12").split(".")[2]
    flipped_tag = ("B" if tag[0] == "A" else "A") + tag[1:]
    vectors["unsubscribe"] = {
        "description": "One-click unsubscribe tokens (offload_contract/unsubscribe.py): the AWS API and the "
        "Worker accept `token` and name exactly (company, recipient, campaign); every `rejected` token is "
        "refused by both (forged, altered, another person's, unknown key set, non-canonical).",
        "root_secret_b64url": b64url(ROOT_SECRET_A),
        "keyset": "k2026",
        "company_id": 7,
        "recipient_id": "34",
        "campaign_id": "job12",
        "job_id": "12",
        "token": genuine,
        "rejected": [
            {"why": "tag flipped", "token": ".".join((keyset, company, recipient, campaign, flipped_tag))},
            {
                "why": "another recipient, same tag",
                "token": ".".join((keyset, company, other_person, campaign, tag)),
            },
            {"why": "another company, same tag", "token": ".".join((keyset, "c8", recipient, campaign, tag))},
            {
                "why": "another campaign, same tag",
                "token": ".".join((keyset, company, recipient, b64url(b"job13"), tag)),
            },
            {"why": "unknown key set", "token": ".".join(("k1999", company, recipient, campaign, tag))},
            {
                "why": "signed with another root",
                "token": make_token(ROOT_SECRET_B, "k2026", 7, "34", "job12"),
            },
            {
                "why": "padded base64 (non-canonical)",
                "token": ".".join((keyset, company, recipient + "=", campaign, tag)),
            },
            {"why": "truncated", "token": genuine[:-1]},
            {"why": "not a token", "token": "unsubscribe-me"},
        ],
    }
    out = ROOT / "offload_contract" / "vectors" / "signing.json"
    out.write_text(json.dumps(vectors, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
