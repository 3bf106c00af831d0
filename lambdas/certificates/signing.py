"""Optional PAdES signatures on certificates, per company, with pyHanko.

A company that wants its certificates signed supplies a signing certificate and its private key
as PKCS#12, stored as a Secrets Manager secret named ``<SIGNING_SECRET_PREFIX><company id>``
holding JSON ``{"pkcs12": "<base64>", "password": "<passphrase>"}``. The renderer signs each PDF
after rendering (PAdES baseline B-B: a CMS signature over the whole file, added as an
incremental update), so a PDF reader shows that the certificate is unaltered since the company
signed it. No secret for a company means its certificates are not signed. A secret that cannot be
read as PKCS#12 fails that company's recipients with ``signing_key_invalid``; the key and the
passphrase are never logged or put into an error message.

A signature carries its signing time, so a signed PDF is no longer byte-identical on redelivery
(the same key is overwritten with an equally valid signed PDF). pyHanko is imported only when a
company signs, so containers of companies that do not sign pay no import time for it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Per-container cache of a company's signer (or of "does not sign"), seconds.
CACHE_SECONDS = 300
FIELD_NAME = "CertificateSignature"


class SigningError(Exception):
    """The company's signing secret is unusable; the message never holds the secret."""

    code = "signing_key_invalid"


@dataclass(frozen=True)
class PdfSigner:
    """Signs PDFs with one PKCS#12 key and certificate (PAdES B-B)."""

    signer: Any  # pyhanko.sign.signers.SimpleSigner
    subject: str

    @classmethod
    def from_pkcs12(cls, data: bytes, passphrase: bytes | None) -> PdfSigner:
        from pyhanko.sign import signers  # noqa: PLC0415 - only when a company signs

        try:
            signer = signers.SimpleSigner.load_pkcs12_data(data, other_certs=[], passphrase=passphrase)
        except Exception:  # pyHanko/cryptography raise several types; none may echo the input
            signer = None
        if signer is None or signer.signing_cert is None:
            raise SigningError("the signing secret is not a PKCS#12 key and certificate with this passphrase")
        return cls(signer, signer.signing_cert.subject.human_friendly)

    def sign(self, pdf: bytes) -> bytes:
        from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter  # noqa: PLC0415
        from pyhanko.sign import signers  # noqa: PLC0415
        from pyhanko.sign.fields import SigSeedSubFilter  # noqa: PLC0415

        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
        meta = signers.PdfSignatureMetadata(field_name=FIELD_NAME, subfilter=SigSeedSubFilter.PADES)
        out = signers.sign_pdf(writer, meta, signer=self.signer)
        return bytes(out.getvalue())


def parse_secret(secret_string: str) -> PdfSigner:
    """A signer from the secret's JSON ``{"pkcs12": base64, "password": str}``."""
    try:
        document = json.loads(secret_string)
        data = base64.b64decode(str(document["pkcs12"]), validate=True)
        password = document.get("password")
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise SigningError(
            'the signing secret must be JSON {"pkcs12": "<base64>", "password": "..."}'
        ) from None
    return PdfSigner.from_pkcs12(data, str(password).encode("utf-8") if password else None)


class CompanySigners:
    """The signer of each company, read from Secrets Manager and cached per container."""

    def __init__(self, secretsmanager: Any, prefix: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._sm = secretsmanager
        self._prefix = prefix
        self._clock = clock
        self._cache: dict[int, tuple[float, PdfSigner | None]] = {}

    def __call__(self, company_id: int) -> PdfSigner | None:
        """The company's signer, or None when it has no signing secret. Raises SigningError."""
        cached = self._cache.get(company_id)
        if cached is not None and self._clock() - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            value = self._sm.get_secret_value(SecretId=f"{self._prefix}{company_id}")["SecretString"]
        except self._sm.exceptions.ResourceNotFoundException:
            signer: PdfSigner | None = None
        else:
            signer = parse_secret(value)
        self._cache[company_id] = (self._clock(), signer)
        return signer
