"""Which IOMAD schema generation a database holds, and SQLAlchemy tables for the parts we touch.

IOMAD <= 5.0 keeps its tables under short names (``email``, ``company``, ``department``...);
IOMAD 5.1 renamed nearly all of them (``local_iomad_emails``, ``local_iomad_companies``...) and
some columns (``department.company`` -> ``companyid``; see docs/iomad.md). The 5.1 names are
still moving between releases, so nothing here is hard-coded to one spelling: ``detect_iomad``
looks at the live database once and builds tables whose *column keys* are always the legacy
names. Callers write ``tables.department.c.company`` and the SQL says ``companyid`` on 5.1+.

Only the columns the bridge reads or writes are declared (SQLAlchemy Core does not need the
rest); ``iomad_sim.iomad_schema`` declares the complete tables for tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

#: Moodle's XMLDB text is LONGTEXT on MySQL/MariaDB (TEXT there stops at 64 KB).
LONGTEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


class IomadGeneration(Enum):
    """LEGACY: IOMAD <= 5.0 table names. RENAMED: IOMAD 5.1+ ``local_iomad_*`` names."""

    LEGACY = "legacy"
    RENAMED = "renamed"


class IomadSchemaNotFound(RuntimeError):
    """Neither IOMAD generation is present under the given prefix (message names what was looked for)."""


#: Logical table -> candidate physical names (without prefix) per generation, first match wins.
TABLE_CANDIDATES: dict[IomadGeneration, dict[str, tuple[str, ...]]] = {
    IomadGeneration.LEGACY: {
        "email": ("email",),
        "email_template": ("email_template",),
        "email_template_strings": ("email_template_strings",),
        "company": ("company",),
        "company_users": ("company_users",),
        "department": ("department",),
        "license_users": ("companylicense_users",),
        "track": ("local_iomad_track",),
        "track_certs": ("local_iomad_track_certs",),
    },
    IomadGeneration.RENAMED: {
        "email": ("local_iomad_emails",),
        "email_template": ("local_iomad_email_templates",),
        "email_template_strings": ("local_iomad_email_template_strings",),
        "company": ("local_iomad_companies",),
        "company_users": ("local_iomad_company_users",),
        # #2637 / upgrade.php say company_departments; one install.xml copy says departments.
        "department": ("local_iomad_company_departments", "local_iomad_departments"),
        "license_users": ("local_iomad_company_license_users",),
        "track": ("local_iomad_tracks", "local_iomad_track"),
        "track_certs": ("local_iomad_track_certs", "local_iomad_tracks_certs"),
    },
}

#: Moodle core tables: the same in every generation.
CORE_TABLES = (
    "user",
    "user_preferences",
    "user_info_field",
    "user_info_data",
    "course",
    "course_completions",
    "task_scheduled",
    "lock_db",
    "config",
    "config_plugins",
)

#: (logical table, logical column) -> candidate physical column names, first match wins.
COLUMN_CANDIDATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("department", "company"): ("company", "companyid"),
    ("department", "parent"): ("parent", "parentid"),
    ("company", "category"): ("category", "coursecategoryid"),
    ("company", "profileid"): ("profileid", "profilecategoryid"),
    ("company", "companyterminated"): ("companyterminated", "terminated", "isterminated"),
    ("license_users", "licensecourseid"): ("licensecourseid", "courseid"),
}

#: Default physical spelling of the variant columns per generation ("table.column" -> name).
DEFAULT_COLUMNS: dict[IomadGeneration, dict[str, str]] = {
    IomadGeneration.LEGACY: {f"{t}.{c}": c for (t, c) in COLUMN_CANDIDATES},
    IomadGeneration.RENAMED: {
        "department.company": "companyid",
        "department.parent": "parentid",
        "company.category": "coursecategoryid",
        "company.profileid": "profilecategoryid",
        "company.companyterminated": "terminated",
        "license_users.licensecourseid": "courseid",
    },
}

#: Plugins whose installed version detect_iomad records (config_plugins name = 'version').
IOMAD_PLUGINS = ("local_iomad", "local_email", "local_iomad_track", "block_iomad_company_admin")

#: Cron task class (Moodle lock resource) per generation.
EMAIL_CRON_TASK = {
    IomadGeneration.LEGACY: "\\local_email\\task\\cron_task",
    IomadGeneration.RENAMED: "\\local_iomad\\task\\email_cron_task",
}


@dataclass(frozen=True)
class IomadTables:
    """Tables of one IOMAD database. Column keys are the legacy names in every generation."""

    generation: IomadGeneration
    prefix: str
    metadata: sa.MetaData
    email: sa.Table
    email_template: sa.Table
    company: sa.Table
    company_users: sa.Table
    department: sa.Table
    user: sa.Table
    user_preferences: sa.Table
    user_info_field: sa.Table
    user_info_data: sa.Table
    course: sa.Table
    course_completions: sa.Table
    track: sa.Table
    track_certs: sa.Table
    task_scheduled: sa.Table
    lock_db: sa.Table
    config: sa.Table
    config_plugins: sa.Table
    license_users: sa.Table | None = None
    email_template_strings: sa.Table | None = None
    #: "table.column" (logical) -> physical column name, for the renamed/variant columns.
    column_names: Mapping[str, str] = field(default_factory=dict)
    #: True when email_template still has lang/subject/body (IOMAD <= 4.3 / early 4.5).
    template_has_lang: bool = True
    #: plugin -> version from config_plugins (local_email, local_iomad, ...), for diagnostics
    plugin_versions: Mapping[str, str] = field(default_factory=dict)

    @property
    def email_cron_task(self) -> str:
        """Moodle lock resource of IOMAD's email cron task for this generation."""
        return EMAIL_CRON_TASK[self.generation]

    def physical(self, logical: str) -> str:
        """Physical table name (with prefix) of a logical table such as ``"email"``."""
        table: sa.Table = getattr(self, logical)
        return table.name


