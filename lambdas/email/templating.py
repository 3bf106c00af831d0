"""jinja2 contents: per-recipient rendering, and the subset that SES bulk sending can carry.

SES templates (SendBulkEmail) substitute ``{{name}}`` and do *not* HTML-escape values (SES
developer guide, "Advanced email personalization"). A jinja2 template qualifies for bulk
sending only when its AST is literal text and bare variables (``{{ name }}``: no filters,
tests, attributes, conditions or loops), and its literal text contains no braces SES could
read as Handlebars. Escaping is kept exact by giving each part its own SES variables: the
HTML part reads ``{{h_<name>}}``, filled with the value escaped exactly as jinja2's
autoescape would; subject and text read ``{{t_<name>}}`` with the raw value. A recipient
renders byte-for-byte the same through SES bulk as through jinja2 locally.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

_HTML_ENV = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
_TEXT_ENV = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined)


class TemplateDataError(Exception):
    """A recipient's data does not satisfy the template (missing or unusable variable)."""


@lru_cache(maxsize=256)
def _compile(source: str, html: bool) -> Any:
    return (_HTML_ENV if html else _TEXT_ENV).from_string(source)


def render(source: str, data: dict[str, Any], *, html: bool) -> str:
    try:
        return str(_compile(source, html).render(**data))
    except UndefinedError as exc:
        raise TemplateDataError(f"template data is missing a variable: {exc.message}") from None
    except TemplateError as exc:
        raise TemplateDataError(f"template cannot be rendered: {type(exc).__name__}") from None


@dataclass(frozen=True)
class BulkTemplate:
    """A template in SES syntax, plus the variables each recipient must supply."""

    subject: str
    html: str
    text: str | None
    variables: frozenset[str]

    def replacement_data(self, data: dict[str, Any]) -> str:
        """The recipient's ReplacementTemplateData; raises if a value is missing or unusable."""
        values: dict[str, str] = {}
        for name in sorted(self.variables):
            if name not in data:
                raise TemplateDataError(f"template data is missing a variable: '{name}' is undefined")
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise TemplateDataError(f"template variable '{name}' is not a string or number")
            raw = str(value)
            values["t_" + name] = raw
            values["h_" + name] = str(escape(raw))
        return json.dumps(values, ensure_ascii=False, separators=(",", ":"))


def _ses_form(source: str, prefix: str) -> tuple[str, set[str]] | None:
    try:
        ast = _TEXT_ENV.parse(source)
    except TemplateError:
        return None
    out: list[str] = []
    names: set[str] = set()
    for node in ast.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                if "{" in child.data or "}" in child.data or "\\" in child.data:
                    return None  # literal braces would be read by Handlebars
                out.append(child.data)
            elif isinstance(child, nodes.Name) and child.ctx == "load" and child.name.isidentifier():
                names.add(child.name)
                out.append("{{" + prefix + child.name + "}}")
            else:
                return None
    return "".join(out), names


@lru_cache(maxsize=256)
def bulk_template(subject: str, html: str, text: str | None) -> BulkTemplate | None:
    """The SES form of a jinja2 content, or None when it needs jinja2 itself."""
    subject_form, html_form = _ses_form(subject, "t_"), _ses_form(html, "h_")
    text_form = _ses_form(text, "t_") if text is not None else ("", set[str]())
    if subject_form is None or html_form is None or text_form is None:
        return None
    return BulkTemplate(
        subject=subject_form[0],
        html=html_form[0],
        text=text_form[0] if text is not None else None,
        variables=frozenset(subject_form[1] | html_form[1] | text_form[1]),
    )


def literal_bulk_template(subject: str, html: str, text: str | None) -> BulkTemplate | None:
    """A rendered (final) body shared by several recipients, as a variable-free SES template."""
    for part in (subject, html, text or ""):
        if "{{" in part or "}}" in part:
            return None
    return BulkTemplate(subject=subject, html=html, text=text, variables=frozenset())
