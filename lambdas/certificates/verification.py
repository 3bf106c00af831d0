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

import time
from datetime import UTC, datetime
from typing import Any

from babel.dates import format_date
from jinja2 import Environment, select_autoescape

from certificate_render.values import locale_for
from offload_contract.cloud_keys import verification_key

_KEYS = ("title", "valid", "revoked", "unknown", "name", "course", "date", "issuer", "code")
_TEXTS = {
    "en": "Certificate verification|Valid certificate|This certificate has been revoked|"
    "No certificate has this code|Name|Course|Completed on|Issued by|Verification code",
    "de": "Zertifikatsprüfung|Gültiges Zertifikat|Dieses Zertifikat wurde widerrufen|"
    "Zu diesem Code gibt es kein Zertifikat|Name|Kurs|Abgeschlossen am|Ausgestellt von|Prüfcode",
    "fr": "Vérification du certificat|Certificat valide|Ce certificat a été révoqué|"
    "Aucun certificat ne porte ce code|Nom|Cours|Terminé le|Délivré par|Code de vérification",
    "es": "Verificación del certificado|Certificado válido|Este certificado ha sido revocado|"
    "Ningún certificado tiene este código|Nombre|Curso|Completado el|Emitido por|Código de verificación",
    "pt": "Verificação do certificado|Certificado válido|Este certificado foi revogado|"
    "Nenhum certificado tem este código|Nome|Curso|Concluído em|Emitido por|Código de verificação",
    "ar": "التحقق من الشهادة|شهادة صالحة|تم إلغاء هذه الشهادة|"
    "لا توجد شهادة بهذا الرمز|الاسم|الدورة|تاريخ الإتمام|صادرة عن|رمز التحقق",
    "zh": "证书验证|有效证书|此证书已被撤销|没有与此代码对应的证书|姓名|课程|完成日期|颁发机构|验证码",
    "ja": "証明書の確認|有効な証明書|この証明書は取り消されました|"
    "このコードの証明書はありません|氏名|コース|修了日|発行者|確認コード",
}
#: Labels of the page per language (the date itself comes from Babel's CLDR data).
LABELS: dict[str, dict[str, str]] = {
    language: dict(zip(_KEYS, text.split("|"), strict=True)) for language, text in _TEXTS.items()
}
RTL_LANGUAGES = frozenset({"ar", "he", "fa", "ur"})

_PAGE = Environment(autoescape=select_autoescape(default=True, default_for_string=True)).from_string(
    """<!doctype html>
<html lang="{{ lang }}" dir="{{ dir }}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{{ t.title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;color:#222}
.status{padding:.75rem 1rem;border-radius:.5rem;font-weight:600}.valid{background:#e6f4ea;color:#1e6b34}
.revoked,.unknown{background:#fdecea;color:#8a1c12}dt{color:#666;margin-top:.75rem}dd{margin:0;font-size:1.15rem}</style>
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
        state=state, record=record, date=date, code=code,
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
