"""The shipped Noto fonts, loaded once per container, and the choice of font per character.

scripts/build_certificate_fonts.py subsets one Noto family per script (``manifest.json``
lists them in fallback order). HarfBuzz does everything at run time: the coverage (cmap),
shaping, advances and the glyph outlines, which the renderer draws as Type 3 glyph
procedures. Outlines are converted once per glyph and kept, so a container pays for a
glyph the first time any certificate uses it and never again; nothing is subset or
re-parsed per document.
"""

from __future__ import annotations

import json
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import uharfbuzz as hb

from certificate_render.truetype import TrueTypeSource

FONT_DIR = Path(__file__).resolve().parent / "fonts"


class FontsMissing(RuntimeError):
    """The build step (``make setup``) that subsets the Noto fonts has not run."""


@dataclass(frozen=True)
class Glyph:
    advance: int  # font units
    bbox: tuple[int, int, int, int]
    path: bytes  # PDF path operators in font units, filled


class _PathPen:
    """A fontTools-style pen writing PDF path operators (quadratics raised to cubics).

    Coordinates are whole font units (1/1000 em for Noto): finer than any printer dot at
    certificate sizes, and half the bytes of decimals."""

    def __init__(self) -> None:
        self.ops: list[str] = []
        self.last = (0.0, 0.0)

    def moveTo(self, p: tuple[float, float]) -> None:
        self.ops.append(f"{round(p[0])} {round(p[1])} m")
        self.last = p

    def lineTo(self, p: tuple[float, float]) -> None:
        self.ops.append(f"{round(p[0])} {round(p[1])} l")
        self.last = p

    def curveTo(self, *points: tuple[float, float]) -> None:
        a, b, c = points
        self.ops.append(" ".join(str(round(v)) for v in (*a, *b, *c)) + " c")
        self.last = c

    def qCurveTo(self, *points: tuple[float, float]) -> None:
        # HarfBuzz hands one quadratic segment per call: (control, end).
        (qx, qy), end = points[-2], points[-1]
        x0, y0 = self.last
        c1 = (x0 + 2 / 3 * (qx - x0), y0 + 2 / 3 * (qy - y0))
        c2 = (end[0] + 2 / 3 * (qx - end[0]), end[1] + 2 / 3 * (qy - end[1]))
        self.ops.append(" ".join(str(round(v)) for v in (*c1, *c2, *end)) + " c")
        self.last = end

    def closePath(self) -> None:
        self.ops.append("h")

    def endPath(self) -> None:
        pass


@dataclass
class Face:
    """One font file: its HarfBuzz font, coverage and the glyphs drawn so far."""

    family: str
    bold: bool
    path: Path
    hb_font: hb.Font
    upem: int
    cmap: frozenset[int]
    ascender: int
    descender: int
    truetype: TrueTypeSource | None = None  # None: CFF outlines, drawn as Type 3 glyphs
    _glyphs: dict[int, Glyph] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, family: str, bold: bool, path: Path) -> Face:
        data = path.read_bytes()
        face = hb.Face(data)
        font = hb.Font(face)
        extents = font.get_font_extents("ltr")
        return cls(
            family=family,
            bold=bold,
            path=path,
            hb_font=font,
            upem=face.upem,
            cmap=frozenset(face.unicodes),
            ascender=extents.ascender,
            descender=extents.descender,
            truetype=TrueTypeSource.parse(data),
        )

    @property
    def key(self) -> str:
        return f"{self.family}{'-B' if self.bold else ''}"

    def glyph(self, gid: int) -> Glyph:
        cached = self._glyphs.get(gid)
        if cached is not None:
            return cached
        pen = _PathPen()
        self.hb_font.draw_glyph_with_pen(gid, pen)
        ext = self.hb_font.get_glyph_extents(gid)
        if ext is None or ext.width == 0:
            bbox = (0, 0, 0, 0)
        else:
            x0, y1 = ext.x_bearing, ext.y_bearing
            bbox = (x0, y1 + ext.height, x0 + ext.width, y1)
        glyph = Glyph(self.hb_font.get_glyph_h_advance(gid), bbox, "\n".join(pen.ops).encode())
        with self._lock:
            self._glyphs[gid] = glyph
        return glyph

    def advance(self, gid: int) -> int:
        """The glyph's advance in font units (what the PDF font's widths say)."""
        if self.truetype is not None:
            return self.truetype.metrics[gid][0]
        return self.glyph(gid).advance

    @property
    def glyphs_cached(self) -> int:
        return len(self._glyphs)


