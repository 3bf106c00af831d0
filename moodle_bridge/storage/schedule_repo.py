"""All SQL on the bridge's schedule tables (``mrcloud_schedules``, ``mrcloud_schedule_runs``).

Plain functions of a connection, so the CLI, the service loop and the dashboard call the same
code in their own transactions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from moodle_bridge.storage.bridge_tables import BridgeTables

ACTIVE = "active"
PAUSED = "paused"


class SlotTaken(RuntimeError):
    """Another run (a second bridge, an overlapping pass) already fired this slot."""


class ScheduleRepo:
    def __init__(self, tables: BridgeTables) -> None:
        self.t = tables

    def create(self, conn: sa.Connection, values: Mapping[str, Any]) -> int:
        result = conn.execute(self.t.schedules.insert().values(status=ACTIVE, **values))
        key = result.inserted_primary_key
        if key is None:  # pragma: no cover - every engine returns the new id
            raise RuntimeError("no id for the new schedule")
        return int(key[0])

    def get(self, conn: sa.Connection, scheduleid: int) -> sa.Row[Any] | None:
        return conn.execute(sa.select(self.t.schedules).where(self.t.schedules.c.id == scheduleid)).first()

    def list(self, conn: sa.Connection, companyid: int | None = None) -> Sequence[sa.Row[Any]]:
        s = self.t.schedules
        query = sa.select(s).order_by(s.c.id)
        if companyid is not None:
            query = query.where(s.c.companyid == companyid)
        return conn.execute(query).all()

    def due(self, conn: sa.Connection, at: int) -> Sequence[int]:
        """Active schedules whose next run has come (index ``status, nextrun``)."""
        s = self.t.schedules.c
        query = sa.select(s.id).where(s.status == ACTIVE, s.nextrun <= at).order_by(s.nextrun, s.id)
        return [int(i) for i in conn.execute(query).scalars()]

    def set_status(self, conn: sa.Connection, scheduleid: int, status: str, at: int) -> bool:
        s = self.t.schedules
        result = conn.execute(s.update().where(s.c.id == scheduleid).values(status=status, timemodified=at))
        return bool(result.rowcount)

    def set_next(
        self, conn: sa.Connection, scheduleid: int, *, lastslot: int | None, nextrun: int | None
    ) -> None:
        s = self.t.schedules
        values: dict[str, Any] = {"nextrun": nextrun}
        if lastslot is not None:
            values["lastslot"] = lastslot
        conn.execute(s.update().where(s.c.id == scheduleid).values(**values))

    def take_slot(self, conn: sa.Connection, scheduleid: int, slot: int, at: int) -> int:
        """Record the run of (schedule, slot) first in the run's transaction. The unique key makes
        a second bridge wait for this transaction and then fail, so a slot fires once; raises
        ``SlotTaken`` when the slot is already recorded (the caller's transaction is then spoilt:
        take the slot first and let the exception roll it back)."""
        runs = self.t.schedule_runs
        try:
            result = conn.execute(
                runs.insert().values(scheduleid=scheduleid, slot=slot, outcome="running", timecreated=at)
            )
        except sa.exc.IntegrityError:
            raise SlotTaken(f"schedule {scheduleid} already fired its slot {slot}") from None
        key = result.inserted_primary_key
        if key is None:  # pragma: no cover
            raise RuntimeError("no id for the run")
        return int(key[0])

    def finish_run(
        self, conn: sa.Connection, runid: int, *, outcome: str, jobid: int | None, rowcount: int, detail: str
    ) -> None:
        runs = self.t.schedule_runs
        conn.execute(
            runs.update()
            .where(runs.c.id == runid)
            .values(outcome=outcome, jobid=jobid, rowcount=rowcount, detail=detail[:1000])
        )

    def runs(self, conn: sa.Connection, scheduleid: int, limit: int = 20) -> Sequence[sa.Row[Any]]:
        runs = self.t.schedule_runs
        return conn.execute(
            sa.select(runs).where(runs.c.scheduleid == scheduleid).order_by(runs.c.slot.desc()).limit(limit)
        ).all()
