"""Contents and attachments stored by reference in encrypted S3 (checked against their SHA-256)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_REFERENCE_BYTES = 40_000_000


class ContentError(Exception):
    """A stored object is missing, altered, or not what the contract says."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class ObjectFetcher:
    def __init__(self, s3: Any, default_bucket: str) -> None:
        self._s3 = s3
        self._bucket = default_bucket
        self._cache: dict[tuple[str, str], bytes] = {}
        self.fetched = 0

    def fetch(self, ref: dict[str, Any]) -> bytes:
        bucket = str(ref.get("bucket") or self._bucket)
        key = str(ref["key"])
        if ref.get("store", "s3") != "s3":
            raise ContentError("unsupported_store", "only S3 references can be read here")
        if int(ref["bytes"]) > MAX_REFERENCE_BYTES:
            raise ContentError("message_too_large", "a referenced object is larger than SES accepts")
        cached = self._cache.get((bucket, key))
        if cached is not None:
            return cached
        try:
            data: bytes = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            if code in ("NoSuchKey", "NoSuchBucket", "404", "AccessDenied"):
                raise ContentError("reference_missing", f"stored object unavailable ({code})") from None
            raise
        self.fetched += 1
        if len(data) != int(ref["bytes"]) or hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise ContentError("reference_mismatch", "stored object does not match its size and SHA-256")
        if len(self._cache) < 64:
            self._cache[(bucket, key)] = data
        return data

    def content(self, ref: dict[str, Any]) -> dict[str, Any]:
        try:
            content = json.loads(self.fetch(ref).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ContentError("reference_invalid", "stored content is not UTF-8 JSON") from None
        if isinstance(content, dict) and content.get("kind") == "sealed":
            return content  # a sealed password mail too large for the queue; the sender opens it
        if not isinstance(content, dict) or content.get("kind") not in ("rendered", "template"):
            raise ContentError("reference_invalid", "stored content must be a rendered or template content")
        if not isinstance(content.get("subject"), str) or not isinstance(content.get("html"), str):
            raise ContentError("reference_invalid", "stored content lacks subject or html")
        return content
