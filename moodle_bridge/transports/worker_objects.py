"""The Cloudflare Worker's R2 bucket, through its signed object routes (cloudflare/src/objects.js).

``PUT /v1/objects/{key}`` writes ``contents/company-<id>/…`` and ``templates/company-<id>/…``;
``GET /v1/objects/{key}`` reads those and ``certificates/company-<id>/…``. Every request is
signed with the company key of the current key set, the company being the one the key names,
so the bridge can only reach a company's objects with that company's key. Errors carry the
status and the Worker's error code, never the object's bytes.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from moodle_bridge.config import BridgeConfig
from moodle_bridge.transports.targets import quiet_transport_loggers, worker_base_url
from offload_contract.signing import derive_company_key, make_key_id, sign_request

OBJECTS_PATH = "/v1/objects/"
#: The Worker's cap on one object (MAX_OBJECT_BYTES in cloudflare/src/objects.js).
MAX_OBJECT_BYTES = 8 * 1024 * 1024
CHUNK = 256 * 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_COMPANY = re.compile(r"^company-([0-9]{1,19})$")


class WorkerObjectError(Exception):
    """The Worker did not store or hand out the object. ``retryable`` False: retrying cannot help."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


def key_company(key: str) -> int:
    """The company a key belongs to (``<prefix>/company-<id>/…``); ValueError for any other key.

    The Worker checks the same rules; checking here keeps a bad key from ever being sent."""
    segments = key.split("/")
    if (
        len(key) > 1024
        or len(segments) < 3
        or any(not _SEGMENT.match(s) or s in (".", "..") for s in segments)
    ):
        raise ValueError("object keys are plain path segments (letters, digits, . _ -), no . or ..")
    match = _COMPANY.match(segments[1])
    if match is None:
        raise ValueError("object keys start <prefix>/company-<id>/")
    return int(match.group(1))


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    bytes: int
    content_type: str


class WorkerObjects:
    """Put and read a company's R2 objects through the Worker (``url``: its base or intake URL)."""

    def __init__(
        self,
        url: str,
        keyset: str,
        root_secret: bytes,
        *,
        client: httpx.Client | None = None,
        timeout: float = 30.0,
    ) -> None:
        quiet_transport_loggers()
        self.base_url = worker_base_url(url)
        self._base_path = urlsplit(self.base_url).path
        self._keyset = keyset
        self._root = root_secret
        self._client = client or httpx.Client(timeout=timeout)

    def _request(self, method: str, key: str, body: bytes, headers: dict[str, str]) -> httpx.Request:
        company = key_company(key)
        signed = sign_request(
            derive_company_key(self._root, company),
            make_key_id(self._keyset, company),
            method,
            self._base_path + OBJECTS_PATH + key,
            body,
        )
        return self._client.build_request(
            method, self.base_url + OBJECTS_PATH + key, content=body or None, headers={**signed, **headers}
        )

    @staticmethod
    def _error(what: str, response: httpx.Response) -> WorkerObjectError:
        code = ""
        try:
            answer = response.json()
            if isinstance(answer, dict) and isinstance(answer.get("error"), str):
                code = f" {answer['error']}"
        except ValueError:
            pass
        status = response.status_code
        retryable = status in (408, 409, 425, 429) or status >= 500
        return WorkerObjectError(
            f"worker objects {what}: HTTP {status}{code}", status=status, retryable=retryable
        )

    def put(self, key: str, body: bytes, content_type: str) -> StoredObject:
        """Store ``body`` under ``key``; the Worker's SHA-256 must match what was sent."""
        if len(body) > MAX_OBJECT_BYTES:
            raise WorkerObjectError(
                f"worker objects put: {len(body)} bytes is over the Worker's {MAX_OBJECT_BYTES}-byte limit",
                status=413,
                retryable=False,
            )
        request = self._request("PUT", key, body, {"Content-Type": content_type})
        try:
            response = self._client.send(request)
        except httpx.HTTPError as exc:
            raise WorkerObjectError(f"worker objects put: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise self._error("put", response)
        answer: Any = response.json()
        digest = hashlib.sha256(body).hexdigest()
        if not isinstance(answer, dict) or answer.get("sha256") != digest or answer.get("bytes") != len(body):
            raise WorkerObjectError("worker objects put: the stored object does not match what was sent")
        return StoredObject(key, digest, len(body), str(answer.get("content_type", content_type)))

    def open(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks, streamed from R2 (the web layer's ``ObjectReader``).

        The request is made when the first chunk is asked for; a missing object raises
        WorkerObjectError with status 404 then."""
        request = self._request("GET", key, b"", {})
        try:
            response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise WorkerObjectError(f"worker objects get: {type(exc).__name__}") from None
        try:
            if response.status_code != 200:
                response.read()
                raise self._error("get", response)
            yield from response.iter_bytes(CHUNK)
        except httpx.HTTPError as exc:
            raise WorkerObjectError(f"worker objects get: {type(exc).__name__}") from None
        finally:
            response.close()

    def get(self, key: str) -> bytes | None:
        """The whole object, or None when there is none under ``key``."""
        try:
            return b"".join(self.open(key))
        except WorkerObjectError as exc:
            if exc.status == 404:
                return None
            raise


def worker_objects(config: BridgeConfig) -> WorkerObjects | None:
    """The configured Worker's object routes, or None without a Worker URL or current key set."""
    root = config.keys.root_secrets().get(config.keys.current) if config.keys.current else None
    if root is None or not config.cloudflare.intake_url:
        return None
    return WorkerObjects(config.cloudflare.intake_url, config.keys.current, root)


class _NoSuchKey(Exception):
    """What ``TemplateStore`` takes for a missing object (botocore's error shape)."""

    response = {"Error": {"Code": "NoSuchKey"}}


_TYPES = {".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class WorkerTemplateClient:
    """The two S3 calls ``certificate_render.template.TemplateStore`` makes, served by the Worker's
    object routes, so ``certificates template set/show`` validate and store a Cloudflare company's
    template with the very code they use for AWS. ``Bucket`` is ignored (the Worker has one)."""

    def __init__(self, objects: WorkerObjects) -> None:
        self.objects = objects

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:
        suffix = Key[Key.rfind(".") :].lower() if "." in Key else ""
        stored = self.objects.put(Key, Body, _TYPES.get(suffix, "application/octet-stream"))
        return {"ChecksumSHA256": stored.sha256}

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        data = self.objects.get(Key)
        if data is None:
            raise _NoSuchKey(Key)
        return {"Body": io.BytesIO(data)}


def worker_image_refusal(images: dict[str, bytes]) -> str | None:
    """Why the Worker's renderer cannot draw these template images (it takes PNG and JPEG only)."""
    for name, data in sorted(images.items()):
        if not (data.startswith(b"\x89PNG\r\n\x1a\n") or data.startswith(b"\xff\xd8\xff")):
            return f"image {name!r} is not PNG or JPEG: the Cloudflare Worker's renderer draws only those"
    return None
