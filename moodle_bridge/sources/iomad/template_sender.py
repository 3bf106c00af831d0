"""Who a queued row's mail is from and where replies go, as the company's template says.

IOMAD takes From / Reply-To from the template (``emailfrom`` user id, ``emailfromother``
address, ``emailfromothername`` which may be ``{Company_Name}``, ``emailreplyto`` user id,
``emailreplytoother``), and ``reply-to:`` entries in the row's headers; otherwise the site's
noreply address (iomad-facts §2.3).

SES sends only from verified identities, and a template's From is often a mailbox at another
domain, so the From *address* stays the deployment's verified sender. What the template says
is kept where it matters to people (docs/bridge.md, "Sender and Reply-To"):

- the display name: ``emailfromothername`` with ``{Company_Name}`` filled in, else the
  ``emailfrom`` user's full name;
- Reply-To: the headers' ``reply-to:`` entries, ``emailreplytoother`` and the ``emailreplyto``
  user's address; when the template sets none, its From address, so replies still reach the
  mailbox the company chose.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from moodle_bridge.sources.iomad import queries
from moodle_bridge.sources.iomad.addresses import address_problem
from moodle_bridge.sources.iomad.headers import ParsedHeaders, TemplateSettings
from moodle_bridge.sources.iomad.queries import chunks
from moodle_bridge.sources.iomad.recipients import IomadUser, load_users
from moodle_bridge.sources.iomad.schema import IomadTables

#: SES and the contract allow at most this many Reply-To addresses.
MAX_REPLY_TO = 10
_COMPANY_NAME = re.compile(r"\{company_name\}", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{[A-Za-z_]+\}")


@dataclass(frozen=True)
class TemplateSender:
    from_name: str | None = None
    reply_to: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.from_name or self.reply_to)

    def columns(self) -> dict[str, str | None]:
        return {"fromname": self.from_name, "replyto": ",".join(self.reply_to) or None}


def _user_id(value: str) -> int | None:
    text = value.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _addresses(value: str) -> list[str]:
    return [a.strip() for a in value.split(",") if a.strip()]


def sender_for(
    template: TemplateSettings | None,
    header_reply_to: Sequence[str],
    people: Mapping[int, IomadUser],
    company_name: str,
) -> TemplateSender:
    """The display name and Reply-To of one row (pure; ``people`` holds the template's live users)."""
    from_person = people.get(_user_id(template.emailfrom) or 0) if template else None
    from_name: str | None = None
    if template and template.emailfromothername.strip():
        name = _COMPANY_NAME.sub(company_name, template.emailfromothername).strip()
        from_name = None if _PLACEHOLDER.search(name) else name  # never show a raw placeholder
    if not from_name and from_person is not None:
        from_name = from_person.fullname or None

    reply: list[str] = list(header_reply_to)
    if template:
        reply += _addresses(template.emailreplytoother)
        replier = people.get(_user_id(template.emailreplyto) or 0)
        if replier is not None:
            reply.append(replier.email)
        if not any(address_problem(a) is None for a in reply):
            # No Reply-To set: replies go to the template's From, which SES cannot send as.
            reply = _addresses(template.emailfromother) + ([from_person.email] if from_person else [])
    unique: dict[str, str] = {}
    for address in reply:
        if address_problem(address) is None:
            unique.setdefault(address.lower(), address)
    return TemplateSender(_one_line(from_name), tuple(unique.values())[:MAX_REPLY_TO])


def _one_line(name: str | None) -> str | None:
    """A display name fit for a From header: no control characters, single spaces, ≤ 256."""
    if not name:
        return None
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in name).split())
    return cleaned[:256] or None


def template_senders(
    conn: sa.Connection,
    tables: IomadTables,
    rows: Iterable[tuple[int, int, ParsedHeaders | None]],
) -> dict[int, TemplateSender]:
    """emailid -> its TemplateSender, for ``(emailid, companyid, parsed headers)`` rows; rows
    whose template sets nothing are absent. Two set-based reads (users, companies)."""
    rows = list(rows)
    user_ids: set[int] = set()
    company_ids: set[int] = set()
    for _, companyid, headers in rows:
        template = headers.template if headers else None
        if template is None:
            continue
        company_ids.add(companyid)
        user_ids.update(i for i in (_user_id(template.emailfrom), _user_id(template.emailreplyto)) if i)
    if not company_ids:
        return {}
    people = {uid: u for uid, u in load_users(conn, tables, sorted(user_ids)).items() if not u.deleted}
    names: dict[int, str] = {}
    for chunk in chunks(sorted(company_ids)):
        for r in conn.execute(queries.companies_by_ids(tables, chunk)).mappings():
            names[int(r["id"])] = str(r["name"] or "")
    out: dict[int, TemplateSender] = {}
    cache: dict[tuple[int, int], TemplateSender] = {}  # rows of one template share the answer
    for emailid, companyid, headers in rows:
        if headers is None or headers.template is None:
            continue
        key = (id(headers), companyid)
        if key not in cache:
            cache[key] = sender_for(headers.template, headers.reply_to, people, names.get(companyid, ""))
        if cache[key]:
            out[emailid] = cache[key]
    return out