def _col(name: str, type_: sa.types.TypeEngine[Any], key: str | None = None, **kw: object) -> sa.Column[Any]:
    return sa.Column(name, type_, key=key or name, **kw)  # type: ignore[arg-type]


def build_iomad_tables(
    prefix: str = "mdl_",
    generation: IomadGeneration = IomadGeneration.LEGACY,
    table_names: Mapping[str, str] | None = None,
    column_names: Mapping[str, str] | None = None,
    template_has_lang: bool = True,
    with_optional: Iterable[str] = ("license_users", "email_template_strings"),
) -> IomadTables:
    """Build the table objects for a known layout (``detect_iomad`` fills in the variants).

    ``table_names`` maps logical -> physical name without prefix (defaults: first candidate);
    ``column_names`` maps "table.column" -> physical column name (defaults: first candidate,
    i.e. the legacy spelling for LEGACY and the 5.1 spelling for RENAMED).
    """
    names = {k: v[0] for k, v in TABLE_CANDIDATES[generation].items()}
    names.update(table_names or {})
    cols = dict(DEFAULT_COLUMNS[generation])
    cols.update(column_names or {})
    optional = set(with_optional)
    m = sa.MetaData()
    p = prefix
    BIG = sa.BigInteger()  # Moodle int(10)/int(20)
    SMALL = sa.SmallInteger()  # Moodle int(1)/int(2)

    def c(tbl: str, logical: str, type_: sa.types.TypeEngine[Any], **kw: object) -> sa.Column[Any]:
        return _col(cols.get(f"{tbl}.{logical}", logical), type_, key=logical, **kw)

    email = sa.Table(
        f"{p}{names['email']}",
        m,
        _col("id", BIG, primary_key=True),
        _col("templatename", sa.String(100)),
        _col("modifiedtime", BIG),
        _col("sent", BIG),
        _col("subject", sa.String(255)),
        _col("body", LONGTEXT),
        _col("varsreplaced", BIG),
        _col("companyid", BIG),
        _col("courseid", BIG),
        _col("userid", BIG),
        _col("invoiceid", BIG),
        _col("classroomid", BIG),
        _col("senderid", BIG),
        _col("headers", LONGTEXT),
        _col("due", BIG),
    )
    template_cols = [
        _col("id", BIG, primary_key=True),
        _col("companyid", BIG),
        _col("name", sa.String(50)),
        _col("disabled", SMALL),
        _col("disabledmanager", SMALL),
        _col("disabledsupervisor", SMALL),
        _col("emailto", sa.String(1333)),
        _col("emailtoother", sa.String(1333)),
        _col("emailcc", sa.String(1333)),
        _col("emailccother", sa.String(1333)),
        _col("emailfromother", sa.String(100)),
        _col("emailreplytoother", sa.String(100)),
    ]
    if template_has_lang:
        template_cols.append(_col("lang", sa.String(20)))
    email_template = sa.Table(f"{p}{names['email_template']}", m, *template_cols)
    email_template_strings = (
        sa.Table(
            f"{p}{names['email_template_strings']}",
            m,
            _col("id", BIG, primary_key=True),
            _col("templateid", BIG),
            _col("lang", sa.String(20)),
            _col("subject", LONGTEXT),
            _col("body", LONGTEXT),
            _col("signature", LONGTEXT),
        )
        if "email_template_strings" in optional
        else None
    )
    company = sa.Table(
        f"{p}{names['company']}",
        m,
        _col("id", BIG, primary_key=True),
        _col("name", sa.String(50)),
        _col("shortname", sa.String(25)),
        _col("suspended", SMALL),
        _col("emailprofileid", BIG),
        _col("managernotify", BIG),
        _col("parentid", BIG),
        _col("hostname", sa.String(200)),
        c("company", "category", BIG),
        c("company", "companyterminated", SMALL),
    )
    company_users = sa.Table(
        f"{p}{names['company_users']}",
        m,
        _col("id", BIG, primary_key=True),
        _col("companyid", BIG),
        _col("userid", BIG),
        _col("managertype", SMALL),
        _col("departmentid", BIG),
        _col("suspended", SMALL),
        _col("educator", SMALL),
    )
    department = sa.Table(
        f"{p}{names['department']}",
        m,
        _col("id", BIG, primary_key=True),
        _col("name", sa.String(255)),
        _col("shortname", sa.String(32)),
        c("department", "company", BIG),
        c("department", "parent", BIG),
    )
    license_users = (
        sa.Table(
            f"{p}{names['license_users']}",
            m,
            _col("id", BIG, primary_key=True),
            _col("licenseid", BIG),
            _col("userid", BIG),
            _col("isusing", SMALL),
            c("license_users", "licensecourseid", BIG),
            _col("issuedate", BIG),
        )
        if "license_users" in optional
        else None
    )
    user = sa.Table(
        f"{p}user",
        m,
        _col("id", BIG, primary_key=True),
        _col("auth", sa.String(20)),
        _col("deleted", SMALL),
        _col("suspended", SMALL),
        _col("username", sa.String(100)),
        _col("firstname", sa.String(100)),
        _col("lastname", sa.String(100)),
        _col("email", sa.String(100)),
        _col("emailstop", SMALL),
        _col("lang", sa.String(30)),
        _col("mailformat", SMALL),
    )
    user_preferences = sa.Table(
        f"{p}user_preferences",
        m,
        _col("id", BIG, primary_key=True),
        _col("userid", BIG),
        _col("name", sa.String(255)),
        _col("value", sa.String(1333)),
    )
    user_info_field = sa.Table(
        f"{p}user_info_field",
        m,
        _col("id", BIG, primary_key=True),
        _col("shortname", sa.String(255)),
        _col("name", sa.Text()),
        _col("datatype", sa.String(255)),
    )
    user_info_data = sa.Table(
        f"{p}user_info_data",
        m,
        _col("id", BIG, primary_key=True),
        _col("userid", BIG),
        _col("fieldid", BIG),
        _col("data", sa.Text()),
    )
    course = sa.Table(
        f"{p}course",
        m,
        _col("id", BIG, primary_key=True),
        _col("category", BIG),
        _col("fullname", sa.String(254)),
        _col("shortname", sa.String(255)),
    )
    course_completions = sa.Table(
        f"{p}course_completions",
        m,
        _col("id", BIG, primary_key=True),
        _col("userid", BIG),
        _col("course", BIG),
        _col("timeenrolled", BIG),
        _col("timestarted", BIG),
        _col("timecompleted", BIG),
    )
    track = sa.Table(
        f"{p}{names['track']}",
        m,
        _col("id", BIG, primary_key=True),
        _col("courseid", BIG),
        _col("coursename", sa.String(254)),
        _col("userid", BIG),
        _col("timecompleted", BIG),
        _col("timeenrolled", BIG),
        _col("timestarted", BIG),
        _col("timeexpires", BIG),
        _col("finalscore", sa.Numeric(10, 5)),
        _col("companyid", BIG),
        _col("licenseid", BIG),
        _col("licensename", sa.String(255)),
        _col("modifiedtime", BIG),
    )
    track_certs = sa.Table(
        f"{p}{names['track_certs']}",
        m,
        _col("id", BIG, primary_key=True),
        _col("trackid", BIG),
        _col("filename", sa.Text()),
    )
    task_scheduled = sa.Table(
        f"{p}task_scheduled",
        m,
        _col("id", BIG, primary_key=True),
        _col("component", sa.String(255)),
        _col("classname", sa.String(255)),
        _col("lastruntime", BIG),
        _col("nextruntime", BIG),
        _col("disabled", SMALL),
        _col("timestarted", BIG),
        _col("hostname", sa.String(255)),
        _col("pid", BIG),
    )
    lock_db = sa.Table(
        f"{p}lock_db",
        m,
        _col("id", BIG, primary_key=True),
        _col("resourcekey", sa.String(255)),
        _col("expires", BIG),
        _col("owner", sa.String(36)),
    )
    config = sa.Table(
        f"{p}config",
        m,
        _col("id", BIG, primary_key=True),
        _col("name", sa.String(255)),
        _col("value", sa.Text()),
    )
    config_plugins = sa.Table(
        f"{p}config_plugins",
        m,
        _col("id", BIG, primary_key=True),
        _col("plugin", sa.String(100)),
        _col("name", sa.String(100)),
        _col("value", sa.Text()),
    )
    return IomadTables(
        generation=generation,
        prefix=prefix,
        metadata=m,
        email=email,
        email_template=email_template,
        company=company,
        company_users=company_users,
        department=department,
        user=user,
        user_preferences=user_preferences,
        user_info_field=user_info_field,
        user_info_data=user_info_data,
        course=course,
        course_completions=course_completions,
        track=track,
        track_certs=track_certs,
        task_scheduled=task_scheduled,
        lock_db=lock_db,
        config=config,
        config_plugins=config_plugins,
        license_users=license_users,
        email_template_strings=email_template_strings,
        column_names=dict(cols),
        template_has_lang=template_has_lang,
    )


