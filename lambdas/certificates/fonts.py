"""Fonts parsed once per container and handed to each document as cheap per-document copies.

fpdf2 subsets a font *in place* when a document is written, so one parsed ``TTFFont``
cannot serve two documents (toolchain-facts.md). Parsing costs most of a certificate, so
each font is parsed once (metrics, cmap, widths, glyph order, HarfBuzz face: all read-only
afterwards) and every document gets a shallow copy with its own subset map and a fresh,
lazily-read fontTools object over the cached file bytes, whose glyph order is set from the
prototype (deriving it again from the cmap is the slow part). The CJK fallback is only
added to documents whose text needs it.
"""

from __future__ import annotations

import copy
import io
import threading
from dataclasses import dataclass
from pathlib import Path

from fontTools import ttLib
from fpdf import FPDF
from fpdf.fonts import SubsetMap, TTFFont

FONT_DIR = Path(__file__).resolve().parent / "fonts"


@dataclass(frozen=True)
class FontFile:
    family: str
    style: str
    path: Path


FONT_FILES = (
    FontFile("body", "", FONT_DIR / "DejaVuSans.ttf"),
    FontFile("body", "B", FONT_DIR / "DejaVuSans-Bold.ttf"),
    FontFile("cjk", "", FONT_DIR / "WenQuanYiMicroHei-CJK.ttf"),
)


@dataclass
class _Prototype:
    font: TTFFont
    data: bytes
    glyph_order: list[str]


class FontLibrary:
    """Parsed fonts for the container; ``install`` puts them into a new document."""

    def __init__(self, files: tuple[FontFile, ...] = FONT_FILES) -> None:
        holder = FPDF()
        self._protos: dict[str, _Prototype] = {}
        for item in files:
            holder.add_font(item.family, item.style, str(item.path))
            font = holder.fonts[f"{item.family}{item.style}"]
            if not isinstance(font, TTFFont):
                raise TypeError(f"{item.path.name} is not a TrueType font")
            font.hbfont  # noqa: B018 - build the HarfBuzz face once, shared read-only
            self._protos[font.fontkey] = _Prototype(font, item.path.read_bytes(), font.ttfont.getGlyphOrder())
        self.body_cmap = frozenset(self._protos["body"].font.cmap)
        self.parses = len(files)

    def needs_fallback(self, *texts: str) -> bool:
        return any(ord(ch) not in self.body_cmap for text in texts for ch in text if not ch.isspace())

    def install(self, pdf: FPDF, *, with_cjk: bool) -> None:
        for key, proto in self._protos.items():
            if key.startswith("cjk") and not with_cjk:
                continue
            clone = copy.copy(proto.font)
            clone.i = len(pdf.fonts) + 1
            clone.ttfont = ttLib.TTFont(io.BytesIO(proto.data), recalcTimestamp=False, lazy=True)
            clone.ttfont.setGlyphOrder(list(proto.glyph_order))
            clone.subset = SubsetMap(clone)
            clone.missing_glyphs = []
            clone.biggest_size_pt = 0
            pdf.fonts[key] = clone
        if with_cjk:
            pdf.set_fallback_fonts(["cjk"], exact_match=False)


def install_fresh(pdf: FPDF, *, with_cjk: bool) -> None:
    """The baseline: parse every font again for this document (what fpdf2 does by default)."""
    for item in FONT_FILES:
        if item.family == "cjk" and not with_cjk:
            continue
        pdf.add_font(item.family, item.style, str(item.path))
    if with_cjk:
        pdf.set_fallback_fonts(["cjk"], exact_match=False)


_lock = threading.Lock()
_library: FontLibrary | None = None


def font_library() -> FontLibrary:
    global _library  # noqa: PLW0603 - one parse per container
    with _lock:
        if _library is None:
            _library = FontLibrary()
        return _library
