"""Queue selection with IOMAD's semantics; parking, restoring and marking sent, set-based."""

from __future__ import annotations

import sqlalchemy as sa

from iomad_sim.iomad_seed import SeedResult
from moodle_bridge.sources.iomad import queries
from moodle_bridge.sources.iomad.queue import (
    PARKED_DUE_BASE,
    list_parked,
    mark_emails_sent,
    original_due,
    park_emails,
    restore_emails,
    restore_mismatches,
    select_due_emails,
)
from moodle_bridge.sources.iomad.schema import IomadTables
from tests.iomad.helpers import NOW, count_statements, seeded


def _add(conn: sa.Connection, t: IomadTables, **row: object) -> int:
    values: dict[str, object] = {
        "templatename": "user_create",
        "modifiedtime": NOW - 10,
        "subject": "s",
        "body": "b",
        "companyid": 1,
        "courseid": 1,
        "userid": 3,
        "senderid": -20,
        "headers": None,
        "due": NOW - 10,
    }
    values.update(row)
    key = conn.execute(sa.insert(t.email).values(**values)).inserted_primary_key
    assert key is not None
    return int(key[0])


def _setup(engine: sa.Engine) -> tuple[IomadTables, SeedResult, dict[str, int]]:
    t, seed = seeded(engine, companies=2, users_per_company=3, license_allocated=False)
    c1 = seed.company_ids[0]
    learners = seed.learner_ids
    u = t.user
    ids: dict[str, int] = {}
    with engine.begin() as conn:
        conn.execute(sa.update(u).where(u.c.id == learners[1]).values(deleted=1))
        conn.execute(sa.update(u).where(u.c.id == learners[2]).values(suspended=1))
        ids["boundary"] = _add(conn, t, userid=learners[0], companyid=c1, due=NOW)
        ids["future"] = _add(conn, t, userid=learners[0], companyid=c1, due=NOW + 1)
        ids["just_due"] = _add(conn, t, userid=learners[0], companyid=c1, due=NOW - 1)
        ids["sent"] = _add(conn, t, userid=learners[0], companyid=c1, sent=NOW - 5)
        ids["suspended_company_mail"] = _add(
            conn, t, userid=learners[2], companyid=c1, templatename="company_suspended"
        )
        ids["deleted_company_mail"] = _add(
            conn, t, userid=learners[1], companyid=c1, templatename="company_suspended"
        )
        ids["zero_due"] = _add(conn, t, userid=learners[0], companyid=c1, due=0)
        ids["no_user"] = _add(conn, t, userid=99999, companyid=c1)
    return t, seed, ids


def test_selection_matches_iomad_semantics(db_engine: sa.Engine) -> None:
    t, seed, ids = _setup(db_engine)
    c2 = seed.company_ids[1]
    learners = seed.learner_ids
    with db_engine.connect() as conn:
        rows = select_due_emails(conn, t, NOW, None, None)
        got = [r.id for r in rows]
        assert got == sorted(got)  # ordered by id
        users = {r.userid for r in rows}
        assert learners[1] not in users  # deleted: never
        assert ids["boundary"] not in got and ids["future"] not in got  # due < now, strictly
        assert ids["just_due"] in got and ids["zero_due"] in got
        assert ids["sent"] not in got
        assert ids["no_user"] not in got  # inner join on user, like IOMAD
        assert ids["suspended_company_mail"] in got  # IOMAD's special query
        assert ids["deleted_company_mail"] not in got
        suspended_rows = [r for r in rows if r.userid == learners[2]]
        assert [r.templatename for r in suspended_rows] == ["company_suspended"]
        # IOMAD's own query gives the same set minus the company_suspended special case
        iomad = {int(r.id) for r in conn.execute(queries.iomad_cron_main(t, NOW))}
        special = {int(r.id) for r in conn.execute(queries.iomad_cron_company_suspended(t, NOW))}
        assert set(got) == iomad | special

        only_c2 = select_due_emails(conn, t, NOW, [c2], None)
        assert only_c2 and {r.companyid for r in only_c2} == {c2}
        assert select_due_emails(conn, t, NOW, [], None) == []
        first_two = select_due_emails(conn, t, NOW, None, 2)
        assert [r.id for r in first_two] == got[:2]
        rest = select_due_emails(conn, t, NOW, None, None, after_id=first_two[-1].id)
        assert [r.id for r in rest] == got[2:]


