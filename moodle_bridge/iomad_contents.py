"""The outbox's view of IOMAD: rendered rows by id, password redaction, giving rows back.

A thin adapter over ``moodle_bridge.iomad``. The one query here (subject and body of
given rows) is not in ``iomad.queries`` yet; it moves there when the adapter grows it.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa

from moodle_bridge.iomad.passwords import REDACTION, redact
from moodle_bridge.iomad.queries import chunks
from moodle_bridge.iomad.queue import restore_emails
from moodle_bridge.iomad.schema import IomadTables


class IomadRowContents:
    def __init__(self, tables: IomadTables) -> None:
        self.tables = tables

    def load_rendered(self, conn: sa.Connection, emailids: list[int]) -> dict[int, tuple[str, str]]:
        e = self.tables.email
        out: dict[int, tuple[str, str]] = {}
        for chunk in chunks(emailids):
            for row in conn.execute(sa.select(e.c.id, e.c.subject, e.c.body).where(e.c.id.in_(chunk))):
                out[int(row.id)] = (str(row.subject or ""), str(row.body or ""))
        return out

    def redact(self, body: str, password: str | None) -> str:
        # Without the password the copy is never built: claiming records it skipped
        # (password_not_redactable). This branch only guards against a lost secret.
        if password is None:
            raise ValueError(f"cannot build a redacted copy without the password ({REDACTION})")
        return redact(body, password)

    def restore(self, conn: sa.Connection, originals: Mapping[int, int]) -> list[int]:
        return restore_emails(conn, self.tables, originals)
