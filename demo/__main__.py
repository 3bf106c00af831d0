"""Contract round trip: pack IOMAD-shaped recipients into batches, validate them, then sign a
result callback and verify it the way the bridge's receiver will.

This is the demo until the bridge, the Lambdas and the embedded AWS exist (issue 7).
"""

from __future__ import annotations

import hashlib
import time

from offload_contract import QueueLimits, validate
from offload_contract.codec import decode_message, encode_message
from offload_contract.packing import PackItem, pack_batches
from offload_contract.signing import (
    MemoryNonceStore,
    SignatureError,
    Verifier,
    decode_root_secret,
    derive_company_key,
    generate_root_secret,
    make_key_id,
    sign_request,
)


def main() -> None:
    started = time.perf_counter()
    root = decode_root_secret(generate_root_secret())
    company_id = 7
    key_id = make_key_id("demo", company_id)
    header = {
        "type": "email_batch",
        "contract_version": 1,
        "job_id": "j-demo-1",
        "company_id": company_id,
        "attempt": 1,
        "created_at": int(time.time()),
        "category": "transactional",
        "callback": {"url": "http://127.0.0.1:8765/callbacks/v1/results", "key_id": key_id},
        "sender": {"address": "noreply@acme.example", "name": "Acme Training"},
    }
    names = ["Zoë Ørsted", "محمد الأحمد", "李小龍", "דנה לוי", "Ana Núñez"]
    items = []
    for n in range(5_000):
        name = names[n % len(names)]
        cid = f"row-{n}"
        content = {
            "kind": "rendered",
            "subject": "A new on-line learning account has been created for you",
            "html": f"<p>Dear {name},</p>" + "<p>Welcome to your training.</p>" * (1 + n % 40),
        }
        items.append(
            PackItem(
                {"recipient_id": f"r-{n}", "to": f"user{n}@example.org", "name": name, "content_id": cid},
                cid,
                content,
            )
        )
    for provider in ("aws", "cloudflare"):
        limits = QueueLimits.for_provider(provider)
        result = pack_batches(header, items, limits, make_batch_id=lambda i: f"b-demo-{i:05d}")
        for batch in result.batches:
            validate("email_batch", decode_message(batch.body))
        largest = max(len(b.body) for b in result.batches)
        print(
            f"{provider:>10}: {len(items)} recipients -> {len(result.batches)} batches, "
            f"largest {largest:,} of {limits.max_bytes:,} bytes, rejected {len(result.rejected)}"
        )

    results = {
        "type": "result_batch",
        "contract_version": 1,
        "report_id": "rep-demo-1",
        "company_id": company_id,
        "reporter": "email_sender",
        "created_at": int(time.time()),
        "results": [
            {
                "job_id": "j-demo-1",
                "recipient_id": "r-0",
                "status": "sent",
                "attempts": 1,
                "occurred_at": int(time.time()),
                "provider_message_id": "demo-0001",
            }
        ],
    }
    envelope = {
        "contract_version": 1,
        "message_type": "result_batch",
        "message_id": "m-demo-1",
        "sent_at": int(time.time()),
        "message": results,
    }
    validate("envelope", envelope)
    validate("result_batch", results)
    body = encode_message(envelope)
    headers = sign_request(
        derive_company_key(root, company_id), key_id, "POST", "/callbacks/v1/results", body
    )
    verifier = Verifier({"demo": root}, MemoryNonceStore())
    verified = verifier.verify("POST", "/callbacks/v1/results", headers, body)
    print(
        f"  callback: signed {len(body)} bytes (sha256 {hashlib.sha256(body).hexdigest()[:12]}…), "
        f"verified for company {verified.company_id}"
    )
    for label, attempt in (("replayed", (headers, body)), ("tampered", (headers, body + b" "))):
        try:
            verifier.verify("POST", "/callbacks/v1/results", *attempt)
        except SignatureError as exc:
            print(f"  callback: {label} request rejected ({exc.code})")
    print(f"contract round trip done in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    main()
