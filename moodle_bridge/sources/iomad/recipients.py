"""Turn IOMAD queue rows into recipients exactly as IOMAD's ``send_to_user()`` would.

Per row, in IOMAD's order (local/email/lib/api.php, facts section 2.4):

1. the row's user (``user.email``);
2. the template's ``emailto`` user ids, then ``emailcc`` user ids (deleted/suspended skipped);
3. the template's ``emailtoother``, then ``emailccother`` addresses (invalid ones skipped);
4. for "user templates" only (``is_user_template()``):
   - managers: ``company::get_my_managers($userid, 1)``: company_users rows with
     managertype 1 in the user's department or any parent department, except the cron's
     ``$USER`` (the first site admin), active users only; unless ``disabledmanager``;
   - supervisors: addresses in the profile field ``company.emailprofileid`` (fallback
     ``$CFG->companyemailprofileid``) of the user's company; unless ``disabledsupervisor``.

The template object is the one stored in the row's headers (IOMAD's snapshot at queue
time); enable checks use the live ``email_template`` rows, as IOMAD's cron does.

Differences from IOMAD, on purpose (documented in docs/iomad.md):
- addresses are de-duplicated per row, case-insensitively (IOMAD mails a duplicate twice);
- copies of password templates to anyone but the user get ``redact_password=True``
  (IOMAD copies the plaintext password to managers by default, iomad/iomad#2742);
- a bad recipient is skipped with a Problem instead of aborting the rest of the fan-out
  (IOMAD's ``send_to_user()`` returns at the first failed send).

Everything is loaded in a bounded number of set-based queries (about ten plus one per
extra chunk of 1,000 ids), never per row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from moodle_bridge.sources.iomad import queries
from moodle_bridge.sources.iomad.addresses import address_problem
from moodle_bridge.sources.iomad.headers import HeadersError, ParsedHeaders, TemplateSettings, parse_headers
from moodle_bridge.sources.iomad.passwords import PASSWORD_TEMPLATES
from moodle_bridge.sources.iomad.queries import COMPANY_SUSPENDED, chunks
from moodle_bridge.sources.iomad.queue import QueuedEmail
from moodle_bridge.sources.iomad.schema import IomadTables
from moodle_bridge.sources.iomad.templates import (
    ALL_TEMPLATES,
    USER_TEMPLATES,
    known_templates,
    template_generation,
)

ROLE_USER = "user"
ROLE_TO = "to"
ROLE_CC = "cc"
ROLE_MANAGER = "manager"
ROLE_SUPERVISOR = "supervisor"

#: Kept for callers of earlier releases: every template name of any generation. The fan-out
#: itself checks the detected generation's list (``templates.known_templates``).
KNOWN_TEMPLATES = ALL_TEMPLATES

# Problem codes. FATAL ones mean the row must not be sent by the bridge (leave it to IOMAD).
EMPTY_ADDRESS = "empty_address"
INVALID_ADDRESS = "invalid_address"
BAD_HEADERS = "bad_headers"
UNKNOWN_TEMPLATE = "unknown_template"
TEMPLATE_DISABLED = "template_disabled"
USER_MISSING = "user_missing"
USER_DELETED = "user_deleted"
USER_SUSPENDED = "user_suspended"
COMPANY_MISSING = "company_missing"
DUPLICATE_ADDRESS = "duplicate_address"
RECIPIENT_UNAVAILABLE = "recipient_unavailable"  # a To/Cc user that is missing, deleted or suspended
FATAL_PROBLEMS = frozenset(
    {
        BAD_HEADERS,
        UNKNOWN_TEMPLATE,
        TEMPLATE_DISABLED,
        USER_MISSING,
        USER_DELETED,
        USER_SUSPENDED,
        COMPANY_MISSING,
    }
)

#: IOMAD's email_cron() managertype for the enable check (strpos semantics: a match at
#: position 0 is falsy in PHP, so a name *starting* with the word does not count).
MANAGER_TEMPLATE_TYPE = 1
SUPERVISOR_TEMPLATE_TYPE = 2


@dataclass(frozen=True)
class Problem:
    code: str
    detail: str
    #: the recipient role the problem is about (address problems), else None
    role: str | None = None

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_PROBLEMS


@dataclass(frozen=True)
class ExpandedRecipient:
    role: str  # user | to | cc | manager | supervisor
    userid: int | None
    address: str
    fullname: str
    redact_password: bool


@dataclass
class Expansion:
    email_id: int
    recipients: list[ExpandedRecipient] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    headers: ParsedHeaders | None = field(default=None, repr=False)

    @property
    def sendable(self) -> bool:
        """No fatal problem and the row's own user has a usable address.

        IOMAD sends to the user first and stops at the first failed send, so when the user's
        own address is unusable nobody gets a copy; the bridge leaves such rows to IOMAD.
        """
        return (
            bool(self.recipients)
            and self.recipients[0].role == ROLE_USER
            and not any(p.fatal for p in self.problems)
        )

    @property
    def problem_codes(self) -> list[str]:
        return [p.code for p in self.problems]


@dataclass(frozen=True)
class IomadUser:
    id: int
    email: str
    firstname: str
    lastname: str
    deleted: bool
    suspended: bool

    @property
    def fullname(self) -> str:
        return f"{self.firstname} {self.lastname}".strip()


def template_check_type(templatename: str) -> int:
    """IOMAD's cron: 1 if the name contains "manager", 2 if "supervisor" (not at position 0)."""
    if templatename.find("manager") > 0:
        return MANAGER_TEMPLATE_TYPE
    if templatename.find("supervisor") > 0:
        return SUPERVISOR_TEMPLATE_TYPE
    return 0