def _first_present(candidates: Sequence[str], present: Iterable[str]) -> str | None:
    have = set(present)
    return next((c for c in candidates if c in have), None)


def detect_iomad(conn: sa.Connection, prefix: str) -> IomadTables:
    """Find which IOMAD generation lives under ``prefix`` and build its tables.

    One table listing plus one column listing per variant table (a handful of catalogue
    queries, run once per bridge run). Raises IomadSchemaNotFound naming every table looked for.
    """
    inspector = sa.inspect(conn)
    present = {n[len(prefix) :] for n in inspector.get_table_names() if n.startswith(prefix)}
    legacy_core = ("email", "company", "company_users")
    renamed_core = ("local_iomad_emails", "local_iomad_companies", "local_iomad_company_users")
    if all(t in present for t in renamed_core):
        generation = IomadGeneration.RENAMED
    elif all(t in present for t in legacy_core):
        generation = IomadGeneration.LEGACY
    else:
        looked = ", ".join(f"{prefix}{t}" for t in (*legacy_core, *renamed_core))
        raise IomadSchemaNotFound(
            f"no IOMAD tables found under prefix {prefix!r}: looked for {looked} "
            "(IOMAD <= 5.0 or 5.1+ naming). Is this the Moodle database and the right prefix?"
        )
    missing_core = [t for t in ("user", "user_preferences", "course") if t not in present]
    if missing_core:
        raise IomadSchemaNotFound(
            f"IOMAD tables found but Moodle core tables are missing under prefix {prefix!r}: "
            + ", ".join(f"{prefix}{t}" for t in missing_core)
        )
    table_names: dict[str, str] = {}
    optional: list[str] = []
    for logical, candidates in TABLE_CANDIDATES[generation].items():
        found = _first_present(candidates, present)
        if found is None:
            if logical in ("license_users", "email_template_strings"):
                continue
            if logical in ("department", "email_template", "track", "track_certs"):
                looked = " or ".join(f"{prefix}{c}" for c in candidates)
                raise IomadSchemaNotFound(f"IOMAD {generation.value} schema is incomplete: no {looked}")
            continue
        table_names[logical] = found
        if logical in ("license_users", "email_template_strings"):
            optional.append(logical)
    column_names: dict[str, str] = {}
    for (logical_table, logical_col), candidates in COLUMN_CANDIDATES.items():
        physical_table = table_names.get(logical_table)
        if physical_table is None:
            continue
        actual = {c["name"].lower() for c in inspector.get_columns(prefix + physical_table)}
        found_col = _first_present(candidates, actual)
        if found_col is not None:
            column_names[f"{logical_table}.{logical_col}"] = found_col
    template_columns = {
        c["name"].lower() for c in inspector.get_columns(prefix + table_names["email_template"])
    }
    tables = build_iomad_tables(
        prefix,
        generation,
        table_names=table_names,
        column_names=column_names,
        template_has_lang="lang" in template_columns,
        with_optional=optional,
    )
    if "config_plugins" not in present:
        return tables
    cp = tables.config_plugins
    versions = {
        str(plugin): str(value)
        for plugin, value in conn.execute(
            sa.select(cp.c.plugin, cp.c.value).where(cp.c.name == "version", cp.c.plugin.in_(IOMAD_PLUGINS))
        )
    }
    return dataclasses.replace(tables, plugin_versions=versions)
