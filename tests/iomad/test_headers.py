"""Parsing the PHP-serialized headers of real IOMAD 4.3.7 rows, and writing them like PHP."""

from __future__ import annotations

import pytest

from iomad_sim.iomad_seed import template_object
from moodle_bridge.sources.iomad.headers import Attachment, HeadersError, parse_headers, serialize_headers
from tests.iomad.helpers import SAMPLE, sample_email


def test_every_sample_row_parses() -> None:
    for row in SAMPLE["email"]:
        parsed = parse_headers(row["headers"])
        assert parsed.template is not None
        assert parsed.template.name == row["templatename"]
        assert parsed.template.companyid == row["companyid"]
        assert parsed.attachment is None  # facts: the completion row had no attachment
        assert parsed.to == parsed.cc == parsed.reply_to == ()


def test_user_create_template_fields() -> None:
    tpl = parse_headers(sample_email(1)["headers"]).template
    assert tpl is not None
    assert (tpl.id, tpl.lang, tpl.disabled, tpl.disabledmanager, tpl.disabledsupervisor) == (
        38,
        "en",
        False,
        False,
        False,
    )
    assert "{User_Newpassword}" in str(tpl.raw["body"])
    assert tpl.emailto_ids == () and tpl.emailccother_addresses == ()


def test_serialize_reproduces_php_byte_for_byte() -> None:
    """Our writer gives exactly what PHP serialize() wrote on the live install."""
    for email_id, template_id in ((1, 38), (4, 29), (7, 7)):
        row = sample_email(email_id)
        obj = template_object(template_id, 1, row["templatename"])
        assert serialize_headers(obj) == row["headers"], email_id


def test_attachment_to_cc_and_reply_to_entries() -> None:
    raw = serialize_headers(
        template_object(
            5, 2, "completion_course_user", emailto="7, 8,x", emailccother="a@example.com,b@example.org"
        ),
        attachment=Attachment("/var/moodledata/filedir/ab/cd/abcd", "Safety certificate.pdf"),
        numeric=("To:boss@example.com", "Cc:hr@example.com", "reply-to:help@example.com", "X-Custom: 1"),
    )
    parsed = parse_headers(raw)
    assert parsed.attachment == Attachment("/var/moodledata/filedir/ab/cd/abcd", "Safety certificate.pdf")
    assert parsed.to == ("boss@example.com",)
    assert parsed.cc == ("hr@example.com",)
    assert parsed.reply_to == ("help@example.com",)
    assert parsed.other == ("X-Custom: 1",)
    assert parsed.template is not None
    assert parsed.template.emailto_ids == (7, 8)
    assert parsed.template.emailccother_addresses == ("a@example.com", "b@example.org")


def test_empty_headers_are_empty() -> None:
    assert parse_headers(None).template is None
    assert parse_headers("").template is None


@pytest.mark.parametrize(
    "raw",
    [
        'a:1:{s:8:"template";O:8:"stdClass":1:{s:4:"body";s:99:"password: S3cr3t!",}}',  # truncated
        "not serialized at all: password S3cr3t!",
        's:9:"S3cr3t!!!";',  # a string, not an array
        'a:1:{s:8:"template";s:17:"password: S3cr3t!";}',  # template is not an object
    ],
)
def test_bad_headers_raise_without_echoing_the_value(raw: str) -> None:
    with pytest.raises(HeadersError) as info:
        parse_headers(raw)
    assert "S3cr3t" not in str(info.value)
    assert "S3cr3t" not in repr(info.value)
    assert info.value.__cause__ is None