def load_users(conn: sa.Connection, t: IomadTables, ids: Iterable[int]) -> dict[int, IomadUser]:
    users: dict[int, IomadUser] = {}
    for chunk in chunks(ids, queries.READ_CHUNK):
        for uid, email, first, last, deleted, suspended, _lang in conn.execute(
            queries.users_by_ids(t, chunk)
        ):
            users[int(uid)] = IomadUser(
                int(uid), str(email or ""), str(first or ""), str(last or ""), bool(deleted), bool(suspended)
            )
    return users


def _first_admin(value: str | None) -> int | None:
    for piece in (value or "").split(","):
        if piece.strip().isdigit():
            return int(piece.strip())
    return None


def _int_or_none(value: object) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else None


def expand_emails(
    conn: sa.Connection,
    tables: IomadTables,
    emails: Sequence[QueuedEmail],
    *,
    redact_third_party_passwords: bool = True,
) -> dict[int, Expansion]:
    """email id -> Expansion (recipients in IOMAD's order, plus problems), set-based."""
    t = tables
    result: dict[int, Expansion] = {e.id: Expansion(email_id=e.id) for e in emails}
    if not emails:
        return result

    # 1. headers (CPU only); template names as the detected generation has them
    known = known_templates(t)
    templates: dict[int, TemplateSettings | None] = {}
    parsed_cache: dict[str | None, ParsedHeaders | HeadersError] = {}  # rows of a template share headers
    for e in emails:
        exp = result[e.id]
        cached = parsed_cache.get(e.headers_raw)
        if cached is None:
            try:
                cached = parse_headers(e.headers_raw)
            except HeadersError as exc:
                cached = exc
            parsed_cache[e.headers_raw] = cached
        if isinstance(cached, HeadersError):
            exp.problems.append(Problem(BAD_HEADERS, f"email {e.id}: {cached}"))
            templates[e.id] = None
            continue
        parsed = cached
        exp.headers = parsed
        templates[e.id] = parsed.template
        if e.templatename not in known:
            exp.problems.append(
                Problem(
                    UNKNOWN_TEMPLATE,
                    f"email {e.id}: template {e.templatename!r} is not an IOMAD "
                    f"{template_generation(t)} template",
                )
            )

    fan_out = {e.id for e in emails if e.templatename in USER_TEMPLATES}
    row_userids = {e.userid for e in emails}
    fan_userids = {e.userid for e in emails if e.id in fan_out}

    # 2. company memberships of users who get manager/supervisor copies (first row wins)
    membership: dict[int, tuple[int, int]] = {}  # userid -> (companyid, departmentid)
    for chunk in chunks(fan_userids, queries.READ_CHUNK):
        for r in conn.execute(queries.company_users_of(t, chunk)).mappings():
            membership.setdefault(int(r["userid"]), (int(r["companyid"]), int(r["departmentid"])))

    # 3. site config: cron $USER (first site admin) and default supervisor profile field
    config = {
        str(n): v for n, v in conn.execute(queries.config_values(t, ["siteadmins", "companyemailprofileid"]))
    }
    cron_userid = _first_admin(config.get("siteadmins"))
    default_profileid = _int_or_none(config.get("companyemailprofileid"))

    # 4. companies (of rows and of fan-out users)
    companyids = {e.companyid for e in emails} | {c for c, _ in membership.values()}
    companies: dict[int, int | None] = {}  # id -> emailprofileid
    for chunk in chunks(companyids):
        for r in conn.execute(queries.companies_by_ids(t, chunk)).mappings():
            companies[int(r["id"])] = _int_or_none(r["emailprofileid"])

    # 5. live template enable flags (any language row disabled disables, like IOMAD)
    disabled: dict[tuple[int, str], tuple[bool, bool, bool]] = {}
    names = sorted({e.templatename for e in emails})
    for chunk in chunks({e.companyid for e in emails}):
        for r in conn.execute(queries.templates_for(t, chunk, names)).mappings():
            key = (int(r["companyid"]), str(r["name"]))
            old = disabled.get(key, (False, False, False))
            disabled[key] = (
                old[0] or bool(r["disabled"]),
                old[1] or bool(r["disabledmanager"]),
                old[2] or bool(r["disabledsupervisor"]),
            )

    # 6. managers: department trees of the fan-out companies, managertype 1 in them
    manager_companies = {c for c, _ in membership.values()}
    parent_of: dict[int, int] = {}
    for chunk in chunks(manager_companies):
        for r in conn.execute(queries.departments_of_companies(t, chunk)).mappings():
            parent_of[int(r["id"])] = int(r["parent"] or 0)
    managers_by_dept: dict[int, list[tuple[int, int]]] = defaultdict(list)  # dept -> [(cu.id, userid)]
    for chunk in chunks(parent_of.keys(), queries.READ_CHUNK):
        for r in conn.execute(queries.managers_in(t, chunk, 1)).mappings():
            managers_by_dept[int(r["departmentid"])].append((int(r["id"]), int(r["userid"])))

    chain_cache: dict[int, tuple[int, ...]] = {}

    def managers_of(userid: int) -> tuple[int, ...]:
        member = membership.get(userid)
        if member is None:
            return ()
        start = member[1]
        cached = chain_cache.get(start)
        if cached is not None:
            return cached
        dept = start  # the user's department, then its parents
        seen: set[int] = set()
        found: list[tuple[int, int]] = []
        while dept and dept not in seen:
            seen.add(dept)
            found.extend(m for m in managers_by_dept.get(dept, ()) if m[1] != cron_userid)
            dept = parent_of.get(dept, 0)
        # IOMAD's query has no ORDER BY; in practice rows come in company_users id order
        chain_cache[start] = tuple(dict.fromkeys(uid for _, uid in sorted(found)))
        return chain_cache[start]

    manager_ids = {m for u in fan_userids for m in managers_of(u)}

    # 7. every user whose address we need
    to_cc_ids: set[int] = set()
    for tpl in templates.values():
        if tpl is not None:
            to_cc_ids.update(tpl.emailto_ids)
            to_cc_ids.update(tpl.emailcc_ids)
    users = load_users(conn, t, row_userids | to_cc_ids | manager_ids)

    # 8. supervisor profile data
    profile_field: dict[int, int] = {}  # userid -> fieldid
    for uid in fan_userids:
        member = membership.get(uid)
        if member is None:
            continue
        fid = companies.get(member[0]) or default_profileid
        if fid:
            profile_field[uid] = fid
    supervisor_data: dict[int, str] = {}
    for chunk in chunks(profile_field.keys(), queries.READ_CHUNK):
        fids = sorted({profile_field[u] for u in chunk})
        for r in conn.execute(queries.profile_data(t, chunk, fids)).mappings():
            uid = int(r["userid"])
            if profile_field.get(uid) == int(r["fieldid"]):
                supervisor_data.setdefault(uid, str(r["data"] or ""))

    # 9. assemble per row
    for e in emails:
        exp = result[e.id]
        tpl = templates.get(e.id)
        third_party_redact = redact_third_party_passwords and e.templatename in PASSWORD_TEMPLATES
        seen: set[str] = set()

        def add(
            role: str,
            userid: int | None,
            address: str,
            fullname: str,
            *,
            _exp: Expansion = exp,
            _seen: set[str] = seen,
            _redact: bool = third_party_redact,
            _eid: int = e.id,
        ) -> None:
            who = f"user {userid}" if userid is not None else role
            problem = address_problem(address)
            if problem is not None:
                _exp.problems.append(
                    Problem(
                        problem,
                        f"email {_eid}: {role} recipient ({who}) has an {problem.replace('_', ' ')}",
                        role,
                    )
                )
                return
            key = address.lower()
            if key in _seen:
                _exp.problems.append(
                    Problem(
                        DUPLICATE_ADDRESS,
                        f"email {_eid}: {role} recipient ({who}) repeats an address already in this email",
                    )
                )
                return
            _seen.add(key)
            _exp.recipients.append(
                ExpandedRecipient(role, userid, address, fullname, _redact and role != ROLE_USER)
            )

        if e.companyid not in companies:
            exp.problems.append(
                Problem(COMPANY_MISSING, f"email {e.id}: company {e.companyid} does not exist")
            )
        flags = disabled.get((e.companyid, e.templatename), (False, False, False))
        check = template_check_type(e.templatename)
        if (
            flags[0]
            or (check == MANAGER_TEMPLATE_TYPE and flags[1])
            or (check == SUPERVISOR_TEMPLATE_TYPE and flags[2])
        ):
            exp.problems.append(
                Problem(
                    TEMPLATE_DISABLED,
                    f"email {e.id}: template {e.templatename!r} is disabled for company {e.companyid}",
                )
            )
        user = users.get(e.userid)
        if user is None:
            exp.problems.append(Problem(USER_MISSING, f"email {e.id}: user {e.userid} does not exist"))
        elif user.deleted:
            exp.problems.append(Problem(USER_DELETED, f"email {e.id}: user {e.userid} is deleted"))
        elif user.suspended and e.templatename != COMPANY_SUSPENDED:
            exp.problems.append(Problem(USER_SUSPENDED, f"email {e.id}: user {e.userid} is suspended"))
        if any(p.fatal for p in exp.problems):
            continue
        if user is None:  # unreachable: USER_MISSING is fatal
            continue
        add(ROLE_USER, user.id, user.email, user.fullname)
        if tpl is None:  # no stored template: IOMAD loads the default one (no To/Cc, copies on)
            tpl = TemplateSettings(name=e.templatename)
        for role, ids in ((ROLE_TO, tpl.emailto_ids), (ROLE_CC, tpl.emailcc_ids)):
            for uid in ids:
                other = users.get(uid)
                if other is None or other.deleted or other.suspended:
                    state = "missing" if other is None else ("deleted" if other.deleted else "suspended")
                    # not fatal for the row: IOMAD skips such To/Cc users too
                    exp.problems.append(
                        Problem(RECIPIENT_UNAVAILABLE, f"email {e.id}: {role} user {uid} is {state}, skipped")
                    )
                    continue
                add(role, other.id, other.email, other.fullname)
        for role, addresses in ((ROLE_TO, tpl.emailtoother_addresses), (ROLE_CC, tpl.emailccother_addresses)):
            for address in addresses:
                add(role, None, address, "")
        # "Cc:" entries of the row's own headers that the template does not explain (IOMAD 5.x
        # Cc's the creating user on a non-reset user_create): a copy, redacted for password mail.
        if exp.headers is not None:
            for entry in exp.headers.cc:
                for address in entry.split(","):
                    if address.strip() and address.strip().lower() not in seen:
                        add(ROLE_CC, None, address.strip(), "")
        if e.templatename not in USER_TEMPLATES:
            continue
        if not tpl.disabledmanager:
            for mid in managers_of(e.userid):
                manager = users.get(mid)
                if manager is None or manager.deleted or manager.suspended:
                    continue  # IOMAD: get_record(deleted=0, suspended=0) finds nothing
                add(ROLE_MANAGER, manager.id, manager.email, manager.fullname)
        if not tpl.disabledsupervisor:
            for address in supervisor_data.get(e.userid, "").split(","):
                if address.strip():
                    add(ROLE_SUPERVISOR, None, address.strip(), "")
    return result
