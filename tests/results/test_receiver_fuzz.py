"""Fuzz the receiver through its ASGI app: junk and hostile requests never crash it (no 5xx),
never change jobs or recipients unless accepted, and accepted ones keep the counters exact."""

from __future__ import annotations

import string
import warnings
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moodle_bridge.results.receiver import RESULTS_PATH, create_app
from offload_contract.signing import (
    HEADER_CONTENT_SHA256,
    HEADER_KEY_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
)
from tests.results.factory import counters_match, create_job, make_tables, snapshot
from tests.results.test_receiver import CLOCK, envelope, make_config, signed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.sqlite

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
header_names = [HEADER_KEY_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_CONTENT_SHA256, HEADER_SIGNATURE]
header_values = st.text(alphabet=string.printable.strip() + " ", max_size=80)


@pytest.fixture(scope="module")
def fuzz_app() -> Any:
    engine = sa.create_engine("sqlite://", poolclass=sa.StaticPool, connect_args={"check_same_thread": False})
    tables = make_tables(engine)
    with engine.begin() as conn:
        jobs = [create_job(conn, tables, company_id=c, recipients=3, email_id_start=None) for c in (7, 7, 8)]
    app = create_app(engine, tables, make_config(max_body=20_000), clock=lambda: CLOCK)
    with TestClient(app) as client:
        yield client, engine, tables, jobs


def _core(engine: sa.Engine, tables: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        snap = snapshot(conn, tables, skip=("audit_log", "nonces"))
    return snap


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.binary(max_size=300), json_values.map(lambda v: __import__("json").dumps(v).encode())),
    sign=st.booleans(),
    company=st.sampled_from([0, 7, 8, 12345678901234]),
    overrides=st.dictionaries(st.sampled_from(header_names), header_values, max_size=3),
)
def test_junk_requests_never_crash_or_change_state(
    fuzz_app: Any, body: bytes, sign: bool, company: int, overrides: dict[str, str]
) -> None:
    client, engine, tables, _jobs = fuzz_app
    headers = signed(body, company_id=company) if sign else {"Content-Type": "application/json"}
    headers.update(overrides)
    before = _core(engine, tables)
    try:
        response = client.post(RESULTS_PATH, content=body, headers=headers)
    except UnicodeEncodeError:
        return  # httpx refuses non-ASCII header values before sending; nothing reached the app
    assert response.status_code in (400, 401, 403, 413, 422), response.text
    assert response.json()["status"] == "rejected"
    assert _core(engine, tables) == before


identifier = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,8}\Z")


@st.composite
def result_batches(draw: st.DrawFn, jobs: list[Any]) -> tuple[int, dict[str, Any]]:
    items = []
    for _ in range(draw(st.integers(1, 5))):
        job = draw(st.sampled_from(jobs))
        status = draw(
            st.sampled_from(
                ["sent", "failed", "retrying", "delivered", "bounced", "complained", "rejected", "rendered"]
            )
        )
        item: dict[str, Any] = {
            "job_id": draw(st.one_of(st.just(str(job.job_id)), identifier)),
            "recipient_id": draw(st.one_of(st.sampled_from([str(r) for r in job.recipient_ids]), identifier)),
            "status": status,
            "attempts": draw(st.integers(1, 5)),
            "occurred_at": draw(st.integers(0, CLOCK)),
        }
        if status == "sent" or draw(st.booleans()):
            item["provider_message_id"] = draw(st.sampled_from(["m-1", "m-2", f"ses-{item['recipient_id']}"]))
        if status in ("failed", "retrying", "rejected"):
            item["error"] = {
                "code": "E1",
                # NUL and lone surrogates are refused with 422 by design (tests/attacks/).
                "message": draw(
                    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
                ),
                "permanent": draw(st.booleans()),
            }
        if status == "rendered":
            item["artifact"] = {"store": "s3", "key": "k.pdf", "sha256": "a" * 64, "bytes": 3}
        items.append(item)
    company = draw(st.sampled_from([7, 8]))
    batch: dict[str, Any] = {
        "type": "result_batch",
        "contract_version": 1,
        "report_id": draw(identifier),
        "company_id": draw(st.sampled_from([company, company, 9])),
        "reporter": "email_sender",
        "created_at": CLOCK,
        "results": items,
    }
    if draw(st.booleans()):
        batch["batch_id"] = draw(st.sampled_from([j.batch_key for j in jobs]))
    return company, batch


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_signed_structured_results_are_scoped_and_counted(fuzz_app: Any, data: st.DataObject) -> None:
    client, engine, tables, jobs = fuzz_app
    company, batch = data.draw(result_batches(jobs))
    body = envelope(batch)
    before = _core(engine, tables)
    response = client.post(RESULTS_PATH, content=body, headers=signed(body, company_id=company))
    assert response.status_code in (200, 403), response.text
    if response.status_code == 403:
        assert _core(engine, tables) == before
    else:
        payload = response.json()
        assert (
            payload["applied"] + payload["duplicates"] + payload["ignored"] == len(batch["results"])
            or (payload["duplicate_report"])
        )
    with engine.connect() as conn:
        assert counters_match(conn, tables) == []
