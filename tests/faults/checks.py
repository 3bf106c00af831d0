"""Assertions shared by the fault-injection tests."""

from __future__ import annotations

import json

from demo.faults import Pipeline, Verdict, callback_url


def assert_exactly_once(v: Verdict, *, both_paths: bool = True) -> None:
    assert not v.duplicates, v.duplicates[:10]
    assert not v.lost, v.lost[:10]
    assert not v.unknown_sends, v.unknown_sends[:10]
    assert not v.rows_unsettled, v.rows_unsettled[:10]
    assert v.passwords_checked > 0
    assert v.passwords_leaked == 0
    assert v.expected == v.delivered_cloud + v.delivered_local
    if both_paths:
        assert v.delivered_cloud > 0 and v.delivered_local > 0


def forged_and_replayed(p: Pipeline) -> None:
    """After the run: a replayed, a forged, a tampered and a duplicated callback change nothing."""
    assert p.posts, "the dispatcher delivered no callback"
    url, body, headers = p.posts[0]
    before = p.snapshot()
    replay = p.post_callback(url, body, headers)
    assert replay.status_code == 401 and "replayed_nonce" in replay.text
    result_body = json.dumps(json.loads(body)["message"])
    forged_body, forged_headers = p.signed(url, result_body, root_secret=_other_root())
    forged = p.post_callback(url, forged_body, forged_headers)
    assert forged.status_code == 401 and "replayed_nonce" not in forged.text  # the signature
    tampered = body.replace(b'"sent"', b'"failed"', 1) if b'"sent"' in body else body + b" "
    assert tampered != body
    refused = p.post_callback(url, tampered, headers)
    assert refused.status_code == 401 and "replayed_nonce" not in refused.text  # the body hash
    dup_body, dup_headers = p.signed(url, result_body)
    assert p.post_callback(url, dup_body, dup_headers).status_code in (200, 202)
    if p.lost_bodies:  # the lost callback, delivered late by hand too: nothing changes
        late_body, late_headers = p.signed(url, p.lost_bodies[0])
        assert p.post_callback(url, late_body, late_headers).status_code in (200, 202)
    assert p.snapshot() == before
    assert callback_url(p) == url


def _other_root() -> str:
    from offload_contract.signing import generate_root_secret

    return generate_root_secret()
