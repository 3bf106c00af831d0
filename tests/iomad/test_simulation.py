"""The simulated IOMAD: seeding like IOMAD, and the email cron's exact (and racy) behaviour."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import URL

from iomad_sim.iomad_cron import HALF_YEAR, run_iomad_email_cron
from iomad_sim.smtp_sink import RecordingSmtpSink
from moodle_bridge.sources.iomad.moodle_lock import LockNotAcquired, moodle_cron_lock
from moodle_bridge.sources.iomad.passwords import load_temporary_passwords
from moodle_bridge.sources.iomad.queue import PARKED_DUE_BASE, park_emails, select_due_emails
from tests.iomad.helpers import NOW, seeded


def _rows(engine: sa.Engine, table: sa.Table) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(table).order_by(table.c.id))]


def test_seed_is_deterministic_and_iomad_shaped() -> None:
    a, b = sa.create_engine("sqlite://"), sa.create_engine("sqlite://")
    ta, sa_ = seeded(a, companies=2, users_per_company=4, supervisor_every=2, completions_per_company=1)
    tb, _ = seeded(b, companies=2, users_per_company=4, supervisor_every=2, completions_per_company=1)
    assert _rows(a, ta.email) == _rows(b, tb.email)
    assert _rows(a, ta.user_preferences) == _rows(b, tb.user_preferences)
    with a.connect() as conn:
        rows = select_due_emails(conn, ta, NOW, None, None)
        passwords = load_temporary_passwords(conn, ta, sa_.learner_ids)
    assert passwords == sa_.passwords
    by_template = {name: [r for r in rows if r.templatename == name] for name in sa_.email_ids}
    assert len(by_template["user_create"]) == 8
    assert all(r.due == 0 for r in by_template["license_allocated"])
    for row in by_template["user_create"]:
        assert f"password: {passwords[row.userid].reveal()}</br>" in row.body  # plaintext, unescaped
        assert row.senderid == -20 and row.courseid == 1


def test_cron_sends_fan_out_marks_sent_and_ignores_failures(db_engine: sa.Engine, db_url: URL) -> None:
    tables, seed = seeded(db_engine, users_per_company=3, managers_per_company=1, license_allocated=False)
    sink = RecordingSmtpSink(fail_addresses={f"learner2.c{seed.company_ids[0]}.1@example.com"})
    run = run_iomad_email_cron(
        db_engine, "mdl_", db_url.database or "m", sink, now=NOW, clock=lambda: NOW + 7
    )
    assert run.ran and run.loaded == 3 and len(run.sent_rows) == 3 and run.failed_sends == 1
    # the failed user got nothing and, like IOMAD, neither did the manager of that row
    assert run.messages == 4 == len(sink.messages)
    e = tables.email
    with db_engine.connect() as conn:
        stamps = conn.execute(sa.select(e.c.sent, e.c.modifiedtime)).all()
    assert stamps == [(NOW + 7, NOW + 7)] * 3  # failures are marked sent too
    again = run_iomad_email_cron(db_engine, "mdl_", db_url.database or "m", sink, now=NOW + 10)
    assert again.ran and again.loaded == 0


def test_cron_deletes_disabled_and_purges_old_rows() -> None:
    engine = sa.create_engine("sqlite://")
    tables, seed = seeded(engine, users_per_company=2)
    et, e = tables.email_template, tables.email
    with engine.begin() as conn:
        conn.execute(sa.update(et).where(et.c.name == "license_allocated").values(disabled=1))
        old = seed.email_ids["user_create"][0]
        conn.execute(sa.update(e).where(e.c.id == old).values(modifiedtime=NOW - HALF_YEAR - 1))
        park_emails(conn, tables, [seed.email_ids["user_create"][1]])
        conn.execute(sa.update(e).where(e.c.id == seed.email_ids["user_create"][1]).values(modifiedtime=0))
    run = run_iomad_email_cron(engine, "mdl_", "m", RecordingSmtpSink(), now=NOW)
    assert run.purged == 1  # the old unsent row; the parked one (also "old") survives
    assert sorted(run.deleted_rows) == sorted(seed.email_ids["license_allocated"])
    with engine.connect() as conn:
        left = dict(conn.execute(sa.select(e.c.id, e.c.due)).all())
    assert set(left) == {seed.email_ids["user_create"][1]}
    assert next(iter(left.values())) >= PARKED_DUE_BASE


def test_race_window_without_and_with_the_lock(db_engine: sa.Engine, db_url: URL) -> None:
    """IOMAD rewrites whole rows it loaded: a park inside its window is undone. The lock prevents it."""
    tables, seed = seeded(db_engine, users_per_company=2, managers_per_company=0, license_allocated=False)
    dbname = db_url.database or "m"
    ids = seed.email_ids["user_create"]

    def bridge_without_lock(loaded: list[int]) -> None:
        with db_engine.begin() as conn:
            assert park_emails(conn, tables, loaded) == ids

    sink = RecordingSmtpSink()
    run = run_iomad_email_cron(db_engine, "mdl_", dbname, sink, now=NOW, after_load=bridge_without_lock)
    e = tables.email
    with db_engine.connect() as conn:
        rows = conn.execute(sa.select(e.c.sent, e.c.due).where(e.c.id.in_(ids))).all()
    # IOMAD sent them anyway and its update_record() wrote the OLD due back over the park:
    assert len(sink.messages) == 2 and run.sent_rows == ids
    assert all(sent == NOW and due < PARKED_DUE_BASE for sent, due in rows)

    tables2, seed2 = seeded(db_engine, users_per_company=2, managers_per_company=0, license_allocated=False)
    blocked: list[bool] = []

    def bridge_with_lock(loaded: list[int]) -> None:
        try:
            with moodle_cron_lock(db_engine, tables2, dbname, tables2.email_cron_task, 0):
                blocked.append(False)
        except LockNotAcquired:
            blocked.append(True)  # the bridge leaves the rows alone this minute

    sink.clear()
    run = run_iomad_email_cron(db_engine, "mdl_", dbname, sink, now=NOW, after_load=bridge_with_lock)
    assert blocked == [True]
    assert sorted(run.sent_rows) == sorted(seed2.email_ids["user_create"])
    assert sink.duplicates() == {}


def test_a_row_of_an_unknown_template_without_its_template_object_stops_the_cron() -> None:
    """IOMAD builds the template by name when the headers carry none, and throws for a name outside
    its list; with the object (as the bridge writes it) the row is sent to its user only."""
    import pytest

    from iomad_sim.iomad_cron import IomadCronCrash
    from moodle_bridge.sources.iomad.headers import serialize_headers
    from moodle_bridge.sources.iomad.local_queue import template_object

    engine = sa.create_engine("sqlite://")
    tables, seed = seeded(engine, users_per_company=1, license_allocated=False)
    e = tables.email
    with engine.begin() as conn:
        conn.execute(e.update().values(sent=NOW))  # the seeded rows are out of the way
        user = conn.execute(sa.select(e.c.userid).limit(1)).scalar_one()
        row = {
            "templatename": "mrcloud_schedule",
            "modifiedtime": NOW,
            "subject": "s",
            "body": "<p>b</p>",
            "varsreplaced": 1,
            "companyid": seed.company_ids[0],
            "courseid": 1,
            "userid": user,
            "due": NOW - 1,
        }
        bare = conn.execute(e.insert().values(**row, headers=None)).inserted_primary_key[0]  # type: ignore[index]
    with pytest.raises(IomadCronCrash, match="Email template 'mrcloud_schedule' not found"):
        run_iomad_email_cron(engine, "mdl_", "m", RecordingSmtpSink(), now=NOW)
    with engine.begin() as conn:
        conn.execute(e.delete().where(e.c.id == bare))
        good = conn.execute(
            e.insert().values(**row, headers=serialize_headers(template_object(seed.company_ids[0])))
        ).inserted_primary_key[0]  # type: ignore[index]
    sink = RecordingSmtpSink()
    assert run_iomad_email_cron(engine, "mdl_", "m", sink, now=NOW).sent_rows == [good]
    assert len(sink.messages) == 1
