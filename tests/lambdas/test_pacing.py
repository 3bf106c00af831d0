"""The shared rate limit holds across concurrent invocations, and reads the SES quota."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from lambdas.common.pacing import PacingTimeout, SharedRateLimiter, account_send_rate
from tests.lambdas.conftest import Aws


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.lock = threading.Lock()

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += max(seconds, 0.001)


class AtomicItems:
    """moto applies a conditional update in two unlocked steps; DynamoDB does it atomically
    per item. Serialise the calls so the test checks our condition, not moto's threading."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def update_item(self, **kwargs: Any) -> Any:
        with self._lock:
            return self._client.update_item(**kwargs)


def test_concurrent_invocations_never_exceed_the_rate_together(aws: Aws) -> None:
    clock = Clock()
    dynamodb = AtomicItems(aws.dynamodb)
    taken: Counter[int] = Counter()
    lock = threading.Lock()

    def invocation(n: int) -> None:
        limiter = SharedRateLimiter(dynamodb, "offload-idempotency", 14, clock=clock.time, sleep=clock.sleep)
        for _ in range(12):
            limiter.acquire(n, deadline=clock.now + 10_000)
            with lock:
                taken[int(clock.time())] += n

    threads = [threading.Thread(target=invocation, args=(n,)) for n in (1, 3, 5, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(taken.values()) == 12 * (1 + 3 + 5 + 7)
    for second in taken:
        item = aws.dynamodb.get_item(TableName="offload-idempotency", Key={"id": {"S": f"pace#ses#{second}"}})
        assert int(item["Item"]["used"]["N"]) <= 14


def test_deadline_gives_up_instead_of_waiting_forever(aws: Aws) -> None:
    clock = Clock()
    limiter = SharedRateLimiter(aws.dynamodb, "offload-idempotency", 5, clock=clock.time, sleep=clock.sleep)
    limiter.acquire(5, deadline=clock.now + 0.5)
    with pytest.raises(PacingTimeout):
        limiter.acquire(1, deadline=clock.now + 0.5)
    with pytest.raises(ValueError):
        limiter.acquire(6, deadline=clock.now + 10)


def test_rate_comes_from_get_account_unless_overridden(aws: Aws) -> None:
    aws.ses.max_send_rate = 42.0
    assert account_send_rate(aws.sesv2, None) == 42
    assert account_send_rate(aws.sesv2, 3.9) == 3
    assert [name for name, _ in aws.ses.calls] == ["GetAccount"]
