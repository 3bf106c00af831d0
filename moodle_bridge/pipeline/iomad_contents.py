"""The outbox's view of IOMAD: rendered rows by id, password redaction, giving rows back.

A thin adapter over ``moodle_bridge.sources.iomad`` (no SQL here: every IOMAD statement lives in
``moodle_bridge.sources.iomad.queries``).
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa

from moodle_bridge.sources.iomad.passwords import REDACTION, redact
from moodle_bridge.sources.iomad.queue import load_rendered, restore_emails, rows_for_send
from moodle_bridge.sources.iomad.schema import IomadTables


class IomadRowContents:
    def __init__(self, tables: IomadTables) -> None:
        self.tables = tables

    def load_rendered(self, conn: sa.Connection, emailids: list[int]) -> dict[int, tuple[str, str]]:
        return load_rendered(conn, self.tables, emailids)

    def load_for_send(
        self, conn: sa.Connection, emailids: list[int]
    ) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
        return rows_for_send(conn, self.tables, emailids)

    def redact(self, body: str, password: str | None) -> str:
        # Without the password the copy is never built: claiming records it skipped
        # (password_not_redactable). This branch only guards against a lost secret.
        if password is None:
            raise ValueError(f"cannot build a redacted copy without the password ({REDACTION})")
        return redact(body, password)

    def restore(self, conn: sa.Connection, originals: Mapping[int, int]) -> list[int]:
        return restore_emails(conn, self.tables, originals)