def test_queued_email_repr_hides_body() -> None:
    engine = sa.create_engine("sqlite://")
    t, seed = seeded(engine, users_per_company=1, license_allocated=False)
    with engine.connect() as conn:
        (row,) = select_due_emails(conn, t, NOW, None, None)
    password = seed.passwords[row.userid].reveal()
    assert password in row.body
    assert password not in repr(row)
    assert "headers_raw" not in repr(row)


def test_park_restore_mark_cycle(db_engine: sa.Engine) -> None:
    t, seed = seeded(db_engine, users_per_company=4, license_allocated=False)
    e = t.email
    with db_engine.begin() as conn:
        rows = select_due_emails(conn, t, NOW, None, None)
        originals = {r.id: r.due for r in rows}
        all_ids = list(originals)
        sent_id = all_ids[-1]
        conn.execute(sa.update(e).where(e.c.id == sent_id).values(sent=NOW))
        parked = park_emails(conn, t, all_ids)
        assert parked == sorted(all_ids[:-1])  # the sent row is left alone
        assert park_emails(conn, t, all_ids) == []  # idempotent
    with db_engine.connect() as conn:
        assert select_due_emails(conn, t, NOW, None, None) == []
        assert conn.execute(queries.iomad_cron_main(t, NOW)).all() == []
        # IOMAD's purge (far in the future) never deletes a parked row
        purged = conn.execute(queries.iomad_cron_purge(t, NOW, NOW + 10**9)).rowcount
        conn.rollback()
        assert purged == 1  # only the sent one
        stored = dict(conn.execute(sa.select(e.c.id, e.c.due).where(e.c.id.in_(parked))).all())
        assert all(d >= PARKED_DUE_BASE and original_due(d) == originals[i] for i, d in stored.items())
        assert list_parked(conn, t) == {i: originals[i] for i in parked}
        assert restore_mismatches(conn, t, {i: originals[i] for i in parked}) == {}
        assert restore_mismatches(conn, t, {parked[0]: 123}) == {parked[0]: (123, originals[parked[0]])}

    back, done = parked[:2], parked[2:]
    with db_engine.begin() as conn:
        assert restore_emails(conn, t, {i: originals[i] for i in back}) == back
        assert mark_emails_sent(conn, t, done, NOW + 5) == done
        assert mark_emails_sent(conn, t, done, NOW + 9) == []  # already sent
    with db_engine.connect() as conn:
        again = select_due_emails(conn, t, NOW, None, None)
        assert [r.id for r in again] == back
        assert all(r.due == originals[r.id] for r in again)
        for i, sent, modified, due, body in conn.execute(
            sa.select(e.c.id, e.c.sent, e.c.modifiedtime, e.c.due, e.c.body).where(e.c.id.in_(done))
        ):
            assert (sent, modified, due) == (NOW + 5, NOW + 5, originals[i])
            assert seed.passwords[next(r.userid for r in rows if r.id == i)].reveal() in body  # untouched


def test_round_trips_grow_with_chunks_not_rows() -> None:
    engine = sa.create_engine("sqlite://")
    t, _ = seeded(engine, companies=1, users_per_company=1250, managers_per_company=0)
    with engine.begin() as conn:
        with count_statements(engine) as counter:
            rows = select_due_emails(conn, t, NOW, None, None)
        assert len(rows) == 2500 and counter.count == 1
        ids = [r.id for r in rows]
        with count_statements(engine) as counter:
            assert len(park_emails(conn, t, ids)) == 2500
        assert counter.count == 2 * 3  # 3 chunks of <= 1,000: SELECT FOR UPDATE + UPDATE each
        with count_statements(engine) as counter:
            assert len(restore_emails(conn, t, ids)) == 2500
        assert counter.count == 6
        with count_statements(engine) as counter:
            assert len(mark_emails_sent(conn, t, ids, NOW)) == 2500
        assert counter.count == 6
