"""The message contract shared by the bridge, the Lambdas and the Cloudflare Worker.

One source of truth: ``schemas/v1/contract.schema.json``. The Worker validates the same
file; ``vectors/`` holds byte-exact test vectors that both languages check.
"""

from offload_contract.codec import decode_message, encode_message
from offload_contract.limits import CONTRACT_VERSION, QueueLimits
from offload_contract.validation import MESSAGE_TYPES, ContractError, validate

__all__ = [
    "CONTRACT_VERSION",
    "MESSAGE_TYPES",
    "ContractError",
    "QueueLimits",
    "decode_message",
    "encode_message",
    "validate",
]
