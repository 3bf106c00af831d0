"""The template's sender display name and Reply-To (pure rules; the bridge tests cover the SQL)."""

from __future__ import annotations

from moodle_bridge.sources.iomad.headers import TemplateSettings
from moodle_bridge.sources.iomad.recipients import IomadUser
from moodle_bridge.sources.iomad.template_sender import TemplateSender, sender_for

PEOPLE = {
    30: IomadUser(30, "support@acme.example", "Help", "Desk", deleted=False, suspended=False),
    31: IomadUser(31, "replies@acme.example", "Re", "Plies", deleted=False, suspended=False),
}


def test_explicit_reply_to_wins_and_is_deduplicated_validated_and_capped() -> None:
    template = TemplateSettings(
        emailfromother="from@acme.example",
        emailreplyto="31",
        emailreplytoother="a@acme.example, A@acme.example, not an address, "
        + ", ".join(f"r{i}@acme.example" for i in range(12)),
    )
    sender = sender_for(template, ["hdr@acme.example"], PEOPLE, "Acme")
    assert sender.reply_to[:3] == ("hdr@acme.example", "a@acme.example", "r0@acme.example")
    assert len(sender.reply_to) == 10  # SES's limit
    assert "from@acme.example" not in sender.reply_to  # the From is only a fallback


def test_display_name_from_the_template_or_its_from_user() -> None:
    assert sender_for(
        TemplateSettings(emailfromothername="{company_name} HR"), [], PEOPLE, "Acme"
    ).from_name == ("Acme HR")
    by_user = sender_for(TemplateSettings(emailfrom="30"), [], PEOPLE, "Acme")
    assert by_user == TemplateSender("Help Desk", ("support@acme.example",))
    unknown_user = sender_for(TemplateSettings(emailfrom="99"), [], PEOPLE, "Acme")
    assert not unknown_user  # nothing to say: the batch's sender applies
    assert not sender_for(None, [], PEOPLE, "Acme")


def test_a_display_name_is_one_clean_line() -> None:
    template = TemplateSettings(emailfromothername="  {Company_Name}\r\nBcc: x@evil.example\t ")
    assert sender_for(template, [], PEOPLE, "Acme").from_name == "Acme Bcc: x@evil.example"
    assert not sender_for(TemplateSettings(emailfromothername=" \n "), [], PEOPLE, "Acme")
