"""The send-rate benchmark's multi-process harness (bench/pacing_bench.py), at a low rate.

SES's per-second count must be one count for the account even when the pollers are separate
processes, and the exactly-once oracle must see what every poller process sent.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest

from bench.pacing_bench import Aws, Latency, moto_servers, run_row
from demo.ses_emulator import SharedRateCount

FORK = multiprocessing.get_context("fork")


def _book(count: SharedRateCount, second: int, attempts: int) -> None:
    for _ in range(attempts):
        count.book(second, 1, limit=25, now=float(second))


def test_the_shared_count_refuses_over_the_rate_across_processes() -> None:
    count = SharedRateCount(origin=1_000, seconds=10, context=FORK)
    processes = [FORK.Process(target=_book, args=(count, 1_003, 20)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=30)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert count.per_second() == {1_003: 25}  # 60 one-recipient calls, 25 fit in the second
    assert count.rate_throttled == 35
    assert count.first_accepted == 1_003.0


def test_the_shared_count_refuses_seconds_outside_its_window() -> None:
    count = SharedRateCount(origin=1_000, seconds=10, context=FORK)
    with pytest.raises(ValueError, match="outside the counted window"):
        count.book(1_010, 1, limit=25, now=1_010.0)


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    with moto_servers(FORK) as servers:
        yield servers


@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_poller_processes_send_every_recipient_once_within_the_rate(aws: Aws, mode: str) -> None:
    row: dict[str, Any] = run_row(aws, FORK, 20, mode, 40, 2, Latency.none(), f"smoke-{mode}", budget_s=60)
    assert row["finished"] == 40
    assert (row["lost"], row["duplicated"]) == (0, 0)
    assert row["counted_by_ses"] == 40  # every process booked in the one shared count
    assert 0 < row["peak_second"] <= 20
    assert not row["peak_over_rate"]
