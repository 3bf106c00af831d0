"""All SQL on the bridge's campaign tables (``mrcloud_campaigns``, ``mrcloud_campaign_ledger``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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

    def update(self, conn: sa.Connection, campaignid: int, *, name: str, rule_json: str, at: int) -> bool:
        result = conn.execute(
            self.t.campaigns.update()
            .where(self.t.campaigns.c.id == campaignid)
            .values(name=name, rule=rule_json, timemodified=at)
        )
        return bool(result.rowcount)

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

    def cycles(self, conn: sa.Connection, campaignid: int) -> Sequence[CycleFigures]:
        """Per cycle: users reminded (the ledger) and what the cycle's jobs record (their counters,
        kept exact by results ingestion), newest cycle first. ``sent`` counts sent and delivered,
        ``failed`` failed, bounced and complained."""
        ledger, jobs = self.t.campaign_ledger, self.t.jobs
        reminded = self.ledger_counts(conn, campaignid)
        per_job = conn.execute(
            sa.select(
                ledger.c.cycle,
                jobs.c.id,
                jobs.c.status,
                jobs.c.recipientstotal,
                (jobs.c.recipientssent + jobs.c.recipientsdelivered).label("sent"),
                (jobs.c.recipientsfailed + jobs.c.recipientsbounced + jobs.c.recipientscomplained).label(
                    "failed"
                ),
                jobs.c.recipientsskipped,
            )
            .distinct()
            .select_from(ledger.join(jobs, jobs.c.id == ledger.c.jobid))
            .where(ledger.c.campaignid == campaignid)
            .order_by(ledger.c.cycle, jobs.c.id)
        ).all()
        out = {cycle: CycleFigures(cycle, users) for cycle, users in reminded.items()}
        for row in per_job:
            figures = out.setdefault(int(row.cycle), CycleFigures(int(row.cycle), 0))
            figures.jobs.append((int(row.id), str(row.status)))
            figures.recipients += int(row.recipientstotal or 0)
            figures.sent += int(row.sent or 0)
            figures.failed += int(row.failed or 0)
            figures.skipped += int(row.recipientsskipped or 0)
        return sorted(out.values(), key=lambda f: -f.cycle)


@dataclass
class CycleFigures:
    cycle: int
    users: int
    jobs: list[tuple[int, str]] = field(default_factory=list)
    recipients: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
