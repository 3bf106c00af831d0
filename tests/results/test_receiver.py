"""The HTTP receiver: signed callbacks apply; forged, replayed, stale, foreign, oversized and
malformed callbacks get a 4xx and change nothing but the audit log (and the nonce cache)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from typing import Any

import openapi_spec_validator
import pytest
import sqlalchemy as sa

with warnings.catch_warnings():  # Starlette 1.x nudges towards httpx2; httpx is what is installed
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from moodle_bridge.config import BridgeConfig, CallbackConfig, KeysConfig
from moodle_bridge.results.receiver import RESULTS_PATH, create_app
from offload_contract.codec import encode_message
from offload_contract.signing import decode_root_secret, derive_company_key, make_key_id, sign_request
from tests.results.factory import NOW, counters_match, create_job, make_tables, result, result_batch, snapshot

ROOT = "aW50ZWdyYXRpb24tdGVzdC1yb290LXNlY3JldC0zMmJ5dGVzIQ"  # 35 bytes, test only
OTHER_ROOT = "b3RoZXItZGVwbG95bWVudC1yb290LXNlY3JldC0zMmJ5dGVz"
CLOCK = NOW + 30
UNCHANGED_EXCEPT = ("audit_log", "nonces")


def make_config(max_body: int = 200_000) -> BridgeConfig:
    return replace(
        BridgeConfig(),
        keys=KeysConfig(current="k1", keysets={"k1": ROOT}),
        callbacks=replace(CallbackConfig(), max_body_bytes=max_body),
    )


def envelope(batch: dict[str, Any], message_type: str = "result_batch") -> bytes:
    return encode_message(
        {
            "contract_version": 1,
            "message_type": message_type,
            "message_id": "m-" + batch.get("report_id", "x"),
            "sent_at": CLOCK,
            "message": batch,
        }
    )


def signed(
    body: bytes,
    company_id: int = 7,
    *,
    root: str = ROOT,
    timestamp: int = CLOCK,
    nonce: str | None = None,
    keyset: str = "k1",
) -> dict[str, str]:
    key = derive_company_key(decode_root_secret(root), company_id)
    headers = sign_request(
        key, make_key_id(keyset, company_id), "POST", RESULTS_PATH, body, timestamp=timestamp, nonce=nonce
    )
    return {**headers, "Content-Type": "application/json"}


@pytest.fixture
def receiver(db_engine: sa.Engine) -> Any:
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, company_id=7, recipients=3, email_id_start=None)
        foreign = create_job(conn, tables, company_id=8, recipients=1, email_id_start=None)
    app = create_app(db_engine, tables, make_config(), clock=lambda: CLOCK)
    with TestClient(app, client=("203.0.113.9", 5000)) as client:
        yield client, db_engine, tables, job, foreign


def _audit(engine: sa.Engine, tables: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(tables.audit_log).order_by(tables.audit_log.c.id)))


def test_signed_callback_applies_and_replay_is_refused(receiver: Any) -> None:
    client, engine, tables, job, _ = receiver
    body = envelope(result_batch(7, [result(job, i, "sent") for i in range(3)], batch_id=job.batch_key))
    headers = signed(body)
    response = client.post(RESULTS_PATH, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["applied"] == 3
    with engine.connect() as conn:
        before = snapshot(conn, tables, skip=UNCHANGED_EXCEPT)
        assert counters_match(conn, tables) == []
    replay = client.post(RESULTS_PATH, content=body, headers=headers)
    assert replay.status_code == 401 and replay.json()["error"] == "replayed_nonce"
    # A fresh signature over the same results is a duplicate: 200, nothing applied.
    again = client.post(RESULTS_PATH, content=body, headers=signed(body))
    assert again.status_code == 200 and again.json()["duplicate_report"] is True
    with engine.connect() as conn:
        assert snapshot(conn, tables, skip=UNCHANGED_EXCEPT) == before
    rejected = [a for a in _audit(engine, tables) if a.action == "callback_rejected"]
    assert len(rejected) == 1
    assert rejected[0].sourceaddress == "203.0.113.9" and rejected[0].actor == "callback:k1.c7"
    assert json.loads(rejected[0].detail)["reason"] == "replayed_nonce"


def _cases(job: Any, foreign: Any) -> list[tuple[str, int, str, Any]]:
    good = result_batch(7, [result(job, 0, "sent")], batch_id=job.batch_key)
    body = envelope(good)
    tampered = body.replace(b'"sent"', b'"failed"', 1)
    return [
        ("forged_key", 401, "bad_signature", (body, signed(body, root=OTHER_ROOT))),
        ("stale", 401, "stale_timestamp", (body, signed(body, timestamp=CLOCK - 301))),
        ("future", 401, "stale_timestamp", (body, signed(body, timestamp=CLOCK + 301))),
        ("unknown_keyset", 401, "unknown_key", (body, signed(body, keyset="k9"))),
        ("tampered_body", 401, "body_hash_mismatch", (tampered, signed(body))),
        (
            "missing_header",
            401,
            "missing_header",
            (body, {k: v for k, v in signed(body).items() if k != "X-Offload-Signature"}),
        ),
        ("other_company_key", 403, "company_mismatch", (body, signed(body, company_id=8))),
        ("foreign_job", 403, "job_scope", (envelope(result_batch(8, [result(job, 0, "sent")])), None)),
        (
            "mixed_jobs",
            403,
            "job_scope",
            (envelope(result_batch(7, [result(job, 0, "sent"), result(foreign, 0, "sent")])), None),
        ),
        ("not_json", 400, "invalid_json", (b"{not json", None)),
        (
            "contract",
            422,
            "contract_violation",
            (envelope(dict(good, results=[dict(result(job, 0, "sent"), status="exploded")])), None),
        ),
        ("wrong_type", 422, "wrong_message_type", (envelope(good, message_type="email_batch"), None)),
    ]


CASE_NAMES = [
    c[0]
    for c in _cases(
        type("J", (), {"batch_key": "b", "job_id": 1, "recipient_ids": [1]})(),
        type("J", (), {"batch_key": "b", "job_id": 2, "recipient_ids": [2]})(),
    )
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_callbacks_change_nothing(receiver: Any, case: str) -> None:
    client, engine, tables, job, foreign = receiver
    name, status, code, (body, headers) = next(c for c in _cases(job, foreign) if c[0] == case)
    if headers is None:
        company = 8 if name == "foreign_job" else 7
        headers = signed(body, company_id=company)
    with engine.connect() as conn:
        before = snapshot(conn, tables, skip=UNCHANGED_EXCEPT)
    response = client.post(RESULTS_PATH, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    with engine.connect() as conn:
        assert snapshot(conn, tables, skip=UNCHANGED_EXCEPT) == before
    entries = [a for a in _audit(engine, tables) if a.action == "callback_rejected"]
    assert len(entries) == 1 and json.loads(entries[0].detail)["reason"] == code
    assert entries[0].sourceaddress == "203.0.113.9"
    assert b"ses-" not in (entries[0].detail or "").encode()  # never the body


def test_oversized_bodies_are_refused_before_reading(db_engine: sa.Engine) -> None:
    tables = make_tables(db_engine)
    app = create_app(db_engine, tables, make_config(max_body=1_000), clock=lambda: CLOCK)
    body = b"{" + b" " * 5_000 + b"}"
    with TestClient(app) as client:
        declared = client.post(RESULTS_PATH, content=body, headers=signed(body))
        assert declared.status_code == 413 and declared.json()["error"] == "body_too_large"

        def stream():  # no Content-Length: the streaming count must stop it
            for _ in range(10):
                yield b" " * 500

        # Unsigned: refused from its headers, before the body is read.
        unsigned = client.post(RESULTS_PATH, content=stream(), headers={"Content-Type": "application/json"})
        assert unsigned.status_code == 401
        chunked = client.post(RESULTS_PATH, content=stream(), headers=signed(b" " * 5_000))
        assert chunked.status_code == 413
        assert (
            client.post(RESULTS_PATH, content=b"{}", headers={"Content-Type": "text/plain"}).status_code
            == 415
        )
        assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}
        document = client.get("/openapi.json").json()
    assert document["paths"][RESULTS_PATH]["post"]["requestBody"]["required"] is True
    assert "envelope" in document["components"]["schemas"]
    openapi_spec_validator.validate(document)  # a valid OpenAPI 3.1 document, tools can load it


def test_unauthenticated_rejections_are_throttled_in_the_audit_log(receiver: Any) -> None:
    client, engine, tables, _job, _ = receiver
    for _ in range(5):
        assert (
            client.post(RESULTS_PATH, content=b"{}", headers={"Content-Type": "application/json"}).status_code
            == 401
        )
    entries = [a for a in _audit(engine, tables) if a.action == "callback_rejected"]
    assert len(entries) == 1 and entries[0].actor == "callback:unauthenticated"
