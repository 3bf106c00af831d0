"""A small PDF writer for one-page certificates: numbered objects, Type 3 glyph fonts, xref.

Text is drawn with Type 3 fonts whose glyph procedures are the shipped fonts' outlines
(from HarfBuzz), so a document carries exactly the glyphs it uses without subsetting a font
file per document. Each font has a ToUnicode map and every field is wrapped in an
``/ActualText`` span, so copying or extracting the text gives back exactly what was drawn
(shaped Arabic, Indic conjuncts and right-to-left runs included).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field

from certificate_render.fonts import Face

HEADER = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
CODES_PER_FONT = 255


def pdf_string(text: str) -> bytes:
    """A PDF text string as UTF-16BE hex (safe for any text)."""
    return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode() + b">"


def num(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


class Objects:
    """Serialized objects numbered from ``first``; offsets relative to the block start."""

    def __init__(self, first: int) -> None:
        self.next = first
        self.chunks: list[bytes] = []
        self.offsets: list[tuple[int, int]] = []
        self.size = 0

    def reserve(self) -> int:
        number = self.next
        self.next += 1
        return number

    def put(self, number: int, body: bytes) -> None:
        chunk = b"%d 0 obj\n%s\nendobj\n" % (number, body)
        self.offsets.append((number, self.size))
        self.chunks.append(chunk)
        self.size += len(chunk)

    def stream(self, number: int, data: bytes, extra: bytes = b"", *, compress: bool = True) -> None:
        if compress:
            packed = zlib.compress(data, 6)
            if len(packed) < len(data):
                extra += b" /Filter /FlateDecode"
                data = packed
        self.put(number, b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(data), extra, data))

    def blob(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class _Type3:
    face: Face
    name: str
    number: int
    codes: dict[tuple[int, str], int] = field(default_factory=dict)


class GlyphFonts:
    """The fonts of one part of a document (the static layer or the variable part).

    TrueType faces are embedded as subsets shown by glyph ID (resource ``/T<face>``, the same
    name in every document, so the static layer's glyphs join each document's subset of that
    face); CFF faces are drawn with Type 3 fonts, numbered per part."""

    def __init__(
        self,
        objects: Objects,
        prefix: str,
        shared: dict[tuple[str, int], int] | None = None,
        inherited: dict[str, tuple[Face, dict[int, str]]] | None = None,
    ) -> None:
        self._objects = objects
        #: Glyph procedures already written (by the static layer): (face key, gid) -> object.
        self.shared = shared or {}
        self.written: dict[tuple[str, int], int] = {}
        self._prefix = prefix
        self._fonts: list[_Type3] = []
        self._open: dict[str, _Type3] = {}
        #: TrueType glyphs used: face key -> (face, gid -> text), the static layer's included.
        self.truetype: dict[str, tuple[Face, dict[int, str]]] = {
            key: (face, dict(uses)) for key, (face, uses) in (inherited or {}).items()
        }
        self._truetype_numbers: dict[str, int] = {}

    def show(self, face: Face, gid: int, text: str) -> tuple[str, str]:
        """The font resource name and the hex string that draw this glyph."""
        if face.truetype is not None:
            _, uses = self.truetype.setdefault(face.key, (face, {}))
            if (text and gid not in uses) or not uses.get(gid):
                uses[gid] = text
            return truetype_name(face), f"{gid:04X}"
        name, code = self.code(face, gid, text)
        return name, f"{code:02X}"

    def code(self, face: Face, gid: int, text: str) -> tuple[str, int]:
        """The Type 3 font resource name and the byte code that draw this glyph."""
        font = self._open.get(face.key)
        if font is not None:
            code = font.codes.get((gid, text))
            if code is not None:
                return font.name, code
        if font is None or len(font.codes) >= CODES_PER_FONT:
            font = _Type3(face, f"{self._prefix}{len(self._fonts) + 1}", self._objects.reserve())
            self._fonts.append(font)
            self._open[face.key] = font
        code = len(font.codes) + 1
        font.codes[(gid, text)] = code
        return font.name, code

    def resources(self) -> str:
        return " ".join(f"/{f.name} {f.number} 0 R" for f in self._fonts)

    def truetype_resources(self) -> str:
        return " ".join(
            f"/{truetype_name(self.truetype[k][0])} {n} 0 R" for k, n in self._truetype_numbers.items()
        )

    def write_truetype(self) -> None:
        """Embed each TrueType face used (static and variable glyphs together)."""
        objects = self._objects
        for key, (face, uses) in self.truetype.items():
            if not uses or face.truetype is None:
                continue
            font_number, cid_number, descriptor, program, unicode_number = (
                objects.reserve() for _ in range(5)
            )
            self._truetype_numbers[key] = font_number
            gids = sorted(uses)
            tag = "".join(chr(65 + b % 26) for b in hashlib.sha256(repr(gids).encode()).digest()[:6])
            base = f"{tag}+Noto-{face.family}-{'Bold' if face.bold else 'Regular'}"
            scale = 1000 / face.upem
            widths = " ".join(f"{g} [{round(face.truetype.metrics[g][0] * scale)}]" for g in gids)
            x0, y0, x1, y1 = (round(v * scale) for v in face.truetype.bbox)
            objects.put(
                font_number,
                f"<< /Type /Font /Subtype /Type0 /BaseFont /{base} /Encoding /Identity-H"
                f" /DescendantFonts [{cid_number} 0 R] /ToUnicode {unicode_number} 0 R >>".encode(),
            )
            objects.put(
                cid_number,
                f"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /{base}"
                f" /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >>"
                f" /FontDescriptor {descriptor} 0 R /DW 0 /W [{widths}] /CIDToGIDMap /Identity >>".encode(),
            )
            objects.put(
                descriptor,
                f"<< /Type /FontDescriptor /FontName /{base} /Flags 4 /FontBBox [{x0} {y0} {x1} {y1}]"
                f" /ItalicAngle 0 /Ascent {round(face.ascender * scale)}"
                f" /Descent {round(face.descender * scale)}"
                f" /CapHeight {round(face.ascender * scale)} /StemV {120 if face.bold else 80}"
                f" /FontFile2 {program} 0 R >>".encode(),
            )
            data = face.truetype.subset(set(gids))
            objects.stream(program, data, b" /Length1 %d" % len(data))
            entries = [
                f"<{g:04X}> <{text.encode('utf-16-be').hex().upper()}>"
                for g, text in sorted(uses.items())
                if text
            ]
            objects.stream(unicode_number, _to_unicode(entries, two_byte=True))

    def write(self) -> None:
        """Write each font with its glyph procedures and ToUnicode map."""
        objects = self._objects
        for font in self._fonts:
            face = font.face
            scale = 1 / face.upem
            procs: list[str] = []
            widths: list[str] = []
            cmap: list[str] = []
            box = [0, 0, 0, 0]
            glyph_streams: list[tuple[int, bytes]] = []
            for (gid, text), code in font.codes.items():
                glyph = face.glyph(gid)
                x0, y0, x1, y1 = glyph.bbox
                box = [min(box[0], x0), min(box[1], y0), max(box[2], x1), max(box[3], y1)]
                number = self.shared.get((face.key, gid)) or self.written.get((face.key, gid)) or 0
                if not number:
                    number = objects.reserve()
                    self.written[(face.key, gid)] = number
                    body = b"%d 0 %d %d %d %d d1\n" % (glyph.advance, x0, y0, x1, y1)
                    if glyph.path:
                        body += glyph.path + b"\nf"
                    glyph_streams.append((number, body))
                procs.append(f"/g{code} {number} 0 R")
                widths.append(str(glyph.advance))
                if text:
                    cmap.append(f"<{code:02X}> <{text.encode('utf-16-be').hex().upper()}>")
            procs_number = objects.reserve()
            unicode_number = objects.reserve()
            last = len(font.codes)
            differences = " ".join(f"/g{c}" for c in range(1, last + 1))
            font_body = (
                f"<< /Type /Font /Subtype /Type3 /FontBBox [{box[0]} {box[1]} {box[2]} {box[3]}]"
                f" /FontMatrix [{scale:.6g} 0 0 {scale:.6g} 0 0] /CharProcs {procs_number} 0 R"
                f" /Encoding << /Type /Encoding /Differences [1 {differences}] >>"
                f" /FirstChar 1 /LastChar {last} /Widths [{' '.join(widths)}]"
                f" /Resources << >> /ToUnicode {unicode_number} 0 R >>"
            )
            objects.put(font.number, font_body.encode())
            for number, data in glyph_streams:
                objects.stream(number, data)
            objects.put(procs_number, f"<< {' '.join(procs)} >>".encode())
            objects.stream(unicode_number, _to_unicode(cmap))


def truetype_name(face: Face) -> str:
    return f"T{face.family}{'B' if face.bold else ''}"


def _to_unicode(entries: list[str], *, two_byte: bool = False) -> bytes:
    space = "<0000> <FFFF>" if two_byte else "<00> <FF>"
    lines = [
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /Adobe-Identity-UCS def /CMapType 2 def",
        f"1 begincodespacerange {space} endcodespacerange",
    ]
    for start in range(0, len(entries), 100):
        chunk = entries[start : start + 100]
        lines.append(f"{len(chunk)} beginbfchar")
        lines.extend(chunk)
        lines.append("endbfchar")
    lines.append("endcmap CMapName currentdict /CMap defineresource pop end end")
    return "\n".join(lines).encode()


def assemble(
    static_blob: bytes,
    static_offsets: list[tuple[int, int]],
    dynamic: Objects,
    *,
    page: bytes,
    info: bytes,
) -> bytes:
    """Header, the static layer's objects, the variable objects, catalog/pages/page/info, xref."""
    parts = [HEADER, static_blob]
    offsets: dict[int, int] = {n: len(HEADER) + off for n, off in static_offsets}
    base = len(HEADER) + len(static_blob)
    for n, off in dynamic.offsets:
        offsets[n] = base + off
    parts.append(dynamic.blob())
    position = base + dynamic.size
    for number, body in (
        (1, b"<< /Type /Catalog /Pages 2 0 R >>"),
        (2, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
        (3, page),
        (4, info),
    ):
        chunk = b"%d 0 obj\n%s\nendobj\n" % (number, body)
        offsets[number] = position
        parts.append(chunk)
        position += len(chunk)
    size = max(offsets) + 1
    xref = [b"xref\n0 %d\n0000000000 65535 f \n" % size]
    for number in range(1, size):
        xref.append(b"%010d 00000 n \n" % offsets[number])
    parts.extend(xref)
    parts.append(
        b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, position)
    )
    return b"".join(parts)
