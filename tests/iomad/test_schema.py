"""Detecting IOMAD <= 5.0 and 5.1+ schemas at run time, with the 5.1 naming variants."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from iomad_sim.iomad_schema import create_iomad_schema
from moodle_bridge.sources.iomad.schema import IomadGeneration, IomadSchemaNotFound, detect_iomad
from tests.iomad.helpers import NOW, seeded


def test_detects_legacy_and_reads_its_queue(db_engine: sa.Engine) -> None:
    _, seed = seeded(db_engine, users_per_company=2)
    with db_engine.connect() as conn:
        tables = detect_iomad(conn, "mdl_")
        assert tables.generation is IomadGeneration.LEGACY
        assert tables.email.name == "mdl_email"
        assert tables.department.name == "mdl_department"
        assert tables.template_has_lang
        assert tables.email_cron_task == "\\local_email\\task\\cron_task"
        assert tables.plugin_versions["local_email"] == "2024090400"
        # logical column keys stay legacy
        assert tables.department.c.company.name == "company"
        count = conn.execute(sa.select(sa.func.count()).select_from(tables.email)).scalar_one()
        assert count == len(seed.email_ids["user_create"]) + len(seed.email_ids["license_allocated"])


def test_detects_renamed_with_renamed_columns(db_engine: sa.Engine) -> None:
    _, seed = seeded(db_engine, IomadGeneration.RENAMED, users_per_company=2)
    with db_engine.connect() as conn:
        tables = detect_iomad(conn, "mdl_")
        assert tables.generation is IomadGeneration.RENAMED
        assert tables.email.name == "mdl_local_iomad_emails"
        assert tables.department.name == "mdl_local_iomad_company_departments"
        assert tables.department.c.company.name == "companyid"
        assert tables.department.c.parent.name == "parentid"
        assert tables.company.c.category.name == "coursecategoryid"
        assert not tables.template_has_lang
        assert tables.email_cron_task == "\\local_iomad\\task\\email_cron_task"
        # a query through logical keys works on the renamed columns
        d = tables.department
        tops = conn.execute(
            sa.select(d.c.id).where(d.c.company == seed.company_ids[0], d.c.parent == 0)
        ).all()
        assert len(tops) == 1


def test_tolerates_the_other_51_spellings() -> None:
    engine = sa.create_engine("sqlite://")
    create_iomad_schema(
        engine,
        "mdl_",
        IomadGeneration.RENAMED,
        table_names={"department": "local_iomad_departments"},
        column_names={
            "license_users.licensecourseid": "licensecourseid",
            "company.companyterminated": "isterminated",
        },
    )
    with engine.connect() as conn:
        tables = detect_iomad(conn, "mdl_")
    assert tables.department.name == "mdl_local_iomad_departments"
    assert tables.license_users is not None
    assert tables.license_users.c.licensecourseid.name == "licensecourseid"
    assert tables.company.c.companyterminated.name == "isterminated"


def test_other_prefix() -> None:
    engine = sa.create_engine("sqlite://")
    create_iomad_schema(engine, "m2_")
    with engine.connect() as conn:
        assert detect_iomad(conn, "m2_").email.name == "m2_email"
        with pytest.raises(IomadSchemaNotFound, match="'mdl_'"):
            detect_iomad(conn, "mdl_")


def test_not_found_names_what_was_looked_for(db_engine: sa.Engine) -> None:
    with db_engine.connect() as conn:
        conn.execute(sa.text("CREATE TABLE mdl_user (id INTEGER PRIMARY KEY)"))
        conn.commit()
        with pytest.raises(IomadSchemaNotFound) as info:
            detect_iomad(conn, "mdl_")
    message = str(info.value)
    for name in ("mdl_email", "mdl_company", "mdl_local_iomad_emails", "mdl_local_iomad_companies"):
        assert name in message
    assert "prefix" in message


def test_queue_is_usable_right_after_detection() -> None:
    engine = sa.create_engine("sqlite://")
    seeded(engine, users_per_company=1)
    from moodle_bridge.sources.iomad.queue import select_due_emails

    with engine.connect() as conn:
        assert len(select_due_emails(conn, detect_iomad(conn, "mdl_"), NOW, None, None)) == 2


def test_legacy_45_template_layout_without_lang() -> None:
    """IOMAD 4.5 (after Jan 2025) / 5.0: legacy names, template text moved to *_strings."""
    engine = sa.create_engine("sqlite://")
    tables = create_iomad_schema(engine, template_strings=True)
    from iomad_sim.iomad_seed import SeedSpec, seed_iomad
    from moodle_bridge.sources.iomad.queue import select_due_emails
    from moodle_bridge.sources.iomad.recipients import expand_emails

    seed_iomad(engine, tables, SeedSpec(users_per_company=2))
    with engine.connect() as conn:
        detected = detect_iomad(conn, "mdl_")
        assert detected.generation is IomadGeneration.LEGACY
        assert not detected.template_has_lang
        assert detected.email_template_strings is not None
        rows = select_due_emails(conn, detected, NOW, None, None)
        expanded = expand_emails(conn, detected, rows)
    assert len(rows) == 4 and all(x.sendable for x in expanded.values())
