"""Seed a simulated IOMAD the way IOMAD itself fills its tables (facts sections 2, 3, 8).

- companies with one ``email_template`` row per template (what the company_created
  observer writes), a top department and child departments;
- learners created as a CSV upload does: a ``user_create`` queue row whose rendered body holds
  the plaintext temporary password (not HTML-escaped), the ``iomad_temporary`` RC4 preference,
  ``auth_forcepasswordchange``; headers = PHP ``serialize()`` of ``['template' => stdClass]``;
- ``license_allocated`` rows with ``due = 0``; company managers (managertype 1) in the top
  department; supervisor addresses in the company's ``emailprofileid`` profile field;
- completions with their track row, IOMAD certificate record and ``completion_course_user`` row.

Deterministic for a given ``SeedSpec.seed``; rows go in with executemany in chunks, so 50,000
users take seconds on MariaDB.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from iomad_sim.iomad_schema import metadata_for
from moodle_bridge.sources.iomad.headers import serialize_headers
from moodle_bridge.sources.iomad.passwords import Secret, encode_iomad_temporary
from moodle_bridge.sources.iomad.schema import IomadGeneration, IomadTables
from moodle_bridge.sources.iomad.templates import ALL_TEMPLATES

SITE_NAME = "IOMAD Test"
WWWROOT = "http://localhost"
ADMIN_ID = 2
SUPPORT_USER = -20
INSERT_CHUNK = 1000
PROFILE_FIELD_SHORTNAME = "supervisoremail"

#: Moodle generate_password() character classes (lower, upper, digits, $CFG->passwordpolicy nonalnum).
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS = "0123456789"
_NONALNUM = ".,;:!?_-+/*@#&$"

# Template texts as IOMAD's language strings give them (from the live 4.3.7 rows).
TEMPLATE_TEXT: dict[str, tuple[str, str]] = {
    "user_create": (
        "A new on-line learning account has been created for you",
        "<p>Dear {User_FirstName},</p>\n<p>A new user account has been created for you on {Site_FullName} "
        "and you have been issued with a new temporary password.</p>\n<p>Your current login information "
        "is now:<p>\n<p>username: {User_Username}</br>\npassword: {User_Newpassword}</br>\n(you will have "
        "to change your password when you login for the first time)</p>\n<p>To access your training, "
        'login at</p>\n<p><a href="{LinkURL}">{LinkURL}</a></p>\n<p>In most mail programs, this should '
        "appear as a blue, clickable link. If that doesn't work, then copy and paste the address into "
        "the address bar at the top of your web browser window.</p>\n<p>For technical queries, please "
        "contact your IT Support team/Helpdesk</p>\n<p>Best Regards,</p>\n<p>{Sender_FirstName} "
        "{Sender_LastName}</p>",
    ),
    "license_allocated": (
        "Access to course {Course_FullName} granted",
        "<p>Dear {User_FirstName},</p>\n<p>You have been granted access to the online training for "
        '{Course_FullName}. Please visit <a href="{CourseURL}">{CourseURL}</a> to partake in this '
        "training.</br>\nOnce you have entered the course you will have access to it for {License_Length} "
        "days. Unused access will expire after {License_Valid}</p>",
    ),
    "completion_course_user": (
        "Course {Course_FullName} has been completed",
        "<p>Dear {User_FirstName},</p>\n<p>Congratulations on completing the training course "
        "{Course_FullName}. Please find attached a copy of their certificate for your records.</p>\n\n"
        "<p>The certificate is also available from your dashboard should you need a copy in the future.</p>",
    ),
}


@dataclass(frozen=True)
class SeedSpec:
    companies: int = 1
    users_per_company: int = 10
    managers_per_company: int = 1
    child_departments: int = 1
    #: every Nth learner gets supervisor addresses in the profile field (0: nobody)
    supervisor_every: int = 0
    license_allocated: bool = True
    completions_per_company: int = 0
    now: int = 1_795_361_815
    seed: int = 1


@dataclass
class SeedResult:
    company_ids: list[int] = field(default_factory=list)
    learner_ids: list[int] = field(default_factory=list)
    manager_ids: list[int] = field(default_factory=list)
    #: learner id -> temporary password (masked)
    passwords: dict[int, Secret] = field(default_factory=dict, repr=False)
    #: template name -> queue row ids
    email_ids: dict[str, list[int]] = field(default_factory=dict)
    site_course_id: int = 1
    course_id: int = 2
    profile_field_id: int = 1
    template_ids: dict[tuple[int, str], int] = field(default_factory=dict)
    completion_ids: list[int] = field(default_factory=list)
    department_ids: dict[int, list[int]] = field(default_factory=dict)


def generate_password(rng: random.Random, length: int = 10) -> str:
    """Like Moodle's generate_password(): one of each class, then any, shuffled."""
    chars = [rng.choice(_LOWER), rng.choice(_UPPER), rng.choice(_DIGITS), rng.choice(_NONALNUM)]
    pool = _LOWER + _UPPER + _DIGITS + _NONALNUM
    chars += [rng.choice(pool) for _ in range(length - len(chars))]
    rng.shuffle(chars)
    return "".join(chars)


