"""Poison results: bad input gets a 4xx (never a 500), nothing changes, and no data reaches the logs.
Provider texts reach a terminal or a CSV without control characters. Runs on every engine."""

from __future__ import annotations

import io
import json
import logging
import warnings

import pytest
import sqlalchemy as sa

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from moodle_bridge.results.job_control import error_rows, write_error_csv
from moodle_bridge.results.receiver import RESULTS_PATH, create_app
from moodle_bridge.storage.database import create_bridge_engine
from tests.results.factory import create_job, make_tables, result, result_batch, snapshot
from tests.results.test_receiver import CLOCK, UNCHANGED_EXCEPT, envelope, make_config, signed

MARKER = "poison-marker-7f3a"


def _send(db_engine, caplog, make_body):
    tables = make_tables(db_engine)
    with db_engine.begin() as conn:
        job = create_job(conn, tables, recipients=2, email_id_start=None)
    app = create_app(db_engine, tables, make_config(), clock=lambda: CLOCK)
    with db_engine.connect() as conn:
        before = snapshot(conn, tables, skip=UNCHANGED_EXCEPT)
    body = make_body(job)
    with caplog.at_level(logging.DEBUG), TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(RESULTS_PATH, content=body, headers=signed(body))
    with db_engine.connect() as conn:
        after = snapshot(conn, tables, skip=UNCHANGED_EXCEPT)
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") + str(r.exc_text or "") for r in caplog.records)
    return response, before, after, logged, caplog.records


def _failed_with(job, message_json: str) -> bytes:
    """A signed-able envelope whose error message is ``message_json`` (raw JSON string literal)."""
    item = result(job, 0, "failed")
    item["error"]["message"] = "@@MSG@@"
    text = envelope(result_batch(7, [item])).decode("utf-8")
    return text.replace('"@@MSG@@"', message_json).encode("utf-8")


@pytest.mark.parametrize(
    ("name", "message_json", "status", "code"),
    [
        ("lone surrogate", f'"{MARKER} \\ud800"', 422, "invalid_text"),
        ("NUL", f'"{MARKER} \\u0000 tail"', 422, "invalid_text"),
    ],
)
def test_bad_text_is_refused_with_422_and_nothing_logged(
    db_engine: sa.Engine,
    caplog: pytest.LogCaptureFixture,
    name: str,
    message_json: str,
    status: int,
    code: str,
) -> None:
    response, before, after, logged, records = _send(
        db_engine, caplog, lambda job: _failed_with(job, message_json)
    )
    assert response.status_code == status, (name, response.text)
    assert response.json()["error"] == code
    assert after == before
    assert MARKER not in logged and MARKER not in response.text
    assert not any(r.exc_info for r in records)


def test_deeply_nested_json_is_a_400_not_a_500(
    db_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    response, before, after, _logged, records = _send(db_engine, caplog, lambda job: deep)
    assert response.status_code == 400 and response.json()["error"] == "invalid_json"
    nested_value = (b'{"a":' * 40) + b"1" + (b"}" * 40)
    body = envelope(result_batch(7, [])).replace(b'"results":[]', b'"results":[' + nested_value + b"]")
    response, *_ = _send(db_engine, caplog, lambda job: body)
    assert response.status_code == 400
    assert after == before
    assert not any(r.exc_info for r in records)


def test_failed_statements_never_show_their_parameters(db_url) -> None:
    engine = create_bridge_engine(db_url)
    tables = make_tables(engine)
    row = {"reportid": "r-1", "companyid": 7, "reporter": MARKER, "resultcount": 1, "timereceived": 1}
    with engine.begin() as conn:
        conn.execute(tables.result_reports.insert().values(**row))
    with pytest.raises(sa.exc.IntegrityError) as info, engine.begin() as conn:
        conn.execute(tables.result_reports.insert().values(**row))
    assert MARKER not in str(info.value)
    assert "hidden due to hide_parameters" in str(info.value)
    engine.dispose()


def test_provider_texts_reach_the_csv_without_control_characters(db_engine: sa.Engine, caplog) -> None:
    escape = "\x1b[2J\x1b]0;owned\x07 bounce \u202eevil\r\nline"
    response, *_ = _send(db_engine, caplog, lambda job: _failed_with(job, json.dumps(escape)))
    assert response.status_code == 200, response.text
    tables = make_tables(db_engine)
    out = io.StringIO()
    with db_engine.connect() as conn:
        job_id = conn.execute(sa.select(sa.func.max(tables.jobs.c.id))).scalar_one()
        write_error_csv(error_rows(conn, tables, int(job_id)), out)
    text = out.getvalue()
    assert "bounce" in text
    body = text.split("\n", 1)[1].rstrip("\n")
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch == "\u202e" for ch in body), repr(body)


def test_database_errors_shown_to_operators_never_quote_row_values(db_url):
    """A unique-key clash makes MariaDB quote the value ("Duplicate entry 'x'") and PostgreSQL
    name it ("Key (email)=(x)"); the line tick/run/migrate/uninstall print carries neither."""
    from moodle_bridge.storage.database import describe_database_error

    engine = create_bridge_engine(db_url)
    address = f"{MARKER}@example.com"
    table = sa.Table("poison_unique", sa.MetaData(), sa.Column("email", sa.String(100), unique=True))
    try:
        table.create(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), {"email": address})
        with pytest.raises(sa.exc.IntegrityError) as raised, engine.begin() as conn:
            conn.execute(table.insert(), {"email": address})
        if engine.dialect.name != "sqlite":  # SQLite names the column only
            assert MARKER in str(raised.value.orig)  # the driver's own text does quote it
        line = describe_database_error(raised.value)
        assert line.startswith("IntegrityError") and MARKER not in line
        with pytest.raises(sa.exc.SQLAlchemyError) as missing, engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table_here"))
        assert "no_such_table_here" in describe_database_error(missing.value)  # schema errors kept
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()
