import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload_contract import QueueLimits, validate
from offload_contract.codec import decode_message, encode_message
from offload_contract.packing import PackItem, pack_batches

HEADER: dict[str, Any] = {
    "type": "email_batch",
    "contract_version": 1,
    "job_id": "j-1",
    "company_id": 3,
    "attempt": 1,
    "created_at": 1795361900,
    "category": "transactional",
    "callback": {"url": "https://moodle.example/cb", "key_id": "k1.c3"},
    "sender": {"address": "noreply@example.org"},
}


def batch_id(i: int) -> str:
    return f"b-j-1-{i:06d}"


def item(n: int, body: str, shared: bool = False) -> PackItem:
    cid = "shared" if shared else f"c-{n}"
    return PackItem(
        {"recipient_id": f"r-{n}", "to": f"user{n}@example.org", "content_id": cid},
        cid,
        {"kind": "rendered", "subject": f"Hello {n}", "html": body},
    )


def offload_to_memory(store: dict[str, bytes]) -> Any:
    def offload(content_id: str, content: dict[str, Any], encoded: bytes) -> dict[str, Any]:
        key = f"contents/{content_id}.json"
        store[key] = encoded
        return {
            "kind": "reference",
            "ref": {
                "store": "s3",
                "bucket": "b",
                "key": key,
                "sha256": hashlib.sha256(encoded).hexdigest(),
                "bytes": len(encoded),
            },
        }

    return offload


def test_default_is_200_recipients_per_batch() -> None:
    result = pack_batches(
        HEADER, [item(n, "<p>hi</p>") for n in range(1000)], QueueLimits.sqs(), make_batch_id=batch_id
    )
    assert [len(b.recipient_ids) for b in result.batches] == [200] * 5
    for b in result.batches:
        validate("email_batch", decode_message(b.body))


def test_long_bodies_shrink_the_batch_not_the_body() -> None:
    body = "<p>" + "é" * 40_000 + "</p>"  # 80 KB of UTF-8 each
    result = pack_batches(
        HEADER, [item(n, body) for n in range(50)], QueueLimits.cloudflare(), make_batch_id=batch_id
    )
    assert all(len(b.body) <= QueueLimits.cloudflare().max_bytes for b in result.batches)
    assert sum(len(b.recipient_ids) for b in result.batches) == 50
    for b in result.batches:
        for content in decode_message(b.body)["contents"].values():
            assert content["html"] == body


def test_shared_content_travels_once_per_batch() -> None:
    body = "<p>" + "x" * 100_000 + "</p>"
    result = pack_batches(
        HEADER, [item(n, body, shared=True) for n in range(30)], QueueLimits.sqs(), make_batch_id=batch_id
    )
    assert len(result.batches) == 1
    assert len(result.batches[0].body) < 110_000


def test_content_too_large_for_any_batch_goes_by_reference() -> None:
    store: dict[str, bytes] = {}
    huge = "<p>" + "y" * 200_000 + "</p>"
    items = [item(0, "<p>small</p>"), item(1, huge), item(2, "<p>small</p>")]
    result = pack_batches(
        HEADER, items, QueueLimits.cloudflare(), make_batch_id=batch_id, offload=offload_to_memory(store)
    )
    assert result.rejected == []
    assert result.offloaded_content_ids == ["c-1"]
    message = decode_message(result.batches[0].body)
    assert message["contents"]["c-1"]["kind"] == "reference"
    assert json.loads(store["contents/c-1.json"])["html"] == huge
    validate("email_batch", message)


def test_without_offloader_oversize_recipient_is_rejected_with_reason() -> None:
    huge = "<p>" + "y" * 200_000 + "</p>"
    result = pack_batches(
        HEADER, [item(0, huge), item(1, "<p>ok</p>")], QueueLimits.cloudflare(), make_batch_id=batch_id
    )
    assert [r.recipient_id for r in result.rejected] == ["r-0"]
    assert result.rejected[0].code == "too_large"
    assert [b.recipient_ids for b in result.batches] == [("r-1",)]


def test_codec_escapes_code_points_sqs_refuses() -> None:
    encoded = encode_message({"s": "a\ud800b\uffffc\u2028d\U0001f393"})
    text = encoded.decode("utf-8")
    assert "\\ud800" in text and "\\uffff" in text
    assert "\U0001f393" in text
    assert decode_message(encoded)["s"] == "a\ud800b\uffffc\u2028d\U0001f393"


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=60_000), min_size=1, max_size=60),
    max_recipients=st.integers(min_value=1, max_value=40),
    shared=st.booleans(),
)
def test_every_recipient_lands_exactly_once_within_limits(
    sizes: list[int], max_recipients: int, shared: bool
) -> None:
    limits = QueueLimits(120_000, max_recipients)
    store: dict[str, bytes] = {}
    items = [item(n, "Ω" * size, shared=shared and n % 2 == 0) for n, size in enumerate(sizes)]
    result = pack_batches(HEADER, items, limits, make_batch_id=batch_id, offload=offload_to_memory(store))
    seen = [rid for b in result.batches for rid in b.recipient_ids]
    seen += [r.recipient_id for r in result.rejected]
    assert sorted(seen) == sorted(i.recipient_id for i in items)
    assert len(seen) == len(set(seen))
    for b in result.batches:
        assert len(b.body) <= limits.max_bytes
        assert len(b.recipient_ids) <= max_recipients
        message = decode_message(b.body)
        referenced = {r["content_id"] for r in message["recipients"]}
        assert referenced == set(message["contents"])


@pytest.mark.parametrize("provider,expected", [("aws", 1_040_384), ("cloudflare", 120_000)])
def test_provider_budgets(provider: str, expected: int) -> None:
    assert QueueLimits.for_provider(provider).max_bytes == expected
