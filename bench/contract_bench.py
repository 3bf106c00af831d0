"""Contract hot path: pack and validate a 50,000-recipient job.

Baseline in the same run: validating the same batches with ``jsonschema`` (the reference
implementation) instead of the compiled fastjsonschema validator the project uses.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from bench.common import best_of, timed, write_results
from offload_contract import QueueLimits, validate
from offload_contract.codec import decode_message
from offload_contract.packing import PackItem, pack_batches
from offload_contract.validation import schema_document

RECIPIENTS = 50_000


def _items() -> list[PackItem]:
    items = []
    for n in range(RECIPIENTS):
        cid = f"row-{n}"
        body = f"<p>Dear Learner {n},</p><p>A new user account has been created for you.</p>" * 6
        items.append(
            PackItem(
                {
                    "recipient_id": f"r-{n}",
                    "to": f"learner{n}@example.org",
                    "name": f"Learner {n}",
                    "content_id": cid,
                },
                cid,
                {
                    "kind": "rendered",
                    "subject": "A new on-line learning account has been created for you",
                    "html": body,
                },
            )
        )
    return items


HEADER: dict[str, Any] = {
    "type": "email_batch",
    "contract_version": 1,
    "job_id": "j-bench",
    "company_id": 1,
    "attempt": 1,
    "created_at": 1795361900,
    "category": "transactional",
    "callback": {"url": "https://moodle.example/cb", "key_id": "k1.c1"},
    "sender": {"address": "noreply@example.org"},
}


def run() -> dict[str, Any]:
    items = _items()
    result, pack_wall, _ = timed(
        lambda: pack_batches(HEADER, items, QueueLimits.sqs(), make_batch_id=lambda i: f"b-{i:06d}")
    )
    messages = [decode_message(b.body) for b in result.batches]

    def validate_all() -> None:
        for message in messages:
            validate("email_batch", message)

    fast = best_of(3, validate_all)
    reference = jsonschema.Draft7Validator(
        {"definitions": schema_document()["definitions"], "$ref": "#/definitions/email_batch"}
    )
    sample = messages[:25]

    def validate_sample_reference() -> None:
        for message in sample:
            reference.validate(message)

    ref_sample = best_of(1, validate_sample_reference)
    ref_extrapolated = ref_sample * len(messages) / len(sample)
    return {
        "recipients": RECIPIENTS,
        "batches": len(result.batches),
        "pack_seconds": round(pack_wall, 3),
        "validate_seconds_fastjsonschema": round(fast, 3),
        "validate_seconds_jsonschema_baseline": round(ref_extrapolated, 3),
        "validate_speedup_vs_baseline": round(ref_extrapolated / fast, 1),
        "bytes_per_batch_max": max(len(b.body) for b in result.batches),
    }


def main() -> None:
    figures = run()
    path = write_results("contract", figures)
    print(f"contract: {figures} -> {path}")


if __name__ == "__main__":
    main()
