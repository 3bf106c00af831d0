"""10,000 recipients through the whole pipeline with every cloud-side fault on a schedule.

Its own file so pytest-xdist (``--dist loadfile``) runs it beside the focused scenarios.
"""

from __future__ import annotations

import pytest

from demo.faults import CloudFaults, pipeline
from tests.faults.checks import assert_exactly_once, forged_and_replayed

pytestmark = pytest.mark.slow


def test_10000_recipients_with_every_cloud_fault(capfd: pytest.CaptureFixture[str]) -> None:
    with pipeline(840, faults=CloudFaults.everything()) as p:
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
        "Lambda crash mid-batch right after SES accepted a call (its answer lost)",
        "SES throttling (TooManyRequests)",
        "SQS delivers a jobs message a second time",
        "callback delivered twice (dispatcher crashed after posting)",
        "callback POST lost (every attempt; the message goes to the results DLQ)",
    ):
        assert injected.get(kind, 0) > 0, (kind, injected)
