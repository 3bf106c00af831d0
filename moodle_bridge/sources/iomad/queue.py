"""IOMAD's mail queue: select due rows like IOMAD's cron, park, restore, mark sent.

Parking (how the bridge suppresses IOMAD's own copy of a row it takes over):
``due`` becomes ``PARKED_DUE_BASE + original due`` (PARKED_DUE_BASE = 10**12), ``sent`` stays
NULL and nothing else changes. Why this works:

- IOMAD's cron selects ``sent IS NULL AND due < now``: a parked row is never due.
- IOMAD's purge deletes ``modifiedtime < halfyear AND due < now``: never a parked row.
- The original ``due`` is ``due - PARKED_DUE_BASE``: recoverable from the row itself even if
  the bridge's claims table were lost (``list_parked``), and any due >= 10**12 is ours.
- Restoring is one set-based UPDATE; subject/body are never touched, so IOMAD sends exactly
  what it queued if the row comes back.

Every function runs in the caller's transaction (no commit here) and issues a bounded number
of statements per chunk of ids (``queries.CHUNK``), never one per row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from moodle_bridge.sources.iomad import queries
from moodle_bridge.sources.iomad.queries import PARKED_DUE_BASE, chunks
from moodle_bridge.sources.iomad.schema import IomadTables

__all__ = [
    "PARKED_DUE_BASE",
    "QueuedEmail",
    "is_parked_due",
    "list_parked",
    "load_rendered",
    "mark_emails_sent",
    "original_due",
    "park_emails",
    "restore_emails",
    "rows_for_send",
    "select_due_emails",
    "still_parked",
]


@dataclass(frozen=True)
class QueuedEmail:
    """One IOMAD queue row. ``body`` may hold a plaintext password, so it is kept out of repr."""

    id: int
    templatename: str
    companyid: int
    userid: int
    courseid: int | None
    subject: str
    body: str = field(repr=False)
    headers_raw: str | None = field(repr=False)
    due: int
    senderid: int | None
    modifiedtime: int

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> QueuedEmail:
        return cls(
            id=int(row["id"]),
            templatename=str(row["templatename"] or ""),
            companyid=int(row["companyid"] or 0),
            userid=int(row["userid"]),
            courseid=None if row["courseid"] is None else int(row["courseid"]),
            subject=str(row["subject"] or ""),
            body=str(row["body"] or ""),
            headers_raw=row["headers"],
            due=int(row["due"] or 0),
            senderid=None if row["senderid"] is None else int(row["senderid"]),
            modifiedtime=int(row["modifiedtime"] or 0),
        )


def is_parked_due(due: int) -> bool:
    return due >= PARKED_DUE_BASE


def original_due(due: int) -> int:
    """The due IOMAD queued the row with, whether or not it is parked now."""
    return due - PARKED_DUE_BASE if due >= PARKED_DUE_BASE else due


def select_due_emails(
    conn: sa.Connection,
    tables: IomadTables,
    now: int,
    company_ids: Collection[int] | None,
    limit: int | None,
    after_id: int = 0,
) -> list[QueuedEmail]:
    """Due rows exactly as IOMAD's cron would pick them, of the given companies, by id.

    ``company_ids=None``: all companies; an empty collection selects nothing. Page with
    ``after_id`` (the last id of the previous page). One statement.
    """
    if company_ids is not None and not company_ids:
        return []
    result = conn.execute(queries.select_due(tables, now, company_ids, limit, after_id))
    return [QueuedEmail.from_row(r) for r in result.mappings()]


def _lock_then_update(
    conn: sa.Connection,
    ids: Iterable[int],
    select_for: Callable[[Sequence[int]], sa.Select[Any]],
    update_for: Callable[[Sequence[int]], sa.Update],
) -> list[int]:
    done: list[int] = []
    for chunk in chunks(ids):
        eligible = [int(i) for i in conn.execute(select_for(chunk)).scalars()]
        if eligible:
            conn.execute(update_for(eligible))
            done.extend(eligible)
    return sorted(done)


def load_rendered(conn: sa.Connection, tables: IomadTables, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """Subject and body of the given rows, by id (rows that no longer exist are absent)."""
    out: dict[int, tuple[str, str]] = {}
    for chunk in chunks(ids):
        for row in conn.execute(queries.rendered_contents(tables, chunk)):
            out[int(row.id)] = (str(row.subject or ""), str(row.body or ""))
    return out


#: Where a row stands for the outbox (``rows_for_send``).
ROW_PARKED = "parked"  # the bridge's: unsent and parked
ROW_SENT = "sent"  # final: IOMAD's cron (or the bridge) already sent it
ROW_DUE = "due"  # unsent and not parked: on IOMAD's path again
ROW_GONE = "gone"  # deleted (IOMAD deletes unsent rows itself, e.g. on unenrolment)


def rows_for_send(
    conn: sa.Connection, tables: IomadTables, ids: Iterable[int]
) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    """Subject and body of the rows that are still parked and unsent, and every row's state.

    One statement per chunk. The outbox builds a recipient's mail only from a row in the
    first dict; any other row's recipients are settled with the state as the reason.
    """
    wanted = list(ids)
    contents: dict[int, tuple[str, str]] = {}
    states: dict[int, str] = dict.fromkeys(wanted, ROW_GONE)
    for chunk in chunks(wanted, queries.READ_CHUNK):
        for row in conn.execute(queries.rows_for_send(tables, chunk)):
            eid = int(row.id)
            if row.sent is not None:
                states[eid] = ROW_SENT
            elif int(row.due or 0) < PARKED_DUE_BASE:
                states[eid] = ROW_DUE
            else:
                states[eid] = ROW_PARKED
                contents[eid] = (str(row.subject or ""), str(row.body or ""))
    return contents, states


def park_emails(conn: sa.Connection, tables: IomadTables, ids: Iterable[int]) -> list[int]:
    """Park unsent rows so IOMAD's cron skips them; returns the ids parked by this call.

    Rows already sent, already parked or gone are left alone and not returned. Two
    statements per chunk: SELECT ... FOR UPDATE of the eligible ids, then one UPDATE.
    """
    return _lock_then_update(
        conn,
        ids,
        lambda c: queries.parkable_ids(tables, c),
        lambda c: queries.park(tables, c),
    )


def still_parked(conn: sa.Connection, tables: IomadTables, ids: Iterable[int]) -> list[int]:
    """The ids among ``ids`` that are parked and unsent, locked for update (strict mode's rows)."""
    out: list[int] = []
    for chunk in chunks(ids):
        out.extend(int(i) for i in conn.execute(queries.parked_ids(tables, chunk)).scalars())
    return sorted(out)


def restore_emails(
    conn: sa.Connection, tables: IomadTables, originals: Mapping[int, int] | Iterable[int]
) -> list[int]:
    """Hand parked rows back to IOMAD: original ``due`` back, ``sent`` stays NULL.

    ``originals`` is the claims table's id -> original due; the row's own encoding
    (``due - PARKED_DUE_BASE``) is what is written, so the two cannot disagree silently:
    ``restore_mismatches`` reports any difference. Returns the ids restored.
    """
    ids = list(originals.keys()) if isinstance(originals, Mapping) else list(originals)
    return _lock_then_update(
        conn,
        ids,
        lambda c: queries.parked_ids(tables, c),
        lambda c: queries.unpark(tables, c),
    )


def mark_emails_sent(conn: sa.Connection, tables: IomadTables, ids: Iterable[int], now: int) -> list[int]:
    """Record the cloud's send the way IOMAD's cron does: ``sent = modifiedtime = now``.

    The original ``due`` is restored for parked rows. Rows already sent or gone are left
    alone and not returned.
    """
    return _lock_then_update(
        conn,
        ids,
        lambda c: queries.unsent_ids(tables, c),
        lambda c: queries.mark_sent(tables, c, now),
    )


def list_parked(
    conn: sa.Connection, tables: IomadTables, company_ids: Collection[int] | None = None
) -> dict[int, int]:
    """id -> original due of every parked unsent row (recovery without the claims table)."""
    return {int(i): int(d) for i, d in conn.execute(queries.parked_rows(tables, company_ids))}


def restore_mismatches(
    conn: sa.Connection, tables: IomadTables, originals: Mapping[int, int]
) -> dict[int, tuple[int, int]]:
    """id -> (claims' original due, row's encoded original) where they differ (should be empty)."""
    out: dict[int, tuple[int, int]] = {}
    for chunk in chunks(originals.keys()):
        for i, due in conn.execute(queries.parked_dues(tables, chunk)):
            encoded = int(due) - PARKED_DUE_BASE
            if encoded != originals[int(i)]:
                out[int(i)] = (originals[int(i)], encoded)
    return out
