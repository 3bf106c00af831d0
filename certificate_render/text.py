"""Text layout: bidi order, font per script, HarfBuzz shaping, wrapping and shrinking in a box.

Positions are in ems (font units / units per em) until drawn, so one shaping serves every
font size tried while fitting text to its box.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import uharfbuzz as hb
from fpdf.bidi import BidiParagraph, auto_detect_base_direction
from fpdf.enums import TextDirection

from certificate_render.fonts import Face, FontLibrary
from certificate_render.pdf import GlyphFonts, num, pdf_string

MM = 72 / 25.4  # points per millimetre
LINE_HEIGHT = 1.2  # in ems
FEATURES = {"kern": True, "liga": True}
NO_BREAK = "\u00a0\u2007\u202f"  # no-break spaces (French "92 %") are kept as they are


@dataclass(frozen=True)
class PlacedGlyph:
    face: Face
    gid: int
    x: float  # ems from the line start
    y: float  # ems above the baseline
    text: str  # the characters this glyph stands for (empty for the rest of a cluster)


@dataclass(frozen=True)
class Line:
    text: str
    glyphs: tuple[PlacedGlyph, ...]
    width: float  # ems


def clean(text: str) -> str:
    """NFC (decomposed accents become the precomposed letters the fonts draw best) and one
    line: control characters and runs of white space become single spaces."""
    text = unicodedata.normalize("NFC", text)
    out = "".join(
        " " if (unicodedata.category(ch) == "Cc" or ch.isspace()) and ch not in NO_BREAK else ch
        for ch in text
    )
    return " ".join(part for part in out.split(" ") if part)


def _shape_run(face: Face, text: str, rtl: bool, x: float, out: list[PlacedGlyph]) -> float:
    buf = hb.Buffer()
    buf.add_str(text)
    buf.guess_segment_properties()
    buf.direction = "rtl" if rtl else "ltr"
    hb.shape(face.hb_font, buf, FEATURES)
    scale = 1 / face.upem
    infos, positions = buf.glyph_infos, buf.glyph_positions
    # Map each cluster to its characters (clusters are UTF-32 indices into the run).
    starts = sorted({info.cluster for info in infos})
    cluster_text = {
        c: text[c : (starts[i + 1] if i + 1 < len(starts) else len(text))] for i, c in enumerate(starts)
    }
    seen: set[int] = set()
    for info, pos in zip(infos, positions, strict=True):
        chars = "" if info.cluster in seen else cluster_text[info.cluster]
        seen.add(info.cluster)
        out.append(PlacedGlyph(face, info.codepoint, x + pos.x_offset * scale, pos.y_offset * scale, chars))
        x += pos.x_advance * scale
    return x


def base_rtl(text: str) -> bool:
    return auto_detect_base_direction(text) == TextDirection.RTL


def shape_line(fonts: FontLibrary, text: str, bold: bool, rtl: bool | None = None) -> Line:
    """Glyphs of one line in visual order (left to right on the page)."""
    if rtl is None:
        rtl = base_rtl(text)
    if (
        not any(unicodedata.bidirectional(ch) in ("R", "AL", "AN", "RLE", "RLO", "RLI") for ch in text)
        and not rtl
    ):
        fragments: tuple[tuple[str, TextDirection], ...] = ((text, TextDirection.LTR),)
    else:
        fragments = BidiParagraph(text, TextDirection.RTL if rtl else TextDirection.LTR).get_bidi_fragments()
        if rtl:
            fragments = tuple(reversed(fragments))
    glyphs: list[PlacedGlyph] = []
    x = 0.0
    for fragment, direction in fragments:
        runs = fonts.itemize(fragment)
        frag_rtl = direction == TextDirection.RTL
        if frag_rtl:
            runs.reverse()
        for family, run in runs:
            x = _shape_run(fonts.face(family, bold), run, frag_rtl, x, glyphs)
    return Line(text, tuple(glyphs), x)


def _breakable_before(ch: str) -> bool:
    cp = ord(ch)
    return 0x2E80 <= cp <= 0x9FFF or 0xF900 <= cp <= 0xFAFF or 0x3400 <= cp <= 0x4DBF


def segments(text: str) -> list[str]:
    """Pieces between which a line may break: after spaces, and around CJK characters."""
    pieces: list[str] = []
    current = ""
    for ch in text:
        boundary = current and (
            (current.endswith(" ") and ch != " ") or _breakable_before(ch) or _breakable_before(current[-1])
        )
        # No break before punctuation (a CJK full stop stays with its sentence).
        if boundary and (not unicodedata.category(ch).startswith("P") or current.endswith(" ")):
            pieces.append(current)
            current = ""
        current += ch
    if current:
        pieces.append(current)
    return pieces


@dataclass(frozen=True)
class Block:
    size: float  # points
    lines: tuple[Line, ...]
    rtl: bool


def fit(
    fonts: FontLibrary,
    text: str,
    *,
    bold: bool,
    width_mm: float,
    height_mm: float,
    size: float,
    min_size: float,
) -> Block:
    """The largest size (down to ``min_size``) at which the text fits the box on one line,
    or shrunk a little, or wrapped onto as many lines as the box's height holds."""
    rtl = base_rtl(text)
    line = shape_line(fonts, text, bold, rtl)
    width_pt = width_mm * MM
    if line.width * size <= width_pt:
        return Block(size, (line,), rtl)
    single = width_pt / line.width
    if single >= max(min_size, size * 0.8):
        return Block(_floor_half(single), (line,), rtl)
    pieces = segments(text)
    widths = [shape_line(fonts, p, bold, rtl).width for p in pieces]
    s = size
    best: tuple[float, list[str]] | None = None
    while s >= min_size:
        lines = _wrap(pieces, widths, width_pt / s)
        if len(lines) * LINE_HEIGHT * s <= height_mm * MM and all(
            shape_line(fonts, t, bold, rtl).width * s <= width_pt for t in lines
        ):
            best = (s, lines)
            break
        s -= 0.5
    if best is None:  # the box is too small even at the minimum size: the minimum, clipped
        best = (min_size, _wrap(pieces, widths, width_pt / min_size))
    s, texts = best
    return Block(s, tuple(shape_line(fonts, t, bold, rtl) for t in texts), rtl)