def render(text: str, values: Mapping[str, str]) -> str:
    """IOMAD's EmailVars fill: plain str_replace, values NOT HTML-escaped."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def template_object(
    template_id: int, companyid: int, name: str, lang: str | None = "en", **overrides: object
) -> dict[str, object]:
    """The ``template`` stdClass IOMAD serializes into headers (22 properties, data.sql order)."""
    subject, body = TEMPLATE_TEXT.get(name, (name, f"<p>{name}</p>"))
    obj: dict[str, object] = {"id": str(template_id), "companyid": str(companyid), "name": name}
    if lang is not None:
        obj["lang"] = lang
    obj.update(
        {
            "subject": subject,
            "body": body,
            "signature": "",
            "disabled": 0,
            "disabledmanager": 0,
            "disabledsupervisor": 0,
            "emailto": "",
            "emailtoother": "",
            "emailcc": "",
            "emailccother": "",
            "emailfrom": "",
            "emailfromother": "",
            "emailreplyto": "",
            "emailreplytoother": "",
            "repeatperiod": 0,
            "repeatvalue": 0,
            "repeatday": 0,
            "emailfromothername": "",
        }
    )
    obj.update(overrides)
    return obj


def _insert_chunks(conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    for start in range(0, len(rows), INSERT_CHUNK):
        conn.execute(table.insert(), list(rows[start : start + INSERT_CHUNK]))


def _next_id(conn: sa.Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0))).scalar_one()) + 1


def fix_sequences(conn: sa.Connection, tables: Iterable[sa.Table]) -> None:
    """PostgreSQL: move each id sequence past explicitly inserted ids."""
    if conn.dialect.name != "postgresql":
        return
    for table in tables:
        conn.execute(
            sa.text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table.name}), false)"
            )
        )


def seed_site(conn: sa.Connection, tables: IomadTables) -> None:
    """Moodle basics: guest + admin users, the site course, config, the email cron task."""
    meta = metadata_for(tables)
    p = tables.prefix
    conn.execute(
        meta.tables[f"{p}user"].insert(),
        [
            {
                "id": 1,
                "username": "guest",
                "email": "root@localhost",
                "firstname": "Guest user",
                "lastname": " ",
                "confirmed": 1,
                "mnethostid": 1,
            },
            {
                "id": ADMIN_ID,
                "username": "admin",
                "email": "admin@example.com",
                "firstname": "Admin",
                "lastname": "User",
                "confirmed": 1,
                "mnethostid": 1,
            },
        ],
    )
    conn.execute(
        meta.tables[f"{p}course"].insert(),
        [{"id": 1, "category": 0, "fullname": SITE_NAME, "shortname": "iomad"}],
    )
    conn.execute(
        meta.tables[f"{p}config"].insert(),
        [{"name": "siteadmins", "value": str(ADMIN_ID)}, {"name": "wwwroot", "value": WWWROOT}],
    )
    component = "local_email" if tables.generation is IomadGeneration.LEGACY else "local_iomad"
    versions = (
        {"local_iomad": "2024090401", "local_email": "2024090400", "local_iomad_track": "2024090400"}
        if tables.generation is IomadGeneration.LEGACY
        else {"local_iomad": "2026022345"}
    )  # illustrative; the local_iomad values are upgrade steps named in the facts (4.3.7, 5.1 rename)
    conn.execute(
        meta.tables[f"{p}config_plugins"].insert(),
        [{"plugin": k, "name": "version", "value": v} for k, v in versions.items()],
    )
    conn.execute(
        meta.tables[f"{p}task_scheduled"].insert(),
        [
            {
                "component": component,
                "classname": tables.email_cron_task,
                "minute": "*/5",
                "hour": "*",
                "day": "*",
                "month": "*",
                "dayofweek": "*",
                "nextruntime": 0,
            }
        ],
    )
    conn.execute(
        meta.tables[f"{p}user_info_field"].insert(),
        [{"id": 1, "shortname": PROFILE_FIELD_SHORTNAME, "name": "Supervisor email", "datatype": "text"}],
    )
    conn.execute(
        meta.tables[f"{p}course"].insert(),
        [{"id": 2, "category": 1, "fullname": "Safety 101", "shortname": "safety101"}],
    )
    fix_sequences(conn, [meta.tables[f"{p}{n}"] for n in ("user", "course", "user_info_field")])


def seed_iomad(engine_or_conn: sa.Engine | sa.Connection, tables: IomadTables, spec: SeedSpec) -> SeedResult:
    """Seed site, companies, users and their queued mail; commits when given an Engine."""
    if isinstance(engine_or_conn, sa.Engine):
        with engine_or_conn.begin() as conn:
            return _seed(conn, tables, spec)
    return _seed(engine_or_conn, tables, spec)


def _seed(conn: sa.Connection, tables: IomadTables, spec: SeedSpec) -> SeedResult:
    rng = random.Random(spec.seed)  # noqa: S311 - deterministic test data, not secrets
    meta = metadata_for(tables)
    p = tables.prefix
    t_user = meta.tables[f"{p}user"]
    if conn.execute(sa.select(t_user.c.id).where(t_user.c.id == ADMIN_ID)).first() is None:
        seed_site(conn, tables)
    t_company = meta.tables[tables.company.name]
    t_template = meta.tables[tables.email_template.name]
    t_dept = meta.tables[tables.department.name]
    t_cu = meta.tables[tables.company_users.name]
    t_email = meta.tables[tables.email.name]
    t_pref = meta.tables[f"{p}user_preferences"]
    t_uid = meta.tables[f"{p}user_info_data"]
    t_cc = meta.tables[f"{p}course_completions"]
    t_track = meta.tables[tables.track.name]
    t_certs = meta.tables[tables.track_certs.name]
    dept_company = tables.column_names.get("department.company", "company")
    dept_parent = tables.column_names.get("department.parent", "parent")

    result = SeedResult(profile_field_id=1)
    now = spec.now
    company_id = _next_id(conn, t_company)
    template_id = _next_id(conn, t_template)
    dept_id = _next_id(conn, t_dept)
    user_id = max(_next_id(conn, t_user), 3)
    email_id = _next_id(conn, t_email)
    companies, templates, depts, users, cus, prefs, emails, infodata = [], [], [], [], [], [], [], []
    completions, tracks, certs = [], [], []
    cc_id, track_id = _next_id(conn, t_cc), _next_id(conn, t_track)
    cert_id = _next_id(conn, t_certs)

    header_cache: dict[tuple[int, str], str] = {}

    def headers_for(cid: int, name: str) -> str:
        """Every row of one company's template carries the same serialized template object."""
        key = (cid, name)
        if key not in header_cache:
            tid = result.template_ids[key]
            header_cache[key] = serialize_headers(
                template_object(tid, cid, name, "en" if tables.template_has_lang else None)
            )
        return header_cache[key]

    def queue(
        templatename: str,
        userid: int,
        companyid: int,
        courseid: int,
        subject: str,
        body: str,
        headers: str,
        due: int,
        modified: int,
    ) -> int:
        nonlocal email_id
        emails.append(
            {
                "id": email_id,
                "templatename": templatename,
                "modifiedtime": modified,
                "sent": None,
                "subject": subject,
                "body": body,
                "varsreplaced": 1,
                "companyid": companyid,
                "courseid": courseid,
                "userid": userid,
                "senderid": SUPPORT_USER,
                "headers": headers,
                "due": due,
            }
        )
        result.email_ids.setdefault(templatename, []).append(email_id)
        email_id += 1
        return email_id - 1

    for _ in range(spec.companies):
        cid = company_id
        company_id += 1
        result.company_ids.append(cid)
        stamp = f"{cid}{spec.seed}"
        companies.append(
            {
                "id": cid,
                "name": f"Acme Training {stamp}",
                "shortname": f"acme{stamp}",
                "city": "London",
                "country": "GB",
                "theme": "",
                "emailprofileid": 1 if spec.supervisor_every else None,
            }
        )
        for name in sorted(ALL_TEMPLATES):
            row: dict[str, object] = {"id": template_id, "companyid": cid, "name": name}
            if tables.template_has_lang:
                row["lang"] = "en"
            templates.append(row)
            result.template_ids[(cid, name)] = template_id
            template_id += 1
        top = dept_id
        dept_id += 1
        depts.append(
            {
                "id": top,
                "name": f"Acme Training {stamp}",
                "shortname": f"acme{stamp}",
                dept_company: cid,
                dept_parent: 0,
            }
        )
        company_depts = [top]
        for n in range(spec.child_departments):
            depts.append(
                {
                    "id": dept_id,
                    "name": f"Department {n + 1}",
                    "shortname": f"d{cid}x{n + 1}",
                    dept_company: cid,
                    dept_parent: top,
                }
            )
            company_depts.append(dept_id)
            dept_id += 1
        result.department_ids[cid] = company_depts

        for m in range(spec.managers_per_company):
            uid = user_id
            user_id += 1
            users.append(_user_row(uid, f"manager{m + 1}.c{cid}", "Manager", f"{m + 1}", now))
            cus.append({"companyid": cid, "userid": uid, "managertype": 1, "departmentid": top})
            result.manager_ids.append(uid)

        for n in range(spec.users_per_company):
            uid = user_id
            user_id += 1
            username = f"learner{n + 1}.c{cid}.{spec.seed}"
            first = f"First{n + 1}"
            users.append(_user_row(uid, username, first, f"Last{n + 1}", now - rng.randint(0, 600)))
            cus.append(
                {"companyid": cid, "userid": uid, "managertype": 0, "departmentid": rng.choice(company_depts)}
            )
            result.learner_ids.append(uid)
            password = generate_password(rng)
            result.passwords[uid] = Secret(password)
            prefs.append({"userid": uid, "name": "auth_forcepasswordchange", "value": "1"})
            prefs.append(
                {"userid": uid, "name": "iomad_temporary", "value": encode_iomad_temporary(password)}
            )
            if spec.supervisor_every and n % spec.supervisor_every == 0:
                infodata.append(
                    {"userid": uid, "fieldid": 1, "data": f"supervisor{n + 1}.c{cid}@example.org"}
                )
            created = now - rng.randint(0, 600)
            subject, body = TEMPLATE_TEXT["user_create"]
            values = {
                "User_FirstName": first,
                "Site_FullName": SITE_NAME,
                "User_Username": username,
                "User_Newpassword": password,
                "LinkURL": f"{WWWROOT}/user/profile.php?id={uid}",
                "Sender_FirstName": "Admin",
                "Sender_LastName": "User",
            }
            headers = headers_for(cid, "user_create")
            queue("user_create", uid, cid, 1, subject, render(body, values), headers, created, created)
            if spec.license_allocated:
                subject, body = TEMPLATE_TEXT["license_allocated"]
                values = {
                    "User_FirstName": first,
                    "Course_FullName": "Safety 101",
                    "CourseURL": f"{WWWROOT}/course/view.php?id=2",
                    "License_Length": "30",
                    "License_Valid": "2027-11-22",
                }
                headers = headers_for(cid, "license_allocated")
                queue(
                    "license_allocated",
                    uid,
                    cid,
                    2,
                    render(subject, values),
                    render(body, values),
                    headers,
                    0,
                    created,
                )
            if n < spec.completions_per_company:
                done = now - 60
                completions.append(
                    {
                        "id": cc_id,
                        "userid": uid,
                        "course": 2,
                        "timeenrolled": done - 3600,
                        "timestarted": done - 3000,
                        "timecompleted": done,
                    }
                )
                result.completion_ids.append(cc_id)
                cc_id += 1
                tracks.append(
                    {
                        "id": track_id,
                        "courseid": 2,
                        "coursename": "Safety 101",
                        "userid": uid,
                        "timecompleted": done,
                        "timeenrolled": done - 3600,
                        "timestarted": done - 3000,
                        "finalscore": rng.randint(60, 100),
                        "companyid": cid,
                        "modifiedtime": done,
                    }
                )
                certs.append({"id": cert_id, "trackid": track_id, "filename": "Safety certificate.pdf"})
                track_id += 1
                cert_id += 1
                subject, body = TEMPLATE_TEXT["completion_course_user"]
                values = {"User_FirstName": first, "Course_FullName": "Safety 101"}
                headers = headers_for(cid, "completion_course_user")
                queue(
                    "completion_course_user",
                    uid,
                    cid,
                    2,
                    render(subject, values),
                    render(body, values),
                    headers,
                    done,
                    done,
                )

    for table, rows in (
        (t_company, companies),
        (t_template, templates),
        (t_dept, depts),
        (t_user, users),
        (t_cu, cus),
        (t_pref, prefs),
        (t_uid, infodata),
        (t_email, emails),
        (t_cc, completions),
        (t_track, tracks),
        (t_certs, certs),
    ):
        if rows:
            _insert_chunks(conn, table, rows)
    touched = [t_company, t_template, t_dept, t_user, t_cu, t_pref, t_uid, t_email, t_cc, t_track, t_certs]
    fix_sequences(conn, touched)
    if conn.dialect.name == "postgresql":
        # A live site has planner statistics (autovacuum); a freshly filled one does not, and
        # PostgreSQL then picks nested loops that take seconds. Give it what a real site has.
        for table in touched:
            conn.execute(sa.text(f"ANALYZE {table.name}"))
    return result


def _user_row(uid: int, username: str, first: str, last: str, created: int) -> dict[str, object]:
    return {
        "id": uid,
        "auth": "manual",
        "confirmed": 1,
        "mnethostid": 1,
        "username": username,
        "password": "$2y$10$" + "x" * 53,  # a bcrypt-shaped placeholder hash
        "firstname": first,
        "lastname": last,
        "email": f"{username}@example.com",
        "lang": "en",
        "timecreated": created,
        "timemodified": created,
    }
