"""Fan-out of queue rows into recipients as IOMAD's send_to_user() does, and its problems."""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa

from iomad_sim.iomad_cron import run_iomad_email_cron
from iomad_sim.iomad_schema import create_iomad_schema, metadata_for
from iomad_sim.iomad_seed import seed_site, template_object
from iomad_sim.smtp_sink import RecordingSmtpSink
from moodle_bridge.sources.iomad import recipients as r
from moodle_bridge.sources.iomad.headers import serialize_headers
from moodle_bridge.sources.iomad.queue import QueuedEmail, select_due_emails
from moodle_bridge.sources.iomad.recipients import expand_emails
from moodle_bridge.sources.iomad.schema import IomadTables
from tests.iomad.helpers import NOW, count_statements, seeded

COMPANY = 1
LEARNER, MGR_TOP, MGR_MID, DEPT_MGR, MGR_SUSPENDED, TO_USER, TO_DELETED, CC_USER, OTHER_LEARNER = range(
    10, 19
)


def _user(uid: int, email: str, **kw: Any) -> dict[str, Any]:
    row = {
        "id": uid,
        "username": f"u{uid}",
        "email": email,
        "firstname": f"F{uid}",
        "lastname": f"L{uid}",
        "confirmed": 1,
        "mnethostid": 1,
        "deleted": 0,
        "suspended": 0,
    }
    row.update(kw)
    return row


def build(engine: sa.Engine) -> IomadTables:
    """Company 1: departments 1 (top) > 2 > 3; the learner sits in 3."""
    t = create_iomad_schema(engine)
    m = metadata_for(t)
    with engine.begin() as conn:
        seed_site(conn, t)
        conn.execute(
            m.tables["mdl_company"].insert(),
            [{"id": COMPANY, "name": "Acme", "shortname": "acme", "emailprofileid": 1}],
        )
        conn.execute(
            m.tables["mdl_department"].insert(),
            [
                {"id": 1, "name": "Acme", "company": 1, "parent": 0},
                {"id": 2, "name": "Ops", "company": 1, "parent": 1},
                {"id": 3, "name": "Site", "company": 1, "parent": 2},
                {"id": 4, "name": "Other", "company": 1, "parent": 1},
            ],
        )
        conn.execute(
            m.tables["mdl_user"].insert(),
            [
                _user(LEARNER, "learner@example.com"),
                _user(MGR_TOP, "Top.Manager@example.com"),
                _user(MGR_MID, "mid.manager@example.com"),
                _user(DEPT_MGR, "dept.manager@example.com"),
                _user(MGR_SUSPENDED, "gone.manager@example.com", suspended=1),
                _user(TO_USER, "to.user@example.com"),
                _user(TO_DELETED, "deleted@example.com", deleted=1),
                _user(CC_USER, "cc.user@example.com"),
                _user(OTHER_LEARNER, "other@example.com"),
            ],
        )
        conn.execute(
            m.tables["mdl_company_users"].insert(),
            [
                {"companyid": 1, "userid": LEARNER, "managertype": 0, "departmentid": 3},
                {"companyid": 1, "userid": MGR_TOP, "managertype": 1, "departmentid": 1},
                {"companyid": 1, "userid": 2, "managertype": 1, "departmentid": 1},  # the cron's $USER
                {"companyid": 1, "userid": MGR_MID, "managertype": 1, "departmentid": 2},
                {"companyid": 1, "userid": DEPT_MGR, "managertype": 2, "departmentid": 3},
                {"companyid": 1, "userid": MGR_SUSPENDED, "managertype": 1, "departmentid": 1},
                {"companyid": 1, "userid": OTHER_LEARNER, "managertype": 0, "departmentid": 4},
            ],
        )
        conn.execute(
            m.tables["mdl_user_info_data"].insert(),
            [
                {
                    "userid": LEARNER,
                    "fieldid": 1,
                    "data": "sup1@example.org, SUP1@example.org,sup2@example.org",
                }
            ],
        )
        conn.execute(
            m.tables["mdl_email_template"].insert(),
            [{"companyid": 1, "name": n, "lang": "en"} for n in sorted(r.KNOWN_TEMPLATES)],
        )
    return t


