"""One A4-landscape certificate PDF from a template and a learner's data (fpdf2 + HarfBuzz)."""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fpdf import FPDF
from fpdf.image_datastructures import ImageCache
from fpdf.image_parsing import preload_image

from lambdas.certificates.fonts import FontLibrary
from lambdas.certificates.qr import draw_qr
from lambdas.certificates.template import CertificateTemplate, Element, rgb

PAGE_W, PAGE_H = 297.0, 210.0
MIN_FONT_SIZE = 10.0


_IMAGE_INFO: dict[bytes, tuple[str, Any]] = {}  # image bytes -> (fpdf2 name, decoded record)


def place_image(pdf: FPDF, data: bytes, *, x: float, y: float, w: float, h: float = 0) -> None:
    """``pdf.image`` with the decoded image (PNG inflate, alpha split) kept per container.

    Each document gets its own copy of fpdf2's image record, so nothing is shared that the
    output step writes to; only the immutable decoded streams are reused."""
    cached = _IMAGE_INFO.get(data)
    if cached is None:
        name, _, decoded = preload_image(ImageCache(), io.BytesIO(data))
        cached = (name, decoded if not decoded.get("iccp") else None)
        if len(_IMAGE_INFO) < 32:
            _IMAGE_INFO[data] = cached
    name, info = cached
    if info is not None and name not in pdf.image_cache.images:
        record = type(info)(info)
        record["i"] = len(pdf.image_cache.images) + 1
        record["usages"] = 0
        pdf.image_cache.images[name] = record
    pdf.image(io.BytesIO(data), x=x, y=y, w=w, h=h)


def needs_shaping(text: str) -> bool:
    """HarfBuzz (and bidi) only for text that needs it: RTL and CJK scripts, combining marks.
    Precomposed Latin, Greek and Cyrillic render the same without it, and faster."""
    return any(ord(ch) >= 0x0590 or unicodedata.combining(ch) for ch in text)


def field_text(element: Element, data: dict[str, Any]) -> str:
    if element.field == "static":
        return element.text
    value = data.get(element.field)
    if value is None or value == "":
        return ""
    if element.field == "completed_at":
        value = datetime.fromtimestamp(int(value), tz=UTC).strftime(element.format)
    return element.prefix + str(value)


def render_certificate(
    template: CertificateTemplate,
    data: dict[str, Any],
    verify_url: str,
    fonts: FontLibrary | None,
    *,
    install_fonts: Callable[[FPDF, tuple[str, ...]], None] | None = None,
) -> bytes:
    """Render the PDF. ``fonts`` is the container's library; ``install_fonts`` overrides it
    (the benchmark's baseline re-adds fonts per document)."""
    texts = [field_text(e, data) for e in template.elements]
    pdf = FPDF(orientation="L", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_margin(0)
    pdf.set_creation_date(datetime.fromtimestamp(int(data.get("completed_at", 0)), tz=UTC))
    pdf.set_title("Certificate")
    pdf.set_producer("ManiReports Cloud Offload")
    if fonts is None:
        raise ValueError("the container's font library is required")
    fallbacks = fonts.fallbacks_for(*texts)
    if install_fonts is not None:
        install_fonts(pdf, fallbacks)
    else:
        fonts.install(pdf, fallbacks)
    pdf.add_page()

    if template.background_image is not None:
        place_image(pdf, template.background_image, x=0, y=0, w=PAGE_W, h=PAGE_H)
    elif template.background_color.upper() != "#FFFFFF":
        pdf.set_fill_color(*rgb(template.background_color))
        pdf.rect(0, 0, PAGE_W, PAGE_H, style="F")
    if template.border:
        b = template.border
        inset, width = float(b.get("inset", 8)), float(b.get("width", 1.5))
        pdf.set_draw_color(*rgb(b.get("color", "#000000")))
        pdf.set_line_width(width)
        pdf.rect(inset, inset, PAGE_W - 2 * inset, PAGE_H - 2 * inset)
        if b.get("inner_color"):
            gap = inset + float(b.get("inner_gap", 3))
            pdf.set_draw_color(*rgb(b["inner_color"]))
            pdf.set_line_width(float(b.get("inner_width", 0.5)))
            pdf.rect(gap, gap, PAGE_W - 2 * gap, PAGE_H - 2 * gap)
    if template.logo_image is not None:
        x, y, w = template.logo_box
        place_image(pdf, template.logo_image, x=x, y=y, w=w)

    for element, text in zip(template.elements, texts, strict=True):
        if not text:
            continue
        pdf.set_text_shaping(use_shaping_engine=needs_shaping(text))
        style = "B" if element.bold else ""
        size = element.size
        pdf.set_font("body", style=style, size=size)
        while size > MIN_FONT_SIZE and pdf.get_string_width(text) > element.w:
            size -= 1
            pdf.set_font_size(size)
        pdf.set_text_color(*rgb(element.color))
        pdf.set_xy(element.x, element.y)
        pdf.cell(element.w, element.h, text, align=element.align)

    if template.qr:
        draw_qr(pdf, verify_url, float(template.qr["x"]), float(template.qr["y"]), float(template.qr["size"]))
    return bytes(pdf.output())
