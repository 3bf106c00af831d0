"""Changing a company's routing settings and the global switch, audited: one path for the CLI
(``moodle-offload company set/global``) and the dashboard's settings page."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any

import sqlalchemy as sa

from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_repo import BridgeRepo

#: Settings a person may change, by CompanySettings attribute.
CHANGEABLE = (
    "cloudenabled",
    "provider",
    "allowemail",
    "allowcertificates",
    "threshold",
    "fallbacklocal",
    "senderaddress",
    "sendername",
    "sesstenant",
    "certtemplate",
)


class SettingsError(ValueError):
    """A value is not acceptable; the message names the setting and why."""


def validate_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr, value in changes.items():
        if attr not in CHANGEABLE:
            raise SettingsError(f"unknown setting {attr}")
        if attr in ("senderaddress", "sendername", "sesstenant"):
            out[attr] = (str(value).strip() or None) if value is not None else None
        else:
            out[attr] = value
    sender = out.get("senderaddress")
    if sender and ("@" not in sender or len(sender) > 254 or any(c.isspace() for c in sender)):
        raise SettingsError("the sender address must be an email address")
    if out.get("sendername") and (
        len(out["sendername"]) > 255 or any(ord(c) < 32 for c in out["sendername"])
    ):
        raise SettingsError("the sender name must be one line of at most 255 characters")
    if out.get("sesstenant") and len(out["sesstenant"]) > 64:
        raise SettingsError("the SES tenant name is at most 64 characters")
    if "certtemplate" in out and not (0 < len(str(out["certtemplate"])) <= 64):
        raise SettingsError("the certificate template id is 1 to 64 characters")
    return out


def change_company_settings(
    conn: sa.Connection,
    repo: BridgeRepo,
    company_id: int,
    changes: Mapping[str, Any],
    *,
    actor: str,
    now: int,
    source: str | None = None,
    check: Callable[[CompanySettings], str | None] | None = None,
) -> CompanySettings:
    """Apply ``changes`` (CompanySettings attributes) and audit what differs. ``check`` may refuse
    the result with one line (e.g. a Worker that cannot take the company's job types); nothing is
    saved then."""
    checked = validate_changes(changes)
    before = repo.get_settings(conn, company_id)
    current = before or CompanySettings(companyid=company_id)
    try:
        updated = replace(current, **checked)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    refused = check(updated) if check is not None else None
    if refused:
        raise SettingsError(refused)
    repo.save_settings(conn, updated, actor)
    diff = {k: v for k, v in asdict(updated).items() if before is None or getattr(before, k) != v}
    if before is None or diff:
        audit.record(
            conn,
            repo.t,
            actor=actor,
            action=audit.SETTINGS_CREATED if before is None else audit.SETTINGS_CHANGED,
            now=now,
            companyid=company_id,
            source=source,
            detail=diff,
        )
    return updated


def set_global_switch(
    conn: sa.Connection, repo: BridgeRepo, enabled: bool, *, actor: str, now: int, source: str | None = None
) -> bool:
    """Turn offloading on or off for the whole site; True when it changed."""
    before = repo.offload_enabled(conn)
    repo.set_offload_enabled(conn, enabled)
    if before != enabled:
        audit.record(
            conn,
            repo.t,
            actor=actor,
            action=audit.GLOBAL_SWITCH_ON if enabled else audit.GLOBAL_SWITCH_OFF,
            now=now,
            source=source,
        )
    return before != enabled
