"""How results reach IOMAD's queue table: through the IOMAD adapter (``moodle_bridge.sources.iomad.queue``).

The results code only needs two operations, so it depends on this small protocol; the real
implementation delegates to the adapter's ``mark_emails_sent`` and ``restore_emails`` with the
tables ``detect_iomad`` found. A plain Moodle site (no IOMAD) has no link: its recipients carry
no ``emailid`` and nothing is written back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import sqlalchemy as sa

from moodle_bridge.sources.iomad import queue as iomad_queue
from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound, IomadTables, detect_iomad


class IomadQueue(Protocol):
    def mark_sent(self, conn: sa.Connection, email_ids: Sequence[int], now: int) -> None:
        """Set IOMAD's ``sent`` on these queue rows (all their recipients are final)."""

    def restore(self, conn: sa.Connection, originals: Mapping[int, int]) -> None:
        """Give rows back to IOMAD's own cron: ``originals`` maps email id -> original ``due``."""


class AdapterQueue:
    """``IomadQueue`` over the IOMAD adapter's functions and detected tables."""

    def __init__(self, iomad_tables: IomadTables) -> None:
        self.tables = iomad_tables

    def mark_sent(self, conn: sa.Connection, email_ids: Sequence[int], now: int) -> None:
        iomad_queue.mark_emails_sent(conn, self.tables, list(email_ids), now)

    def restore(self, conn: sa.Connection, originals: Mapping[int, int]) -> None:
        iomad_queue.restore_emails(conn, self.tables, dict(originals))


def detect_queue(engine: sa.Engine, prefix: str) -> IomadQueue | None:
    """The IOMAD link for this database, or None on a plain Moodle site."""
    try:
        with engine.connect() as conn:
            return AdapterQueue(detect_iomad(conn, prefix))
    except IomadSchemaNotFound:
        return None