def is_ignorable(ch: str) -> bool:
    """Characters that need no glyph: joiners, bidi controls, variation selectors."""
    cp = ord(ch)
    return (
        cp in (0x00AD, 0x034F, 0x061C, 0x180E)
        or 0x200B <= cp <= 0x200F
        or 0x202A <= cp <= 0x202E
        or 0x2060 <= cp <= 0x206F
        or 0xFE00 <= cp <= 0xFE0F
        or 0xE0100 <= cp <= 0xE01EF
    )


def _inherits(ch: str) -> bool:
    """Marks, joiners, spaces and punctuation take the font of the text around them."""
    cat = unicodedata.category(ch)
    return cat[0] in "MZP" or cat in ("Cf", "Nd", "Sk", "Sm", "Sc") or ch.isspace()


class FontLibrary:
    """Every shipped face, in fallback order; ``font_library()`` is the per-container one."""

    def __init__(self, font_dir: Path = FONT_DIR) -> None:
        manifest_path = font_dir / "manifest.json"
        if not manifest_path.exists():
            raise FontsMissing(
                f"{manifest_path} is missing: run `make setup` (scripts/build_certificate_fonts.py)"
            )
        manifest = json.loads(manifest_path.read_text("utf-8"))
        self.faces: dict[tuple[str, bool], Face] = {}
        self.families: list[str] = []
        for item in manifest["fonts"]:
            face = Face.load(item["family"], bool(item["bold"]), font_dir / item["file"])
            self.faces[(face.family, face.bold)] = face
            if face.family not in self.families:
                self.families.append(face.family)
        self._coverage = [(family, self.faces[(family, False)].cmap) for family in self.families]
        self.covered: frozenset[int] = frozenset().union(*(c for _, c in self._coverage))
        self.primary = self.faces[(self.families[0], False)]

    def face(self, family: str, bold: bool) -> Face:
        return self.faces.get((family, bold)) or self.faces[(family, False)]

    def unsupported(self, text: str) -> list[str]:
        """Code points (``U+XXXX``) no shipped font can draw, in order of first use."""
        seen: dict[str, None] = {}
        for ch in text:
            cp = ord(ch)
            if cp in self.covered or is_ignorable(ch) or (ch.isspace() and ch.isprintable()):
                continue
            if ch == " ":
                continue
            seen.setdefault(f"U+{cp:04X}", None)
        return list(seen)

    def family_for(self, cp: int) -> str | None:
        for family, cmap in self._coverage:
            if cp in cmap:
                return family
        return None

    def itemize(self, text: str) -> list[tuple[str, str]]:
        """Split text into (family, run) pieces: each character in the first family that has
        it, while marks, spaces and punctuation stay with their neighbours when they can."""
        families: list[str | None] = []
        for ch in text:
            families.append(None if _inherits(ch) else self.family_for(ord(ch)))
        # Inherit from the previous strong character, else the next one, else the first font.
        previous: str | None = None
        for i, ch in enumerate(text):
            if families[i] is None:
                cp = ord(ch)
                if previous is not None and (cp in self.faces[(previous, False)].cmap or is_ignorable(ch)):
                    families[i] = previous
            else:
                previous = families[i]
        following: str | None = None
        for i in range(len(text) - 1, -1, -1):
            if families[i] is None:
                cp = ord(text[i])
                if following is not None and (
                    cp in self.faces[(following, False)].cmap or is_ignorable(text[i])
                ):
                    families[i] = following
                else:
                    families[i] = self.family_for(cp) or self.families[0]
            else:
                following = families[i]
        runs: list[tuple[str, str]] = []
        for ch, family in zip(text, families, strict=True):
            name = family or self.families[0]
            if runs and runs[-1][0] == name:
                runs[-1] = (name, runs[-1][1] + ch)
            else:
                runs.append((name, ch))
        return runs


_lock = threading.Lock()
_library: FontLibrary | None = None


def font_library() -> FontLibrary:
    global _library  # noqa: PLW0603 - one load per container
    with _lock:
        if _library is None:
            _library = FontLibrary()
        return _library
