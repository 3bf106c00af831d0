"""What the deployed Cloudflare Worker can process, and the one-line refusal when it cannot.

The Worker answers a signed ``GET /v1/capabilities`` (contract message ``capabilities``) per
company. ``company set --provider cloudflare`` and every tick ask it before routing a job type
there: a job the Worker cannot process would otherwise be accepted (202) and never sent.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from moodle_bridge.config import BridgeConfig
from moodle_bridge.transports.targets import SubmitError, WorkerSubmitter

#: What each bridge job type needs from the Worker: message type, content kinds, category.
#: IOMAD email rows are rendered transactional mail; list and campaign jobs are rendered by the
#: bridge for the Cloudflare path (jinja2 cannot run in workerd), campaigns need a campaign
#: provider (Cloudflare Email Service carries none); certificates need a certificate renderer.
REQUIREMENTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "email": ("email_batch", ("rendered",), "transactional"),
    "list": ("email_batch", ("rendered",), "transactional"),
    "campaign": ("email_batch", ("rendered",), "campaign"),
    "certificate": ("certificate_batch", (), "transactional"),
}


def refusal(capabilities: dict[str, Any], job_type: str) -> str | None:
    """Why the Worker cannot take ``job_type`` (one line), or None when it can."""
    message_type, kinds, category = REQUIREMENTS[job_type]
    if message_type not in capabilities.get("message_types", []):
        offered = ", ".join(capabilities.get("message_types", [])) or "nothing"
        return (
            f"the Cloudflare Worker does not process {job_type} jobs ({message_type}); it processes {offered}"
        )
    email = capabilities.get("email", {})
    missing = [k for k in kinds if k not in email.get("content_kinds", [])]
    if missing:
        return f"the Cloudflare Worker does not accept {', '.join(missing)} contents"
    if category not in email.get("categories", []):
        return f"the Cloudflare Worker has no provider for {category} mail"
    if job_type == "certificate" and not email.get("attachments"):
        return "the Cloudflare Worker does not mail attachments (certificates travel attached)"
    return None


def _ignorable(cp: int) -> bool:
    """Characters that need no glyph (joiners, bidi controls, variation selectors), as the renderers."""
    return (
        cp in (0x00AD, 0x034F, 0x061C, 0x180E)
        or 0x200B <= cp <= 0x200F
        or 0x202A <= cp <= 0x202E
        or 0x2060 <= cp <= 0x206F
        or 0xFE00 <= cp <= 0xFE0F
        or 0xE0100 <= cp <= 0xE01EF
    )


def uncovered(capabilities: dict[str, Any], texts: Iterable[str]) -> list[str]:
    """Code points (``U+XXXX``) of ``texts`` the Worker's certificate fonts cannot draw.

    The Worker advertises exactly what its fonts have (``certificates.code_points``); the texts
    are NFC-normalised first, as the renderer does. Every character counts as missing when the
    Worker renders no certificates."""
    advertised = capabilities.get("certificates", {}).get("code_points", [])
    ranges = sorted((int(lo), int(hi)) for lo, hi in advertised)
    starts = [lo for lo, _ in ranges]
    missing: dict[str, None] = {}
    for text in texts:
        for ch in unicodedata.normalize("NFC", text):
            cp = ord(ch)
            if ch.isspace() or _ignorable(cp) or unicodedata.category(ch) == "Cc":
                continue
            at = bisect.bisect_right(starts, cp) - 1
            if at < 0 or cp > ranges[at][1]:
                missing.setdefault(f"U+{cp:04X}", None)
    return list(missing)


@dataclass
class WorkerCheck:
    """Per-tick answers of the Worker, one request per company (``None`` worker: not configured)."""

    worker: WorkerSubmitter | None
    _answers: dict[int, dict[str, Any] | str] = field(default_factory=dict)

    def capabilities(self, company_id: int) -> dict[str, Any] | str:
        """The Worker's capabilities, or the one-line reason they could not be had."""
        if company_id not in self._answers:
            if self.worker is None:
                self._answers[company_id] = (
                    "the Cloudflare Worker URL is not configured "
                    "(cloudflare.intake_url / MRCO_CLOUDFLARE_INTAKE_URL)"
                )
            else:
                try:
                    self._answers[company_id] = self.worker.capabilities(company_id)
                except SubmitError as exc:
                    self._answers[company_id] = (
                        f"the Cloudflare Worker did not answer its capabilities ({exc})"
                    )
        return self._answers[company_id]

    def __call__(self, company_id: int, job_type: str) -> str | None:
        """``company <id>: <why>; <job type> jobs stay with IOMAD``, or None when the Worker can."""
        answer = self.capabilities(company_id)
        reason = answer if isinstance(answer, str) else refusal(answer, job_type)
        if reason is None:
            return None
        return f"company {company_id}: {reason}"

    def certificate_refusal(self, company_id: int, texts: Iterable[str]) -> list[str]:
        """Code points of a certificate's texts the Worker cannot draw ([] when it can draw them all).

        The Worker's renderer has no bidi or complex shaping (Arabic, Hebrew, Indic scripts) and
        fewer fonts than the Lambda's; such certificates stay with IOMAD (docs/cloudflare.md)."""
        answer = self.capabilities(company_id)
        if isinstance(answer, str):
            return []  # the job type check already refuses every certificate of this company
        return uncovered(answer, texts)


#: What ClaimPass and the commands call: (company id, job type) -> refusal line or None.
Check = Callable[[int, str], str | None]


def worker_check(config: BridgeConfig) -> WorkerCheck:
    """The capabilities check against the configured Worker (an unconfigured one refuses)."""
    root = config.keys.root_secrets().get(config.keys.current) if config.keys.current else None
    if root is None or not config.cloudflare.intake_url:
        return WorkerCheck(None)
    return WorkerCheck(WorkerSubmitter(config.cloudflare.intake_url, config.keys.current, root))
