"""All SQL on the bridge's campaign tables (``mrcloud_campaigns``, ``mrcloud_campaign_ledger``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import BridgeTables

ACTIVE = "active"
PAUSED = "paused"


class CampaignRepo:
    def __init__(self, tables: BridgeTables) -> None:
        self.t = tables

    def create(
        self, conn: sa.Connection, *, companyid: int, name: str, rule_json: str, actor: str, at: int
    ) -> int:
        result = conn.execute(
            self.t.campaigns.insert().values(
                companyid=companyid,
                name=name,
                status=ACTIVE,
                rule=rule_json,
                createdby=actor,
                timecreated=at,
                timemodified=at,
            )
        )
        key = result.inserted_primary_key
        if key is None:  # pragma: no cover - every engine returns the new id
            raise RuntimeError("no id for the new campaign")
        return int(key[0])

    def get(self, conn: sa.Connection, campaignid: int) -> sa.Row[Any] | None:
        return conn.execute(sa.select(self.t.campaigns).where(self.t.campaigns.c.id == campaignid)).first()

    def list(self, conn: sa.Connection, companyid: int | None = None) -> Sequence[sa.Row[Any]]:
        query = sa.select(self.t.campaigns).order_by(self.t.campaigns.c.id)
        if companyid is not None:
            query = query.where(self.t.campaigns.c.companyid == companyid)
        return conn.execute(query).all()

    def set_status(self, conn: sa.Connection, campaignid: int, status: str, at: int) -> bool:
        result = conn.execute(
            self.t.campaigns.update()
            .where(self.t.campaigns.c.id == campaignid)
            .values(status=status, timemodified=at)
        )
        return bool(result.rowcount)

    def start_run(self, conn: sa.Connection, campaignid: int, at: int) -> bool:
        """Mark a run of an active campaign; the row lock it takes serialises overlapping runs
        (MariaDB and PostgreSQL lock the row, SQLite the database) until the caller commits."""
        c = self.t.campaigns.c
        result = conn.execute(
            self.t.campaigns.update().where(c.id == campaignid, c.status == ACTIVE).values(timelastrun=at)
        )
        return bool(result.rowcount)

    def record_ledger(
        self, conn: sa.Connection, campaignid: int, cycle: int, jobid: int, userids: Sequence[int], at: int
    ) -> None:
        """One row per user for this cycle. A plain INSERT: a user already in the ledger for the
        cycle is a concurrent run, and the unique key makes this whole transaction fail."""
        if userids:
            conn.execute(
                self.t.campaign_ledger.insert(),
                [
                    {"campaignid": campaignid, "userid": u, "cycle": cycle, "jobid": jobid, "timecreated": at}
                    for u in userids
                ],
            )

    def ledger_counts(self, conn: sa.Connection, campaignid: int) -> dict[int, int]:
        """Users reminded per cycle."""
        ledger = self.t.campaign_ledger
        rows = conn.execute(
            sa.select(ledger.c.cycle, sa.func.count())
            .where(ledger.c.campaignid == campaignid)
            .group_by(ledger.c.cycle)
            .order_by(ledger.c.cycle)
        )
        return {int(cycle): int(n) for cycle, n in rows}
