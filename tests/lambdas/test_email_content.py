"""Pure message-building pieces: text part, bulk qualification, SES-form templates, MIME."""

from __future__ import annotations

import email
import email.policy
import json

import pytest

from lambdas.email.mime import Attachment, build_mime, display_address
from lambdas.email.sender import tag_value, untag_value
from lambdas.email.templating import TemplateDataError, bulk_template, literal_bulk_template, render
from lambdas.email.text import html_to_text


def test_text_part_keeps_structure_links_and_drops_scripts() -> None:
    html = (
        "<html><head><style>p{color:red}</style></head><body><h1>Welcome</h1>"
        "<p>Dear Zo&euml;,<br>your   account</p><ul><li>one</li><li>two</li></ul>"
        '<p><a href="https://lms.example/login">Log in</a></p><script>alert(1)</script></body></html>'
    )
    assert (
        html_to_text(html)
        == "Welcome\n\nDear Zoë,\nyour account\n\n- one\n- two\n\nLog in (https://lms.example/login)\n"
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ name|upper }}",
        "{% if x %}y{% endif %}",
        "{{ user.name }}",
        "{{ 'lit' }}",
        "{{ a }} {",
        "{% for x in y %}{{ x }}{% endfor %}",
        "{{ a + b }}",
    ],
)
def test_only_plain_variables_qualify_for_ses_bulk(source: str) -> None:
    assert bulk_template("s", source, None) is None


def test_ses_form_and_replacement_data_match_jinja2_rendering() -> None:
    subject, html = "Hi {{ name }}", "<p>{{ name }} &amp; {{ n }}</p>"
    bulk = bulk_template(subject, html, None)
    assert bulk is not None
    assert bulk.subject == "Hi {{t_name}}" and bulk.html == "<p>{{h_name}} &amp; {{h_n}}</p>"
    data = {"name": '<b>"O\'Brien"</b>', "n": 3}
    values = json.loads(bulk.replacement_data(data))
    filled = bulk.html.replace("{{h_name}}", values["h_name"]).replace("{{h_n}}", values["h_n"])
    assert filled == render(html, data, html=True)
    assert bulk.subject.replace("{{t_name}}", values["t_name"]) == render(subject, data, html=False)
    with pytest.raises(TemplateDataError, match="'n'"):
        bulk.replacement_data({"name": "x"})
    with pytest.raises(TemplateDataError):
        bulk.replacement_data({"name": None, "n": 1})
    with pytest.raises(TemplateDataError, match="missing"):
        render(html, {"name": "x"}, html=True)


def test_rendered_bodies_with_braces_are_never_sent_as_ses_templates() -> None:
    assert literal_bulk_template("s", "<p>{{ not a var }}</p>", None) is None
    assert literal_bulk_template("s", "<p>plain</p>", "plain") is not None


def test_mime_message_headers_and_parts() -> None:
    raw = build_mime(
        from_address=display_address("noreply@acme.example", "Acme Training"),
        to_address=display_address("li@example.org", "李小龍"),
        reply_to=["help@acme.example"],
        subject="Ваш сертификат",
        html="<p>Привет</p>",
        text="Привет\n",
        unsubscribe_url="https://offload.example/v1/unsubscribe/tok",
    )
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(message["To"]) == "李小龍 <li@example.org>"
    assert message["Subject"] == "Ваш сертификат"
    assert message["List-Unsubscribe"] == "<https://offload.example/v1/unsubscribe/tok>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert raw.isascii()  # 7-bit transport-safe: encoded words and quoted-printable


def test_tag_values_round_trip_identifiers() -> None:
    assert untag_value(tag_value("job:2026.7-a_b")) == "job:2026.7-a_b"
    assert tag_value("job:1") == "job@1"


def test_mime_headers_cannot_be_injected_and_long_lines_are_folded() -> None:
    raw = build_mime(
        from_address="noreply@acme.example",
        to_address="zoe@example.org",
        reply_to=[],
        subject="Hello\r\nBcc: attacker@evil.example " + "x" * 1200,
        html="<p>h</p>",
        text="t",
        unsubscribe_url=None,
        attachments=[Attachment("certificat é.pdf", "application/pdf", b"%PDF-1.4 test")],
    )
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Bcc"] is None
    assert str(message["Subject"]).startswith("Hello  Bcc: attacker@evil.example xxx")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    (attachment,) = [p for p in message.walk() if p.get_content_disposition() == "attachment"]
    assert attachment.get_filename() == "certificat é.pdf"
    assert attachment.get_content() == b"%PDF-1.4 test"
