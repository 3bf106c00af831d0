"""The public API routes cannot be abused: forged or altered unsubscribe tokens change nothing, and
verification codes carry >= 60 bits with wrong guesses costing the caller, not everyone."""

from __future__ import annotations

import math
from typing import Any

import pytest

from lambdas.results.intake import VERIFY_FAILURES_PER_WINDOW, VERIFY_REQUESTS_PER_WINDOW
from moodle_bridge.pipeline.claiming import _CODE_ALPHABET, verification_code
from offload_contract.signing import decode_root_secret, generate_root_secret
from offload_contract.unsubscribe import TokenError, make_token, verify_token
from tests.lambdas.conftest import Aws, FakeContext
from tests.lambdas.test_api import ROOT, call, rest_event

UNSUB_RESOURCE = "/v1/unsubscribe/{token}"
VERIFY_RESOURCE = "/v1/certificates/verify/{code}"


def _unsubscribe(token: str) -> tuple[int, dict[str, Any]]:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    event = rest_event(
        "POST",
        f"/prod/v1/unsubscribe/{token}",
        UNSUB_RESOURCE,
        b"List-Unsubscribe=One-Click",
        form,
        {"token": token},
    )
    return call(event)


def _unsub_items(aws: Aws) -> list[dict[str, Any]]:
    items = aws.dynamodb.scan(TableName="offload-idempotency")["Items"]
    return [i for i in items if i["id"]["S"].startswith("unsub#")]


def _altered(token: str) -> list[str]:
    keyset, company, recipient, campaign, tag = token.split(".")
    other = make_token(decode_root_secret(ROOT), "k2026", 8, "r-2", "j-10").split(".")
    flipped = tag[:-2] + ("A" if tag[-2] != "A" else "B") + tag[-1]
    return [
        ".".join((keyset, other[1], recipient, campaign, tag)),  # another company
        ".".join((keyset, company, other[2], campaign, tag)),  # another recipient
        ".".join((keyset, company, recipient, other[3], tag)),  # another campaign
        ".".join((keyset, company, recipient, campaign, flipped)),  # tag altered
        ".".join(("k2025", company, recipient, campaign, tag)),  # unknown key set
        token + "A",
        "tok-abcdefghijklmnop",  # any opaque string was accepted before
    ]


def test_forged_and_altered_unsubscribe_tokens_change_nothing(configured: Aws) -> None:
    genuine = make_token(decode_root_secret(ROOT), "k2026", 7, "r-1", "j-9")
    for forged in _altered(genuine):
        assert _unsubscribe(forged) == (404, {"error": "unknown_token"}), forged
    assert _unsub_items(configured) == []
    assert _unsubscribe(genuine) == (200, {"unsubscribed": True})
    (item,) = _unsub_items(configured)
    assert item["id"]["S"] == "unsub#c7#j-9#r-1"


def test_tokens_from_another_deployment_are_refused() -> None:
    theirs = make_token(decode_root_secret(generate_root_secret()), "k2026", 7, "r-1", "j-9")
    with pytest.raises(TokenError):
        verify_token(theirs, {"k2026": decode_root_secret(ROOT)})
    ours = make_token(decode_root_secret(ROOT), "k2026", 7, "r-1", "j-9")
    found = verify_token(ours, {"k2026": decode_root_secret(ROOT)})
    assert (found.company_id, found.recipient_id, found.campaign_id) == (7, "r-1", "j-9")


def test_verification_codes_carry_at_least_60_bits() -> None:
    codes = {verification_code() for _ in range(2_000)}
    assert len(codes) == 2_000
    (length,) = {len(c) for c in codes}
    assert length * math.log2(len(_CODE_ALPHABET)) >= 60


def test_wrong_codes_cost_the_caller_not_everyone(configured: Aws) -> None:
    from lambdas.common.idempotency import IdempotencyStore

    store = IdempotencyStore(configured.dynamodb, "offload-idempotency")
    store.put_item(
        "cert#GOODCODE1234",
        {"learner_name": {"S": "Zoë"}, "course_name": {"S": "Safety"}, "completed_at": {"N": "1795361900"}},
    )

    def verify(code: str, ip: str) -> int:
        event = rest_event(
            "GET", f"/prod/v1/certificates/verify/{code}", VERIFY_RESOURCE, params={"code": code}
        )
        event["requestContext"]["identity"] = {"sourceIp": ip}
        return call(event)[0]

    for i in range(VERIFY_FAILURES_PER_WINDOW):
        assert verify(f"WRONG{i:07d}", "198.51.100.7") == 404
    assert verify("GOODCODE1234", "198.51.100.7") == 429  # the guesser is locked out ...
    assert verify("GOODCODE1234", "203.0.113.20") == 200  # ... everyone else is not
    assert verify("SHORT123", "203.0.113.20") == 404  # below 60 bits: never looked up


def test_every_verify_request_counts_per_client_and_one_flood_is_429_for_that_client_only(
    configured: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lambdas.common.idempotency import IdempotencyStore
    from lambdas.handlers import api

    store = IdempotencyStore(configured.dynamodb, "offload-idempotency")
    store.put_item(
        "cert#GOODCODE1234",
        {"learner_name": {"S": "Zoë"}, "course_name": {"S": "Safety"}, "completed_at": {"N": "1795361900"}},
    )
    # One fixed minute, so the window cannot roll over between requests.
    monkeypatch.setattr(api.intake(), "clock", lambda: 1_800_000_030.0)

    def verify(ip: str, accept: str) -> int:
        event = rest_event(
            "GET",
            "/prod/v1/certificates/verify/GOODCODE1234",
            VERIFY_RESOURCE,
            headers={"Accept": accept},
            params={"code": "GOODCODE1234"},
        )
        event["requestContext"]["identity"] = {"sourceIp": ip}
        status: int = api.handler(event, FakeContext())["statusCode"]
        return status

    # Right codes, pages and JSON alike: all count against the one client.
    answers = [verify("198.51.100.9", "text/html" if i % 2 else "application/json")
               for i in range(VERIFY_REQUESTS_PER_WINDOW)]  # fmt: skip
    assert answers == [200] * VERIFY_REQUESTS_PER_WINDOW
    assert verify("198.51.100.9", "application/json") == 429
    assert verify("198.51.100.9", "text/html") == 429
    assert verify("203.0.113.21", "application/json") == 200  # another client is answered
    assert verify("203.0.113.21", "text/html") == 200
