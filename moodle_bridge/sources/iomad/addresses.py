"""Email address checks, close to what IOMAD's ``validate_email()`` (PHPMailer) accepts.

Hand-written on purpose: it mirrors the subset of RFC 5321/5322 addresses mail services
accept (dot-atom local part, host name with a dot), needs no DNS and no dependency.
"""

from __future__ import annotations

import functools
import re

_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f<>()\[\]\\,;:\"]")

EMPTY = "empty_address"
INVALID = "invalid_address"


@functools.lru_cache(maxsize=65536)
def address_problem(address: str | None) -> str | None:
    """None when ``address`` is deliverable-looking, else ``"empty_address"``/``"invalid_address"``."""
    if address is None or not address.strip():
        return EMPTY
    if address != address.strip() or len(address) > 254:
        return INVALID
    if any(ch.isspace() or ord(ch) < 32 or ch in '<>()[]\\,;:"' for ch in address):
        return INVALID
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain or "@" in local or len(local) > 64:
        return INVALID
    if not _DOT_ATOM.match(local):
        return INVALID
    try:
        ascii_domain = domain if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError:
        return INVALID
    labels = ascii_domain.split(".")
    if len(labels) < 2 or any(not _LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return INVALID
    return None


def is_valid_address(address: str | None) -> bool:
    return address_problem(address) is None
