"""A company's certificate template, shared by the CLI (``certificates template``) and the dashboard's
template page: store (validate, put, audit) and preview (render a PDF and its PNG in memory).

Where a template is stored is decided by the caller (the CLI's ``_store``); this module only takes
the store it is given, so both paths write exactly where the renderer reads. The renderer
(``certificate_render``) is an optional extra, so it is imported where it is used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_tables import BridgeTables

if TYPE_CHECKING:
    from certificate_render.fonts import FontLibrary
    from certificate_render.template import CertificateTemplate

#: Sample data for a preview (the learner's name, course, grade and language can be overridden).
SAMPLE = {
    "learner_name": "Ada Lovelace",
    "course_name": "Sample course",
    "grade": "92",
    "verification_code": "PREVIEW00000",
}
#: Resolution of the preview PNG (the CLI's and the dashboard's).
PREVIEW_DPI = 96


class TemplateWriter(Protocol):
    """What storing needs of a template store (``certificate_render.template.TemplateStore``)."""

    def put(self, company_id: int, template_id: str, document: Any, images: dict[str, bytes]) -> Any: ...


class PreviewUnavailable(Exception):
    """The PDF was rendered but no PNG could be made of it (poppler missing or failing)."""


def store_template(
    store: TemplateWriter,
    engine: sa.Engine,
    tables: BridgeTables,
    *,
    company_id: int,
    template_id: str,
    document: Any,
    images: dict[str, bytes],
    actor: str,
    now: int,
    source: str | None = None,
) -> None:
    """Validate and store a template, then audit ``certificate_template_set``.

    ``store.put`` validates with the renderer's ``parse_template`` before writing anything, so a
    refused template (``TemplateError``) stores nothing and is not audited. The images go first
    and the JSON last, so a half-stored template is never one the renderer reads."""
    store.put(company_id, template_id, document, images)
    body = json.dumps(document, ensure_ascii=False, indent=1).encode()
    with engine.begin() as conn:
        audit.record(
            conn,
            tables,
            actor=actor,
            action=audit.CERTIFICATE_TEMPLATE_SET,
            now=now,
            companyid=company_id,
            source=source,
            detail={
                "template_id": template_id,
                "sha256": hashlib.sha256(body).hexdigest(),
                "images": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(images.items())},
            },
        )


def png_of_pdf(pdf: bytes, *, dpi: int = PREVIEW_DPI) -> bytes:
    """The first page of ``pdf`` as a PNG (poppler's ``pdftoppm``), through pipes: no file is written."""
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        raise PreviewUnavailable("poppler's pdftoppm is not installed")
    done = subprocess.run(  # noqa: S603 - fixed program, the PDF on stdin
        [pdftoppm, "-png", "-r", str(dpi), "-singlefile", "-"],
        input=pdf,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.startswith(b"\x89PNG\r\n\x1a\n"):
        reason = done.stderr.decode("utf-8", "replace").strip()[:200] or f"exit status {done.returncode}"
        raise PreviewUnavailable(f"pdftoppm could not render the PDF: {reason}")
    return done.stdout


def render_preview(
    template: CertificateTemplate, data: dict[str, Any], verify_url: str, fonts: FontLibrary
) -> tuple[bytes, bytes]:
    """(PDF, PNG) of one certificate, in memory. Raises the renderer's ``CertificateDataError``
    for data it cannot print (e.g. ``unsupported_characters``) and ``PreviewUnavailable``."""
    from certificate_render.renderer import render_certificate  # noqa: PLC0415

    pdf = render_certificate(template, data, verify_url, fonts)
    return pdf, png_of_pdf(pdf)
