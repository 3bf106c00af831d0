"""New completions with grade, IOMAD certificate record and the matching queued mail."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa

from moodle_bridge.sources.iomad.completions import select_completions
from tests.iomad.helpers import NOW, seeded


def test_completions_since_watermark(db_engine: sa.Engine) -> None:
    tables, seed = seeded(db_engine, companies=2, users_per_company=3, completions_per_company=2)
    c1, c2 = seed.company_ids
    with db_engine.connect() as conn:
        everything = select_completions(conn, tables, [c1, c2], (0, 0), NOW)
        assert [c.completion_id for c in everything] == seed.completion_ids
        queued = dict(
            zip(
                seed.learner_ids[:2] + seed.learner_ids[3:5],
                seed.email_ids["completion_course_user"],
                strict=True,
            )
        )
        for c in everything:
            assert c.courseid == 2 and c.coursename == "Safety 101"
            assert isinstance(c.finalscore, Decimal) and 60 <= c.finalscore <= 100
            assert c.certificate_filename == "Safety certificate.pdf"
            assert c.emailid == queued[c.userid]
        only_c2 = select_completions(conn, tables, [c2], (0, 0), NOW)
        assert {c.companyid for c in only_c2} == {c2} and len(only_c2) == 2
        page1 = select_completions(conn, tables, [c1, c2], (0, 0), NOW, limit=3)
        page2 = select_completions(conn, tables, [c1, c2], page1[-1].watermark, NOW, limit=3)
        assert page1 + page2 == everything
        assert select_completions(conn, tables, [c1, c2], everything[-1].watermark, NOW) == []
        assert select_completions(conn, tables, [c1], (0, 0), NOW - 3600) == []  # until bound
        assert select_completions(conn, tables, [], (0, 0), NOW) == []
