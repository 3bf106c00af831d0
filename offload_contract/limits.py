"""Size limits of the transports a batch can travel on.

A batch is sized by the bytes of its compact JSON encoding (``codec.encode_message``),
never by recipient count alone: see ``packing.pack_batches`` and docs/contract.md.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRACT_VERSION = 1

#: SQS accepts up to 1 MiB, but only when the queue's MaximumMessageSize says so
#: (it still defaults to 262,144). infra/ sets it to this value explicitly.
SQS_MAX_MESSAGE_BYTES = 1_048_576
#: Message attributes and the SQS envelope count towards the limit; keep room.
SQS_HEADROOM_BYTES = 8_192

#: The largest signed result callback body the contract allows: a result_batch must fit one SQS
#: message (it is kept on the results queue for reconciliation), plus the envelope around it.
ENVELOPE_OVERHEAD_BYTES = 1_024
MAX_SIGNED_RESULT_BODY_BYTES = SQS_MAX_MESSAGE_BYTES + ENVELOPE_OVERHEAD_BYTES

#: Cloudflare Queues: 128 KB per message. We read KB as 1,000 bytes to stay on the safe
#: side, and keep headroom for the queue's own serialisation.
CLOUDFLARE_MAX_MESSAGE_BYTES = 128_000
CLOUDFLARE_HEADROOM_BYTES = 8_000

#: Recipients per batch unless configured otherwise (issue: 200 by default).
DEFAULT_RECIPIENTS_PER_BATCH = 200


@dataclass(frozen=True)
class QueueLimits:
    """The budget one batch must fit in."""

    max_bytes: int
    max_recipients: int = DEFAULT_RECIPIENTS_PER_BATCH

    def __post_init__(self) -> None:
        if self.max_bytes < 4_096:
            raise ValueError("max_bytes must be at least 4096")
        if not 1 <= self.max_recipients <= 1000:
            raise ValueError("max_recipients must be between 1 and 1000")

    @classmethod
    def sqs(cls, max_recipients: int = DEFAULT_RECIPIENTS_PER_BATCH) -> QueueLimits:
        return cls(SQS_MAX_MESSAGE_BYTES - SQS_HEADROOM_BYTES, max_recipients)

    @classmethod
    def cloudflare(cls, max_recipients: int = DEFAULT_RECIPIENTS_PER_BATCH) -> QueueLimits:
        return cls(CLOUDFLARE_MAX_MESSAGE_BYTES - CLOUDFLARE_HEADROOM_BYTES, max_recipients)

    @classmethod
    def for_provider(cls, provider: str, max_recipients: int = DEFAULT_RECIPIENTS_PER_BATCH) -> QueueLimits:
        if provider == "aws":
            return cls.sqs(max_recipients)
        if provider == "cloudflare":
            return cls.cloudflare(max_recipients)
        raise ValueError(f"unknown provider {provider!r}; expected 'aws' or 'cloudflare'")
