"""The one wire encoding of contract messages: compact UTF-8 JSON.

SQS only accepts the XML character range (no lone surrogates, no U+FFFE/U+FFFF), so
those code points are written as JSON escapes; everything else stays literal UTF-8,
which keeps non-Latin bodies at their natural size instead of 6 bytes a character.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SQS_UNSAFE = re.compile("[\ud800-\udfff\ufffe\uffff]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


def encode_message(message: Any) -> bytes:
    """Encode a message exactly as it is sized, signed and sent."""
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _SQS_UNSAFE.sub(_escape, text).encode("utf-8")


def encoded_size(value: Any) -> int:
    """Bytes that ``value`` takes inside an encoded message."""
    return len(encode_message(value))


def decode_message(data: bytes | str) -> Any:
    """Parse a message; raises ``ValueError`` on bytes that are not UTF-8 JSON."""
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    return json.loads(data)
