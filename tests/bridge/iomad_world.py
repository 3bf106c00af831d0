"""A small IOMAD-shaped database for the bridge's tests (both schema generations).

Built from ``moodle_bridge.sources.iomad.schema.build_iomad_tables`` (the columns the adapter
reads), with explicit ids, so it works on SQLite, MariaDB and PostgreSQL alike.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from moodle_bridge.sources.iomad.headers import serialize_headers
from moodle_bridge.sources.iomad.moodle_lock import db_record_key
from moodle_bridge.sources.iomad.passwords import encode_iomad_temporary
from moodle_bridge.sources.iomad.schema import IomadGeneration, IomadTables, build_iomad_tables

ADMIN_ID = 2


@dataclass
class IomadWorld:
    engine: sa.Engine
    tables: IomadTables
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    @classmethod
    def create(
        cls, engine: sa.Engine, prefix: str = "mdl_", generation: IomadGeneration = IomadGeneration.LEGACY
    ) -> IomadWorld:
        tables = build_iomad_tables(prefix, generation)
        tables.metadata.create_all(engine)
        world = cls(engine, tables)
        with engine.begin() as conn:
            conn.execute(sa.insert(tables.config).values(id=1, name="siteadmins", value=str(ADMIN_ID)))
            conn.execute(
                sa.insert(tables.lock_db).values(
                    id=1, resourcekey=db_record_key(tables.email_cron_task), expires=None, owner=None
                )
            )
        world.add_user(ADMIN_ID, "admin@example.com", "Site", "Admin")
        return world

    def next_id(self) -> int:
        return next(self._ids)

    def add_company(self, companyid: int, name: str | None = None) -> None:
        t = self.tables
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(t.company).values(
                    id=companyid,
                    name=name or f"Company {companyid}",
                    shortname=f"c{companyid}",
                    suspended=0,
                    emailprofileid=None,
                    managernotify=0,
                    parentid=0,
                    hostname=None,
                    category=0,
                    companyterminated=0,
                )
            )
            conn.execute(
                sa.insert(t.department).values(
                    id=companyid * 100, name="Top", shortname="top", company=companyid, parent=0
                )
            )

    def add_user(
        self,
        userid: int,
        email: str,
        first: str = "First",
        last: str = "Last",
        *,
        companyid: int | None = None,
        manager: bool = False,
        suspended: bool = False,
        deleted: bool = False,
    ) -> None:
        t = self.tables
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(t.user).values(
                    id=userid,
                    auth="manual",
                    deleted=int(deleted),
                    suspended=int(suspended),
                    username=f"u{userid}",
                    firstname=first,
                    lastname=last,
                    email=email,
                    emailstop=0,
                    lang="en",
                    mailformat=1,
                )
            )
            if companyid is not None:
                conn.execute(
                    sa.insert(t.company_users).values(
                        id=self.next_id(),
                        companyid=companyid,
                        userid=userid,
                        managertype=1 if manager else 0,
                        departmentid=companyid * 100,
                        suspended=0,
                        educator=0,
                    )
                )

    def set_temporary_password(self, userid: int, password: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(self.tables.user_preferences).values(
                    id=self.next_id(),
                    userid=userid,
                    name="iomad_temporary",
                    value=encode_iomad_temporary(password),
                )
            )

    def add_course(self, courseid: int, fullname: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(self.tables.course).values(
                    id=courseid, category=1, fullname=fullname, shortname=f"C{courseid}"
                )
            )

    def complete(self, userid: int, courseid: int, companyid: int, at: int) -> int:
        t = self.tables
        cid = self.next_id()
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(t.course_completions).values(
                    id=cid,
                    userid=userid,
                    course=courseid,
                    timeenrolled=at - 100,
                    timestarted=at - 50,
                    timecompleted=at,
                )
            )
            conn.execute(
                sa.insert(t.track).values(
                    id=self.next_id(),
                    courseid=courseid,
                    coursename="",
                    userid=userid,
                    timecompleted=at,
                    timeenrolled=at - 100,
                    timestarted=at - 50,
                    timeexpires=None,
                    finalscore=87.5,
                    companyid=companyid,
                    licenseid=0,
                    licensename="",
                    modifiedtime=at,
                )
            )
        return cid

    def queue(
        self,
        template: str,
        userid: int,
        companyid: int,
        *,
        subject: str = "Hello",
        body: str = "<p>Hello</p>",
        due: int | None = None,
        courseid: int = 1,
        headers: str | None = None,
        emailid: int | None = None,
        template_props: dict[str, Any] | None = None,
    ) -> int:
        t = self.tables
        eid = emailid or self.next_id()
        now = int(time.time())
        if headers is None:
            props = {
                "id": 1,
                "companyid": companyid,
                "name": template,
                "lang": "en",
                "disabled": 0,
                "disabledmanager": 0,
                "disabledsupervisor": 0,
                "emailto": "",
                "emailtoother": "",
                "emailcc": "",
                "emailccother": "",
            }
            props.update(template_props or {})
            headers = serialize_headers(props)
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(t.email).values(
                    id=eid,
                    templatename=template,
                    modifiedtime=now,
                    sent=None,
                    subject=subject,
                    body=body,
                    varsreplaced=1,
                    companyid=companyid,
                    courseid=courseid,
                    userid=userid,
                    invoiceid=None,
                    classroomid=None,
                    senderid=-20,
                    headers=headers,
                    due=now - 60 if due is None else due,
                )
            )
        return eid

    def rows(self) -> dict[int, Any]:
        e = self.tables.email
        with self.engine.connect() as conn:
            return {int(r.id): r for r in conn.execute(sa.select(e).order_by(e.c.id))}
