"""IOMAD temporary passwords: the RC4 ``iomad_temporary`` preference, finding and redacting them.

- ``endecrypt`` reproduces Moodle core's ``endecrypt()`` (lib/moodlelib.php): RC4 with the key
  repeated over 256 bytes, then PHP ``urlencode``; decrypting ``urldecode``s first.
- IOMAD <= 5.0 stores ``urlencode(RC4('knfgjeingj', password))`` in user_preferences
  ``iomad_temporary`` (facts section 3.2). The key is public, so this is encoding, not secrecy.
- Plaintext passwords are only ever held in ``Secret``, whose repr/str are masked, so they
  cannot leak through logs, exception messages or test output by accident.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable, Mapping

import sqlalchemy as sa

from moodle_bridge.sources.iomad import queries
from moodle_bridge.sources.iomad.queries import chunks
from moodle_bridge.sources.iomad.schema import IomadTables

#: IOMAD's hard-coded key (company_user::rc4encrypt, 4.1.22 - 5.0).
IOMAD_RC4_KEY = b"knfgjeingj"
IOMAD_TEMPORARY_PREFERENCE = "iomad_temporary"
#: Templates whose rendered body carries the plaintext password (facts sections 2.5, 6).
PASSWORD_TEMPLATES = frozenset({"user_create", "user_reset", "password_update"})
#: What a redacted password is replaced with in manager/supervisor copies.
REDACTION = "********"

_URL_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_HEX = b"0123456789ABCDEF"


class Secret:
    """A plaintext secret that never shows itself in repr/str/format. Use ``reveal()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self) -> tuple[object, ...]:  # pickling would write it out in clear
        raise TypeError("Secret values cannot be pickled")


def php_urlencode(data: bytes) -> str:
    """PHP ``urlencode``: A-Z a-z 0-9 ``-_.`` kept, space as ``+``, the rest ``%XX`` (upper hex)."""
    out = bytearray()
    for b in data:
        if b in _URL_SAFE:
            out.append(b)
        elif b == 0x20:
            out.append(0x2B)
        else:
            out += b"%" + bytes((_HEX[b >> 4], _HEX[b & 15]))
    return out.decode("ascii")


def php_urldecode(text: str) -> bytes:
    """PHP ``urldecode``: ``+`` is a space, valid ``%XX`` is a byte, anything else stays as is."""
    raw = text.encode("utf-8")
    out = bytearray()
    i = 0
    n = len(raw)
    hexdigits = b"0123456789abcdefABCDEF"
    while i < n:
        b = raw[i]
        if b == 0x2B:
            out.append(0x20)
            i += 1
        elif b == 0x25 and i + 2 < n and raw[i + 1] in hexdigits and raw[i + 2] in hexdigits:
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return bytes(out)


@functools.lru_cache(maxsize=8)
def _key_schedule(key: bytes) -> tuple[int, ...]:
    """RC4 KSA; cached because IOMAD always uses the same key."""
    if not key:
        raise ValueError("RC4 key must not be empty")
    box = list(range(256))
    x = 0
    for i in range(256):
        x = (x + box[i] + key[i % len(key)]) % 256
        box[i], box[x] = box[x], box[i]
    return tuple(box)


def rc4(key: bytes, data: bytes) -> bytes:
    """Plain RC4 as Moodle's ``endecrypt`` computes it (key repeated over the 256-byte schedule)."""
    box = list(_key_schedule(key))
    out = bytearray(len(data))
    a = j = 0
    for idx, byte in enumerate(data):
        a = (a + 1) % 256
        j = (j + box[a]) % 256
        box[a], box[j] = box[j], box[a]
        out[idx] = byte ^ box[(box[a] + box[j]) % 256]
    return bytes(out)


def endecrypt(key: bytes, data: str | bytes, case: str = "") -> str | bytes:
    """Moodle ``endecrypt($pwd, $data, $case)``.

    ``case=""`` (encrypt): ``data`` bytes/str -> urlencoded ``str``.
    ``case="de"`` (decrypt): urlencoded ``str`` -> raw plaintext ``bytes``.
    """
    if case == "de":
        text = data.decode("latin-1") if isinstance(data, bytes) else data
        return rc4(key, php_urldecode(text))
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return php_urlencode(rc4(key, raw))


