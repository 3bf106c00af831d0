"""Cancelling from the CLI and the dashboard alike: the switches that stop a company's (or the
site's) open jobs when turned off, and telling the cloud about cancels at once.

One path for ``moodle-offload jobs cancel`` / ``company set --cloud off`` / ``company global off``
and the dashboard's job and settings pages, so both do exactly the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.results.iomad_link import IomadQueue
from moodle_bridge.results.job_control import CancelReport, cancel_open_jobs, signal_cancels
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.storage.settings_change import change_company_settings, set_global_switch
from moodle_bridge.transports.cloud_records import cloud_records_from_config

COMPANY_OFF_REASON = "the company's cloud was turned off"
GLOBAL_OFF_REASON = "the global switch was turned off"


@dataclass
class CloudNotice:
    """What telling the cloud about cancelled jobs did: ``told`` now, or not (``problem`` says why;
    every tick tries again)."""

    told: list[int] = field(default_factory=list)
    not_told: list[int] = field(default_factory=list)
    problem: str | None = None


def tell_cloud(
    reports: list[CancelReport], engine: sa.Engine, tables: BridgeTables, config: Any, now: int
) -> CloudNotice:
    """Write the cancel records of ``reports``' jobs that have recipients in the cloud (AWS), at
    once when ``aws.idempotency_table`` is set; otherwise say why the cloud was not told."""
    waiting = [r.job_id for r in reports if r.provider == "aws" and r.in_cloud]
    if not waiting:
        return CloudNotice()
    result = signal_cancels(engine, tables, cloud_records_from_config(config), now=now, job_ids=waiting)
    notice = CloudNotice(told=list(result.told), not_told=list(result.not_told))
    if result.not_told:
        notice.problem = (
            f"the cloud could not be told ({result.error}); recipients already in the cloud may still be "
            "sent and will be recorded as sent. Fix: set aws.idempotency_table (stack output "
            "IdempotencyTableName) and check AWS access; every tick tries again"
        )
    return notice


def change_company(
    conn: sa.Connection,
    repo: BridgeRepo,
    company_id: int,
    changes: Mapping[str, Any],
    *,
    actor: str,
    now: int,
    queue: IomadQueue | None,
    source: str | None = None,
    check: Callable[[CompanySettings], str | None] | None = None,
) -> tuple[CompanySettings, list[CancelReport]]:
    """Save a company's settings (``change_company_settings``); turning its cloud off cancels its
    open jobs in the same transaction. The caller commits, then calls ``tell_cloud``."""
    before = repo.get_settings(conn, company_id)
    updated = change_company_settings(
        conn, repo, company_id, changes, actor=actor, now=now, source=source, check=check
    )
    stopped: list[CancelReport] = []
    if before is not None and before.cloudenabled and not updated.cloudenabled:
        stopped = cancel_open_jobs(
            conn,
            repo.t,
            actor=actor,
            now=now,
            reason=COMPANY_OFF_REASON,
            company_id=company_id,
            queue=queue,
            source=source,
        )
    return updated, stopped


def switch_global(
    conn: sa.Connection,
    repo: BridgeRepo,
    enabled: bool,
    *,
    actor: str,
    now: int,
    queue: IomadQueue | None,
    source: str | None = None,
) -> list[CancelReport]:
    """Set the global switch; off cancels every company's open jobs in the same transaction. The
    caller commits, then calls ``tell_cloud``."""
    set_global_switch(conn, repo, enabled, actor=actor, now=now, source=source)
    if enabled:
        return []
    return cancel_open_jobs(
        conn, repo.t, actor=actor, now=now, reason=GLOBAL_OFF_REASON, queue=queue, source=source
    )
