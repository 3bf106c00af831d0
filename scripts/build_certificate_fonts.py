"""Build the subset fonts shipped in lambdas/certificates/fonts/ (run once; outputs are committed).

DejaVu Sans (Bitstream Vera / public-domain licence) is cut in two, each with its OpenType
layout tables so HarfBuzz can shape it: Western (Latin-1 and Latin Extended-A) is the body
font of every certificate; Extended (Latin Extended-B and Additional, IPA, combining marks,
Greek, Cyrillic) and RTL (Hebrew, Arabic) are fallbacks added to a document only when its
text needs them. A small body font keeps the per-document subsetting cheap.
WenQuanYi Micro Hei (Apache-2.0) is cut to the Chinese characters of GB2312 and Big5's
frequent set, plus kana and CJK punctuation: the certificate's fallback for CJK names.
Sources are Debian's fonts-dejavu-core and fonts-wqy-microhei.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont

OUT = Path(__file__).resolve().parent.parent / "lambdas" / "certificates" / "fonts"

# Latin-1 and Latin Extended-A (every European language in Latin script), punctuation.
WESTERN = [(0x0020, 0x017F), (0x2010, 0x2027), (0x2030, 0x203A), (0x20AC, 0x20AC), (0x2122, 0x2122)]
# Latin Extended-B, IPA, combining marks, Latin Extended Additional (Vietnamese...), Greek,
# Cyrillic: a fallback, like RTL and CJK.
EXTENDED = [
    (0x0020, 0x007E), (0x0180, 0x02FF), (0x0300, 0x036F), (0x0370, 0x03FF), (0x0400, 0x052F),
    (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x214F),
]  # fmt: skip
# Hebrew and Arabic (with presentation forms), plus ASCII so mixed runs keep one font.
RTL = [
    (0x0020, 0x007E), (0x0590, 0x05FF), (0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF),
    (0x200C, 0x200F), (0xFB1D, 0xFB4F), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF),
]  # fmt: skip


def cjk_codepoints() -> set[int]:
    points: set[int] = set(range(0x3000, 0x3100)) | set(range(0xFF00, 0xFFF0)) | set(range(0x20, 0x7F))
    for lead in range(0xB0, 0xF8):  # GB2312 hanzi rows
        for trail in range(0xA1, 0xFF):
            with contextlib.suppress(UnicodeDecodeError):
                points.add(ord(bytes([lead, trail]).decode("gb2312")))
    for lead in range(0xA4, 0xC7):  # Big5 frequently used hanzi
        for trail in list(range(0x40, 0x7F)) + list(range(0xA1, 0xFF)):
            with contextlib.suppress(UnicodeDecodeError):
                points.add(ord(bytes([lead, trail]).decode("big5")))
    return points


def build(source: str, target: str, codepoints: set[int], layout: bool, font_number: int = 0) -> None:
    options = subset.Options()
    options.layout_features = ["*"] if layout else []
    options.name_IDs = ["*"]
    options.notdef_outline = True
    options.glyph_names = False
    options.hinting = False
    options.drop_tables += ["FFTM"]
    font = TTFont(source, fontNumber=font_number, recalcTimestamp=False)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=codepoints)
    subsetter.subset(font)
    font.save(OUT / target)
    print(target, (OUT / target).stat().st_size, "bytes", file=sys.stderr)


def main() -> None:
    western = {cp for lo, hi in WESTERN for cp in range(lo, hi + 1)}
    rtl = {cp for lo, hi in RTL for cp in range(lo, hi + 1)}
    extended = {cp for lo, hi in EXTENDED for cp in range(lo, hi + 1)}
    dejavu = "/usr/share/fonts/truetype/dejavu/"
    build(dejavu + "DejaVuSans.ttf", "DejaVuSans-Western.ttf", western, True)
    build(dejavu + "DejaVuSans-Bold.ttf", "DejaVuSans-Bold-Western.ttf", western, True)
    build(dejavu + "DejaVuSans.ttf", "DejaVuSans-Extended.ttf", extended, True)
    build(dejavu + "DejaVuSans-Bold.ttf", "DejaVuSans-Bold-Extended.ttf", extended, True)
    build(dejavu + "DejaVuSans.ttf", "DejaVuSans-RTL.ttf", rtl, True)
    build(dejavu + "DejaVuSans-Bold.ttf", "DejaVuSans-Bold-RTL.ttf", rtl, True)
    build(
        "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "WenQuanYiMicroHei-CJK.ttf", cjk_codepoints(), False
    )


if __name__ == "__main__":
    main()
