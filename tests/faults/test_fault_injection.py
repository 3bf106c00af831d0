"""Fault injection over the whole pipeline: every recipient gets exactly one email.

One 10,000-recipient pass with every cloud-side fault on a schedule (docs/faults.md), and
small focused scenarios for each bridge kill point, a dropped database connection, forged
and replayed callbacks, and IOMAD's cron running at the same moment (MariaDB, its real lock).
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from demo.faults import BridgeKilled, CloudFaults, Pipeline, Verdict, callback_url, pipeline
from moodle_bridge.claiming import ClaimPass
from moodle_bridge.submission.targets import Submitter

pytestmark = pytest.mark.slow


def assert_exactly_once(v: Verdict) -> None:
    assert not v.duplicates, v.duplicates[:10]
    assert not v.lost, v.lost[:10]
    assert not v.unknown_sends, v.unknown_sends[:10]
    assert not v.rows_unsettled, v.rows_unsettled[:10]
    assert v.passwords_checked > 0
    assert v.passwords_leaked == 0
    assert v.expected == v.delivered_cloud + v.delivered_local
    assert v.delivered_cloud > 0 and v.delivered_local > 0


def test_10000_recipients_with_every_cloud_fault(capfd: pytest.CaptureFixture[str]) -> None:
    with pipeline(2000, faults=CloudFaults.everything()) as p:
        p.tick()
        p.settle()
        forged_and_replayed(p)
        out = capfd.readouterr()
        v = p.verdict(out.out + out.err)
        injected = dict(p.injected)
    assert v.expected >= 10_000, v.summary()
    assert_exactly_once(v)
    for kind in (
        "Lambda crash at the start of an invocation (SQS redelivers the batch)",
        "Lambda crash mid-batch (after an SES call of the invocation succeeded)",
        "SES throttling (TooManyRequests)",
        "SQS delivers a jobs message a second time",
        "callback delivered twice (dispatcher crashed after posting)",
        "callback POST lost (every attempt; the message goes to the results DLQ)",
    ):
        assert injected.get(kind, 0) > 0, (kind, injected)


def forged_and_replayed(p: Pipeline) -> None:
    """After the run: a replayed, a forged, a tampered and a duplicated callback change nothing."""
    assert p.posts, "the dispatcher delivered no callback"
    url, body, headers = p.posts[0]
    before = p.snapshot()
    replay = p.post_callback(url, body, headers)
    assert replay.status_code == 401 and "replayed_nonce" in replay.text
    import json

    result_body = json.dumps(json.loads(body)["message"])
    forged_body, forged_headers = p.signed(url, result_body, root_secret=_other_root())
    assert p.post_callback(url, forged_body, forged_headers).status_code == 401
    tampered = body.replace(b'"sent"', b'"failed"', 1)
    assert p.post_callback(url, tampered, headers).status_code == 401
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
