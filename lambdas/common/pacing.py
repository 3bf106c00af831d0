"""A send-rate limit shared by every concurrent invocation (design: docs/lambdas.md, "Pacing").

SES counts recipients per calendar second across the whole account, in the second a call
*arrives*. Each invocation takes tokens of a one-second slot (item ``pace#<partition>#<unix
second>``) with one conditional ADD; the condition keeps the slot's total at or below the rate,
whoever asks. The sender takes them right before its SES calls (after the claims), and books the
second in which those calls will reach SES:

* the slot is ``floor(now + answer + guard)``: ``answer`` is how long DynamoDB takes to answer
  (measured: a decaying maximum) and ``guard`` (0.2 s) bounds the time from that answer until SES counts
  the call. Near the end of a second that is the next second, and the caller waits for it to
  begin before it calls SES;
* an answer that comes back too late for its slot (the call could reach SES in the next second)
  is not used: those tokens are left unspent (never an overshoot) and the caller asks again.

Takes may be partial: a caller asking for 14 when 10 are left gets 10 (the condition failure
returns the slot's count, so the second try asks for exactly what is left), and waits for the
next second only when the slot is full.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

#: Default bound on the time from the limiter's answer until SES counts the call (seconds).
ARRIVAL_GUARD_SECONDS = 0.2


class PacingTimeout(Exception):
    """No slot could be had before the caller's deadline."""


@dataclass(frozen=True)
class Grant:
    """``tokens`` of the slot ``second``; the caller has waited until that second began."""

    tokens: int
    second: int


class SharedRateLimiter:
    def __init__(
        self,
        dynamodb: Any,
        table: str,
        rate_per_second: int,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        partition: str = "ses",
        arrival_guard: float = ARRIVAL_GUARD_SECONDS,
    ) -> None:
        if rate_per_second < 1:
            raise ValueError("rate must be at least 1 per second")
        if not 0 <= arrival_guard < 0.5:
            raise ValueError("the arrival guard must be between 0 and 0.5 s")
        self._db = dynamodb
        self._table = table
        self.rate = rate_per_second
        self._clock = clock
        self._sleep = sleep
        self._partition = partition
        self.arrival_guard = arrival_guard
        #: DynamoDB's answer time for a take (seconds): a decaying maximum of the measured ones.
        self.answer_time = 0.01
        self.waits = 0
        #: Tokens booked but not used because the answer came too late for their second.
        self.late = 0

    def acquire(self, n: int, deadline: float) -> None:
        """Take exactly ``n`` tokens (several partial takes if need be)."""
        if not 1 <= n <= self.rate:
            raise ValueError(f"cannot take {n} tokens at a rate of {self.rate}/s")
        while n:
            n -= self.take(n, deadline).tokens

    def take(self, wanted: int, deadline: float) -> Grant:
        """Take between 1 and ``wanted`` tokens of the second in which a call made right after
        this returns reaches SES; waits for later seconds while the slot is full."""
        wanted = min(wanted, self.rate)
        if wanted < 1:
            raise ValueError("take at least one token")
        while True:
            started = self._clock()
            second = math.floor(started + self.answer_time + self.arrival_guard)
            got = self._try(second, wanted)
            now = self._clock()
            # A decaying maximum: quick to follow a slow answer, slow to trust a fast one.
            self.answer_time = max(now - started, 0.9 * self.answer_time)
            if got and now + self.arrival_guard >= second + 1:
                self.late += got  # SES might count the call in the next second: do not use them
                if now >= deadline:
                    raise PacingTimeout("DynamoDB answered too late for every slot before the deadline")
                continue
            if got:
                if now < second:
                    self._sleep(second - now)
                return Grant(got, second)
            self.waits += 1
            wake = second + 1.0
            if wake >= deadline:
                raise PacingTimeout("send-rate budget exhausted before the deadline")
            self._sleep(max(0.0, wake - now))

    def _try(self, second: int, wanted: int) -> int:
        """Tokens taken of ``second``'s slot: ``wanted``, what is left when fewer, or 0 (full)."""
        n = wanted
        for _ in range(3):  # others may take what was left between our two tries
            try:
                self._db.update_item(
                    TableName=self._table,
                    Key={"id": {"S": f"pace#{self._partition}#{second}"}},
                    UpdateExpression="ADD used :n SET expiration = :e",
                    ConditionExpression="attribute_not_exists(used) OR used <= :cap",
                    ExpressionAttributeValues={
                        ":n": {"N": str(n)},
                        ":cap": {"N": str(self.rate - n)},
                        ":e": {"N": str(second + 3600)},
                    },
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                return n
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                used = int(((exc.response.get("Item") or {}).get("used") or {}).get("N", self.rate))
                n = min(wanted, self.rate - used)
                if n < 1:
                    return 0
        return 0


def account_send_rate(sesv2: Any, override: float | None) -> int:
    """The account's SES MaxSendRate (GetAccount), unless SES_MAX_SEND_RATE overrides it."""
    if override is not None:
        return max(1, math.floor(override))
    quota = sesv2.get_account().get("SendQuota", {})
    return max(1, math.floor(float(quota.get("MaxSendRate", 1))))