def queue(
    engine: sa.Engine,
    t: IomadTables,
    templatename: str = "user_create",
    userid: int = LEARNER,
    companyid: int = COMPANY,
    headers: str | None = "default",
    **template: Any,
) -> QueuedEmail:
    if headers == "default":
        headers = serialize_headers(template_object(1, companyid, templatename, **template))
    with engine.begin() as conn:
        key = conn.execute(
            sa.insert(t.email).values(
                templatename=templatename,
                modifiedtime=NOW - 5,
                subject="Hello",
                body="<p>password: p&ss<w0rd</p>",
                companyid=companyid,
                courseid=1,
                userid=userid,
                senderid=-20,
                headers=headers,
                due=NOW - 5,
            )
        ).inserted_primary_key
    assert key is not None
    with engine.connect() as conn:
        (row,) = [
            e for e in select_due_emails(conn, t, NOW, None, None, after_id=int(key[0]) - 1) if e.id == key[0]
        ]
    return row


def expand_one(engine: sa.Engine, t: IomadTables, email: QueuedEmail) -> r.Expansion:
    with engine.connect() as conn:
        return expand_emails(conn, t, [email])[email.id]


def test_full_fan_out_in_iomad_order(db_engine: sa.Engine) -> None:
    t = build(db_engine)
    email = queue(
        db_engine,
        t,
        emailto=f"{TO_USER}, {TO_DELETED},999",
        emailcc=str(CC_USER),
        emailtoother="boss@example.net, not-an-address",
        emailccother="TOP.MANAGER@EXAMPLE.COM",
    )
    exp = expand_one(db_engine, t, email)
    got = [(x.role, x.userid, x.address, x.redact_password) for x in exp.recipients]
    assert got == [
        ("user", LEARNER, "learner@example.com", False),
        ("to", TO_USER, "to.user@example.com", True),
        ("cc", CC_USER, "cc.user@example.com", True),
        ("to", None, "boss@example.net", True),
        ("cc", None, "TOP.MANAGER@EXAMPLE.COM", True),
        # managers: type 1 in departments 3, 2, 1; the admin ($USER) and the suspended one excluded,
        # the department manager (type 2) not asked for; Top.Manager already had a copy (dedupe)
        ("manager", MGR_MID, "mid.manager@example.com", True),
        ("supervisor", None, "sup1@example.org", True),
        ("supervisor", None, "sup2@example.org", True),
    ]
    assert exp.recipients[0].fullname == f"F{LEARNER} L{LEARNER}"
    codes = Counter(exp.problem_codes)
    assert codes == Counter({r.RECIPIENT_UNAVAILABLE: 2, r.INVALID_ADDRESS: 1, r.DUPLICATE_ADDRESS: 2}), (
        exp.problems
    )
    assert exp.sendable
    assert not any(p.fatal for p in exp.problems)


def test_copies_switches_and_non_user_templates(db_engine: sa.Engine) -> None:
    t = build(db_engine)
    no_managers = queue(db_engine, t, "license_allocated", disabledmanager=1)
    no_supervisors = queue(db_engine, t, "license_allocated", disabledsupervisor="1")
    not_user_template = queue(db_engine, t, "microlearning_nugget_scheduled")  # numeric key in IOMAD's list
    with db_engine.connect() as conn:
        result = expand_emails(conn, t, [no_managers, no_supervisors, not_user_template])
    roles = {k: [x.role for x in v.recipients] for k, v in result.items()}
    assert roles[no_managers.id] == ["user", "supervisor", "supervisor"]
    assert roles[no_supervisors.id] == ["user", "manager", "manager"]
    assert roles[not_user_template.id] == ["user"]
    # license_allocated carries no password: no redaction for anyone
    assert not any(x.redact_password for v in result.values() for x in v.recipients)


