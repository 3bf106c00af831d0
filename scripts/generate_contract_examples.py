"""Regenerate offload_contract/vectors/messages.json: valid and invalid contract messages.

Both the Python tests and the Worker tests validate every example against the one schema
and must agree with ``valid``. Run: .venv/bin/python scripts/generate_contract_examples.py
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

CALLBACK = {"url": "https://moodle.example.org/offload/callbacks/v1/results", "key_id": "k2026.c7"}

EMAIL_BATCH: dict[str, Any] = {
    "type": "email_batch",
    "contract_version": 1,
    "batch_id": "b-7-000001",
    "job_id": "j-7-000001",
    "company_id": 7,
    "attempt": 1,
    "created_at": 1795361900,
    "callback": CALLBACK,
    "category": "transactional",
    "sender": {"address": "noreply@acme.example", "name": "Acme Training", "reply_to": ["help@acme.example"]},
    "contents": {
        "e-1": {
            "kind": "rendered",
            "subject": "A new on-line learning account has been created for you",
            "html": "<p>Dear Zoë,</p><p>username: zoe</p>",
        },
        "e-2": {
            "kind": "rendered",
            "subject": "تم إنشاء حسابك",
            "html": '<p dir="rtl">مرحبا محمد</p>',
            "from_name": "أكاديمية أكمي",
            "reply_to": ["support@acme.example"],
        },
    },
    "recipients": [
        {"recipient_id": "r-1", "to": "zoe@example.org", "name": "Zoë Ørsted", "content_id": "e-1"},
        {"recipient_id": "r-2", "to": "manager@example.org", "content_id": "e-1"},
        {"recipient_id": "r-3", "to": "mohamed@example.org", "name": "محمد", "content_id": "e-2"},
    ],
}

CAMPAIGN_BATCH: dict[str, Any] = {
    **copy.deepcopy(EMAIL_BATCH),
    "batch_id": "b-7-000002",
    "category": "campaign",
    "ses_tenant": "company-7",
    "tags": {"campaign": "reengage-2026-11"},
    "contents": {
        "t-1": {
            "kind": "template",
            "engine": "jinja2",
            "subject": "We miss you, {{ firstname }}",
            "html": "<p>Hello {{ firstname }}, {{ course }} is waiting.</p>",
        }
    },
    "recipients": [
        {
            "recipient_id": "r-9",
            "to": "li@example.org",
            "name": "李小龍",
            "content_id": "t-1",
            "data": {"firstname": "小龍", "course": "Safety 101"},
            "unsubscribe_url": "https://offload.example/v1/unsubscribe/abc",
        }
    ],
}

CERTIFICATE_BATCH: dict[str, Any] = {
    "type": "certificate_batch",
    "contract_version": 1,
    "batch_id": "b-7-000003",
    "job_id": "j-7-000002",
    "company_id": 7,
    "attempt": 1,
    "created_at": 1795361900,
    "callback": CALLBACK,
    "template_id": "default",
    "verify_url_base": "https://offload.example/v1/certificates/verify",
    "delivery": "email_attachment",
    "sender": {"address": "noreply@acme.example"},
    "contents": {"c-1": {"kind": "rendered", "subject": "Congratulations", "html": "<p>Well done</p>"}},
    "recipients": [
        {
            "recipient_id": "r-4",
            "to": "dana@example.org",
            "content_id": "c-1",
            "certificate": {
                "learner_name": "דנה לוי",
                "course_name": "Safety 101",
                "completed_at": 1795361800,
                "grade": "92%",
                "verification_code": "K7Q2M9XZ4P",
                "issuer_name": "Acme Training",
                "language": "he",
            },
        }
    ],
}

RESULT_BATCH: dict[str, Any] = {
    "type": "result_batch",
    "contract_version": 1,
    "report_id": "rep-1",
    "batch_id": "b-7-000001",
    "company_id": 7,
    "reporter": "email_sender",
    "created_at": 1795361990,
    "results": [
        {
            "job_id": "j-7-000001",
            "recipient_id": "r-1",
            "status": "sent",
            "attempts": 1,
            "occurred_at": 1795361950,
            "provider_message_id": "0100018f-aaaa",
        },
        {
            "job_id": "j-7-000001",
            "recipient_id": "r-3",
            "status": "failed",
            "attempts": 1,
            "occurred_at": 1795361951,
            "error": {
                "code": "MessageRejected",
                "message": "Email address is not verified.",
                "permanent": True,
            },
        },
        {
            "job_id": "j-7-000002",
            "recipient_id": "r-4",
            "status": "rendered",
            "attempts": 1,
            "occurred_at": 1795361952,
            "artifact": {
                "store": "s3",
                "bucket": "certs",
                "key": "company-7/j-7-000002/r-4.pdf",
                "sha256": "0" * 64,
                "bytes": 21873,
                "content_type": "application/pdf",
            },
        },
    ],
}

ENVELOPE: dict[str, Any] = {
    "contract_version": 1,
    "message_type": "result_batch",
    "message_id": "m-1",
    "sent_at": 1795361991,
    "message": RESULT_BATCH,
}


CAPABILITIES: dict[str, Any] = {
    "type": "capabilities",
    "contract_version": 1,
    "message_types": ["email_batch"],
    "email": {
        "content_kinds": ["rendered", "reference"],
        "categories": ["transactional", "campaign"],
        "attachments": False,
        "providers": {"transactional": "cloudflare", "campaign": "ses"},
    },
    "results": {"mode": "push", "pull_path": "/v1/results/pull"},
}

LATIN_GREEK_CYRILLIC = ((32, 126), (160, 591), (768, 879), (880, 1023), (1024, 1327), (7680, 7935))
#: A Worker with the certificate renderer deployed: the scripts and code points its fonts draw.
CERTIFICATE_CAPABILITIES: dict[str, Any] = {
    "type": "capabilities",
    "contract_version": 1,
    "message_types": ["email_batch", "certificate_batch"],
    "email": {
        "content_kinds": ["rendered", "reference"],
        "categories": ["transactional"],
        "attachments": True,
        "providers": {"transactional": "cloudflare", "campaign": None},
    },
    "certificates": {
        "scripts": ["Latn", "Grek", "Cyrl"],
        "code_points": [[lo, hi] for lo, hi in LATIN_GREEK_CYRILLIC],
    },
    "results": {"mode": "pull", "pull_path": "/v1/results/pull"},
}


#: What the cloud reports when a recipient confirms a campaign unsubscribe (lambdas/results/intake.py,
#: cloudflare/src/unsubscribe.js): one result naming the job and recipient of the signed token.
UNSUBSCRIBE_RESULT: dict[str, Any] = {
    "type": "result_batch",
    "contract_version": 1,
    "report_id": "unsub-c7-job12-34",
    "company_id": 7,
    "reporter": "unsubscribe",
    "created_at": 1795361990,
    "results": [
        {
            "job_id": "12",
            "recipient_id": "34",
            "status": "unsubscribed",
            "attempts": 1,
            "occurred_at": 1795361990,
        }
    ],
}


def mutated(base: dict[str, Any], path: list[Any], value: Any = None, delete: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    target = doc
    for part in path[:-1]:
        target = target[part]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


#: A fixed sealed content (offload_contract/sealing.py): the shape only, not openable here.
SEALED = {
    "kind": "sealed",
    "key_id": "s2026.c7",
    "nonce": "AAECAwQFBgcICQoL",
    "ciphertext": "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJ",
}


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

#: A scheduled report for a company manager (docs/schedules.md): the file is named by reference
#: to the content bucket, never carried in the message.
REPORT_BATCH: dict[str, Any] = {
    **copy.deepcopy(EMAIL_BATCH),
    "batch_id": "j41-a1-b0",
    "job_id": "41",
    "contents": {
        "t41": {
            "kind": "template",
            "engine": "jinja2",
            "subject": "{{ schedule }}: {{ rows }} rows",
            "html": "<p>Hello {{ firstname }}, the report is attached.</p>",
        }
    },
    "recipients": [
        {
            "recipient_id": "9001",
            "to": "manager@acme.example",
            "name": "Maria Manager",
            "content_id": "t41",
            "data": {"firstname": "Maria", "schedule": "Weekly completions", "rows": 2},
            "attachments": [
                {
                    "filename": "completions-2026-06-02.xlsx",
                    "content_type": XLSX,
                    "ref": {
                        "store": "s3",
                        "bucket": "offload-contents",
                        "key": "contents/company-7/schedule-3/1780380000.xlsx",
                        "sha256": "5" * 64,
                        "bytes": 5312,
                        "content_type": XLSX,
                    },
                }
            ],
        }
    ],
}
_ATTACHMENT = ["recipients", 0, "attachments", 0]


def main() -> None:
    examples = [
        {
            "name": "email batch, rendered IOMAD rows with shared fan-out content",
            "message_type": "email_batch",
            "valid": True,
            "message": EMAIL_BATCH,
        },
        {
            "name": "campaign batch with jinja2 template",
            "message_type": "email_batch",
            "valid": True,
            "message": CAMPAIGN_BATCH,
        },
        {
            "name": "certificate batch, Hebrew learner",
            "message_type": "certificate_batch",
            "valid": True,
            "message": CERTIFICATE_BATCH,
        },
        {"name": "result batch", "message_type": "result_batch", "valid": True, "message": RESULT_BATCH},
        {"name": "callback envelope", "message_type": "envelope", "valid": True, "message": ENVELOPE},
        {
            "name": "email batch without recipients",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(EMAIL_BATCH, ["recipients"], []),
        },
        {
            "name": "unknown top-level field",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(EMAIL_BATCH, ["surprise"], 1),
        },
        {
            "name": "recipient address without @",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(EMAIL_BATCH, ["recipients", 0, "to"], "not-an-address"),
        },
        {
            "name": "wrong contract version",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(EMAIL_BATCH, ["contract_version"], 2),
        },
        {
            "name": "content of unknown kind",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(EMAIL_BATCH, ["contents", "e-1", "kind"], "markdown"),
        },
        {
            "name": "unsubscribe url over plain http",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(CAMPAIGN_BATCH, ["recipients", 0, "unsubscribe_url"], "http://x.example/u"),
        },
        {
            "name": "certificate without verification code",
            "message_type": "certificate_batch",
            "valid": False,
            "message": mutated(
                CERTIFICATE_BATCH, ["recipients", 0, "certificate", "verification_code"], delete=True
            ),
        },
        {
            "name": "sent result without provider message id",
            "message_type": "result_batch",
            "valid": False,
            "message": mutated(RESULT_BATCH, ["results", 0, "provider_message_id"], delete=True),
        },
        {
            "name": "failed result without error",
            "message_type": "result_batch",
            "valid": False,
            "message": mutated(RESULT_BATCH, ["results", 1, "error"], delete=True),
        },
        {
            "name": "rendered result without artifact",
            "message_type": "result_batch",
            "valid": False,
            "message": mutated(RESULT_BATCH, ["results", 2, "artifact"], delete=True),
        },
        {
            "name": "status outside the enum",
            "message_type": "result_batch",
            "valid": False,
            "message": mutated(RESULT_BATCH, ["results", 0, "status"], "maybe"),
        },
        {
            "name": "unsubscribe confirmed by a recipient of campaign job 12",
            "message_type": "result_batch",
            "valid": True,
            "message": UNSUBSCRIBE_RESULT,
        },
        {
            "name": "unsubscribe from a reporter outside the enum",
            "message_type": "result_batch",
            "valid": False,
            "message": mutated(UNSUBSCRIBE_RESULT, ["reporter"], "unsubscribe_page"),
        },
        {
            "name": "negative company id",
            "message_type": "result_batch",
            "valid": False,
            "message": mutated(RESULT_BATCH, ["company_id"], -1),
        },
        {
            "name": "callback key id without company",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(EMAIL_BATCH, ["callback", "key_id"], "k2026"),
        },
        {
            "name": "envelope of unknown message type",
            "message_type": "envelope",
            "valid": False,
            "message": mutated(ENVELOPE, ["message_type"], "job_status"),
        },
        {
            "name": "capabilities: Cloudflare for transactional mail, SES for campaigns",
            "message_type": "capabilities",
            "valid": True,
            "message": CAPABILITIES,
        },
        {
            "name": "capabilities naming Cloudflare Email Service for campaign mail",
            "message_type": "capabilities",
            "valid": False,
            "message": mutated(CAPABILITIES, ["email", "providers", "campaign"], "cloudflare"),
        },
        {
            "name": "capabilities with the certificate renderer (Latin, Greek, Cyrillic) and attachments",
            "message_type": "capabilities",
            "valid": True,
            "message": CERTIFICATE_CAPABILITIES,
        },
        {
            "name": "capabilities whose certificate renderer does not say which code points it draws",
            "message_type": "capabilities",
            "valid": False,
            "message": mutated(CERTIFICATE_CAPABILITIES, ["certificates", "code_points"], delete=True),
        },
        {
            "name": "email batch whose password mail is sealed",
            "message_type": "email_batch",
            "valid": True,
            "message": mutated(EMAIL_BATCH, ["contents", "e-1"], SEALED),
        },
        {
            "name": "sealed content with a plaintext field beside the ciphertext",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(EMAIL_BATCH, ["contents", "e-1"], {**SEALED, "html": "<p>password: x</p>"}),
        },
        {
            "name": "sealed content with a malformed nonce",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(EMAIL_BATCH, ["contents", "e-1"], {**SEALED, "nonce": "short"}),
        },
        {
            "name": "scheduled report batch: the file travels by reference",
            "message_type": "email_batch",
            "valid": True,
            "message": REPORT_BATCH,
        },
        {
            "name": "attachment carried inline instead of by reference",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(REPORT_BATCH, [*_ATTACHMENT, "data"], "UEsDBBQAAAAIAA=="),
        },
        {
            "name": "attachment without its stored object",
            "message_type": "email_batch",
            "valid": False,
            "message": mutated(REPORT_BATCH, [*_ATTACHMENT, "ref"], delete=True),
        },
    ]
    out = ROOT / "offload_contract" / "vectors" / "messages.json"
    out.write_text(json.dumps({"examples": examples}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
