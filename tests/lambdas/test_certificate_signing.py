"""PAdES signing per company: the renderer Lambda signs with the company's PKCS#12 from Secrets
Manager (moto), and pyHanko's validator sees a valid, trusted signature over the whole, unaltered
file, with a test CA made here. A company without a secret is not signed; a bad secret fails its
recipients clearly without printing the secret."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from asn1crypto import x509 as asn1_x509  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from lambdas.certificates.signing import CACHE_SECONDS, CompanySigners
from lambdas.handlers import certificate_renderer
from offload_contract import encode_message
from tests.lambdas.conftest import Aws, FakeContext, sqs_event
from tests.lambdas.test_certificates import certificate_batch

PREFIX = "offload-certificate-signing/company-"
PASSPHRASE = "correct horse battery staple"
BUCKET = "offload-certificates"


def _key_usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=not sign_certs, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=sign_certs, crl_sign=sign_certs,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def test_ca() -> tuple[x509.Certificate, bytes]:
    """A CA and a company signing certificate issued by it, as (CA certificate, PKCS#12)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Certificate Authority")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certs=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Acme Training Ltd")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(_key_usage(sign_certs=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    p12 = pkcs12.serialize_key_and_certificates(
        b"acme", key, cert, [ca], serialization.BestAvailableEncryption(PASSPHRASE.encode())
    )
    return ca, p12


@pytest.fixture
def signing(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    monkeypatch.setenv("SIGNING_SECRET_PREFIX", PREFIX)
    from lambdas.common.settings import settings

    settings.cache_clear()
    certificate_renderer.renderer.cache_clear()
    yield aws
    certificate_renderer.renderer.cache_clear()
    settings.cache_clear()


def _stored(aws: Aws) -> list[bytes]:
    listing = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="certificates/company-7/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    return [aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys]


def _validate(pdf: bytes, ca: x509.Certificate) -> Any:
    reader = PdfFileReader(io.BytesIO(pdf))
    (signature,) = reader.embedded_signatures
    root = asn1_x509.Certificate.load(ca.public_bytes(serialization.Encoding.DER))
    trust = ValidationContext(trust_roots=[root])
    return validate_pdf_signature(signature, trust)


def test_company_certificates_carry_a_valid_pades_signature(
    signing: Aws, test_ca: tuple[x509.Certificate, bytes]
) -> None:
    ca, p12 = test_ca
    aws = signing
    aws.secrets.create_secret(
        Name=f"{PREFIX}7",
        SecretString=json.dumps({"pkcs12": base64.b64encode(p12).decode(), "password": PASSPHRASE}),
    )
    certificate_renderer.handler(sqs_event(encode_message(certificate_batch("store_only"))), FakeContext())
    assert {r["status"] for r in aws.results()} == {"rendered"}
    pdfs = _stored(aws)
    assert len(pdfs) == 4
    for pdf in pdfs:
        status = _validate(pdf, ca)
        assert status.intact and status.valid and status.trusted
        assert status.coverage.name == "ENTIRE_FILE" and status.modification_level.name == "NONE"
        assert "Acme Training Ltd" in status.signing_cert.subject.human_friendly
    # Altering one byte of the signed content: the validator no longer sees it intact.
    pdf = pdfs[0]
    position = pdf.index(b"/MediaBox")
    tampered = pdf[:position] + b"/MediaBoy" + pdf[position + len(b"/MediaBox") :]
    assert not _validate(tampered, ca).intact


def test_no_secret_means_unsigned_and_a_bad_secret_fails_clearly(
    signing: Aws, test_ca: tuple[x509.Certificate, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    aws = signing
    certificate_renderer.handler(sqs_event(encode_message(certificate_batch("store_only"))), FakeContext())
    assert {r["status"] for r in aws.results()} == {"rendered"}
    assert all(not PdfFileReader(io.BytesIO(pdf)).embedded_signatures for pdf in _stored(aws))

    _, p12 = test_ca
    wrong = base64.b64encode(p12).decode()
    secret = json.dumps({"pkcs12": wrong, "password": "wrong"})
    aws.secrets.create_secret(Name=f"{PREFIX}7", SecretString=secret)
    certificate_renderer.renderer.cache_clear()  # a new container: no cached answer
    certificate_renderer.handler(sqs_event(encode_message(certificate_batch("store_only"))), FakeContext())
    results = aws.results()
    assert {r["status"] for r in results} == {"failed"}
    assert {r["error"]["code"] for r in results} == {"signing_key_invalid"}
    assert all(r["error"]["permanent"] for r in results)
    everything = caplog.text + json.dumps(results)
    assert wrong not in everything and "wrong" not in json.dumps([r["error"]["message"] for r in results])


def test_a_new_secret_is_used_once_the_cached_answer_is_five_minutes_old(
    aws: Aws, test_ca: tuple[x509.Certificate, bytes]
) -> None:
    now = [1000.0]
    signers = CompanySigners(aws.secrets, PREFIX, clock=lambda: now[0])
    assert signers(7) is None  # no secret: not signed
    _, p12 = test_ca
    aws.secrets.create_secret(
        Name=f"{PREFIX}7",
        SecretString=json.dumps({"pkcs12": base64.b64encode(p12).decode(), "password": PASSPHRASE}),
    )
    now[0] += CACHE_SECONDS - 1
    assert signers(7) is None
    now[0] += 1
    signer = signers(7)
    assert signer is not None and "Acme Training Ltd" in signer.subject
