"""Parse the PHP-serialized ``headers`` column of IOMAD's queue (facts section 2.2).

The value is ``serialize()`` of an array: ``'template' => stdClass`` (the template row at
queue time: enable flags and To/Cc settings), optionally ``'attachment' => stdClass{filepath,
filename}``, and numeric entries like ``"To:addr"``, ``"Cc:addr"``, ``"reply-to:addr"``.
Error messages never include the raw value (it can carry addresses and template text).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

import phpserialize


class HeadersError(ValueError):
    """The headers value cannot be understood (the message never echoes the value)."""


@dataclass(frozen=True)
class TemplateSettings:
    """The ``template`` object stored in a queue row's headers."""

    id: int | None = None
    companyid: int | None = None
    name: str = ""
    lang: str = ""
    disabled: bool = False
    disabledmanager: bool = False
    disabledsupervisor: bool = False
    emailto: str = ""
    emailtoother: str = ""
    emailcc: str = ""
    emailccother: str = ""
    emailfrom: str = ""
    emailfromother: str = ""
    emailfromothername: str = ""
    emailreplyto: str = ""
    emailreplytoother: str = ""
    #: every property as stored (strings/ints), for anything not modelled above
    raw: Mapping[str, object] = field(default_factory=dict, repr=False)

    # cached: one parsed template is shared by every queue row of that company's template
    @functools.cached_property
    def emailto_ids(self) -> tuple[int, ...]:
        return tuple(_ids(self.emailto))

    @functools.cached_property
    def emailcc_ids(self) -> tuple[int, ...]:
        return tuple(_ids(self.emailcc))

    @functools.cached_property
    def emailtoother_addresses(self) -> tuple[str, ...]:
        return tuple(_addresses(self.emailtoother))

    @functools.cached_property
    def emailccother_addresses(self) -> tuple[str, ...]:
        return tuple(_addresses(self.emailccother))


@dataclass(frozen=True)
class Attachment:
    filepath: str
    filename: str


@dataclass(frozen=True)
class ParsedHeaders:
    template: TemplateSettings | None = None
    attachment: Attachment | None = None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    reply_to: tuple[str, ...] = ()
    #: numeric entries that are none of the above ("Name: value" strings), in order
    other: tuple[str, ...] = ()


def _ids(value: str) -> list[int]:
    """PHP ``explode(',', ...)`` of user ids; non-numeric pieces are ignored (PHP would find no user)."""
    out: list[int] = []
    for raw_piece in value.split(","):
        piece = raw_piece.strip()
        if piece.lstrip("-").isdigit():
            out.append(int(piece))
    return out


def _addresses(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def _text(value: object) -> str:
    if value is None or value is False:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _flag(value: object) -> bool:
    """PHP ``empty()`` semantics: 0, "0", "", null and false are empty."""
    if value is None or value is False:
        return False
    text = _text(value).strip()
    return text not in ("", "0")


def _int_or_none(value: object) -> int | None:
    text = _text(value).strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _props(obj: object) -> dict[str, object]:
    if isinstance(obj, phpserialize.phpobject):
        return {_text(k): v for k, v in obj.__php_vars__.items()}
    if isinstance(obj, dict):
        return {_text(k): v for k, v in obj.items()}
    raise HeadersError(f"expected an object or array, found {type(obj).__name__}")


def template_from_props(props: Mapping[str, object]) -> TemplateSettings:
    return TemplateSettings(
        id=_int_or_none(props.get("id")),
        companyid=_int_or_none(props.get("companyid")),
        name=_text(props.get("name")),
        lang=_text(props.get("lang")),
        disabled=_flag(props.get("disabled")),
        disabledmanager=_flag(props.get("disabledmanager")),
        disabledsupervisor=_flag(props.get("disabledsupervisor")),
        emailto=_text(props.get("emailto")),
        emailtoother=_text(props.get("emailtoother")),
        emailcc=_text(props.get("emailcc")),
        emailccother=_text(props.get("emailccother")),
        emailfrom=_text(props.get("emailfrom")),
        emailfromother=_text(props.get("emailfromother")),
        emailfromothername=_text(props.get("emailfromothername")),
        emailreplyto=_text(props.get("emailreplyto")),
        emailreplytoother=_text(props.get("emailreplytoother")),
        raw=dict(props),
    )


def parse_headers(raw: str | None) -> ParsedHeaders:
    """Parse a queue row's ``headers``; NULL/empty gives empty headers (IOMAD's ``empty()``)."""
    if raw is None or raw == "":
        return ParsedHeaders()
    try:
        data = phpserialize.loads(
            raw.encode("utf-8"), decode_strings=True, object_hook=phpserialize.phpobject
        )
    except Exception as exc:  # phpserialize raises ValueError/IndexError/... on bad input
        raise HeadersError(
            f"headers are not a valid PHP serialize() value ({type(exc).__name__}, {len(raw)} characters)"
        ) from None
    if not isinstance(data, dict):
        raise HeadersError(f"headers must serialize an array, found {type(data).__name__}")
    template: TemplateSettings | None = None
    attachment: Attachment | None = None
    to: list[str] = []
    cc: list[str] = []
    reply_to: list[str] = []
    other: list[str] = []
    for key, value in data.items():
        if key == "template":
            template = template_from_props(_props(value))
        elif key == "attachment":
            props = _props(value)
            filepath, filename = _text(props.get("filepath")), _text(props.get("filename"))
            if filepath or filename:
                attachment = Attachment(filepath=filepath, filename=filename)
        elif isinstance(key, int):
            entry = _text(value)
            name, sep, rest = entry.partition(":")
            lowered = name.strip().lower()
            if sep and lowered == "to":
                to.append(rest.strip())
            elif sep and lowered == "cc":
                cc.append(rest.strip())
            elif sep and lowered == "reply-to":
                reply_to.append(rest.strip())
            else:
                other.append(entry)
        # other string keys ('From', 'Reply-to' are set at send time, never stored) are ignored
    return ParsedHeaders(
        template=template,
        attachment=attachment,
        to=tuple(to),
        cc=tuple(cc),
        reply_to=tuple(reply_to),
        other=tuple(other),
    )


def serialize_headers(
    template: Mapping[str, object] | None,
    attachment: Attachment | None = None,
    numeric: tuple[str, ...] = (),
) -> str:
    """PHP ``serialize()`` of a headers array as IOMAD's ``queue_for_cron()`` writes it.

    Numeric entries come first (they are added to ``customheaders`` before the template).
    """
    data: dict[object, object] = {}
    for i, entry in enumerate(numeric):
        data[i] = entry
    if attachment is not None:
        data["attachment"] = phpserialize.phpobject(
            "stdClass", {"filepath": attachment.filepath, "filename": attachment.filename}
        )
    if template is not None:
        data["template"] = phpserialize.phpobject("stdClass", dict(template))
    out: bytes = phpserialize.dumps(data)
    return out.decode("utf-8")
