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
LAYOUT_TABLES = ("GSUB", "GPOS", "GDEF", "kern", "morx", "MATH")


@dataclass(frozen=True)
class FontFile:
    family: str
    style: str
    path: Path


FONT_FILES = (
    FontFile("body", "", FONT_DIR / "DejaVuSans-Western.ttf"),
    FontFile("body", "B", FONT_DIR / "DejaVuSans-Bold-Western.ttf"),
    FontFile("ext", "", FONT_DIR / "DejaVuSans-Extended.ttf"),
    FontFile("ext", "B", FONT_DIR / "DejaVuSans-Bold-Extended.ttf"),
    FontFile("rtl", "", FONT_DIR / "DejaVuSans-RTL.ttf"),
    FontFile("rtl", "B", FONT_DIR / "DejaVuSans-Bold-RTL.ttf"),
    FontFile("cjk", "", FONT_DIR / "WenQuanYiMicroHei-CJK.ttf"),
)
#: Fallback families, in the order fpdf2 tries them for a glyph the body font lacks.
FALLBACKS = ("ext", "rtl", "cjk")


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
        self._cmaps = {family: frozenset(self._protos[family].font.cmap) for family in ("body", *FALLBACKS)}
        self.parses = len(files)

    def fallbacks_for(self, *texts: str) -> tuple[str, ...]:
        """The fallback families these texts need (none for most Western names)."""
        missing = {ord(ch) for text in texts for ch in text if not ch.isspace()} - self._cmaps["body"]
        needed: list[str] = []
        for family in FALLBACKS:
            if missing & self._cmaps[family]:
                needed.append(family)
                missing -= self._cmaps[family]
        return tuple(needed)

    def install(self, pdf: FPDF, fallbacks: tuple[str, ...] = ()) -> None:
        for key, proto in self._protos.items():
            family = proto.font.fontkey.rstrip("BI")
            if family != "body" and family not in fallbacks:
                continue
            clone = copy.copy(proto.font)
            clone.i = len(pdf.fonts) + 1
            clone.ttfont = ttLib.TTFont(
                io.BytesIO(proto.data), recalcTimestamp=False, recalcBBoxes=False, lazy=True
            )
            clone.ttfont.setGlyphOrder(list(proto.glyph_order))
            for tag in LAYOUT_TABLES:  # shaping reads the file through HarfBuzz; the PDF drops these
                if tag in clone.ttfont:
                    del clone.ttfont[tag]
            clone.subset = SubsetMap(clone)
            clone.missing_glyphs = []
            clone.biggest_size_pt = 0
            pdf.fonts[key] = clone
        if fallbacks:
            pdf.set_fallback_fonts(list(fallbacks), exact_match=False)


def install_fresh(pdf: FPDF, fallbacks: tuple[str, ...] = ()) -> None:
    """The baseline: parse the fonts again for this document (what fpdf2 does by default)."""
    for item in FONT_FILES:
        if item.family == "body" or item.family in fallbacks:
            pdf.add_font(item.family, item.style, str(item.path))
    if fallbacks:
        pdf.set_fallback_fonts(list(fallbacks), exact_match=False)


_lock = threading.Lock()
_library: FontLibrary | None = None


def font_library() -> FontLibrary:
    global _library  # noqa: PLW0603 - one parse per container
    with _lock:
        if _library is None:
            _library = FontLibrary()
        return _library
