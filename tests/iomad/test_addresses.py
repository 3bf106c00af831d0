"""Address validation used for the fan-out (no DNS)."""

from __future__ import annotations

import pytest

from moodle_bridge.sources.iomad.addresses import EMPTY, INVALID, address_problem


@pytest.mark.parametrize(
    "address",
    [
        "a@example.com",
        "first.last+tag@sub.example.co.uk",
        "o'brien@example.ie",
        "x@bücher.example",
        "A_B-c@x-y.org",
    ],
)
def test_valid(address: str) -> None:
    assert address_problem(address) is None


@pytest.mark.parametrize("address", [None, "", "   "])
def test_empty(address: str | None) -> None:
    assert address_problem(address) == EMPTY


@pytest.mark.parametrize(
    "address",
    [
        "plainaddress",
        "@example.com",
        "a@",
        "a@@example.com",
        "a@localhost",
        "a b@example.com",
        " a@example.com",
        "a@example.com\r\nBcc: x@evil.example",
        "<a@example.com>",
        "a..b@example.com",
        ".a@example.com",
        "a@-example.com",
        "a@example.123",
        "a" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
    ],
)
def test_invalid(address: str) -> None:
    assert address_problem(address) == INVALID
