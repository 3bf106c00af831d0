"""Build the subset fonts of the certificate renderer into certificate_render/fonts/.

Run by ``make setup`` (the outputs are build products, not committed): the sources are
Debian's fonts-noto-core and fonts-noto-cjk (installed by scripts/bootstrap.sh), both under
the SIL Open Font License 1.1, whose text is copied beside the fonts.

Each script gets its own Noto family, with its OpenType layout tables so HarfBuzz can shape
it (Arabic joining, Indic conjuncts, Thai marks). Hinting is dropped: the renderer draws the
outlines as vector paths. Noto Sans is cut to Latin, Greek and Cyrillic; Noto Sans CJK (the
Simplified Chinese face, which has every glyph of the collection) to the full CJK Unified
Ideographs block and Extension A, the compatibility ideographs, kana and Hangul. The order of
``FAMILIES`` is the order the renderer tries fonts for a character.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTFont

OUT = Path(__file__).resolve().parent.parent / "certificate_render" / "fonts"
NOTO = Path("/usr/share/fonts/truetype/noto")
NOTO_CJK = Path("/usr/share/fonts/opentype/noto")
CJK_FACE = 2  # Noto Sans CJK SC in the .ttc collection
LICENCES = {
    "LICENSE-Noto.txt": Path("/usr/share/doc/fonts-noto-core/copyright"),
    "LICENSE-NotoCJK.txt": Path("/usr/share/doc/fonts-noto-cjk/copyright"),
}

Ranges = list[tuple[int, int]]
COMMON: Ranges = [(0x0020, 0x007E), (0x00A0, 0x00BF), (0x2000, 0x206F)]
LATIN: Ranges = [
    (0x0020, 0x024F), (0x0250, 0x02FF), (0x0300, 0x036F), (0x0370, 0x03FF), (0x0400, 0x052F),
    (0x1C80, 0x1C8F), (0x1D00, 0x1DBF), (0x1DC0, 0x1DFF), (0x1E00, 0x1EFF), (0x1F00, 0x1FFF),
    (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20CF), (0x2100, 0x214F), (0x2150, 0x218F),
    (0x2C60, 0x2C7F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F), (0xA720, 0xA7FF), (0xAB30, 0xAB6F),
    (0xFB00, 0xFB06),
]  # fmt: skip
CJK: Ranges = [
    *COMMON,
    (0x1100, 0x11FF), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF), (0x3000, 0x303F), (0x3040, 0x309F),
    (0x30A0, 0x30FF), (0x3100, 0x312F), (0x3130, 0x318F), (0x31F0, 0x31FF), (0x3200, 0x32FF),
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7AF), (0xD7B0, 0xD7FF),
    (0xF900, 0xFAFF), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF),
]  # fmt: skip
ALL: Ranges = [(0x0000, 0x10FFFF)]

# (family, Regular source, Bold source, face number, ranges), in fallback order.
FAMILIES: list[tuple[str, Path, Path, int, Ranges]] = [
    ("latin", NOTO / "NotoSans-Regular.ttf", NOTO / "NotoSans-Bold.ttf", 0, LATIN),
    *[
        (name.lower(), NOTO / f"NotoSans{name}-Regular.ttf", NOTO / f"NotoSans{name}-Bold.ttf", 0, ALL)
        for name in (
            "Arabic", "Hebrew", "Devanagari", "Bengali", "Gurmukhi", "Gujarati", "Oriya", "Tamil",
            "Telugu", "Kannada", "Malayalam", "Sinhala", "Thai", "Armenian", "Georgian",
        )
    ],
    ("cjk", NOTO_CJK / "NotoSansCJK-Regular.ttc", NOTO_CJK / "NotoSansCJK-Bold.ttc", CJK_FACE, CJK),
]  # fmt: skip


def codepoints(ranges: Ranges) -> set[int]:
    return {cp for lo, hi in ranges for cp in range(lo, hi + 1)}


def build(source: Path, target: Path, points: set[int], font_number: int) -> None:
    options = subset.Options()
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.notdef_outline = True
    options.glyph_names = False
    options.hinting = False
    options.desubroutinize = False
    options.drop_tables += ["FFTM", "DSIG", "vhea", "vmtx", "VORG", "BASE", "JSTF"]
    font = TTFont(str(source), fontNumber=font_number, recalcTimestamp=False, lazy=False)
    available = set(font.getBestCmap())
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=points & available)
    subsetter.subset(font)
    font.save(str(target))


def target_name(family: str, style: str, source: Path) -> str:
    return f"{family}-{style}{'.otf' if source.suffix == '.ttc' else '.ttf'}"


#: Raise when ``build`` changes what it writes (the families and ranges are in the key already).
BUILD_VERSION = 1


def manifest_key() -> str:
    """A digest of what is built (families, ranges, faces, the build version) and the source
    fonts' sizes: rebuild when any changes, not when only comments or docs do."""
    digest = hashlib.sha256(
        repr((BUILD_VERSION, CJK_FACE, [(f, str(r), str(b), n, rs) for f, r, b, n, rs in FAMILIES])).encode()
    )
    for _, regular, bold, _, _ in FAMILIES:
        for path in (regular, bold):
            digest.update(f"{path}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args()
    missing = [str(p) for _, r, b, _, _ in FAMILIES for p in (r, b) if not p.exists()]
    if missing:
        sys.exit(
            "build_certificate_fonts: missing source fonts (install the Debian packages "
            f"fonts-noto-core and fonts-noto-cjk; scripts/bootstrap.sh does): {', '.join(missing)}"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    manifest_path = OUT / "manifest.json"
    key = manifest_key()
    if not args.force and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") == key and all((OUT / f["file"]).exists() for f in manifest["fonts"]):
            manifest_path.touch()  # up to date: newer than this script for make
            return
    fonts = []
    for family, regular, bold, face, ranges in FAMILIES:
        for style, source in (("Regular", regular), ("Bold", bold)):
            name = target_name(family, style, source)
            build(source, OUT / name, codepoints(ranges), face)
            fonts.append({"family": family, "bold": style == "Bold", "file": name})
            print(name, (OUT / name).stat().st_size, "bytes", file=sys.stderr)
    for name, source in LICENCES.items():
        shutil.copyfile(source, OUT / name)
    manifest_path.write_text(json.dumps({"key": key, "fonts": fonts}, indent=1) + "\n")


if __name__ == "__main__":
    main()
