"""Schema-driven fuzzing of the receiver from its own OpenAPI document (schemathesis), for a bounded
number of examples: no 5xx, every status and body as documented, nothing changed by a rejected call.
Half the generated envelopes are signed with a real company key, so the fuzz reaches past the HMAC."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from moodle_bridge.results.receiver import RESULTS_PATH, create_app
from offload_contract.codec import encode_message
from tests.results.factory import create_job, make_tables, snapshot
from tests.results.test_receiver import CLOCK, UNCHANGED_EXCEPT, make_config, signed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.sqlite

ENGINE = sa.create_engine("sqlite://", poolclass=sa.StaticPool, connect_args={"check_same_thread": False})
TABLES = make_tables(ENGINE)
with ENGINE.begin() as _conn:
    for _company in (7, 7, 8):
        create_job(_conn, TABLES, company_id=_company, recipients=2, email_id_start=None)
APP = create_app(ENGINE, TABLES, make_config(max_body=200_000), clock=lambda: CLOCK)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _state() -> Any:
    with ENGINE.connect() as conn:
        return snapshot(conn, TABLES, skip=UNCHANGED_EXCEPT)


@SCHEMA.include(path=RESULTS_PATH).parametrize()
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_receiver_answers_every_generated_request_as_documented(case: Any) -> None:
    before = _state()
    response = case.call_and_validate(checks=CHECKS)
    assert response.status_code < 500
    if response.status_code != 200:
        assert _state() == before


@SCHEMA.include(path=RESULTS_PATH).parametrize()
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_signed_generated_envelopes_never_crash_or_leak(case: Any) -> None:
    """The same generated bodies, signed: they reach JSON, the contract, scope and ingestion."""
    if not isinstance(case.body, dict):
        return
    body = encode_message(case.body)
    company = (
        case.body.get("message", {}).get("company_id", 7) if isinstance(case.body.get("message"), dict) else 7
    )
    company = company if isinstance(company, int) and 0 <= company < 2**31 else 7
    before = _state()
    with TestClient(APP, raise_server_exceptions=False) as client:
        response = client.post(RESULTS_PATH, content=body, headers=signed(body, company_id=company))
    assert response.status_code in (200, 400, 401, 403, 409, 413, 422), response.text
    if response.status_code != 200:
        assert _state() == before
