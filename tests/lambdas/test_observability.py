"""Logs are JSON and never carry bodies, template data, temporary passwords or secrets."""

from __future__ import annotations

import email
import email.policy
import io
import json
import logging

import pytest

from lambdas.common.observability import logger
from lambdas.handlers import email_sender
from offload_contract import encode_message
from tests.lambdas.conftest import Aws, FakeContext, email_batch, sqs_event

PASSWORD = "Tmp-Pa55w0rd-7f3c!"


def test_logs_are_json_and_never_contain_bodies_or_passwords(
    aws: Aws, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    email_sender.sender.cache_clear()
    buffer = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(buffer)
    contents = {
        "e-1": {"kind": "rendered", "subject": "New account", "html": f"<p>password: {PASSWORD}</p>"},
        "t-1": {
            "kind": "template",
            "engine": "jinja2",
            "subject": "Hi",
            "html": "<p>{{ secret }} {{ missing }}</p>",
        },
    }
    recipients: list[dict] = [
        {"recipient_id": "r-1", "to": "zoe@example.org", "content_id": "e-1"},
        {"recipient_id": "r-2", "to": "li@example.org", "content_id": "t-1", "data": {"secret": PASSWORD}},
    ]
    bad = email_batch(recipients, contents)
    bad["recipients"][0]["data"] = {"password": PASSWORD, "nested": {"x": 1}}
    bad["sender"]["address"] = "not-an-address"  # contract violation: the whole record fails
    email_sender.handler(
        sqs_event(encode_message(email_batch(recipients, contents)), encode_message(bad)), FakeContext()
    )
    handler.setStream(previous)
    output = capsys.readouterr()
    lines = [line for line in (buffer.getvalue() + output.out).splitlines() if line.strip()]
    assert lines, "the handler logged nothing"
    for line in lines:
        assert isinstance(json.loads(line), dict)  # every line is a JSON object (Logger or EMF metrics)
    everything = buffer.getvalue() + output.out + output.err + caplog.text
    assert PASSWORD not in everything
    assert "password:" not in everything
    assert "batch processed" in everything and "EmailsSent" in everything

    # the password did travel to SES (so the test would catch a leak if it were logged)
    def sent_text(message: object) -> str:
        raw = getattr(message, "raw_data", None)
        if raw is None:
            return str(getattr(message, "body", ""))
        parsed = email.message_from_string(raw, policy=email.policy.default)
        return " ".join(str(part.get_content()) for part in parsed.walk() if not part.is_multipart())

    assert any(PASSWORD in sent_text(m) for m in aws.ses.sent_messages())