def test_each_bad_input_gives_a_clear_problem(db_engine: sa.Engine) -> None:
    t = build(db_engine)
    u = t.user
    with db_engine.begin() as conn:
        conn.execute(sa.update(u).where(u.c.id == OTHER_LEARNER).values(email=""))
    cases = {
        r.BAD_HEADERS: queue(db_engine, t, headers='a:1:{s:8:"template";O:8:"stdClass":1:{s:4:"body"'),
        r.UNKNOWN_TEMPLATE: queue(db_engine, t, "my_custom_template"),
        r.COMPANY_MISSING: queue(db_engine, t, companyid=77),
        r.EMPTY_ADDRESS: queue(db_engine, t, userid=OTHER_LEARNER),
    }
    disabled = queue(db_engine, t, "user_reset")
    et = t.email_template
    # deleted / suspended after the row was selected (the bridge re-reads users when expanding)
    deleted = queue(db_engine, t, userid=TO_USER)
    suspended = queue(db_engine, t, userid=CC_USER)
    company_suspended = queue(db_engine, t, "company_suspended", userid=CC_USER)
    with db_engine.begin() as conn:
        conn.execute(sa.update(et).where(et.c.name == "user_reset").values(disabled=1))
        conn.execute(sa.update(u).where(u.c.id == TO_USER).values(deleted=1))
        conn.execute(sa.update(u).where(u.c.id == CC_USER).values(suspended=1))
    cases[r.TEMPLATE_DISABLED] = disabled
    cases[r.USER_DELETED] = deleted
    cases[r.USER_SUSPENDED] = suspended
    with db_engine.connect() as conn:
        result = expand_emails(conn, t, [*cases.values(), company_suspended])
    for code, email in cases.items():
        exp = result[email.id]
        assert code in exp.problem_codes, (code, exp.problems)
        problem = next(p for p in exp.problems if p.code == code)
        assert f"email {email.id}" in problem.detail
        assert not exp.sendable, code
    assert result[cases[r.BAD_HEADERS].id].problems[0].detail.count("stdClass") == 0  # raw never echoed
    assert [x.address for x in result[company_suspended.id].recipients] == ["cc.user@example.com"]


def test_password_redaction_can_be_turned_off() -> None:
    engine = sa.create_engine("sqlite://")
    t = build(engine)
    email = queue(engine, t, "password_update")
    with engine.connect() as conn:
        on = expand_emails(conn, t, [email])[email.id]
        off = expand_emails(conn, t, [email], redact_third_party_passwords=False)[email.id]
    assert [x.redact_password for x in on.recipients] == [False, True, True, True, True]
    assert not any(x.redact_password for x in off.recipients)


def test_matches_the_simulated_iomad_cron(db_engine: sa.Engine) -> None:
    """The bridge's set-based fan-out equals what (simulated) IOMAD sends, row by row."""
    t, _ = seeded(
        db_engine,
        companies=2,
        users_per_company=6,
        managers_per_company=2,
        child_departments=2,
        supervisor_every=2,
        completions_per_company=2,
    )
    with db_engine.connect() as conn:
        emails = select_due_emails(conn, t, NOW, None, None)
        expanded = expand_emails(conn, t, emails)
    sink = RecordingSmtpSink()
    run = run_iomad_email_cron(db_engine, "mdl_", "iomad", sink, now=NOW)
    assert run.ran and sorted(run.sent_rows) == sorted(e.id for e in emails)
    for email in emails:
        bridge = sorted(x.address.lower() for x in expanded[email.id].recipients)
        iomad = sorted(a.lower() for a in sink.addresses_for(email.id))
        assert bridge == iomad, email.id
    assert sum(len(x.recipients) for x in expanded.values()) == len(sink.messages) > len(emails)


def test_statement_count_is_bounded() -> None:
    engine = sa.create_engine("sqlite://")
    t, _ = seeded(engine, companies=3, users_per_company=700, managers_per_company=2, supervisor_every=3)
    with engine.connect() as conn:
        emails = select_due_emails(conn, t, NOW, None, None)
        assert len(emails) == 4200
        with count_statements(engine) as counter:
            result = expand_emails(conn, t, emails)
    assert all(x.sendable for x in result.values())
    # company_users 3 chunks, config, companies, templates, departments, managers, users 3, profile 3
    assert counter.count <= 16, counter.statements


