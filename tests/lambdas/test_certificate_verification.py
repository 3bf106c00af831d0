"""Verification records last as long as the certificate; a person scanning the QR code gets a page in
the learner's language, machines get JSON, and a revoked certificate says so."""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest

from lambdas.certificates.verification import revoke
from lambdas.common.idempotency import IdempotencyStore
from lambdas.handlers import api, certificate_renderer
from offload_contract import encode_message
from tests.lambdas.conftest import Aws, FakeContext, sqs_event
from tests.lambdas.test_api import configured, rest_event  # noqa: F401 - the fixture is used by name
from tests.lambdas.test_certificates import certificate_batch

TABLE = "offload-idempotency"
RESOURCE = "/v1/certificates/verify/{code}"


@pytest.fixture
def handlers(aws: Aws):
    certificate_renderer.renderer.cache_clear()
    yield
    certificate_renderer.renderer.cache_clear()


def get(code: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    event = rest_event(
        "GET", f"/prod/v1/certificates/verify/{code}", RESOURCE, headers=headers, params={"code": code}
    )
    response = api.handler(event, FakeContext())
    headers = dict(response.get("headers") or {})
    headers.update({k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()})
    return response["statusCode"], headers, response["body"]


def put(store: IdempotencyStore, code: str, **extra: str) -> None:
    item = {
        "company_id": {"N": "7"},
        "learner_name": {"S": extra.pop("name", "Zoë Ørsted")},
        "course_name": {"S": "Workplace Safety 101"},
        "completed_at": {"N": "1795361900"},
        "key": {"S": "certificates/company-7/j/r.pdf"},
    }
    item.update({k: {"S": v} for k, v in extra.items()})
    store.put_record(f"cert#{code}", item)


def test_the_verify_record_has_no_expiry_and_keeps_language_and_issuer(aws: Aws, handlers) -> None:
    batch = certificate_batch("store_only")
    batch["recipients"][0]["certificate"]["language"] = "de"
    certificate_renderer.handler(sqs_event(encode_message(batch)), FakeContext())
    item = aws.dynamodb.get_item(TableName=TABLE, Key={"id": {"S": "cert#CODE0000X"}})["Item"]
    assert "expiration" not in item  # the table's TTL (35 days) never removes it
    assert item["language"]["S"] == "de" and item["issuer_name"]["S"] == "Acme Training Ltd"


def test_a_browser_gets_a_page_in_the_learners_language(configured: Aws) -> None:  # noqa: F811
    store = IdempotencyStore(configured.dynamodb, TABLE)
    put(store, "AB12CD34EF01", language="de", issuer_name="Acme <Training>")
    status, headers, html = get("AB12CD34EF01", {"accept": "text/html,application/xhtml+xml"})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert '<html lang="de" dir="ltr">' in html
    assert "Gültiges Zertifikat" in html and "22. November 2026" in html and "Zoë Ørsted" in html
    assert "Acme &lt;Training&gt;" in html  # escaped, never markup


def test_right_to_left_page_and_browser_language_when_the_certificate_has_none(configured: Aws) -> None:  # noqa: F811
    store = IdempotencyStore(configured.dynamodb, TABLE)
    put(store, "ARABIC000001", language="ar", name="محمد عبد الله")
    _, _, html = get("ARABIC000001", {"accept": "text/html"})
    assert 'dir="rtl"' in html and "شهادة صالحة" in html and "محمد عبد الله" in html
    put(store, "FRENCH000001")
    _, _, html = get("FRENCH000001", {"accept": "text/html", "accept-language": "fr-FR,fr;q=0.9"})
    assert "Certificat valide" in html and "22 novembre 2026" in html


def test_machines_get_json_and_an_unknown_code_a_404_page(configured: Aws) -> None:  # noqa: F811
    store = IdempotencyStore(configured.dynamodb, TABLE)
    put(store, "AB12CD34EF02", issuer_name="Acme")
    status, _, body = get("AB12CD34EF02", {"accept": "application/json"})
    answer = json.loads(body)
    assert (
        status == 200 and answer["valid"] is True and answer["issuer_name"] == "Acme" and "key" not in answer
    )
    status, _, html = get("NOPE12345678", {"accept": "text/html"})
    assert status == 404 and "No certificate has this code" in html


def test_a_revoked_certificate_says_so_and_only_its_company_can_revoke_it(configured: Aws) -> None:  # noqa: F811
    store = IdempotencyStore(configured.dynamodb, TABLE)
    put(store, "REVOKED00001")
    assert not revoke(configured.dynamodb, TABLE, "REVOKED00001", "issued in error", company_id=8)
    assert not revoke(configured.dynamodb, TABLE, "UNKNOWN00001", "x", company_id=7)
    assert revoke(configured.dynamodb, TABLE, "REVOKED00001", "issued in error", company_id=7, now=1795400000)
    status, _, body = get("REVOKED00001", {"accept": "application/json"})
    answer = json.loads(body)
    assert status == 200 and answer["valid"] is False and answer["revoked_at"] == 1795400000
    _, _, html = get("REVOKED00001", {"accept": "text/html"})
    assert "This certificate has been revoked" in html and "Valid certificate" not in html


def test_verification_codes_carry_at_least_60_bits() -> None:
    from moodle_bridge.pipeline import claiming

    codes = {claiming.verification_code() for _ in range(2000)}
    assert len(codes) == 2000
    alphabet = set(string.ascii_uppercase + string.digits)
    assert all(set(code) <= alphabet for code in codes)
    length = min(len(code) for code in codes)
    assert length * math.log2(len(alphabet)) >= 60
