"""Email address checks for recipients the bridge builds itself (list jobs).

Deliberately practical rather than RFC 5322-complete: what SES accepts and a human meant.
Returns a stable problem code, or None when the address is usable.
"""

from __future__ import annotations

import re

_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def address_problem(address: str | None) -> str | None:
    if address is None or not address.strip():
        return "empty_address"
    value = address.strip()
    if len(value) > 254 or value.count("@") != 1:
        return "invalid_address"
    local, domain = value.rsplit("@", 1)
    if (
        not local
        or len(local) > 64
        or not _LOCAL.match(local)
        or local.startswith(".")
        or local.endswith(".")
    ):
        return "invalid_address"
    if ".." in local:
        return "invalid_address"
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "invalid_address"
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return "invalid_address"
    return None
