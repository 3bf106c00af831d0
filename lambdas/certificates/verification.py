"""Verification records (``cert#<code>``) and the public verify page, for the life of the certificate.

A record is written when the PDF is stored and carries no ``expiration``, so the table's TTL
never removes it: the QR code on a certificate keeps working for as long as the table exists
(it is retained with the stack's data when ``retain_data`` is set). A revoked certificate
keeps its record, marked with the time and reason, so the page says "revoked" instead of
"unknown".

The page is for the person who scans the QR code: plain HTML in the learner's language (the
certificate's ``language``), with name, course, date, issuer and whether it is valid. Machines
ask for ``application/json`` (or ``?format=json``) and get the same facts as JSON.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from babel.dates import format_date
from jinja2 import Environment, select_autoescape

from certificate_render.values import locale_for
from offload_contract.cloud_keys import verification_key

#: The page's labels per language, right-to-left languages, style and CSP: one file shared with
#: the Worker's page (``offload_contract/pages/verify.json``). Dates come from Babel's CLDR data.
PAGE_FILE: dict[str, Any] = json.loads(
    resources.files("offload_contract").joinpath("pages/verify.json").read_text("utf-8")
)
LABELS: dict[str, dict[str, str]] = PAGE_FILE["labels"]
RTL_LANGUAGES = frozenset(PAGE_FILE["rtl_languages"])
#: The page loads nothing: no scripts, no images, only its inline style.
CONTENT_SECURITY_POLICY: str = PAGE_FILE["content_security_policy"]

_PAGE = Environment(autoescape=select_autoescape(default=True, default_for_string=True)).from_string(
    """<!doctype html>
<html lang="{{ lang }}" dir="{{ dir }}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{{ t.title }}</title>
<style>{{ style }}</style>
</head>
<body>
<h1>{{ t.title }}</h1>
<p class="status {{ state }}" role="status">{{ t[state] }}</p>
{% if record %}<dl>
<dt>{{ t.name }}</dt><dd>{{ record.learner_name }}</dd>
<dt>{{ t.course }}</dt><dd>{{ record.course_name }}</dd>
<dt>{{ t.date }}</dt><dd>{{ date }}</dd>
{% if record.issuer_name %}<dt>{{ t.issuer }}</dt><dd>{{ record.issuer_name }}</dd>{% endif %}
<dt>{{ t.code }}</dt><dd><code>{{ code }}</code></dd>
</dl>{% endif %}
</body>
</html>
"""
)


def record_item(
    company_id: int, job_id: str, recipient_id: str, key: str, data: dict[str, Any]
) -> dict[str, Any]:
    """The DynamoDB attributes of a verification record (no ``expiration``: kept for good)."""
    item: dict[str, Any] = {
        "company_id": {"N": str(company_id)},
        "job_id": {"S": job_id},
        "recipient_id": {"S": recipient_id},
        "key": {"S": key},
        "learner_name": {"S": data["learner_name"]},
        "course_name": {"S": data["course_name"]},
        "completed_at": {"N": str(data["completed_at"])},
    }
    for optional in ("issuer_name", "language"):
        if data.get(optional):
            item[optional] = {"S": str(data[optional])}
    return item


def facts(code: str, item: dict[str, Any]) -> dict[str, Any]:
    """The public facts of a record, as the JSON answer gives them."""
    answer: dict[str, Any] = {
        "valid": "revoked_at" not in item,
        "code": code,
        "learner_name": item["learner_name"]["S"],
        "course_name": item["course_name"]["S"],
        "completed_at": int(item["completed_at"]["N"]),
    }
    if "issuer_name" in item:
        answer["issuer_name"] = item["issuer_name"]["S"]
    if "revoked_at" in item:
        answer["revoked_at"] = int(item["revoked_at"]["N"])
    return answer


def page(code: str, item: dict[str, Any] | None, accept_language: str = "") -> str:
    """The human verify page: the certificate's language, else the browser's first, else English."""
    language = (item or {}).get("language", {}).get("S") or accept_language.split(",", maxsplit=1)[0].split(
        ";", maxsplit=1
    )[0].strip()
    locale = locale_for(language or "en")
    shown = locale.language if locale.language in LABELS else "en"
    labels = LABELS[shown]
    record = facts(code, item) if item is not None else None
    state = "unknown" if record is None else "valid" if record["valid"] else "revoked"
    date = ""
    if record is not None:
        moment = datetime.fromtimestamp(min(max(record["completed_at"], 0), 253_402_300_799), tz=UTC)
        date = str(format_date(moment.date(), format="long", locale=locale))
    return _PAGE.render(
        lang=shown, dir="rtl" if shown in RTL_LANGUAGES else "ltr", t=labels,
        state=state, record=record, date=date, code=code, style=PAGE_FILE["style"],
    )  # fmt: skip


def revoke(db: Any, table: str, code: str, reason: str, *, company_id: int, now: float | None = None) -> bool:
    """Mark a company's certificate revoked (the record stays). False when no such certificate."""
    try:
        db.update_item(
            TableName=table,
            Key={"id": {"S": verification_key(code)}},
            UpdateExpression="SET revoked_at = :at, revoked_reason = :why",
            ConditionExpression="attribute_exists(id) AND company_id = :company",
            ExpressionAttributeValues={
                ":at": {"N": str(int(time.time() if now is None else now))},
                ":why": {"S": reason[:500]},
                ":company": {"N": str(company_id)},
            },
        )
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise
    return True
