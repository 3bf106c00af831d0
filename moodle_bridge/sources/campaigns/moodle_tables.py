"""The Moodle core tables a campaign reads, read-only, with only the columns it uses.

IOMAD's own tables (company users, departments, licences) come from
``moodle_bridge.sources.iomad.schema`` so that both IOMAD generations are handled in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

BIG = sa.BigInteger()


@dataclass(frozen=True)
class MoodleActivityTables:
    user: sa.Table
    enrol: sa.Table
    user_enrolments: sa.Table
    user_lastaccess: sa.Table
    course_completions: sa.Table
    course_modules_completion: sa.Table
    cohort_members: sa.Table
    course: sa.Table
    license: sa.Table


def build_activity_tables(prefix: str, license_table: str = "companylicense") -> MoodleActivityTables:
    """``license_table``: ``companylicense`` (IOMAD <= 5.0) or ``local_iomad_company_licenses``."""
    m = sa.MetaData()
    p = prefix

    def col(name: str) -> sa.Column[int]:
        return sa.Column(name, BIG)

    user = sa.Table(
        f"{p}user",
        m,
        sa.Column("id", BIG, primary_key=True),
        col("deleted"),
        col("suspended"),
        sa.Column("firstname", sa.String(100)),
        sa.Column("lastname", sa.String(100)),
        sa.Column("email", sa.String(100)),
        col("emailstop"),
        sa.Column("lang", sa.String(30)),
        col("lastaccess"),
        col("timecreated"),
    )
    enrol = sa.Table(f"{p}enrol", m, sa.Column("id", BIG, primary_key=True), col("status"), col("courseid"))
    user_enrolments = sa.Table(
        f"{p}user_enrolments",
        m,
        sa.Column("id", BIG, primary_key=True),
        col("status"),
        col("enrolid"),
        col("userid"),
        col("timestart"),
        col("timeend"),
        col("timecreated"),
    )
    user_lastaccess = sa.Table(
        f"{p}user_lastaccess",
        m,
        sa.Column("id", BIG, primary_key=True),
        col("userid"),
        col("courseid"),
        col("timeaccess"),
    )
    course_completions = sa.Table(
        f"{p}course_completions",
        m,
        sa.Column("id", BIG, primary_key=True),
        col("userid"),
        col("course"),
        col("timestarted"),
        col("timecompleted"),
    )
    course_modules_completion = sa.Table(
        f"{p}course_modules_completion",
        m,
        sa.Column("id", BIG, primary_key=True),
        col("coursemoduleid"),
        col("userid"),
        col("completionstate"),
    )
    cohort_members = sa.Table(
        f"{p}cohort_members", m, sa.Column("id", BIG, primary_key=True), col("cohortid"), col("userid")
    )
    course = sa.Table(
        f"{p}course", m, sa.Column("id", BIG, primary_key=True), sa.Column("fullname", sa.String(254))
    )
    license = sa.Table(
        f"{p}{license_table}",
        m,
        sa.Column("id", BIG, primary_key=True),
        sa.Column("name", sa.String(255)),
        col("expirydate"),
        col("validlength"),
        col("companyid"),
    )
    return MoodleActivityTables(
        user,
        enrol,
        user_enrolments,
        user_lastaccess,
        course_completions,
        course_modules_completion,
        cohort_members,
        course,
        license,
    )
