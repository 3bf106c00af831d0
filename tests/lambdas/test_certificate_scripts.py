"""Every script prints the learner's own name, or the recipient fails with the code points.

Two checks per script: the text extracted by poppler's pdftotext is the name given (NFC),
and the page rasterised by pdftoppm matches a reference rendering of the same name in the
same font by an independent shaper (Pillow with libraqm), so shaping (Arabic joining,
Indic conjuncts, Thai marks) is held to what the script's readers expect.
"""

from __future__ import annotations

import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont, features

from certificate_render.fonts import font_library
from certificate_render.renderer import render_certificate
from certificate_render.template import CertificateTemplate, default_template, parse_template
from certificate_render.values import CertificateDataError

pytestmark = pytest.mark.skipif(
    shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None, reason="poppler-utils is required"
)

SCRIPTS = {
    "latin": ("latin", "Zoë Ørsted-Łukasiewicz"),
    "vietnamese-decomposed": ("latin", unicodedata.normalize("NFD", "Nguyễn Thị Ánh")),
    "greek": ("latin", "Ελένη Παπαδοπούλου"),
    "cyrillic": ("latin", "Жанна Иванова"),
    "arabic": ("arabic", "محمد عبد الله"),
    "hebrew": ("hebrew", "שרה כהן"),
    "devanagari": ("devanagari", "अनुराग शर्मा"),
    "bengali": ("bengali", "রবীন্দ্রনাথ ঠাকুর"),
    "gurmukhi": ("gurmukhi", "ਗੁਰਪ੍ਰੀਤ ਸਿੰਘ"),
    "gujarati": ("gujarati", "પ્રિયા પટેલ"),
    "oriya": ("oriya", "ସୁବ୍ରତ ଦାସ"),
    "tamil": ("tamil", "தமிழ்செல்வி"),
    "telugu": ("telugu", "శ్రీనివాస్"),
    "kannada": ("kannada", "ಕೃಷ್ಣ ಮೂರ್ತಿ"),
    "malayalam": ("malayalam", "ശ്രീക്കുട്ടി"),
    "thai": ("thai", "สมชาย ใจดี"),
    "hangul": ("cjk", "김민준"),
    "cjk-beyond-gb2312": ("cjk", "朱镕基 王喆 李堃"),
    "kana": ("cjk", "さくら ヤマダ"),
}
DATA: dict[str, Any] = {
    "learner_name": "",
    "course_name": "Workplace Safety 101",
    "completed_at": 1795361900,
    "grade": "92",
    "verification_code": "AB12CD34EF",
    "issuer_name": "Acme Training Ltd",
}
NAME_ONLY = {"elements": [{"field": "learner_name", "x": 10, "y": 10, "w": 277, "h": 60, "size": 60}]}
DPI = 100


def extract_text(pdf: bytes, tmp_path: Path) -> list[str]:
    """pdftotext's lines in logical order: poppler emits a right-to-left line in visual order
    between RLE and PDF marks; those lines are turned back."""
    source = tmp_path / "text.pdf"
    source.write_bytes(pdf)
    out = subprocess.run(["pdftotext", str(source), "-"], check=True, capture_output=True, text=True).stdout
    lines = []
    for raw in out.splitlines():
        line = raw[1:-1][::-1] if raw.startswith("\u202b") and raw.endswith("\u202c") else raw
        lines.append(line.strip())
    return lines


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_the_name_in_every_script_comes_back_from_the_pdf_as_given(script: str, tmp_path: Path) -> None:
    _, name = SCRIPTS[script]
    pdf = render_certificate(default_template(), dict(DATA, learner_name=name), "https://v/x", font_library())
    assert unicodedata.normalize("NFC", name) in extract_text(pdf, tmp_path)


def ink_box(image: Image.Image) -> Image.Image:
    """The inked part of a greyscale image, as a black-on-white bitmap."""
    mask = image.point(lambda p: 255 if p < 128 else 0)
    box = mask.getbbox()
    assert box is not None, "no ink"
    return mask.crop(box)


def similarity(ours: Image.Image, reference: Image.Image) -> float:
    """Intersection over union of the two inked shapes, ours scaled to the reference's box."""
    ours = ours.resize(reference.size, Image.Resampling.BILINEAR).point(lambda p: 255 if p >= 128 else 0)
    a, b = ours.tobytes(), reference.tobytes()
    both = sum(1 for x, y in zip(a, b, strict=True) if x and y)
    either = sum(1 for x, y in zip(a, b, strict=True) if x or y)
    return both / either


