"""List templates rendered by the bridge for the Cloudflare path.

jinja2 compiles templates to Python; workerd has neither Python nor ``eval``, so the Worker
cannot render them. For a job routed to Cloudflare the outbox renders each recipient's
template here, as the AWS sender does (lambdas/email/templating.py): an immutable sandbox,
``StrictUndefined``, the HTML part autoescaped, subject and text not. Each recipient then
travels with its own ``rendered`` content (``<template key>-<recipient id>``) and no data.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_HTML = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
_TEXT = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined)


class WorkerTemplateError(Exception):
    """A recipient's data no longer renders (the message names the error type, never data)."""


@lru_cache(maxsize=64)
def _compile(source: str, html: bool) -> Any:
    return (_HTML if html else _TEXT).from_string(source)


def render_for_worker(template: dict[str, Any], data: dict[str, Any] | None) -> dict[str, Any]:
    """A contract ``rendered`` content from a ``template`` content and one recipient's data."""
    values = dict(data or {})
    try:
        content: dict[str, Any] = {
            "kind": "rendered",
            "subject": str(_compile(template["subject"], False).render(**values))[:998],
            "html": str(_compile(template["html"], True).render(**values)),
        }
        if template.get("text"):
            content["text"] = str(_compile(template["text"], False).render(**values))
    except TemplateError as exc:
        raise WorkerTemplateError(f"list template cannot be rendered: {type(exc).__name__}") from None
    return content


def render_entries(
    contents: dict[str, dict[str, Any]], entries: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Replace template contents by per-recipient rendered ones (``entries`` are changed in place)."""
    out = {key: c for key, c in contents.items() if c.get("kind") != "template"}
    for entry in entries:
        template = contents.get(str(entry.get("content_id")))
        if template is None or template.get("kind") != "template":
            continue
        key = f"{entry['content_id']}-{entry['recipient_id']}"
        out[key] = render_for_worker(template, entry.pop("data", None))
        entry["content_id"] = key
    return out
