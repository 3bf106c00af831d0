"""The shared rate limit holds across concurrent invocations, and reads the SES quota."""

from __future__ import annotations

import heapq
import threading
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError

from lambdas.common.pacing import PacingTimeout, SharedRateLimiter, account_send_rate
from lambdas.email.sender import backoff_delay
from lambdas.email.ses import is_rate_throttle
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


class VirtualTime:
    """Time shared by several threads that moves only when every one of them sleeps.

    A plain shared fake clock lets one thread's sleep jump the time while another thread's
    DynamoDB call is in flight; the limiter then (rightly) takes that call for a slow answer
    and refuses its tokens, and the run depends on the interleaving. Here the earliest sleeper
    wakes only once all the others sleep or have finished, as in a discrete-event simulation,
    so a call never spans a jump and the outcome does not depend on scheduling.
    """

    def __init__(self, threads: int) -> None:
        self.now = 1_000_000.0
        self._cond = threading.Condition()
        self._running = threads
        self._sleepers: list[tuple[float, int]] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._cond:
            self._seq += 1
            me = (self.now + max(seconds, 0.001), self._seq)
            heapq.heappush(self._sleepers, me)
            self._running -= 1
            self._cond.notify_all()
            while not (self._running == 0 and self._sleepers[0] == me):
                self._cond.wait()
            heapq.heappop(self._sleepers)
            self.now = me[0]
            self._running += 1

    def finished(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()


def test_concurrent_invocations_never_exceed_the_rate_together(aws: Aws) -> None:
    sizes = (1, 3, 5, 7)
    clock = VirtualTime(len(sizes))
    dynamodb = AtomicItems(aws.dynamodb)
    taken: Counter[int] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def invocation(n: int) -> None:
        try:
            limiter = SharedRateLimiter(
                dynamodb, "offload-idempotency", 14, clock=clock.time, sleep=clock.sleep
            )
            for _ in range(12):
                limiter.acquire(n, deadline=clock.now + 10_000)
                with lock:
                    taken[int(clock.time())] += n
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            clock.finished()

    threads = [threading.Thread(target=invocation, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sum(taken.values()) == 12 * sum(sizes)
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


def _used(aws: Aws, second: int) -> int:
    item = aws.dynamodb.get_item(TableName="offload-idempotency", Key={"id": {"S": f"pace#ses#{second}"}})
    return int(item["Item"]["used"]["N"])


def test_takes_are_partial_and_only_a_full_second_waits(aws: Aws) -> None:
    clock = Clock()  # 1_000_000.0: the start of a second
    limiter = SharedRateLimiter(aws.dynamodb, "offload-idempotency", 14, clock=clock.time, sleep=clock.sleep)
    first = limiter.take(10, deadline=clock.now + 60)
    assert (first.tokens, first.second) == (10, 1_000_000)
    second = limiter.take(10, deadline=clock.now + 60)  # 4 left: take them now, not next second
    assert (second.tokens, second.second) == (4, 1_000_000)
    assert limiter.waits == 0 and _used(aws, 1_000_000) == 14
    third = limiter.take(10, deadline=clock.now + 60)  # full: the next second
    assert (third.tokens, third.second) == (10, 1_000_001) and limiter.waits == 1
    assert clock.now >= 1_000_001
    limiter.acquire(12, deadline=clock.now + 60)  # exactly 12, across two seconds (4 + 8)
    assert _used(aws, 1_000_001) == 14 and _used(aws, 1_000_002) == 8


def test_near_the_end_of_a_second_the_next_one_is_booked_and_awaited(aws: Aws) -> None:
    """SES counts a call in the second it arrives: a take 50 ms before a second ends books the next
    second and returns once it has begun, so the call cannot land in the full one."""
    clock = Clock()
    clock.now = 1_000_000.95
    limiter = SharedRateLimiter(aws.dynamodb, "offload-idempotency", 14, clock=clock.time, sleep=clock.sleep)
    grant = limiter.take(14, deadline=clock.now + 60)
    assert grant.second == 1_000_001 and clock.now >= 1_000_001
    assert _used(aws, 1_000_001) == 14
    assert (
        aws.dynamodb.get_item(TableName="offload-idempotency", Key={"id": {"S": "pace#ses#1000000"}}).get(
            "Item"
        )
        is None
    )


def test_an_answer_too_late_for_its_second_is_not_used(aws: Aws) -> None:
    clock = Clock()
    clock.now = 1_000_000.5

    class SlowFirstAnswer:
        """DynamoDB's first answer takes 0.45 s: the booked second is nearly over by then."""

        def __init__(self) -> None:
            self.calls = 0

        def update_item(self, **kwargs: Any) -> Any:
            self.calls += 1
            result = aws.dynamodb.update_item(**kwargs)
            if self.calls == 1:
                clock.now += 0.45
            return result

    limiter = SharedRateLimiter(
        SlowFirstAnswer(), "offload-idempotency", 14, clock=clock.time, sleep=clock.sleep
    )
    grant = limiter.take(5, deadline=clock.now + 60)
    assert limiter.late == 5  # booked in 1_000_000 but answered at .95: SES could count it in the next
    assert grant.second == 1_000_001 and grant.tokens == 5 and clock.now >= 1_000_001


def test_the_emulator_refuses_what_is_over_the_rate_in_the_second_it_arrives(aws: Aws) -> None:
    now = {"t": 2_000_000.2}
    aws.ses.max_send_rate = 3
    aws.ses.clock = lambda: now["t"]

    def send(to: str) -> str:
        try:
            aws.sesv2.send_email(
                FromEmailAddress="noreply@acme.example",
                Destination={"ToAddresses": [to]},
                Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}}},
            )
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return "sent"

    assert [send(f"u{i}@example.org") for i in range(4)] == [
        "sent",
        "sent",
        "sent",
        "TooManyRequestsException",
    ]
    assert send("success@simulator.amazonses.com") == "sent"  # the mailbox simulator is not counted
    now["t"] = 2_000_001.0
    assert send("u9@example.org") == "sent"
    assert aws.ses.per_second == {2_000_000: 3, 2_000_001: 1}
    assert aws.ses.rate_throttled == 1 and aws.ses.peak_second() == 3


@pytest.mark.parametrize(
    ("code", "message", "rate_only"),
    [
        ("TooManyRequestsException", "Maximum sending rate exceeded.", True),
        ("ThrottlingException", "Maximum sending rate exceeded.", True),
        ("ACCOUNT_THROTTLED", "", True),
        ("ThrottlingException", "Daily message quota exceeded.", False),
        ("ACCOUNT_DAILY_QUOTA_EXCEEDED", "", False),
        ("LimitExceededException", "", False),
        ("SendingPausedException", "", False),
    ],
)
def test_only_the_per_second_rate_is_retried_after_about_a_second(
    code: str, message: str, rate_only: bool
) -> None:
    assert is_rate_throttle(code, message) is rate_only
    if rate_only:
        assert {backoff_delay(1, True, rate_only=True) for _ in range(50)} <= {1, 2}
    assert backoff_delay(1, True) >= 30
