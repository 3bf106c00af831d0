"""All SQL on the store-only certificate ledger (``mrcloud_completion_certs``) and its watermark.

One row per (user, course, completion) that got a store-only certificate. The unique key is the
guarantee: two bridges that plan the same completion cannot both commit it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.storage.sqlutil import chunks

#: ``mrcloud_config`` name of the store-only pass's watermark, ``"<timecompleted>:<id>"``.
WATERMARK_KEY = "store_only_watermark"


@dataclass(frozen=True)
class LedgerEntry:
    companyid: int
    userid: int
    courseid: int
    completionid: int
    timecompleted: int


class CompletionLedger:
    def __init__(self, tables: BridgeTables) -> None:
        self.t = tables

    def issued(self, conn: sa.Connection, completionids: Iterable[int]) -> set[int]:
        """The completions among ``completionids`` that already have a store-only certificate."""
        c = self.t.completion_certs.c
        out: set[int] = set()
        for part in chunks(sorted(set(completionids))):
            out.update(
                int(x)
                for x in conn.execute(sa.select(c.completionid).where(c.completionid.in_(part))).scalars()
            )
        return out

    def record(self, conn: sa.Connection, jobid: int, entries: Sequence[LedgerEntry], at: int) -> None:
        """A plain INSERT: an entry already there is a concurrent pass, and the unique key makes
        the caller's whole transaction fail (nothing of it is kept)."""
        if entries:
            conn.execute(
                self.t.completion_certs.insert(),
                [
                    {
                        "companyid": e.companyid,
                        "userid": e.userid,
                        "courseid": e.courseid,
                        "completionid": e.completionid,
                        "timecompleted": e.timecompleted,
                        "jobid": jobid,
                        "timecreated": at,
                    }
                    for e in entries
                ],
            )

    def watermark(self, conn: sa.Connection) -> tuple[int, int] | None:
        value = conn.execute(
            sa.select(self.t.config.c.value).where(self.t.config.c.name == WATERMARK_KEY)
        ).scalar()
        if value is None:
            return None
        at, _, completionid = str(value).partition(":")
        return int(at), int(completionid or 0)

    def set_watermark(self, conn: sa.Connection, mark: tuple[int, int], at: int) -> None:
        cfg = self.t.config
        value = f"{mark[0]}:{mark[1]}"
        updated = conn.execute(
            cfg.update().where(cfg.c.name == WATERMARK_KEY).values(value=value, timemodified=at)
        ).rowcount
        if not updated:
            conn.execute(cfg.insert().values(name=WATERMARK_KEY, value=value, timemodified=at))

    def register_certificates(self, conn: sa.Connection, jobid: int, companyid: int) -> int:
        """One ``mrcloud_certificates`` row per pending recipient of a store-only job (its
        verification code issued), as the claim pass records the certificates it mails."""
        r = self.t.recipients.c
        rows: list[dict[str, object]] = []
        for rid, userid, data in conn.execute(
            sa.select(r.id, r.userid, r.data).where(
                r.jobid == jobid, r.status == "pending", r.data.is_not(None)
            )
        ):
            payload = json.loads(data)
            rows.append(
                {
                    "companyid": companyid,
                    "userid": userid,
                    "courseid": payload.get("courseid"),
                    "recipientid": int(rid),
                    "verifycode": payload["certificate"]["verification_code"],
                }
            )
        for part in chunks(rows):
            conn.execute(self.t.certificates.insert(), list(part))
        return len(rows)