def reference(name: str, family: str, engine: ImageFont.Layout) -> Image.Image:
    face = font_library().face(family, False)
    font = ImageFont.truetype(str(face.path), 80, layout_engine=engine)
    image = Image.new("L", (2400, 300), 255)
    ImageDraw.Draw(image).text((50, 80), unicodedata.normalize("NFC", name), font=font, fill=0)
    return ink_box(image)


def rendered(name: str, tmp_path: Path, template: CertificateTemplate) -> Image.Image:
    source = tmp_path / "name.pdf"
    source.write_bytes(render_certificate(template, dict(DATA, learner_name=name), "x", font_library()))
    subprocess.run(
        ["pdftoppm", "-r", str(DPI), "-gray", "-singlefile", str(source), str(tmp_path / "name")], check=True
    )
    return ink_box(Image.open(tmp_path / "name.pgm").convert("L"))


@pytest.mark.skipif(not features.check("raqm"), reason="Pillow without libraqm cannot shape the reference")
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_each_script_is_drawn_like_an_independent_shaper_draws_it(script: str, tmp_path: Path) -> None:
    family, name = SCRIPTS[script]
    ours = rendered(name, tmp_path, parse_template(NAME_ONLY, {}))
    shaped = reference(name, family, ImageFont.Layout.RAQM)
    score = similarity(ours, shaped)
    assert score > 0.75, f"{script}: {score:.2f}"
    assert (
        abs(ours.width / ours.height - shaped.width / shaped.height) / (shaped.width / shaped.height) < 0.08
    )


@pytest.mark.skipif(not features.check("raqm"), reason="Pillow without libraqm cannot shape the reference")
@pytest.mark.parametrize("script", ["arabic", "devanagari", "malayalam", "tamil"])
def test_the_reference_check_catches_unshaped_text(script: str, tmp_path: Path) -> None:
    """The check above would fail for text drawn without shaping (isolated letters, no conjuncts)."""
    family, name = SCRIPTS[script]
    ours = rendered(name, tmp_path, parse_template(NAME_ONLY, {}))
    unshaped = reference(name, family, ImageFont.Layout.BASIC)
    shaped = reference(name, family, ImageFont.Layout.RAQM)
    assert similarity(ours, unshaped) < similarity(ours, shaped) - 0.1


@pytest.mark.parametrize(
    ("name", "points"),
    [
        ("Zoë 😀", ["U+1F600"]),
        ("Ada \U000e0041\u0000", ["U+E0041"]),
        ("𓀀 Lovelace ꦲ", ["U+13000", "U+A9B2"]),
    ],
)
def test_a_name_no_font_can_draw_is_refused_with_its_code_points(name: str, points: list[str]) -> None:
    with pytest.raises(CertificateDataError) as caught:
        render_certificate(default_template(), dict(DATA, learner_name=name), "x", font_library())
    assert caught.value.code == "unsupported_characters"
    assert caught.value.detail == points
    assert all(p in str(caught.value) for p in points)


def test_every_glyph_drawn_exists_in_its_font() -> None:
    """No .notdef (gid 0, the empty box) in any script's name: the coverage check is exact."""
    from certificate_render.text import shape_line

    library = font_library()
    for _, name in SCRIPTS.values():
        line = shape_line(library, unicodedata.normalize("NFC", name), bold=False)
        assert all(g.gid != 0 for g in line.glyphs), name
        line = shape_line(library, unicodedata.normalize("NFC", name), bold=True)
        assert all(g.gid != 0 for g in line.glyphs), name


def test_more_distinct_cjk_characters_than_one_type3_font_holds(tmp_path: Path) -> None:
    """A 512-character course name of distinct ideographs needs several Type 3 fonts (255 codes
    each); every character still comes back, in order, and the PDF stays small per glyph."""
    course = "".join(chr(0x4E00 + 37 * i) for i in range(400))
    pdf = render_certificate(
        default_template(), dict(DATA, learner_name="王喆", course_name=course), "x", font_library()
    )
    text = "".join("".join(extract_text(pdf, tmp_path)).split())
    assert course in text
    assert pdf.count(b"/Subtype /Type3") >= 2
