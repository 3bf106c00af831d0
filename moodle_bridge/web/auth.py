"""Who is signed in, and what they may see: rights read from Moodle's own tables.

* Site admins: the user id is in Moodle's ``config`` row ``siteadmins`` (comma-separated ids).
  They see every company.
* IOMAD company managers: a ``company_users`` row for the company with ``managertype = 1``.
* IOMAD department managers: rows with ``managertype = 2``; they see their company's jobs and only
  the recipients who belong to their departments (and the departments below them).
* Anybody else, deleted or suspended users, and suspended company memberships: refused.

Rights are read at sign-in and again every ``recheck_seconds`` (a demoted manager loses access on
the next request after that). Sessions live in ``mrcloud_dash_sessions``; the cookie holds only a
random id whose SHA-256 is the key, so a database leak does not leak usable sessions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import time
import zoneinfo
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from moodle_bridge.sources.iomad.schema import IomadSchemaNotFound, IomadTables, detect_iomad
from moodle_bridge.storage.bridge_tables import BridgeTables

ROLE_ADMIN = "admin"
ROLE_COMPANY = "company_manager"
ROLE_DEPARTMENT = "department_manager"
ROLE_LABELS = {
    ROLE_ADMIN: "Site administrator",
    ROLE_COMPANY: "Company manager",
    ROLE_DEPARTMENT: "Department manager",
}
MANAGER_COMPANY = 1
MANAGER_DEPARTMENT = 2
#: A department manager's user ids are listed in the recipient filter up to this many.
MAX_LISTED_USERS = 5000
DEPARTMENT_CACHE_SECONDS = 60
#: Nonce-table key id under which burnt sign-in token ids are kept.
TOKEN_KEY_ID = "dashboard"  # noqa: S105 - a name, not a secret


class AccessRefused(Exception):
    """The user may not use the dashboard; the message is shown to them."""


@dataclass(frozen=True)
class Principal:
    user_id: int
    fullname: str
    role: str
    #: None: every company (site admin); else the one company this user manages.
    company_id: int | None
    #: Department managers only: the departments (with their sub-departments) they see.
    department_ids: tuple[int, ...]
    timezone: str

    @property
    def actor(self) -> str:
        return f"dashboard:{self.user_id}"

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def can_act(self) -> bool:
        """Retry, cancel, settings and suppression changes: admins and company managers."""
        return self.role in (ROLE_ADMIN, ROLE_COMPANY)

    def sees_company(self, company_id: int) -> bool:
        return self.company_id is None or self.company_id == company_id

    def tz(self) -> dt.tzinfo:
        return resolve_timezone(self.timezone)


def resolve_timezone(name: str) -> dt.tzinfo:
    """A Moodle time zone name (or a legacy numeric offset in hours) as a tzinfo; UTC if unknown."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    try:
        hours = float(name)
    except ValueError:
        return dt.UTC
    if -14 <= hours <= 14:
        return dt.timezone(dt.timedelta(hours=hours))
    return dt.UTC


