"""The one audit writer: who or what changed what, never payload secrets.

Every module that audits (bridge core, results, CLI) calls ``record``; nothing else inserts
into ``mrcloud_audit_log``. ``detail`` is a small JSON object; keys that could
carry secrets or bodies are dropped and long strings are cut, so a careless caller cannot leak a
temporary password into the log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import BridgeTables

#: Detail keys never stored, whatever the caller passes (case-insensitive substring match).
FORBIDDEN_KEY_PARTS: Final = (
    "password",
    "secret",
    "body",
    "html",
    "subject",
    "signature",
    "token",
    "key_material",
)
MAX_DETAIL_STRING = 300

# Actions (stable names; the dashboard filters on them).
SETTINGS_CREATED: Final = "company_settings_created"
SETTINGS_CHANGED: Final = "company_settings_changed"
GLOBAL_SWITCH_ON: Final = "global_switch_on"
GLOBAL_SWITCH_OFF: Final = "global_switch_off"
BATCH_ABANDONED: Final = "batch_abandoned"
JOB_CREATED: Final = "job_created"
JOB_SUBMITTED: Final = "job_submitted"
JOB_COMPLETED: Final = "job_completed"
JOB_RETRIED: Final = "job_retried"
JOB_CANCELLED: Final = "job_cancelled"
JOB_OVERDUE: Final = "job_overdue"
CALLBACK_REJECTED: Final = "callback_rejected"
RESULTS_LATE: Final = "results_ignored_after_close"
RESULT_MESSAGE_QUARANTINED: Final = "result_message_quarantined"
ROWS_RESTORED: Final = "iomad_rows_restored"
FALLBACK_WITHHELD: Final = "fallback_withheld"
CAMPAIGN_CREATED: Final = "campaign_created"
CAMPAIGN_UPDATED: Final = "campaign_updated"
CAMPAIGN_PAUSED: Final = "campaign_paused"
CAMPAIGN_RESUMED: Final = "campaign_resumed"
CAMPAIGN_RUN: Final = "campaign_run"
SCHEDULE_CREATED: Final = "schedule_created"
SCHEDULE_PAUSED: Final = "schedule_paused"
SCHEDULE_RESUMED: Final = "schedule_resumed"
SCHEDULE_RUN: Final = "schedule_run"
CERTIFICATE_REVOKED: Final = "certificate_revoked"
CERTIFICATE_REINSTATED: Final = "certificate_reinstated"
CERTIFICATE_TEMPLATE_SET: Final = "certificate_template_set"


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            str(k): _clean(v)
            for k, v in value.items()
            if not any(part in str(k).lower() for part in FORBIDDEN_KEY_PARTS)
        }
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value[:50]]
    if isinstance(value, str):
        return value[:MAX_DETAIL_STRING]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:MAX_DETAIL_STRING]


def record(
    conn: sa.Connection,
    tables: BridgeTables,
    *,
    actor: str,
    action: str,
    now: int,
    companyid: int | None = None,
    jobid: int | None = None,
    source: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(
        tables.audit_log.insert().values(
            timecreated=now,
            actor=actor[:100],
            action=action[:64],
            companyid=companyid,
            jobid=jobid,
            sourceaddress=(source or None) and str(source)[:45],
            detail=json.dumps(_clean(detail), sort_keys=True, separators=(",", ":")) if detail else None,
        )
    )