def encode_iomad_temporary(password: str | Secret) -> str:
    """The ``iomad_temporary`` preference value IOMAD writes for ``password``."""
    plain = password.reveal() if isinstance(password, Secret) else password
    return php_urlencode(rc4(IOMAD_RC4_KEY, plain.encode("utf-8")))


def decode_iomad_temporary(value: str) -> Secret:
    """Decode an ``iomad_temporary`` preference into the plaintext password (masked)."""
    raw = rc4(IOMAD_RC4_KEY, php_urldecode(value))
    return Secret(raw.decode("utf-8", "replace"))


def load_temporary_passwords(
    conn: sa.Connection, tables: IomadTables, userids: Iterable[int]
) -> dict[int, Secret]:
    """userid -> temporary password from ``iomad_temporary`` (users without one are absent).

    One query per chunk of 1,000 users. IOMAD 5.1+ no longer writes the preference, so an
    empty result is normal there.
    """
    out: dict[int, Secret] = {}
    for chunk in chunks(userids):
        for userid, value in conn.execute(queries.preferences(tables, chunk, IOMAD_TEMPORARY_PREFERENCE)):
            if value:
                out[int(userid)] = decode_iomad_temporary(str(value))
    return out


def _variants(password: str) -> list[str]:
    """The forms a password can take in an HTML body: as is (IOMAD does not escape), escaped."""
    forms = {password, html.escape(password, quote=False), html.escape(password, quote=True)}
    forms.add(password.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#039;"))
    return sorted((f for f in forms if f), key=len, reverse=True)


def _plain(password: str | Secret) -> str:
    return password.reveal() if isinstance(password, Secret) else password


def find_password(body: str, password: str | Secret) -> bool:
    """Whether ``body`` contains the password (raw or HTML-escaped)."""
    plain = _plain(password)
    if not plain:
        return False
    return any(form in body for form in _variants(plain))


def redact(text: str, password: str | Secret, replacement: str = REDACTION) -> str:
    """Replace every occurrence of the password (raw or HTML-escaped) with ``replacement``."""
    plain = _plain(password)
    if not plain:
        return text
    for form in _variants(plain):
        text = text.replace(form, replacement)
    return text


def passwords_in_bodies(bodies: Mapping[int, str], passwords: Mapping[int, Secret]) -> dict[int, bool]:
    """email id -> whether its body contains the given password (both keyed by email id)."""
    return {eid: (eid in passwords and find_password(body, passwords[eid])) for eid, body in bodies.items()}


#: IOMAD's EmailVars placeholder for the temporary password (local/email/lib/vars.php).
PASSWORD_PLACEHOLDER = "{User_Newpassword}"  # noqa: S105 - a placeholder name
_PLACEHOLDER = re.compile(r"\{[A-Za-z][A-Za-z0-9_]*\}")


def password_from_template(body: str, template_body: str) -> Secret | None:
    """The temporary password at the position of ``{User_Newpassword}`` in the rendered body.

    IOMAD 5.1+ no longer keeps the password anywhere but the rendered body. The row's headers
    hold the template IOMAD rendered it from (``template.body``, placeholders and all). The
    rendered body must match that template literally, each placeholder standing for some
    text; the password is the text at the password placeholder. Accepted only when the
    reading is unambiguous (the shortest and the longest consistent readings agree, every
    occurrence of the placeholder gives the same value) and the value has no white space;
    anything else gives None, and copies of the row to others are then not sent.
    """
    if not template_body or PASSWORD_PLACEHOLDER not in template_body:
        return None
    found: set[str] = set()
    for lazy in (True, False):
        parts: list[str] = []
        last = 0
        names: list[str] = []
        for m in _PLACEHOLDER.finditer(template_body):
            parts.append(re.escape(template_body[last : m.start()]))
            names.append(m.group(0))
            parts.append("(.*?)" if lazy else "(.*)")
            last = m.end()
        parts.append(re.escape(template_body[last:]))
        # IOMAD appends the signature (after a separator) to the rendered template body.
        match = re.match("".join(parts), body, re.DOTALL)
        if match is None:
            return None
        values = {match.group(i + 1) for i, name in enumerate(names) if name == PASSWORD_PLACEHOLDER}
        if len(values) != 1:
            return None
        found |= values
    if len(found) != 1:
        return None
    value = found.pop()
    if not value or any(c.isspace() for c in value):
        return None
    return Secret(value)
