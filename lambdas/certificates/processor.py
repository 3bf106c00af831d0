"""certificate_batch -> PDFs in S3 -> (optionally) the completion mail through the email path.

For each recipient: render from the company's template, store under
``certificates/company-<id>/<job_id>/<recipient_id>.pdf`` with server-side encryption,
record the verification code (``cert#<code>``) for the public verify endpoint, and report
``rendered`` with the artifact. For ``email_attachment`` / ``email_link`` the recipients
are forwarded as an email_batch (PDF by S3 reference) to the jobs queue, so the one email
path (pacing, exactly once per job and recipient) sends the mail and its certificate
together. Rendering twice is harmless (same key, deterministic PDF); sending twice is
prevented by the email path's claims.

A recipient whose data cannot be printed (a blank name, a time outside the years 1970-9999,
characters no shipped font has) fails alone with a permanent error and nothing stored; the
rest of the batch is rendered and everyone gets a result. An unexpected rendering error
fails that recipient too (``render_error``, not permanent) and is logged. Only storage errors
(S3, DynamoDB) fail the whole message; its retry writes the same keys again, so no PDF is
left behind without a result.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from certificate_render.fonts import FontLibrary
from certificate_render.renderer import render_certificate
from certificate_render.template import TemplateError, TemplateStore
from certificate_render.values import CertificateDataError
from lambdas.certificates.signing import PdfSigner, SigningError
from lambdas.certificates.verification import record_item
from lambdas.common.idempotency import IdempotencyStore
from lambdas.common.observability import logger
from lambdas.results.builder import recipient_result, result_batches
from lambdas.results.queue import ResultsQueue
from offload_contract import encode_message, validate
from offload_contract.cloud_keys import verification_key
from offload_contract.limits import SQS_HEADROOM_BYTES, SQS_MAX_MESSAGE_BYTES

FORWARD_CHUNK = 200


def certificate_key(company_id: int, job_id: str, recipient_id: str) -> str:
    return f"certificates/company-{company_id}/{job_id}/{recipient_id}.pdf"


@dataclass
class RenderReport:
    results: list[dict[str, Any]] = field(default_factory=list)
    rendered: int = 0
    failed: int = 0
    forwarded: int = 0
    bytes_total: int = 0
    render_ms: list[float] = field(default_factory=list)


class CertificateBatchProcessor:
    def __init__(
        self,
        *,
        s3: Any,
        bucket: str,
        templates: TemplateStore,
        fonts: FontLibrary,
        store: IdempotencyStore,
        results: ResultsQueue,
        forward: Callable[[dict[str, Any]], None],
        verify_url_base: str,
        default_sender: str,
        sse: dict[str, str],
        signers: Callable[[int], PdfSigner | None] | None = None,
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.templates = templates
        self.fonts = fonts
        self.store = store
        self.results = results
        self.forward = forward
        self.verify_url_base = verify_url_base
        self.default_sender = default_sender
        self.sse = sse
        #: A company's PAdES signer, or None when it does not sign (lambdas/certificates/signing.py).
        self.signers = signers

    def process(self, batch: dict[str, Any]) -> RenderReport:
        validate("certificate_batch", batch)
        report = RenderReport()
        job_id, company_id, attempt = batch["job_id"], batch["company_id"], int(batch["attempt"])
        verify_base = batch.get("verify_url_base") or self.verify_url_base
        mail: list[dict[str, Any]] = []
        try:
            template = self.templates.get(company_id, batch["template_id"])
            signer = self.signers(company_id) if self.signers is not None else None
        except (TemplateError, SigningError) as exc:
            for r in batch["recipients"]:
                report.results.append(
                    recipient_result(job_id, r["recipient_id"], "failed", attempt, error_code=exc.code,
                                     error_message=str(exc), permanent=True)
                )  # fmt: skip
                report.failed += 1
            self._publish(batch, report)
            return report
        for r in batch["recipients"]:
            data = r["certificate"]
            code = data["verification_code"]
            verify_url = verify_base + code if verify_base else code
            started = time.perf_counter()
            try:
                pdf = render_certificate(template, data, verify_url, self.fonts)
                if signer is not None:
                    pdf = signer.sign(pdf)
            except CertificateDataError as exc:
                # This recipient's data cannot be printed: it fails alone, nothing is stored.
                message = str(exc) if not exc.detail else f"{exc} ({' '.join(exc.detail)})"
                report.results.append(
                    recipient_result(job_id, r["recipient_id"], "failed", attempt, error_code=exc.code,
                                     error_message=message, permanent=True)
                )  # fmt: skip
                report.failed += 1
                continue
            except Exception as exc:
                logger.exception(
                    "certificate rendering failed",
                    extra={"job_id": job_id, "recipient_id": r["recipient_id"]},
                )
                report.results.append(
                    recipient_result(job_id, r["recipient_id"], "failed", attempt, error_code="render_error",
                                     error_message=type(exc).__name__, permanent=False)
                )  # fmt: skip
                report.failed += 1
                continue
            report.render_ms.append((time.perf_counter() - started) * 1000)
            key = certificate_key(company_id, job_id, r["recipient_id"])
            digest = hashlib.sha256(pdf).hexdigest()
            self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=pdf, ContentType="application/pdf",
                ContentDisposition='attachment; filename="certificate.pdf"', **self.sse,
            )  # fmt: skip
            owned = self.store.put_company_item(
                verification_key(code),
                company_id,
                record_item(company_id, job_id, r["recipient_id"], key, data),
            )
            if not owned:  # another company's certificate holds this code: never overwrite it
                report.results.append(
                    recipient_result(job_id, r["recipient_id"], "failed", attempt,
                                     error_code="verification_code_taken",
                                     error_message="the verification code belongs to another company",
                                     permanent=True)
                )  # fmt: skip
                report.failed += 1
                continue
            artifact = {
                "store": "s3", "bucket": self.bucket, "key": key, "sha256": digest,
                "bytes": len(pdf), "content_type": "application/pdf",
            }  # fmt: skip
            report.results.append(
                recipient_result(job_id, r["recipient_id"], "rendered", attempt, artifact=artifact)
            )
            report.rendered += 1
            report.bytes_total += len(pdf)
            if batch["delivery"] != "store_only" and r.get("to") and r.get("content_id"):
                mail.append(self._mail_recipient(batch, r, artifact, verify_url))
        # Report first: the rendered results must not wait for (or depend on) the mail.
        self._publish(batch, report)
        for start in range(0, len(mail), FORWARD_CHUNK):
            self._forward(batch, mail[start : start + FORWARD_CHUNK])
            report.forwarded += len(mail[start : start + FORWARD_CHUNK])
        return report

    def _mail_recipient(
        self, batch: dict[str, Any], r: dict[str, Any], artifact: dict[str, Any], verify_url: str
    ) -> dict[str, Any]:
        data = dict(r["certificate"])
        data["certificate_url"] = verify_url
        recipient: dict[str, Any] = {
            "recipient_id": r["recipient_id"],
            "to": r["to"],
            "content_id": r["content_id"],
            "data": data,
        }
        if r.get("name"):
            recipient["name"] = r["name"]
        if batch["delivery"] == "email_attachment":
            recipient["attachments"] = [
                {"filename": "certificate.pdf", "content_type": "application/pdf", "ref": artifact}
            ]
        return recipient

    def _forward(self, batch: dict[str, Any], recipients: list[dict[str, Any]]) -> None:
        used = {r["content_id"] for r in recipients}
        message: dict[str, Any] = {
            "type": "email_batch",
            **{k: batch[k] for k in ("contract_version", "batch_id", "job_id", "company_id", "attempt",
                                      "created_at", "callback") if k in batch},
            "category": "transactional",
            "sender": batch.get("sender") or {"address": self.default_sender},
            "contents": {cid: c for cid, c in (batch.get("contents") or {}).items() if cid in used},
            "recipients": recipients,
        }  # fmt: skip
        for optional in ("ses_tenant", "tags"):
            if optional in batch:
                message[optional] = batch[optional]
        message["attempt"] = 1
        validate("email_batch", message)
        if len(encode_message(message)) > SQS_MAX_MESSAGE_BYTES - SQS_HEADROOM_BYTES and len(recipients) > 1:
            half = len(recipients) // 2
            self._forward(batch, recipients[:half])
            self._forward(batch, recipients[half:])
            return
        self.forward(message)

    def _publish(self, batch: dict[str, Any], report: RenderReport) -> None:
        if report.results:
            cb = batch["callback"]
            self.results.publish(
                result_batches(
                    "certificate_renderer", batch["company_id"], report.results, batch["batch_id"]
                ),
                cb["url"],
                cb["key_id"],
            )
