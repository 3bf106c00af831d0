"""One certificate PDF from a template and a learner's data.

The static layer of a template (background, border, logo, signature, fixed text) is drawn
once per container and kept as finished PDF objects; each certificate adds only what
changes: the name, course, date, grade, code and QR code. Every character of every field is
checked against the shipped fonts before anything is drawn, so a name that cannot be
printed fails that recipient with ``unsupported_characters`` (and the code points) instead
of printing a different name.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from certificate_render.fonts import Face, FontLibrary, is_ignorable
from certificate_render.pdf import GlyphFonts, Objects, assemble, num
from certificate_render.qr import qr_ops
from certificate_render.template import CertificateTemplate, Element, PreparedImage, rgb
from certificate_render.text import MM, clean, draw_block, fit
from certificate_render.values import MAX_TIMESTAMP, CertificateDataError, field_value

FIRST_STATIC_OBJECT = 5
REQUIRED = ("learner_name", "course_name")
STATIC_CACHE_SIZE = 32


@dataclass(frozen=True)
class StaticLayer:
    blob: bytes
    offsets: list[tuple[int, int]]
    next_number: int
    content: int
    fonts: str
    xobjects: str
    glyphs: dict[tuple[str, int], int]
    truetype: dict[str, tuple[Face, dict[int, str]]]


def _image_objects(objects: Objects, image: PreparedImage) -> int:
    number = objects.reserve()
    extra = image.extra
    if image.smask is not None:
        mask = objects.reserve()
        objects.stream(
            mask,
            image.smask,
            b" /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray"
            b" /BitsPerComponent 8 /Filter /FlateDecode"
            b" /DecodeParms << /Predictor 15 /Colors 1 /BitsPerComponent 8 /Columns %d >>"
            % (image.width, image.height, image.width),
            compress=False,
        )
        extra += b" /SMask %d 0 R" % mask
    objects.stream(number, image.data, b" " + extra, compress=False)
    return number


def build_static(template: CertificateTemplate, fonts: FontLibrary) -> StaticLayer:
    objects = Objects(FIRST_STATIC_OBJECT)
    glyph_fonts = GlyphFonts(objects, "S")
    k = MM
    page_w, page_h = template.page_w * k, template.page_h * k
    ops: list[str] = []
    xobjects: list[str] = []
    if template.background is not None:
        number = _image_objects(objects, template.background)
        xobjects.append(f"/Bg {number} 0 R")
        ops.append(f"q {num(page_w)} 0 0 {num(page_h)} 0 0 cm /Bg Do Q")
    elif template.background_color.upper() != "#FFFFFF":
        r, g, b = (c / 255 for c in rgb(template.background_color))
        ops.append(f"q {num(r)} {num(g)} {num(b)} rg 0 0 {num(page_w)} {num(page_h)} re f Q")
    border = template.border
    if border:
        inset, width = float(border.get("inset", 8)), float(border.get("width", 1.5))
        rings = [(inset, width, border.get("color", "#000000"))]
        if border.get("inner_color"):
            rings.append(
                (
                    inset + float(border.get("inner_gap", 3)),
                    float(border.get("inner_width", 0.5)),
                    border["inner_color"],
                )
            )
        for ring_inset, ring_width, color in rings:
            if ring_width <= 0:
                continue
            r, g, b = (c / 255 for c in rgb(color))
            x = ring_inset * k
            ops.append(
                f"q {num(r)} {num(g)} {num(b)} RG {num(ring_width * k)} w"
                f" {num(x)} {num(x)} {num(page_w - 2 * x)} {num(page_h - 2 * x)} re S Q"
            )
    for index, placed in enumerate(template.images):
        number = _image_objects(objects, placed.image)
        xobjects.append(f"/Im{index} {number} 0 R")
        ops.append(
            f"q {num(placed.w * k)} 0 0 {num(placed.h * k)} {num(placed.x * k)}"
            f" {num(page_h - (placed.y + placed.h) * k)} cm /Im{index} Do Q"
        )
    for element in template.elements:
        if element.field == "static":
            ops.append(_draw(fonts, glyph_fonts, element, clean(element.text), template))
    content = objects.reserve()
    glyph_fonts.write()
    objects.stream(content, "\n".join(ops).encode())
    return StaticLayer(
        objects.blob(), objects.offsets, objects.next, content, glyph_fonts.resources(), " ".join(xobjects),
        dict(glyph_fonts.written), glyph_fonts.truetype,
    )  # fmt: skip


def _draw(
    fonts: FontLibrary, glyph_fonts: GlyphFonts, element: Element, text: str, template: CertificateTemplate
) -> str:
    block = fit(
        fonts, text, bold=element.bold, width_mm=element.w, height_mm=element.h, size=element.size,
        min_size=min(element.min_size, element.size),
    )  # fmt: skip
    return draw_block(
        glyph_fonts, block, x_mm=element.x, y_mm=element.y, w_mm=element.w, h_mm=element.h,
        align=element.align, color=rgb(element.color), page_h_pt=template.page_h * MM, actual_text=text,
    )  # fmt: skip


class StaticLayers:
    """Static layers per template, least recently used dropped beyond ``capacity``."""

    def __init__(self, capacity: int = STATIC_CACHE_SIZE) -> None:
        self._capacity = capacity
        self._layers: OrderedDict[int, tuple[CertificateTemplate, FontLibrary, StaticLayer]] = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0

    def get(self, template: CertificateTemplate, fonts: FontLibrary) -> StaticLayer:
        key = id(template)
        with self._lock:
            hit = self._layers.get(key)
            if hit is not None and hit[0] is template and hit[1] is fonts:
                self._layers.move_to_end(key)
                return hit[2]
        layer = build_static(template, fonts)
        with self._lock:
            self.builds += 1
            self._layers[key] = (template, fonts, layer)  # the template is held: its id stays unique
            self._layers.move_to_end(key)
            while len(self._layers) > self._capacity:
                self._layers.popitem(last=False)
        return layer


static_layers = StaticLayers()


def certificate_texts(template: CertificateTemplate, data: dict[str, Any], fonts: FontLibrary) -> list[str]:
    """Each variable element's text, checked: raises CertificateDataError for a blank name or
    course, a time outside the years 1970-9999, or characters no shipped font has."""
    for name in REQUIRED:
        value = clean(str(data.get(name) or ""))
        if not any(not ch.isspace() and not is_ignorable(ch) for ch in value):  # nothing visible
            raise CertificateDataError("invalid_certificate_data", f"{name} is blank")
    texts = [
        "" if element.field == "static" else clean(field_value(element, data, template))
        for element in template.elements
    ]
    missing = fonts.unsupported("".join(texts))
    if missing:
        shown = " ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise CertificateDataError(
            "unsupported_characters", f"no font for the characters {shown}", detail=missing
        )
    return texts


def render_certificate(
    template: CertificateTemplate,
    data: dict[str, Any],
    verify_url: str,
    fonts: FontLibrary,
    *,
    layers: StaticLayers | None = None,
) -> bytes:
    """The certificate as PDF bytes (deterministic: the same input gives the same bytes)."""
    texts = certificate_texts(template, data, fonts)
    static = (layers or static_layers).get(template, fonts)
    objects = Objects(static.next_number)
    glyph_fonts = GlyphFonts(objects, "D", static.glyphs, static.truetype)
    ops: list[str] = []
    for element, text in zip(template.elements, texts, strict=True):
        if text:
            ops.append(_draw(fonts, glyph_fonts, element, text, template))
    if template.qr:
        qr = template.qr
        ops.append(qr_ops(verify_url, float(qr["x"]), float(qr["y"]), float(qr["size"]), template.page_h))
    content = objects.reserve()
    glyph_fonts.write()
    glyph_fonts.write_truetype()
    objects.stream(content, "\n".join(ops).encode())
    font_resources = f"{static.fonts} {glyph_fonts.resources()} {glyph_fonts.truetype_resources()}".strip()
    media = f"[0 0 {num(template.page_w * MM)} {num(template.page_h * MM)}]"
    page = (
        f"<< /Type /Page /Parent 2 0 R /MediaBox {media}"
        f" /Resources << /Font << {font_resources} >> /XObject << {static.xobjects} >> >>"
        f" /Contents [{static.content} 0 R {content} 0 R] >>"
    ).encode()
    stamp = min(max(int(data.get("completed_at", 0)), 0), MAX_TIMESTAMP)
    created = datetime.fromtimestamp(stamp, tz=UTC).strftime("D:%Y%m%d%H%M%SZ")
    info = (
        b"<< /Title (Certificate) /Producer (ManiReports Cloud Offload)"
        + b" /CreationDate (" + created.encode() + b") >>"
    )  # fmt: skip
    return assemble(static.blob, static.offsets, objects, page=page, info=info)