def test_no_password_in_reprs_or_problem_details() -> None:
    engine = sa.create_engine("sqlite://")
    t, seed = seeded(engine, users_per_company=3, supervisor_every=1)
    u = t.user
    with engine.begin() as conn:  # make every row produce problems too
        conn.execute(sa.update(u).where(u.c.id == seed.learner_ids[0]).values(email="not an address"))
        conn.execute(sa.update(u).where(u.c.id == seed.learner_ids[1]).values(deleted=1))
    with engine.connect() as conn:
        emails = select_due_emails(conn, t, NOW, None, None)
        result = expand_emails(conn, t, emails)
    rendered = repr(emails) + repr(result) + " ".join(str(p) for x in result.values() for p in x.problems)
    assert any(x.problems for x in result.values())
    for password in seed.passwords.values():
        assert password.reveal() not in rendered


def test_template_check_type_follows_php_strpos() -> None:
    assert r.template_check_type("completion_digest_manager") == r.MANAGER_TEMPLATE_TYPE
    assert r.template_check_type("completion_warn_supervisor") == r.SUPERVISOR_TEMPLATE_TYPE
    assert r.template_check_type("manager_only") == 0  # strpos() == 0 is falsy in PHP
    assert r.template_check_type("user_create") == 0


def test_manager_template_disabled_for_managers_is_not_sent() -> None:
    engine = sa.create_engine("sqlite://")
    t = build(engine)
    digest = queue(engine, t, "completion_digest_manager")
    et = t.email_template
    with engine.begin() as conn:
        conn.execute(sa.update(et).where(et.c.name == "completion_digest_manager").values(disabledmanager=1))
    assert r.TEMPLATE_DISABLED in expand_one(engine, t, digest).problem_codes


def test_row_without_headers_uses_default_template_and_site_profile_field() -> None:
    engine = sa.create_engine("sqlite://")
    t = build(engine)
    c = t.company
    with engine.begin() as conn:
        conn.execute(sa.update(c).values(emailprofileid=None))  # falls back to $CFG->companyemailprofileid
        conn.execute(sa.insert(t.config).values(name="companyemailprofileid", value="1"))
    email = queue(engine, t, "user_added_to_course", headers=None)
    roles = [(x.role, x.address) for x in expand_one(engine, t, email).recipients]
    assert roles == [
        ("user", "learner@example.com"),
        ("manager", "Top.Manager@example.com"),
        ("manager", "mid.manager@example.com"),
        ("supervisor", "sup1@example.org"),
        ("supervisor", "sup2@example.org"),
    ]


def test_simulated_cron_special_users_query() -> None:
    engine = sa.create_engine("sqlite://")
    t = build(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.email).values(
                templatename="invoice_ordercomplete_admin",
                modifiedtime=NOW - 5,
                subject="s",
                body="b",
                companyid=1,
                userid=-999,
                headers=None,
                due=NOW - 5,
            )
        )
    off = run_iomad_email_cron(engine, "mdl_", "m", RecordingSmtpSink(), now=NOW)
    assert off.loaded == 0  # 4.3.7: nobody sends shop-admin rows
    on = run_iomad_email_cron(engine, "mdl_", "m", RecordingSmtpSink(), now=NOW, special_users=True)
    assert on.loaded == 1 and on.messages == 0  # no user row: send_to_user() sends nothing, row marked sent
    with engine.connect() as conn:
        assert select_due_emails(conn, t, NOW, None, None) == []


def test_matches_the_simulated_iomad_cron_on_the_51_schema() -> None:
    from moodle_bridge.sources.iomad.schema import IomadGeneration, detect_iomad

    engine = sa.create_engine("sqlite://")
    seeded(
        engine,
        IomadGeneration.RENAMED,
        companies=2,
        users_per_company=4,
        child_departments=2,
        supervisor_every=2,
        completions_per_company=1,
    )
    with engine.connect() as conn:
        t = detect_iomad(conn, "mdl_")
        emails = select_due_emails(conn, t, NOW, None, None)
        expanded = expand_emails(conn, t, emails)
    sink = RecordingSmtpSink()
    assert run_iomad_email_cron(engine, "mdl_", "m", sink, now=NOW).ran
    for email in emails:
        assert sorted(x.address for x in expanded[email.id].recipients) == sorted(
            sink.addresses_for(email.id)
        )
    assert any(x.role == "manager" for e in expanded.values() for x in e.recipients)
    assert any(x.role == "supervisor" for e in expanded.values() for x in e.recipients)
