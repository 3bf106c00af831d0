"""The dashboard's certificate downloads read through ``moodle_bridge.transports.certificate_store``
(shared with ``moodle-offload certificates download``)."""

from __future__ import annotations

from moodle_bridge.transports.certificate_store import (
    CHUNK,
    CertificateStoreMissing,
    ObjectReader,
    S3Certificates,
    WorkerCertificates,
    file_name,
    zip_stream,
)

__all__ = [
    "CHUNK",
    "CertificateStoreMissing",
    "ObjectReader",
    "S3Certificates",
    "WorkerCertificates",
    "file_name",
    "zip_stream",
]
