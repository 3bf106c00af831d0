"""A send-rate limit shared by every concurrent invocation (design: docs/lambdas.md).

SES counts recipients per second across the whole account. Each invocation asks DynamoDB
for ``n`` tokens of the current one-second slot (item ``pace#<unix second>``) with one
conditional ADD; the condition keeps the slot's total at or below the rate, whoever asks.
When the slot is full the caller waits for the next second. One DynamoDB write per SES call
(a bulk call of 50 destinations costs one write for all 50).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError


class PacingTimeout(Exception):
    """No slot could be had before the caller's deadline."""


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
    ) -> None:
        if rate_per_second < 1:
            raise ValueError("rate must be at least 1 per second")
        self._db = dynamodb
        self._table = table
        self.rate = rate_per_second
        self._clock = clock
        self._sleep = sleep
        self._partition = partition
        self.waits = 0

    def acquire(self, n: int, deadline: float) -> None:
        """Take ``n`` sends from the shared budget, waiting for later seconds if needed."""
        if not 1 <= n <= self.rate:
            raise ValueError(f"cannot take {n} tokens at a rate of {self.rate}/s")
        while True:
            now = self._clock()
            second = math.floor(now)
            if self._try(second, n):
                return
            self.waits += 1
            wake = second + 1.0
            if wake >= deadline:
                raise PacingTimeout("send-rate budget exhausted before the deadline")
            self._sleep(max(0.0, wake - now))

    def _try(self, second: int, n: int) -> bool:
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
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise


def account_send_rate(sesv2: Any, override: float | None) -> int:
    """The account's SES MaxSendRate (GetAccount), unless SES_MAX_SEND_RATE overrides it."""
    if override is not None:
        return max(1, math.floor(override))
    quota = sesv2.get_account().get("SendQuota", {})
    return max(1, math.floor(float(quota.get("MaxSendRate", 1))))