class MoodleDirectory:
    """Reads users, site admins, IOMAD managers and departments from Moodle's database."""

    def __init__(self, engine: sa.Engine, prefix: str) -> None:
        m = sa.MetaData()
        self.config = sa.Table(
            f"{prefix}config", m, sa.Column("id", sa.BigInteger), sa.Column("name"), sa.Column("value")
        )
        self.user = sa.Table(
            f"{prefix}user",
            m,
            sa.Column("id", sa.BigInteger),
            sa.Column("firstname"),
            sa.Column("lastname"),
            sa.Column("deleted"),
            sa.Column("suspended"),
            sa.Column("timezone"),
        )
        self._dept_cache: dict[tuple[int, tuple[int, ...]], tuple[float, list[int] | sa.Select[Any]]] = {}
        self.iomad: IomadTables | None
        try:
            with engine.connect() as conn:
                self.iomad = detect_iomad(conn, prefix)
        except IomadSchemaNotFound:
            self.iomad = None

    def _iomad(self) -> IomadTables:
        if self.iomad is None:
            raise AccessRefused("this site has no IOMAD tables")
        return self.iomad

    def _config(self, conn: sa.Connection, name: str) -> str:
        c = self.config.c
        return str(conn.execute(sa.select(c.value).where(c.name == name)).scalar() or "")

    def site_admins(self, conn: sa.Connection) -> set[int]:
        return {int(x) for x in self._config(conn, "siteadmins").split(",") if x.strip().isdigit()}

    def user_timezone(self, conn: sa.Connection, raw: str | None) -> str:
        """Moodle's rule: ``forcetimezone``, else the user's zone, else the site's (``99``: unset)."""
        raw = (raw or "").strip().strip("'")
        forced = self._config(conn, "forcetimezone")
        if forced and forced != "99":
            return forced
        if raw and raw != "99":
            return raw
        return self._config(conn, "timezone") or "UTC"

    def departments_below(self, conn: sa.Connection, company_id: int, roots: set[int]) -> set[int]:
        """``roots`` and every department under them (IOMAD's department tree)."""
        d = self._iomad().department
        rows = conn.execute(sa.select(d.c.id, d.c.parent).where(d.c.company == company_id)).all()
        children: dict[int, list[int]] = {}
        for row in rows:
            children.setdefault(int(row.parent or 0), []).append(int(row.id))
        seen: set[int] = set()
        todo = list(roots)
        while todo:
            dep = todo.pop()
            if dep in seen:
                continue
            seen.add(dep)
            todo.extend(children.get(dep, ()))
        return seen

    def resolve(self, conn: sa.Connection, user_id: int, company_id: int) -> Principal:
        """The user's rights now; ``company_id`` is the company chosen in Moodle (0: none)."""
        u = self.user.c
        user = conn.execute(
            sa.select(u.firstname, u.lastname, u.deleted, u.suspended, u.timezone).where(u.id == user_id)
        ).first()
        if user is None or int(user.deleted or 0) or int(user.suspended or 0):
            raise AccessRefused("this Moodle account does not exist or is suspended")
        fullname = f"{user.firstname or ''} {user.lastname or ''}".strip() or f"user {user_id}"
        timezone = self.user_timezone(conn, user.timezone)
        if user_id in self.site_admins(conn):
            return Principal(user_id, fullname, ROLE_ADMIN, None, (), timezone)
        if self.iomad is None:
            raise AccessRefused("only site administrators can use the dashboard on a site without IOMAD")
        cu = self.iomad.company_users
        rows = conn.execute(
            sa.select(cu.c.companyid, cu.c.managertype, cu.c.departmentid).where(
                cu.c.userid == user_id,
                cu.c.managertype.in_((MANAGER_COMPANY, MANAGER_DEPARTMENT)),
                sa.func.coalesce(cu.c.suspended, 0) == 0,
            )
        ).all()
        companies = {int(r.companyid) for r in rows}
        if company_id == 0 and len(companies) == 1:
            company_id = next(iter(companies))
        if company_id not in companies:
            raise AccessRefused(
                "you are not a manager of this company; choose your company in IOMAD and open the "
                "dashboard again"
                if company_id
                else "you manage no company"
            )
        mine = [r for r in rows if int(r.companyid) == company_id]
        if any(int(r.managertype) == MANAGER_COMPANY for r in mine):
            return Principal(user_id, fullname, ROLE_COMPANY, company_id, (), timezone)
        roots = {int(r.departmentid) for r in mine}
        departments = self.departments_below(conn, company_id, roots)
        return Principal(user_id, fullname, ROLE_DEPARTMENT, company_id, tuple(sorted(departments)), timezone)

    def department_users(
        self, conn: sa.Connection, company_id: int, department_ids: tuple[int, ...]
    ) -> list[int] | sa.Select[Any]:
        """The user ids in these departments, for recipient filters: a list (MariaDB then walks the
        (jobid, userid, status) index per user), or the sub-select itself for very large departments.
        Cached for a minute per (company, departments)."""
        key = (company_id, department_ids)
        now = time.monotonic()
        hit = self._dept_cache.get(key)
        if hit is not None and now - hit[0] < DEPARTMENT_CACHE_SECONDS:
            return hit[1]
        cu = self._iomad().company_users
        query = sa.select(cu.c.userid).where(
            cu.c.companyid == company_id, cu.c.departmentid.in_(department_ids or (-1,))
        )
        ids = sorted({int(x) for x in conn.execute(query.limit(MAX_LISTED_USERS + 1)).scalars()})
        result: list[int] | sa.Select[Any] = ids if len(ids) <= MAX_LISTED_USERS else query
        self._dept_cache[key] = (now, result)
        return result


# -- sessions ---------------------------------------------------------------------------------


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str
    company_hint: int
    checked: int
    expires: int


def create_session(
    conn: sa.Connection,
    tables: BridgeTables,
    principal: Principal,
    *,
    company_hint: int,
    now: int,
    lifetime: int,
    source: str | None,
) -> tuple[str, Session]:
    """Store a new session; returns the cookie value (never stored) and the session."""
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    conn.execute(
        tables.dash_sessions.insert().values(
            sessionhash=_hash(session_id),
            userid=principal.user_id,
            companyid=company_hint,
            principal=_dump(principal),
            csrftoken=csrf,
            sourceaddress=(source or "")[:45] or None,
            timecreated=now,
            timechecked=now,
            timeexpires=now + lifetime,
        )
    )
    return session_id, Session(principal, csrf, company_hint, now, now + lifetime)


def _dump(p: Principal) -> str:
    return json.dumps(
        {
            "user_id": p.user_id,
            "fullname": p.fullname,
            "role": p.role,
            "company_id": p.company_id,
            "department_ids": list(p.department_ids),
            "timezone": p.timezone,
        },
        separators=(",", ":"),
    )


def _load(text: str) -> Principal:
    d = json.loads(text)
    return Principal(
        int(d["user_id"]),
        str(d["fullname"]),
        str(d["role"]),
        None if d["company_id"] is None else int(d["company_id"]),
        tuple(int(x) for x in d["department_ids"]),
        str(d["timezone"]),
    )


def load_session(conn: sa.Connection, tables: BridgeTables, session_id: str, *, now: int) -> Session | None:
    s = tables.dash_sessions
    if not session_id or len(session_id) > 100:
        return None
    row = conn.execute(
        sa.select(s.c.principal, s.c.csrftoken, s.c.companyid, s.c.timechecked, s.c.timeexpires).where(
            s.c.sessionhash == _hash(session_id)
        )
    ).first()
    if row is None or int(row.timeexpires) <= now:
        return None
    return Session(
        _load(row.principal), row.csrftoken, int(row.companyid), int(row.timechecked), int(row.timeexpires)
    )


def refresh_session(
    conn: sa.Connection, tables: BridgeTables, session_id: str, principal: Principal, *, now: int
) -> None:
    s = tables.dash_sessions
    conn.execute(
        s.update()
        .where(s.c.sessionhash == _hash(session_id))
        .values(principal=_dump(principal), timechecked=now)
    )


def end_session(conn: sa.Connection, tables: BridgeTables, session_id: str) -> None:
    s = tables.dash_sessions
    conn.execute(s.delete().where(s.c.sessionhash == _hash(session_id)))
