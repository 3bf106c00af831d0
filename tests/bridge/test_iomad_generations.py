"""Issue 11: IOMAD's templates as each generation has them, and passwords on IOMAD 5.1+.

The fan-out of every template is pinned below by hand, from IOMAD's own source (the files are
named in docs/iomad.md), not derived from the bridge's constants. On SQLite, MariaDB and
PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from iomad_sim.iomad_cron import is_user_template
from moodle_bridge.commands.tick import build_submitters, run_tick
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.sources.iomad.headers import serialize_headers
from moodle_bridge.sources.iomad.passwords import password_from_template
from moodle_bridge.sources.iomad.queue import select_due_emails
from moodle_bridge.sources.iomad.recipients import expand_emails
from moodle_bridge.sources.iomad.schema import IomadGeneration
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from offload_contract.sealing import open_content
from offload_contract.signing import decode_root_secret
from tests.bridge.conftest import SEAL_ROOT, drain, make_config, with_queues
from tests.bridge.iomad_world import IomadWorld

T = build_bridge_tables("mdl_")
PASSWORD = "?4:#F_L3fu"

#: name -> (exists in IOMAD 4.3.7, exists in IOMAD 5.x, the user's managers get a copy).
#: 4.3.7: local/email/local_lib.php get_templates(), local/email/lib/api.php is_user_template();
#: 5.x: public/local/iomad/classes/email.php get_templates(), .../emailtemplate.php is_user_template().
PINNED: dict[str, tuple[bool, bool, bool]] = {
    "admin_deleted": (True, True, False),
    "advertise_classroom_based_course": (True, True, False),
    "approval": (True, True, False),
    "company_licenseassigned": (True, True, False),
    "company_suspended": (True, True, False),
    "company_unsuspended": (True, True, False),
    "completion_course_supervisor": (True, True, False),
    "completion_course_user": (True, True, True),
    "completion_digest_manager": (True, True, False),
    "completion_expiry_warn_supervisor": (True, True, False),
    "completion_warn_manager": (True, False, False),
    "completion_warn_supervisor": (True, True, False),
    "completion_warn_user": (True, True, True),
    "course_classroom_approval": (True, True, False),
    "course_classroom_approval_request": (True, True, False),
    "course_classroom_approved": (True, True, False),
    "course_classroom_denied": (True, True, False),
    "course_classroom_manager_denied": (True, True, False),
    "course_completed_manager": (True, False, False),
    "course_not_started_warning": (True, True, True),
    "expire": (True, True, False),
    "expire_manager": (True, False, False),
    "expiring_digest_manager": (False, True, False),
    "expiry_warn_manager": (True, False, False),
    "expiry_warn_user": (True, True, True),
    "invoice_ordercomplete": (True, True, False),
    "invoice_ordercomplete_admin": (True, True, False),
    "license_allocated": (True, True, True),
    "license_reminder": (True, True, False),
    "license_removed": (True, True, True),
    "licensepoolexpiring": (True, True, False),
    "licensepoolwarning": (True, True, False),
    "microlearning_nugget_reminder1": (True, True, False),
    "microlearning_nugget_reminder2": (True, True, False),
    "microlearning_nugget_scheduled": (True, True, False),
    "password_update": (True, True, True),
    "trainingevent_not_selected": (True, True, False),
    "user_added_to_course": (True, True, True),
    "user_create": (True, True, True),
    "user_deleted": (True, True, True),
    "user_programcompleted": (True, True, True),
    "user_promoted": (True, True, True),
    "user_removed_from_event": (True, True, True),
    "user_removed_from_event_teacher": (True, True, False),
    "user_removed_from_event_waitlist": (True, True, False),
    "user_reset": (True, True, True),
    "user_signed_up_for_event": (True, True, True),
    "user_signed_up_for_event_reminder": (True, True, False),
    "user_signed_up_for_event_teacher": (True, True, False),
    "user_signed_up_to_waitlist": (True, True, True),
    "user_suspended": (True, True, True),
    "user_unsuspended": (True, True, True),
    "warning_digest_manager": (False, True, False),
}

GENERATIONS = pytest.mark.parametrize(
    "generation", [IomadGeneration.LEGACY, IomadGeneration.RENAMED], ids=["iomad43", "iomad51"]
)


def test_the_pinned_lists_have_iomads_counts() -> None:
    assert sum(v[0] for v in PINNED.values()) == 51  # 4.3.7's get_templates()
    assert sum(v[1] for v in PINNED.values()) == 49  # 5.x's get_templates()
    assert sum(v[2] for v in PINNED.values()) == 18  # is_user_template()'s string keys
    for name, (_in43, _in5, fans_out) in PINNED.items():
        assert is_user_template(name) == fans_out, name  # the IOMAD stand-in reads it the same


def _world(engine: sa.Engine, repo: Any, generation: IomadGeneration) -> IomadWorld:
    world = IomadWorld.create(engine, generation=generation)
    world.add_company(1)
    world.add_user(10, "learner@example.com", companyid=1)
    world.add_user(11, "boss@example.com", companyid=1, manager=True)
    with engine.begin() as conn:
        repo.set_offload_enabled(conn, True)
        repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "test")
    return world


@GENERATIONS
def test_fan_out_of_every_template_per_generation(bridge_engine, repo, generation) -> None:
    world = _world(bridge_engine, repo, generation)
    ids = {name: world.queue(name, 10, 1) for name in PINNED}
    with bridge_engine.connect() as conn:
        rows = select_due_emails(conn, world.tables, 2**40, None, None)
        expansions = expand_emails(conn, world.tables, rows)
    exists = 0 if generation is IomadGeneration.LEGACY else 1
    for name, pinned in PINNED.items():
        exp = expansions[ids[name]]
        if not pinned[exists]:
            assert exp.problem_codes == ["unknown_template"] and not exp.sendable, name
            continue
        roles = [r.role for r in exp.recipients]
        assert roles == (["user", "manager"] if pinned[2] else ["user"]), name
        assert exp.sendable, name


@GENERATIONS
def test_waitlist_and_manager_templates_end_to_end(bridge_engine, db_url, repo, aws, generation) -> None:
    world = _world(bridge_engine, repo, generation)
    waitlist = world.queue("user_signed_up_to_waitlist", 10, 1)
    manager_mail = world.queue("completion_warn_manager", 11, 1)  # 4.3.7 only
    digest = world.queue("warning_digest_manager", 11, 1)  # 5.x only
    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None
    sent = sorted((int(r["content_id"][1:]), r["to"]) for m in drain(aws) for r in m["recipients"])
    legacy = generation is IomadGeneration.LEGACY
    expected = [(waitlist, "boss@example.com"), (waitlist, "learner@example.com")]
    expected.append((manager_mail, "boss@example.com") if legacy else (digest, "boss@example.com"))
    assert sent == sorted(expected)
    with bridge_engine.connect() as conn:
        claims = {r.emailid: r.state for r in conn.execute(sa.select(T.claims))}
        handed_back = conn.execute(
            sa.select(T.recipients.c.emailid, T.recipients.c.errorcode).where(
                T.recipients.c.status == "restored"
            )
        ).all()
    unknown = digest if legacy else manager_mail
    assert claims[unknown] == "released"  # handed back whole, never sent in part
    assert [(int(e), c) for e, c in handed_back] == [(unknown, "unknown_template")]
    assert world.rows()[unknown].due < 10**12  # still IOMAD's, untouched


TEMPLATE_BODY = (
    "<p>Dear {User_FirstName},</p>\n<p>A new user account has been created for you on {Site_FullName}.</p>\n"
    "<p>username: {User_Username}</br>\npassword: {User_Newpassword}</br>\n(change it)</p>"
)


def _render(first: str, site: str, username: str, password: str) -> str:
    return (
        TEMPLATE_BODY.replace("{User_FirstName}", first)
        .replace("{Site_FullName}", site)
        .replace("{User_Username}", username)
        .replace("{User_Newpassword}", password)
    )


def test_password_from_the_templates_placeholder_position() -> None:
    body = _render("Lea", "IOMAD: password: Test", "lea", PASSWORD) + "<p>-- signature</p>"
    found = password_from_template(body, TEMPLATE_BODY)
    assert found is not None and found.reveal() == PASSWORD
    assert PASSWORD not in repr(found)
    # Not the template it was rendered from (a filter rewrote the HTML): no guess.
    assert password_from_template(body.replace("</br>", "<br />"), TEMPLATE_BODY) is None
    # Ambiguous: two placeholders side by side cannot be told apart.
    assert password_from_template("abc", "{User_Username}{User_Newpassword}") is None
    assert password_from_template(_render("a", "b", "c", "two words"), TEMPLATE_BODY) is None
    assert password_from_template(body, "<p>no placeholder</p>") is None


def test_iomad51_password_mail_without_iomad_temporary(bridge_engine, db_url, repo, aws) -> None:
    """A 5.1-shaped database: no iomad_temporary preference; the password is read from the body at
    the template's placeholder; the user gets it, the manager and the creating user's Cc copy get it
    redacted, and nothing is skipped as password_not_redactable."""
    world = _world(bridge_engine, repo, IomadGeneration.RENAMED)
    world.add_user(12, "creator@example.com", companyid=1)
    props = {
        "id": 1,
        "companyid": 1,
        "name": "user_create",
        "disabled": 0,
        "disabledmanager": 0,
        "disabledsupervisor": 0,
        "emailto": "",
        "emailtoother": "",
        "emailcc": "",
        "emailccother": "",
        "subject": "New account",
        "body": TEMPLATE_BODY,
    }
    body = _render("Lea", "IOMAD", "lea", PASSWORD)
    headers = serialize_headers(props, numeric=("Cc:creator@example.com",))
    emailid = world.queue("user_create", 10, 1, subject="New account", body=body, headers=headers)
    config = with_queues(make_config(db_url), aws)
    report = run_tick(bridge_engine, config, submitters=build_submitters(config, sqs_client=aws["sqs"]))
    assert report.claim is not None and report.claim.claimed == 1
    messages = drain(aws)
    roots = {"s1": decode_root_secret(SEAL_ROOT)}

    def html(message: dict[str, Any], content_id: str) -> str:
        content = message["contents"][content_id]
        if content["kind"] == "sealed":  # the user's own copy of password mail leaves sealed
            content = open_content(roots, 1, message["job_id"], content_id, content)
        return str(content["html"])

    assert not any(PASSWORD in json.dumps(m, ensure_ascii=False) for m in messages)
    got = {r["to"]: html(m, r["content_id"]) for m in messages for r in m["recipients"]}
    assert set(got) == {"learner@example.com", "boss@example.com", "creator@example.com"}
    assert PASSWORD in got["learner@example.com"]
    for other in ("boss@example.com", "creator@example.com"):
        assert PASSWORD not in got[other] and "********" in got[other]
    with bridge_engine.connect() as conn:
        codes = {
            r.errorcode
            for r in conn.execute(sa.select(T.recipients).where(T.recipients.c.emailid == emailid))
        }
    assert "password_not_redactable" not in codes
