"""The IOMAD/Moodle tables the bridge touches, complete, as IOMAD creates them (both generations).

Types follow the live 4.3.7 dump (iomad-4.3.7-sample/schema.sql): bigint for int(10)/int(20),
tinyint for int(1), varchar(n), longtext for text, decimal(10,5), and Moodle's defaults.
Generic SQLAlchemy types with MySQL variants give the same on MariaDB and the XMLDB mapping
on PostgreSQL/SQLite. Only the tables and columns the bridge or the simulated cron need are
here; this is a stand-in for the real schema in tests, the demo and the benchmarks.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from moodle_bridge.sources.iomad.schema import (
    DEFAULT_COLUMNS,
    TABLE_CANDIDATES,
    IomadGeneration,
    IomadTables,
    build_iomad_tables,
)
from moodle_bridge.storage.types import ID

BIG = sa.BigInteger()
TINY = sa.SmallInteger().with_variant(mysql.TINYINT(), "mysql", "mariadb")
TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def _id() -> sa.Column[Any]:
    return sa.Column("id", ID, primary_key=True, autoincrement=True)


def _c(name: str, type_: Any, default: str | None = None) -> sa.Column[Any]:
    """A NULL-able column (server default as Moodle declares it)."""
    return sa.Column(name, type_, nullable=True, server_default=default)


def _nn(name: str, type_: Any, default: str | None = None) -> sa.Column[Any]:
    """A NOT NULL column."""
    return sa.Column(name, type_, nullable=False, server_default=default)


def iomad_metadata(
    prefix: str = "mdl_",
    generation: IomadGeneration = IomadGeneration.LEGACY,
    *,
    table_names: dict[str, str] | None = None,
    column_names: dict[str, str] | None = None,
    template_strings: bool | None = None,
) -> sa.MetaData:
    """MetaData of the simulated IOMAD database (variant names overridable for tests).

    ``template_strings``: the 4.5/5.0 template layout (no lang/subject/body in
    email_template; a ``*_strings`` table). Default: on for RENAMED, off for LEGACY (4.3).
    """
    if template_strings is None:
        template_strings = generation is IomadGeneration.RENAMED
    names = {k: v[0] for k, v in TABLE_CANDIDATES[generation].items()}
    names.update(table_names or {})
    cols = dict(DEFAULT_COLUMNS[generation])
    cols.update(column_names or {})
    legacy = generation is IomadGeneration.LEGACY
    m = sa.MetaData()
    p = prefix

    sa.Table(
        f"{p}{names['email']}",
        m,
        _id(),
        _c("templatename", sa.String(100)),
        _nn("modifiedtime", BIG),
        _c("sent", BIG),
        _nn("subject", sa.String(255), "''"),
        _nn("body", TEXT),
        _c("varsreplaced", BIG),
        _nn("companyid", BIG, "0"),
        _c("courseid", BIG),
        _nn("userid", BIG),
        _c("invoiceid", BIG),
        _c("classroomid", BIG),
        _c("senderid", BIG),
        _c("headers", TEXT),
        _nn("due", BIG, "0"),
    )
    template_control = [
        _nn("disabled", TINY, "0"),
        _nn("disabledmanager", TINY, "0"),
        _nn("disabledsupervisor", TINY, "0"),
        _c("emailto", sa.String(1333)),
        _c("emailtoother", sa.String(1333)),
        _c("emailcc", sa.String(1333)),
        _c("emailccother", sa.String(1333)),
        _c("emailfrom", BIG),
        _c("emailfromother", sa.String(100)),
        _c("emailreplyto", BIG),
        _c("emailreplytoother", sa.String(100)),
        _nn("repeatperiod", BIG, "0"),
        _nn("repeatvalue", BIG, "0"),
        _nn("repeatday", BIG, "0"),
        _c("emailfromothername", TEXT),
    ]
    if not template_strings:
        sa.Table(
            f"{p}{names['email_template']}",
            m,
            _id(),
            _nn("companyid", BIG),
            _nn("name", sa.String(50), "''"),
            _nn("lang", sa.String(20), "'en'"),
            _c("subject", sa.String(100)),
            _c("body", TEXT),
            _c("signature", TEXT),
            *template_control,
            sa.Index(f"{p}emaitemp_comnamlan_ix", "companyid", "name", "lang"),
            sa.Index(f"{p}emaitemp_comlan_ix", "companyid", "lang"),
        )
    else:  # 4.5/5.0 structure: text moved to *_strings
        sa.Table(
            f"{p}{names['email_template']}",
            m,
            _id(),
            _nn("companyid", BIG),
            _nn("name", sa.String(50), "''"),
            *template_control,
            sa.Index(f"{p}locaiomaematemp_comnamdis_ix", "companyid", "name", "disabled"),
        )
        sa.Table(
            f"{p}{names['email_template_strings']}",
            m,
            _id(),
            _nn("templateid", BIG),
            _nn("lang", sa.String(20), "'en'"),
            _c("subject", TEXT),
            _c("body", TEXT),
            _c("signature", TEXT),
            sa.Index(f"{p}locaiomaematestri_temlan_ix", "templateid", "lang"),
        )
    sa.Table(
        f"{p}{names['company']}",
        m,
        _id(),
        _nn("name", sa.String(50), "''"),
        _nn("shortname", sa.String(25), "''"),
        _c("code", sa.String(255)),
        _c("address", TEXT),
        _nn("city", sa.String(50), "''"),
        _c("region", sa.String(50)),
        _c("postcode", sa.String(20)),
        _nn("country", sa.String(2), "''"),
        _nn("maildisplay", TINY, "2"),
        _nn("mailformat", TINY, "1"),
        _nn("maildigest", TINY, "0"),
        _nn("autosubscribe", TINY, "1"),
        _nn("trackforums", TINY, "0"),
        _nn("htmleditor", TINY, "1"),
        _nn("screenreader", TINY, "0"),
        _nn("timezone", sa.String(100), "'99'"),
        _nn("lang", sa.String(30), "'en'"),
        _nn("theme", sa.String(50), "''"),
        _nn(cols["company.category"], BIG, "0"),
        _nn(cols["company.profileid"], BIG, "0"),
        _nn("suspended", TINY, "0"),
        _c("customcss", TEXT),
        _c("emailprofileid", BIG),
        _nn("supervisorprofileid", BIG, "0"),
        _nn("managernotify", BIG, "0"),
        _nn("parentid", BIG, "0"),
        _nn("ecommerce", TINY, "0"),
        _nn("managerdigestday", TINY, "0"),
        _nn("previousroletemplateid", BIG, "0"),
        _nn("previousemailtemplateid", BIG, "0"),
        _c("hostname", sa.String(200)),
        _nn("maxusers", BIG, "0"),
        _c("validto", BIG),
        _c("suspendafter", BIG),
        _nn(cols["company.companyterminated"], TINY, "0"),
        _c("custom1", sa.String(255)),
        _c("custom2", sa.String(255)),
        _c("custom3", sa.String(255)),
        _c(cols.get("company.paymentaccount", "paymentaccount" if legacy else "paymentaccountid"), BIG),
        _nn("departmentprofileid", BIG, "0"),
        sa.Index(f"{p}comp_par_ix", "parentid"),
        sa.Index(f"{p}comp_sho_ix", "shortname", unique=not legacy),
    )
    sa.Table(
        f"{p}{names['company_users']}",
        m,
        _id(),
        _nn("companyid", BIG),
        _nn("userid", BIG),
        _nn("managertype", TINY, "0"),
        _nn("departmentid", BIG),
        _nn("suspended", TINY, "0"),
        _nn("educator", TINY, "0"),
        _c("lastused", BIG),
        sa.UniqueConstraint("companyid", "userid", "departmentid", name=f"{p}compuser_comusedep_uix"),
        sa.Index(f"{p}compuser_comman_ix", "companyid", "managertype"),
        sa.Index(f"{p}compuser_depman_ix", "departmentid", "managertype"),
    )
    sa.Table(
        f"{p}{names['department']}",
        m,
        _id(),
        _nn("name", sa.String(255), "''"),
        _nn("shortname", sa.String(32), "''"),
        _nn(cols["department.company"], BIG, "0"),
        _c(cols["department.parent"], BIG),
        sa.Index(f"{p}depa_idcom_ix", "id", cols["department.company"]),
    )
    sa.Table(
        f"{p}{'companylicense' if legacy else 'local_iomad_company_licenses'}",
        m,
        _id(),
        _nn("name", sa.String(255), "''"),
        _nn("allocation", BIG, "0"),
        _nn("humanallocation", BIG, "0"),
        _nn("validlength", BIG, "0"),
        _nn("startdate", BIG, "0"),
        _nn("expirydate", BIG, "0"),
        _nn("used", BIG, "0"),
        _c("companyid", BIG),
        _c("parentid", BIG, "0"),
        _nn("type", TINY, "0"),
        _nn("program", TINY, "0"),
        _c("reference", sa.String(100)),
        _nn("instant", TINY, "0"),
        _nn("cutoffdate", BIG, "0"),
        _nn("clearonexpire", TINY, "0"),
    )
    sa.Table(
        f"{p}{names['license_users']}",
        m,
        _id(),
        _nn("licenseid", BIG),
        _nn("userid", BIG),
        _nn("isusing", TINY, "0"),
        _c("timecompleted", BIG),
        _c("score", sa.Numeric(10, 5)),
        _c("result", TEXT),
        _c(cols["license_users.licensecourseid"], BIG, "0"),
        _c("issuedate", BIG, "0"),
        _nn("groupid", BIG, "0"),
    )
    sa.Table(
        f"{p}{'companylicense_courses' if legacy else 'local_iomad_company_license_courses'}",
        m,
        _id(),
        _nn("licenseid", BIG),
        _nn("courseid", BIG),
    )
    sa.Table(
        f"{p}user",
        m,
        _id(),
        _nn("auth", sa.String(20), "'manual'"),
        _nn("confirmed", TINY, "0"),
        _nn("policyagreed", TINY, "0"),
        _nn("deleted", TINY, "0"),
        _nn("suspended", TINY, "0"),
        _nn("mnethostid", BIG, "0"),
        _nn("username", sa.String(100), "''"),
        _nn("password", sa.String(255), "''"),
        _nn("idnumber", sa.String(255), "''"),
        _nn("firstname", sa.String(100), "''"),
        _nn("lastname", sa.String(100), "''"),
        _nn("email", sa.String(100), "''"),
        _nn("emailstop", TINY, "0"),
        _nn("city", sa.String(120), "''"),
        _nn("country", sa.String(2), "''"),
        _nn("lang", sa.String(30), "'en'"),
        _nn("timezone", sa.String(100), "'99'"),
        _nn("mailformat", TINY, "1"),
        _nn("maildisplay", TINY, "2"),
        _nn("firstaccess", BIG, "0"),
        _nn("lastaccess", BIG, "0"),
        _nn("lastlogin", BIG, "0"),
        _nn("timecreated", BIG, "0"),
        _nn("timemodified", BIG, "0"),
        _c("middlename", sa.String(255)),
        _c("alternatename", sa.String(255)),
        sa.UniqueConstraint("mnethostid", "username", name=f"{p}user_mneuse_uix"),
        sa.Index(f"{p}user_del_ix", "deleted"),
        sa.Index(f"{p}user_ema_ix", "email"),
        sa.Index(f"{p}user_las_ix", "lastaccess"),
    )
    sa.Table(
        f"{p}user_preferences",
        m,
        _id(),
        _nn("userid", BIG, "0"),
        _nn("name", sa.String(255), "''"),
        _nn("value", sa.String(1333), "''"),
        sa.UniqueConstraint("userid", "name", name=f"{p}userpref_usenam_uix"),
        sa.Index(f"{p}userpref_nam_ix", "name"),
    )
    sa.Table(
        f"{p}user_info_field",
        m,
        _id(),
        _nn("shortname", sa.String(255), "'shortname'"),
        _nn("name", TEXT),
        _nn("datatype", sa.String(255), "''"),
        _nn("categoryid", BIG, "0"),
        _nn("sortorder", BIG, "0"),
    )
    sa.Table(
        f"{p}user_info_data",
        m,
        _id(),
        _nn("userid", BIG, "0"),
        _nn("fieldid", BIG, "0"),
        _nn("data", TEXT),
        _nn("dataformat", TINY, "0"),
        sa.UniqueConstraint("userid", "fieldid", name=f"{p}userinfodata_usefie_uix"),
    )
    sa.Table(
        f"{p}course",
        m,
        _id(),
        _nn("category", BIG, "0"),
        _nn("sortorder", BIG, "0"),
        _nn("fullname", sa.String(254), "''"),
        _nn("shortname", sa.String(255), "''"),
        _c("idnumber", sa.String(100), "''"),
        _nn("visible", TINY, "1"),
        _nn("timecreated", BIG, "0"),
        _nn("timemodified", BIG, "0"),
    )
    sa.Table(
        f"{p}course_completions",
        m,
        _id(),
        _nn("userid", BIG, "0"),
        _nn("course", BIG, "0"),
        _nn("timeenrolled", BIG, "0"),
        _nn("timestarted", BIG, "0"),
        _c("timecompleted", BIG),
        _nn("reaggregate", BIG, "0"),
        sa.UniqueConstraint("userid", "course", name=f"{p}courcomp_usecou_uix"),
        sa.Index(f"{p}courcomp_tim_ix", "timecompleted"),
    )
    sa.Table(
        f"{p}{names['track']}",
        m,
        _id(),
        _nn("courseid", BIG),
        _c("coursename", sa.String(254)),
        _nn("userid", BIG),
        _c("timecompleted", BIG),
        _c("timeenrolled", BIG),
        _c("timestarted", BIG),
        _c("timeexpires", BIG),
        _nn("finalscore", sa.Numeric(10, 5), "0"),
        _nn("companyid", BIG),
        _c("licenseid", BIG, "0"),
        _c("licensename", sa.String(255)),
        _c("licenseallocated", BIG),
        _c("expirysent", BIG),
        _nn("notstartedstop", TINY, "0"),
        _nn("completedstop", TINY, "0"),
        _nn("expiredstop", TINY, "0"),
        _nn("coursecleared", TINY, "0"),
        _nn("modifiedtime", BIG, "0"),
        sa.Index(f"{p}locaiomatrac_use_ix", "userid"),
        sa.Index(f"{p}locaiomatrac_comcou_ix", "companyid", "courseid"),
    )
    sa.Table(
        f"{p}{names['track_certs']}",
        m,
        _id(),
        _nn("trackid", BIG),
        _nn("filename", TEXT),
        sa.Index(f"{p}locaiomatraccert_tra_ix", "trackid"),
    )
    sa.Table(
        f"{p}task_scheduled",
        m,
        _id(),
        _nn("component", sa.String(255), "''"),
        _nn("classname", sa.String(255), "''"),
        _c("lastruntime", BIG),
        _c("nextruntime", BIG),
        _nn("blocking", TINY, "0"),
        _nn("minute", sa.String(200), "''"),
        _nn("hour", sa.String(70), "''"),
        _nn("day", sa.String(90), "''"),
        _nn("month", sa.String(30), "''"),
        _nn("dayofweek", sa.String(25), "''"),
        _c("faildelay", BIG),
        _nn("customised", TINY, "0"),
        _nn("disabled", TINY, "0"),
        _c("timestarted", BIG),
        _c("hostname", sa.String(255)),
        _c("pid", BIG),
        sa.UniqueConstraint("classname", name=f"{p}tasksche_cla_uix"),
    )
    sa.Table(
        f"{p}lock_db",
        m,
        _id(),
        _nn("resourcekey", sa.String(255), "''"),
        _c("expires", BIG),
        _c("owner", sa.String(36)),
        sa.UniqueConstraint("resourcekey", name=f"{p}lockdb_res_uix"),
    )
    sa.Table(
        f"{p}config",
        m,
        _id(),
        _nn("name", sa.String(255), "''"),
        _nn("value", TEXT),
        sa.UniqueConstraint("name", name=f"{p}conf_nam_uix"),
    )
    sa.Table(
        f"{p}config_plugins",
        m,
        _id(),
        _nn("plugin", sa.String(100), "'core'"),
        _nn("name", sa.String(100), "''"),
        _nn("value", TEXT),
        sa.UniqueConstraint("plugin", "name", name=f"{p}confplug_plunam_uix"),
    )
    _moodle_activity_tables(m, p)
    return m


def _moodle_activity_tables(m: sa.MetaData, p: str) -> None:
    """Moodle core tables that campaigns read: enrolments, access, activity completion, cohorts
    and the standard log, with Moodle's own indexes (lib/db/install.xml)."""
    sa.Table(
        f"{p}enrol",
        m,
        _id(),
        _nn("enrol", sa.String(20), "''"),
        _nn("status", BIG, "0"),
        _nn("courseid", BIG),
        _nn("sortorder", BIG, "0"),
        _nn("timecreated", BIG, "0"),
        _nn("timemodified", BIG, "0"),
        sa.Index(f"{p}enro_enr_ix", "enrol"),
        sa.Index(f"{p}enro_cou_ix", "courseid"),
    )
    sa.Table(
        f"{p}user_enrolments",
        m,
        _id(),
        _nn("status", BIG, "0"),
        _nn("enrolid", BIG),
        _nn("userid", BIG),
        _nn("timestart", BIG, "0"),
        _nn("timeend", BIG, "2147483647"),
        _nn("modifierid", BIG, "0"),
        _nn("timecreated", BIG, "0"),
        _nn("timemodified", BIG, "0"),
        sa.UniqueConstraint("enrolid", "userid", name=f"{p}userenro_enruse_uix"),
        sa.Index(f"{p}userenro_use_ix", "userid"),
    )
    sa.Table(
        f"{p}user_lastaccess",
        m,
        _id(),
        _nn("userid", BIG, "0"),
        _nn("courseid", BIG, "0"),
        _nn("timeaccess", BIG, "0"),
        sa.UniqueConstraint("userid", "courseid", name=f"{p}userlast_usecou_uix"),
        sa.Index(f"{p}userlast_use_ix", "userid"),
        sa.Index(f"{p}userlast_cou_ix", "courseid"),
    )
    sa.Table(
        f"{p}course_modules_completion",
        m,
        _id(),
        _nn("coursemoduleid", BIG),
        _nn("userid", BIG),
        _nn("completionstate", TINY),
        _c("overrideby", BIG),
        _nn("timemodified", BIG),
        sa.UniqueConstraint("userid", "coursemoduleid", name=f"{p}courmodicomp_usecou_uix"),
        sa.Index(f"{p}courmodicomp_cou_ix", "coursemoduleid"),
    )
    sa.Table(
        f"{p}cohort",
        m,
        _id(),
        _nn("contextid", BIG),
        _nn("name", sa.String(254), "''"),
        _c("idnumber", sa.String(100)),
        _nn("visible", TINY, "1"),
        _nn("timecreated", BIG, "0"),
        _nn("timemodified", BIG, "0"),
    )
    sa.Table(
        f"{p}cohort_members",
        m,
        _id(),
        _nn("cohortid", BIG, "0"),
        _nn("userid", BIG, "0"),
        _nn("timeadded", BIG, "0"),
        sa.UniqueConstraint("cohortid", "userid", name=f"{p}cohomemb_cohuse_uix"),
        sa.Index(f"{p}cohomemb_coh_ix", "cohortid"),
        sa.Index(f"{p}cohomemb_use_ix", "userid"),
    )
    sa.Table(
        f"{p}logstore_standard_log",
        m,
        _id(),
        _nn("eventname", sa.String(255)),
        _nn("component", sa.String(100)),
        _nn("action", sa.String(100)),
        _nn("target", sa.String(100)),
        _nn("crud", sa.String(1)),
        _nn("contextid", BIG),
        _nn("contextlevel", BIG),
        _nn("contextinstanceid", BIG),
        _nn("userid", BIG),
        _c("courseid", BIG),
        _c("relateduserid", BIG),
        _nn("timecreated", BIG),
        sa.Index(f"{p}logsstanlog_tim_ix", "timecreated"),
        sa.Index(f"{p}logsstanlog_couanotim_ix", "courseid", "timecreated"),
        sa.Index(f"{p}logsstanlog_useconconcrud_ix", "userid", "contextlevel", "contextinstanceid", "crud"),
    )