def _floor_half(value: float) -> float:
    return int(value * 2) / 2


def _wrap(pieces: list[str], widths: list[float], max_em: float) -> list[str]:
    lines: list[str] = []
    current, current_w = "", 0.0
    for piece, w in zip(pieces, widths, strict=True):
        if current and current_w + w > max_em:
            lines.append(current.rstrip())
            current, current_w = "", 0.0
        current += piece
        current_w += w
    if current.strip():
        lines.append(current.rstrip())
    return lines


def draw_block(
    glyph_fonts: GlyphFonts,
    block: Block,
    *,
    x_mm: float,
    y_mm: float,
    w_mm: float,
    h_mm: float,
    align: str,
    color: tuple[int, int, int],
    page_h_pt: float,
    actual_text: str,
    clip: bool = True,
) -> str:
    """Content-stream operators drawing the block centred vertically in its box."""
    s = block.size
    line_h = LINE_HEIGHT * s
    total = line_h * len(block.lines)
    top_pt = page_h_pt - y_mm * MM
    box_h = h_mm * MM
    r, g, b = (c / 255 for c in color)
    ops = ["q"]
    if clip:
        ops.append(
            f"{num(x_mm * MM - 2)} {num(top_pt - box_h - 2)} {num(w_mm * MM + 4)} {num(box_h + 4)} re W n"
        )
    ops.append(f"/Span << /ActualText {pdf_string(actual_text).decode()} >> BDC")
    ops.append(f"BT {num(r)} {num(g)} {num(b)} rg")
    current_font = ""
    for i, line in enumerate(block.lines):
        # Baseline: the line's centre plus half of (ascender + descender) of the body font.
        face0 = line.glyphs[0].face if line.glyphs else None
        mid = 0.38 if face0 is None else (face0.ascender + face0.descender) / 2 / face0.upem
        mid = min(mid, 0.42)
        baseline = top_pt - (box_h - total) / 2 - i * line_h - line_h / 2 - mid * s
        width = line.width * s
        if align == "L":
            start = x_mm * MM
        elif align == "R":
            start = (x_mm + w_mm) * MM - width
        else:
            start = x_mm * MM + (w_mm * MM - width) / 2
        # Runs of glyphs in one font on the baseline are one TJ array: the font's own advance
        # moves to the next glyph, and a number adjusts it only where HarfBuzz placed it
        # elsewhere (kerning, marks); a glyph off the baseline gets its own text matrix.
        pen: float | None = None  # where the text position is after the last glyph shown
        run: list[str] = []
        for glyph in line.glyphs:
            name, code = glyph_fonts.show(glyph.face, glyph.gid, glyph.text)
            x, y = start + glyph.x * s, baseline + glyph.y * s
            if name != current_font or glyph.y or pen is None:
                _flush(ops, run)
                if name != current_font:
                    ops.append(f"/{name} {num(s)} Tf")
                    current_font = name
                ops.append(f"1 0 0 1 {num(x)} {num(y)} Tm")
            else:
                adjust = (pen - x) * 1000 / s
                if abs(adjust) >= 0.5:
                    run.append(str(round(adjust)))
            run.append(f"<{code}>")
            advance = glyph.face.advance(glyph.gid) * s / glyph.face.upem
            pen = None if glyph.y else x + advance
        _flush(ops, run)
    ops.append("ET EMC Q")
    return "\n".join(ops)


def _flush(ops: list[str], run: list[str]) -> None:
    if run:
        ops.append(f"[{''.join(run)}] TJ" if len(run) > 1 else f"{run[0]} Tj")
        run.clear()
