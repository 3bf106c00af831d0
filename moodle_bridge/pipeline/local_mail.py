"""Mail a run keeps local: rendered by the bridge and queued into IOMAD's own queue table.

The counterpart of ``jobs.fill_template_job`` for schedules whose run stays with Moodle
(``cloud_preference`` local, or auto with the company's routing keeping it local;
docs/schedules.md). The same planned recipients, the same suppression filter
(``skip_suppressed``, by category) and the same renderer the outbox uses for the Cloudflare
path (``worker_templates.render_for_worker``: what the AWS sender renders), so a recipient gets
the mail the cloud would have sent; then one IOMAD queue row each
(``sources.iomad.local_queue``), in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from moodle_bridge.pipeline.batching import template_content
from moodle_bridge.pipeline.jobs import PlannedRecipient, skip_suppressed
from moodle_bridge.pipeline.worker_templates import WorkerTemplateError, render_for_worker
from moodle_bridge.sources.iomad.headers import Attachment
from moodle_bridge.sources.iomad.local_queue import LocalMail, queue_local_mails
from moodle_bridge.sources.iomad.schema import IomadTables
from moodle_bridge.storage.bridge_repo import BridgeRepo


@dataclass
class QueuedLocally:
    rows: int = 0
    skipped: int = 0
    failed: int = 0

    def note(self, reason: str, iomad: IomadTables) -> str:
        """The run's note, the same for a campaign's and a report's local run."""
        note = f"kept local ({reason}): {self.rows} rows queued in IOMAD's {iomad.email.name} for its cron"
        if self.skipped:
            note += f"; {self.skipped} suppressed"
        if self.failed:
            note += f"; {self.failed} failed (no usable address or template)"
        return note


def queue_template_locally(
    conn: sa.Connection,
    repo: BridgeRepo,
    iomad: IomadTables,
    planned: Sequence[PlannedRecipient],
    *,
    companyid: int,
    category: str,
    template_json: str,
    at: int,
    courseid: int | None = None,
    attachment: Attachment | None = None,
) -> QueuedLocally:
    """Render each pending recipient's mail and queue it for IOMAD's cron; recipients already
    decided (failed address) or suppressed are left out and counted."""
    skip_suppressed(conn, repo, companyid, planned, category=category)
    template = template_content(template_json)
    out = QueuedLocally()
    mails: list[LocalMail] = []
    for p in planned:
        if p.status == "skipped":
            out.skipped += 1
            continue
        userid = p.addressee if p.addressee is not None else p.userid
        if p.status != "pending" or userid is None:
            out.failed += 1
            continue
        try:
            content = render_for_worker(template, dict(p.data or {}))
        except WorkerTemplateError:
            out.failed += 1
            continue
        mails.append(LocalMail(userid, content["subject"], content["html"], courseid, attachment))
    out.rows = queue_local_mails(conn, iomad, companyid, mails, at=at)
    return out