def create_iomad_schema(
    engine: sa.Engine,
    prefix: str = "mdl_",
    generation: IomadGeneration = IomadGeneration.LEGACY,
    *,
    table_names: dict[str, str] | None = None,
    column_names: dict[str, str] | None = None,
    template_strings: bool | None = None,
) -> IomadTables:
    """Create the simulated IOMAD tables and return the bridge's view of them."""
    if template_strings is None:
        template_strings = generation is IomadGeneration.RENAMED
    metadata = iomad_metadata(
        prefix,
        generation,
        table_names=table_names,
        column_names=column_names,
        template_strings=template_strings,
    )
    metadata.create_all(engine)
    return build_iomad_tables(
        prefix,
        generation,
        table_names=table_names,
        column_names=column_names,
        template_has_lang=not template_strings,
    )


def metadata_for(tables: IomadTables) -> sa.MetaData:
    """The complete simulated tables matching a bridge view (same names and variants)."""
    names = {
        logical: getattr(tables, logical).name[len(tables.prefix) :]
        for logical in TABLE_CANDIDATES[tables.generation]
        if getattr(tables, logical, None) is not None
    }
    return iomad_metadata(
        tables.prefix,
        tables.generation,
        table_names=names,
        column_names=dict(tables.column_names),
        template_strings=not tables.template_has_lang,
    )
