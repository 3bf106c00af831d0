"""Certificates of a job read back from the certificate bucket, and a job's ZIP streamed.

The renderer stores each PDF in S3 and reports its key (``mrcloud_recipients.artifactkey``); in
the CDK stack the certificate bucket is the content bucket (``aws.content_bucket``). The bridge's
credentials need ``s3:GetObject`` on it. The Cloudflare Worker keeps them in R2 under the same keys;
``WorkerCertificates`` reads those through the Worker's signed object route. Used by the dashboard's
downloads and by ``moodle-offload certificates download``.

A ZIP of a job's certificates is streamed with the standard library's ``zipfile`` writing to a
non-seekable sink (so it writes data descriptors instead of seeking back): each PDF is copied
into the archive chunk by chunk as it is read from S3 (stored, not deflated: PDFs are compressed
already), and what the archive wrote is handed out after every chunk. Memory stays at about one
chunk plus the central directory's entry per file, whatever the job's size
(``tests/bridge/test_certificate_download.py`` measures it with tracemalloc). Entry names are
``certificate-<recipient id>-<address>.pdf`` with every character outside ``A-Za-z0-9._@+-``
replaced, so no name holds a path separator.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import boto3

from moodle_bridge.config import BridgeConfig
from moodle_bridge.transports.worker_objects import WorkerObjects, worker_objects

CHUNK = 256 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9._@+-]+")
_DOTS = re.compile(r"\.{2,}")


class CertificateStoreMissing(RuntimeError):
    """No bucket is configured; the message says which setting."""


class ObjectReader(Protocol):
    def open(self, key: str) -> Iterator[bytes]: ...


class S3Certificates:
    def __init__(self, config: BridgeConfig, client: Any = None) -> None:
        if not config.aws.content_bucket:
            raise CertificateStoreMissing(
                "certificates are read from aws.content_bucket (MRCO_CONTENT_BUCKET), which is not set"
            )
        self.bucket = config.aws.content_bucket
        self.client = client or boto3.client(
            "s3", region_name=config.aws.region, endpoint_url=config.aws.endpoint_url or None
        )

    def open(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()


class WorkerCertificates:
    """PDFs the Cloudflare Worker rendered, streamed from its R2 through its signed object route
    (``GET /v1/objects/certificates/company-<id>/…``, signed with that company's key)."""

    def __init__(self, config: BridgeConfig, objects: WorkerObjects | None = None) -> None:
        found = objects or worker_objects(config)
        if found is None:
            raise CertificateStoreMissing(
                "the Worker's certificates are read through cloudflare.intake_url "
                "(MRCO_CLOUDFLARE_INTAKE_URL) with the current key set, which is not configured"
            )
        self.objects = found

    def open(self, key: str) -> Iterator[bytes]:
        return self.objects.open(key)


def store_for(config: BridgeConfig, provider: str) -> ObjectReader:
    """Where a job's PDFs are: the Worker's R2 for a Cloudflare job, else the certificate bucket."""
    return WorkerCertificates(config) if provider == "cloudflare" else S3Certificates(config)


def file_name(recipient: Any) -> str:
    """``certificate-<recipient id>-<address>.pdf`` with only safe characters: no path
    separator and no ``..`` (an address such as ``../../x@y`` cannot name a path)."""
    address = _DOTS.sub("_", _SAFE.sub("_", str(recipient.address)))[:80]
    return f"certificate-{int(recipient.id)}-{address}.pdf"


class _Sink(io.RawIOBase):
    """A write-only, non-seekable file for ``zipfile`` that hands out what was written."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        return None

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts = []
        return out


def zip_stream(store: ObjectReader, recipients: Iterable[Any]) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for recipient in recipients:
            info = zipfile.ZipInfo(file_name(recipient))
            info.compress_type = zipfile.ZIP_STORED
            with archive.open(info, "w", force_zip64=True) as entry:
                for chunk in store.open(str(recipient.artifactkey)):
                    entry.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()
