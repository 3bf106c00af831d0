"""A small IOMAD site with bridge jobs, for the dashboard's tests (and its screenshots).

Two companies seeded by the IOMAD stand-in (a manager each, learners in a top and a child
department), a department manager of company 1's child department, and jobs written the way
bridge core writes them: company 1 has a job still sending (some delivered, a bounce, a
permanent and a transient failure, some queued) and a finished one; company 2 has one queued job.
The sending job's recipients carry what the bridge stores and the dashboard must never show: the
template data with a message body (``BODY``) and a temporary password in ``data`` and ``secret``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from iomad_sim.iomad_schema import create_iomad_schema, metadata_for
from iomad_sim.iomad_seed import ADMIN_ID, SeedSpec, seed_iomad
from moodle_bridge.results.ingest import refresh_jobs
from moodle_bridge.sources.iomad.schema import IomadTables
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.migrations import migrate

NOW = 1_800_000_000
#: A message body kept in the sending job's recipient data: no page or export may show it.
BODY = "Dear learner, your body text 7f3a9c is here"
SHARED_KEY = "ZGFzaGJvYXJkLXRlc3Qta2V5LWZvci10aGUtYnJvd3Nlci1hbmQtdW5pdC10ZXN0cw"


@dataclass
class World:
    tables: BridgeTables
    iomad: IomadTables
    companies: list[int]
    admin: int
    managers: dict[int, int]
    department_manager: int
    child_department: int
    learners: dict[int, list[int]]  # company -> learner ids
    department_learners: list[int]  # learners of company 1's child department
    passwords: list[str]  # the seeded temporary passwords: no page may ever show one
    jobs: dict[str, int] = field(default_factory=dict)


def build_world(engine: sa.Engine, prefix: str = "mdl_", *, now: int = NOW) -> World:
    iomad = create_iomad_schema(engine, prefix)
    seeded = seed_iomad(engine, iomad, SeedSpec(companies=2, users_per_company=8, child_departments=1))
    migrate(engine, prefix)
    tables = build_bridge_tables(prefix)
    meta = metadata_for(iomad)
    cu = meta.tables[iomad.company_users.name]
    user = meta.tables[f"{prefix}user"]
    c1, c2 = seeded.company_ids
    child = seeded.department_ids[c1][1]
    managers = {c: seeded.manager_ids[i] for i, c in enumerate(seeded.company_ids)}
    with engine.begin() as conn:
        learners: dict[int, list[int]] = {}
        for row in conn.execute(sa.select(cu.c.companyid, cu.c.userid).where(cu.c.managertype == 0)):
            learners.setdefault(int(row.companyid), []).append(int(row.userid))
        dept_learners = [
            int(x)
            for x in conn.execute(
                sa.select(cu.c.userid).where(cu.c.departmentid == child, cu.c.managertype == 0)
            ).scalars()
        ]
        dept_manager = int(conn.execute(sa.select(sa.func.max(user.c.id))).scalar() or 0) + 1
        conn.execute(
            user.insert().values(
                id=dept_manager,
                username="deptmanager",
                firstname="Dana",
                lastname="Department",
                email="dana@example.org",
                confirmed=1,
                mnethostid=1,
                timezone="Asia/Kolkata",
            )
        )
        conn.execute(cu.insert().values(companyid=c1, userid=dept_manager, managertype=2, departmentid=child))
        # Moodle's "99" (the site's zone); the stand-in's SQLite default keeps its quotes.
        conn.execute(user.update().values(timezone="99"))
        conn.execute(user.update().where(user.c.id == ADMIN_ID).values(timezone="Europe/Paris"))
        conn.execute(user.update().where(user.c.id == dept_manager).values(timezone="Asia/Kolkata"))
    world = World(
        tables,
        iomad,
        [c1, c2],
        ADMIN_ID,
        managers,
        dept_manager,
        child,
        {c: sorted(v) for c, v in learners.items()},
        sorted(dept_learners),
        [s.reveal() for s in seeded.passwords.values()],
    )
    with engine.begin() as conn:
        statuses = ["delivered", "delivered", "bounced", "failed", "failed", "queued", "queued", "queued"]
        world.jobs["sending"] = add_job(
            conn, tables, c1, world.learners[c1], statuses, job_status="processing", now=now
        )
        # What the bridge keeps per recipient and the dashboard must never select (see BODY).
        secret = world.passwords[0]
        r = tables.recipients
        conn.execute(
            r.update()
            .where(r.c.jobid == world.jobs["sending"])
            .values(data=json.dumps({"body": BODY, "User_Newpassword": secret}), secret=secret)
        )
        world.jobs["done"] = add_job(
            conn, tables, c1, world.learners[c1][:3], ["delivered"] * 3, job_status="completed", now=now
        )
        world.jobs["other"] = add_job(conn, tables, c2, world.learners[c2][:3], ["queued"] * 3, now=now)
        conn.execute(
            tables.suppressions.insert(),
            [
                {
                    "companyid": c1,
                    "address": "bounced1@example.org",
                    "reason": "bounce",
                    "source": "ses",
                    "timecreated": now,
                },
                {
                    "companyid": c2,
                    "address": "other2@example.org",
                    "reason": "complaint",
                    "source": "ses",
                    "timecreated": now,
                },
            ],
        )
    return world


def add_job(
    conn: sa.Connection,
    tables: BridgeTables,
    company: int,
    users: list[int],
    statuses: list[str],
    *,
    job_status: str = "queued",
    now: int = NOW,
) -> int:
    """A submitted job with one batch; recipient i is user ``users[i % len(users)]``."""
    job_id = int(
        conn.execute(
            tables.jobs.insert().values(
                companyid=company,
                jobtype="email",
                source="iomad",
                provider="aws",
                status=job_status,
                templatename="user_create",
                recipientstotal=len(statuses),
                timecreated=now - 600,
                timemodified=now,
                timesubmitted=now - 540,
                timecompleted=now - 60 if job_status == "completed" else None,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
    )
    batch = int(
        conn.execute(
            tables.batches.insert().values(
                jobid=job_id,
                companyid=company,
                batchkey=f"j{job_id}-a1-1",
                attempt=1,
                status="submitted",
                target="sqs",
                recipientcount=len(statuses),
                timecreated=now - 540,
                timesubmitted=now - 540,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
    )
    rows: list[dict[str, Any]] = []
    for i, status in enumerate(statuses):
        uid = users[i % len(users)]
        final = status not in ("queued", "pending", "retrying")
        rows.append(
            {
                "jobid": job_id,
                "companyid": company,
                "emailid": None,
                "userid": uid,
                "role": "user",
                "address": f"learner{uid}@example.org",
                "fullname": f"Learner {uid}",
                "dedupekey": f"u{uid}-{i}",
                "status": status,
                "attempts": 1,
                "batchid": batch,
                "providermessageid": f"m-{job_id}-{i}" if status in ("delivered", "bounced") else None,
                "errorcode": {"bounced": "bounce_permanent", "failed": "MessageRejected"}.get(status),
                "errormessage": "Email address is not verified." if status == "failed" else None,
                "timecreated": now - 600,
                "timemodified": now - 30,
                "timefinal": now - 30 if final else None,
            }
        )
    conn.execute(tables.recipients.insert(), rows)
    job = {"id": job_id, "companyid": company, "status": job_status, "timecompleted": None}
    refresh_jobs(conn, tables, {job_id: job}, now=now, actor="test", recompute_status=False)
    return job_id
