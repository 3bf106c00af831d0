"""Pack recipients into batches that always fit the queue (docs/contract.md, "Sizing").

The recipient count of a batch is chosen greedily: recipients are added while the
encoded batch stays within ``QueueLimits.max_bytes`` and the count within
``max_recipients``. Contents shared by several recipients (IOMAD's fan-out copies, a
campaign template) travel once per batch. A content too large to fit a batch even with a
single recipient goes by reference to encrypted storage through ``offload``; without an
offloader, or if it still cannot fit, the recipient is rejected with a reason. Nothing is
ever truncated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from offload_contract.codec import encode_message, encoded_size
from offload_contract.limits import QueueLimits

#: (content_id, content, its encoded bytes) -> a {"kind": "reference", "ref": ...} content.
ContentOffloader = Callable[[str, dict[str, Any], bytes], dict[str, Any]]


@dataclass(frozen=True)
class PackItem:
    recipient: dict[str, Any]
    content_id: str | None = None
    content: dict[str, Any] | None = None

    @property
    def recipient_id(self) -> str:
        return str(self.recipient["recipient_id"])


@dataclass(frozen=True)
class PackedBatch:
    batch_id: str
    message: dict[str, Any]
    body: bytes
    recipient_ids: tuple[str, ...]


@dataclass(frozen=True)
class Rejection:
    recipient_id: str
    code: str
    detail: str


@dataclass
class PackResult:
    batches: list[PackedBatch] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    offloaded_content_ids: list[str] = field(default_factory=list)


def _entry_size(key: str, value: Any) -> int:
    # ,"key":value  (the comma is counted for every entry: at most one byte too many)
    return 1 + encoded_size(key) + 1 + encoded_size(value)


class _Batch:
    def __init__(self, base_size: int) -> None:
        self.size = base_size
        self.contents: dict[str, dict[str, Any]] = {}
        self.recipients: list[dict[str, Any]] = []


def pack_batches(
    header: dict[str, Any],
    items: Iterable[PackItem],
    limits: QueueLimits,
    *,
    make_batch_id: Callable[[int], str],
    offload: ContentOffloader | None = None,
) -> PackResult:
    """Split ``items`` into batches of ``header`` + contents + recipients within ``limits``."""
    result = PackResult()
    replaced: dict[str, dict[str, Any]] = {}  # content_id -> reference content, once offloaded
    batch_index = 0
    base_size = encoded_size({**header, "batch_id": make_batch_id(0), "contents": {}, "recipients": []})
    current = _Batch(base_size)

    def flush() -> None:
        nonlocal current, batch_index
        if not current.recipients:
            return
        batch_id = make_batch_id(batch_index)
        message = {**header, "batch_id": batch_id}
        if current.contents:
            message["contents"] = current.contents
        message["recipients"] = current.recipients
        body = encode_message(message)
        if len(body) > limits.max_bytes:  # the estimate is conservative; this is a guard
            raise AssertionError(f"packed batch is {len(body)} bytes, over the {limits.max_bytes} budget")
        ids = tuple(str(r["recipient_id"]) for r in current.recipients)
        result.batches.append(PackedBatch(batch_id, message, body, ids))
        batch_index += 1
        current = _Batch(base_size)

    content_sizes: dict[tuple[str, int], int] = {}  # each content object is encoded once
    for item in items:
        recipient_size = 1 + encoded_size(item.recipient)
        content_id = item.content_id
        content = None if content_id is None else replaced.get(content_id, item.content)
        content_size = 0
        if content_id is not None and content is not None:
            size_key = (content_id, id(content))  # the items hold their contents alive
            if size_key not in content_sizes:
                content_sizes[size_key] = _entry_size(content_id, content)
            content_size = content_sizes[size_key]
        if base_size + recipient_size + content_size > limits.max_bytes:
            if (
                content_id is not None
                and content is not None
                and offload is not None
                and content["kind"] != "reference"
            ):
                content = offload(content_id, content, encode_message(content))
                replaced[content_id] = content
                result.offloaded_content_ids.append(content_id)
                content_size = _entry_size(content_id, content)
            if base_size + recipient_size + content_size > limits.max_bytes:
                result.rejected.append(
                    Rejection(
                        item.recipient_id,
                        "too_large",
                        f"recipient needs {recipient_size + content_size} bytes; a batch has "
                        f"{limits.max_bytes - base_size} after its header",
                    )
                )
                continue
        needs_content = content_id is not None and content is not None and content_id not in current.contents
        extra = recipient_size + (content_size if needs_content else 0)
        if len(current.recipients) >= limits.max_recipients or current.size + extra > limits.max_bytes:
            flush()
            needs_content = content_id is not None and content is not None
            extra = recipient_size + content_size
        if needs_content and content_id is not None and content is not None:
            current.contents[content_id] = content
        current.recipients.append(item.recipient)
        current.size += extra
    flush()
    return result
