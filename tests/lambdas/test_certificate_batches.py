"""One bad recipient or template fails alone, templates are checked when stored, images are capped,
long text stays in its box, and dates, grades and bold follow the certificate's language and design."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops

from certificate_render.fonts import font_library
from certificate_render.renderer import render_certificate
from certificate_render.template import (
    MAX_XOBJECT_BYTES,
    TemplateError,
    TemplateStore,
    default_document,
    default_template,
    parse_template,
)
from lambdas.handlers import certificate_renderer
from offload_contract import encode_message, validate
from tests.lambdas.conftest import Aws, FakeContext, sqs_event
from tests.lambdas.test_certificates import certificate_batch

BUCKET = "offload-certificates"
DATA: dict[str, Any] = {
    "learner_name": "Ada Lovelace",
    "course_name": "Workplace Safety 101",
    "completed_at": 1795361900,
    "grade": "92",
    "verification_code": "AB12CD34EF",
    "issuer_name": "Acme Training Ltd",
}
poppler = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils is required")


@pytest.fixture
def handlers(aws: Aws):
    certificate_renderer.renderer.cache_clear()
    yield
    certificate_renderer.renderer.cache_clear()


def stored_pdfs(aws: Aws) -> list[str]:
    listing = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="certificates/")
    return [o["Key"] for o in listing.get("Contents", [])]


def png_bytes(size: tuple[int, int], *, noise: bool = False) -> bytes:
    if noise:
        rng = random.Random(7)
        image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    else:
        image = Image.new("RGB", size, (30, 60, 120))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def test_each_bad_recipient_fails_alone_and_the_rest_are_rendered(aws: Aws, handlers) -> None:
    batch = certificate_batch("store_only")
    good = batch["recipients"][0]
    bad: dict[str, dict[str, Any]] = {
        "r-blank": {"learner_name": " \t\u3000\u00a0 "},
        "r-invisible": {"learner_name": "\u200b\u200d\u2060"},
        "r-year-10000": {"completed_at": 253402300800},
        "r-milliseconds": {"completed_at": 1795361900000},
        "r-emoji": {"learner_name": "Zoë 😀"},
    }
    batch["recipients"] = [good] + [
        {
            "recipient_id": rid,
            "certificate": dict(good["certificate"], **change, verification_code=f"BAD{i:05d}X"),
        }
        for i, (rid, change) in enumerate(bad.items())
    ]
    validate("certificate_batch", batch)  # the contract accepts every one of them
    response = certificate_renderer.handler(sqs_event(encode_message(batch)), FakeContext())
    assert response == {"batchItemFailures": []}
    results = {r["recipient_id"]: r for r in aws.results()}
    assert set(results) == {"r-0", *bad}
    assert results["r-0"]["status"] == "rendered"
    errors = {rid: results[rid]["error"] for rid in bad}
    assert all(results[rid]["status"] == "failed" and errors[rid]["permanent"] for rid in bad)
    assert errors["r-blank"]["code"] == "invalid_certificate_data"
    assert "learner_name is blank" in errors["r-blank"]["message"]
    assert errors["r-invisible"]["code"] == "invalid_certificate_data"
    assert errors["r-year-10000"]["code"] == "invalid_certificate_data"
    assert "milliseconds" in errors["r-milliseconds"]["message"]
    assert errors["r-emoji"]["code"] == "unsupported_characters"
    assert "U+1F600" in errors["r-emoji"]["message"]
    assert stored_pdfs(aws) == ["certificates/company-7/cj-7-000001/r-0.pdf"]  # no PDF for a failure


def test_a_corrupt_stored_template_gives_every_recipient_a_result_and_stores_nothing(
    aws: Aws, handlers
) -> None:
    document = default_document()
    document["logo"] = {"image": "logo.png", "x": 20, "y": 15, "w": 20}
    aws.s3.put_object(Bucket=BUCKET, Key="templates/company-7/gold.json", Body=json.dumps(document).encode())
    aws.s3.put_object(Bucket=BUCKET, Key="templates/company-7/logo.png", Body=b"<html>not an image</html>")
    batch = certificate_batch("store_only", template_id="gold")
    response = certificate_renderer.handler(sqs_event(encode_message(batch)), FakeContext())
    assert response == {"batchItemFailures": []}
    results = aws.results()
    assert len(results) == len(batch["recipients"])
    assert {r["error"]["code"] for r in results} == {"template_invalid"}
    assert "logo image 'logo.png' is not a readable image" in results[0]["error"]["message"]
    assert stored_pdfs(aws) == []


@pytest.mark.parametrize(
    ("change", "images", "message"),
    [
        ({"border": {"color": "navy"}}, {}, "border/color"),
        ({"elements": [{"field": "learner_name", "y": 80, "size": "34"}]}, {}, "elements/0/size"),
        ({"elements": [{"field": "learner_name", "y": 80, "color": "#12345"}]}, {}, "elements/0/color"),
        ({"elements": [{"field": "signature_of_dean", "y": 80}]}, {}, "elements/0/field"),
        ({"elements": [{"field": "learner_name", "y": 200, "h": 30}]}, {}, "runs off"),
        (
            {"logo": {"image": "logo.png", "w": 20}},
            {"logo.png": b"\x89PNG\r\n\x1a\n broken"},
            "not a readable image",
        ),
        ({"logo": {"image": "logo.png", "w": 20}}, {"logo.png": b"%PDF-1.4 a pdf"}, "not a readable image"),
        ({"logo": {"image": "logo.png", "w": 20}}, {}, "is missing"),
        ({"timezone": "Mars/Olympus"}, {}, "time zone"),
        ({"qr": {"x": 280, "y": 190, "size": 30}}, {}, "qr"),
    ],
)
def test_a_bad_template_is_refused_when_stored_with_a_clear_message(
    aws: Aws, change: dict[str, Any], images: dict[str, bytes], message: str
) -> None:
    store = TemplateStore(aws.s3, BUCKET)
    document = {**default_document(), "logo": None, **change}
    with pytest.raises(TemplateError) as caught:
        store.put(7, "gold", document, images)
    assert caught.value.code == "template_invalid"
    assert message in str(caught.value)
    assert "Contents" not in aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="templates/")


def test_a_good_template_is_stored_and_served(aws: Aws) -> None:
    store = TemplateStore(aws.s3, BUCKET)
    document = {**default_document(), "logo": {"image": "logo.png", "x": 20, "y": 15, "w": 20}}
    store.put(7, "gold", document, {"logo.png": png_bytes((64, 64))})
    template = store.get(7, "gold")
    assert template.images[0].w == 20 and template.images[0].image.width == 64


def test_huge_logos_are_capped_in_memory_and_in_the_pdf() -> None:
    huge = png_bytes((1800, 1800), noise=True)
    assert len(huge) > 9_000_000
    document = {**default_document(), "logo": {"image": "big.png", "x": 20, "y": 15, "w": 30}}
    template = parse_template(document, {"big.png": huge})
    image = template.images[0].image
    assert max(image.width, image.height) <= 1000
    assert image.nbytes <= MAX_XOBJECT_BYTES
    pdf = render_certificate(template, DATA, "https://v/x", font_library())
    assert len(pdf) <= MAX_XOBJECT_BYTES + 100_000


def test_an_image_bomb_is_refused_before_decoding() -> None:
    image = Image.new("1", (9000, 9000))
    out = io.BytesIO()
    image.save(out, format="PNG")
    document = {**default_document(), "logo": {"image": "bomb.png", "w": 20}}
    with pytest.raises(TemplateError, match="pixels"):
        parse_template(document, {"bomb.png": out.getvalue()})


def to_png(pdf: bytes, tmp_path: Path, name: str, dpi: int = 50) -> Image.Image:
    source = tmp_path / f"{name}.pdf"
    source.write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-r", str(dpi), "-gray", "-singlefile", str(source), str(tmp_path / name)], check=True
    )
    return Image.open(tmp_path / f"{name}.pgm").convert("L")


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    source = tmp_path / "t.pdf"
    source.write_bytes(pdf)
    return subprocess.run(["pdftotext", str(source), "-"], check=True, capture_output=True, text=True).stdout


@poppler
@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("learner_name", ("Maximiliana Wolfeschlegelsteinhausenbergerdorff " * 6)[:256]),
        ("course_name", ("Occupational health and safety for supervisors, module " * 10)[:512]),
        ("course_name", ("职业安全与健康管理体系培训课程" * 35)[:512]),
    ],
)
def test_long_text_stays_inside_its_box(field: str, text: str, tmp_path: Path) -> None:
    template = default_template()
    element = next(e for e in template.elements if e.field == field)
    dpi = 50
    mm = dpi / 25.4
    with_text = to_png(
        render_certificate(template, dict(DATA, **{field: text}), "x", font_library()), tmp_path, "a"
    )
    short = to_png(
        render_certificate(template, dict(DATA, **{field: "X"}), "x", font_library()), tmp_path, "b"
    )
    box = ImageChops.difference(with_text, short).point(lambda p: 255 if p > 64 else 0).getbbox()
    assert box is not None
    left, top, right, bottom = (v / mm for v in box)
    assert element.x - 1 <= left and right <= element.x + element.w + 1
    assert element.y - 1 <= top and bottom <= element.y + element.h + 1
    # All of it is there: nothing was cut off.
    extracted = "".join(
        pdf_text(
            render_certificate(template, dict(DATA, **{field: text}), "x", font_library()), tmp_path
        ).split()
    )
    assert "".join(text.split()) in extracted


@poppler
def test_cjk_bold_is_bold(tmp_path: Path) -> None:
    def ink(bold: bool) -> int:
        document = {
            "elements": [
                {"field": "learner_name", "x": 10, "y": 10, "w": 277, "h": 60, "size": 60, "bold": bold}
            ]
        }
        pdf = render_certificate(
            parse_template(document, {}), dict(DATA, learner_name="朱镕基"), "x", font_library()
        )
        return sum(to_png(pdf, tmp_path, f"bold{bold}", 72).histogram()[:128])

    assert ink(True) > ink(False) * 1.25


@poppler
@pytest.mark.parametrize(
    ("language", "date", "grade"),
    [
        ("en", "November 22, 2026", "Grade: 92%"),
        ("de", "22. November 2026", "Grade: 92\u00a0%"),
        ("fr", "22 novembre 2026", "Grade: 92\u00a0%"),
        ("ja", "2026年11月22日", "Grade: 92%"),
    ],
)
def test_dates_and_grades_follow_the_language(language: str, date: str, grade: str, tmp_path: Path) -> None:
    pdf = render_certificate(default_template(), dict(DATA, language=language), "x", font_library())
    text = pdf_text(pdf, tmp_path)
    assert f"Completed on {date}" in text
    assert grade in text


@poppler
@pytest.mark.parametrize(
    ("value", "printed"), [("NaN", None), ("inf", None), ("A+", "Grade: A+"), ("87.5", "Grade: 87.5%")]
)
def test_grades_that_are_not_numbers(value: str, printed: str | None, tmp_path: Path) -> None:
    text = pdf_text(
        render_certificate(default_template(), dict(DATA, grade=value), "x", font_library()), tmp_path
    )
    if printed is None:
        assert "Grade" not in text
    else:
        assert printed in text


def test_the_company_time_zone_sets_the_day() -> None:
    from certificate_render.values import field_value

    document = {**default_document(), "timezone": "Pacific/Auckland"}
    template = parse_template(document, _default_images())
    element = next(e for e in template.elements if e.field == "completed_at")
    late = 1795391999  # 2026-11-22 23:59:59 UTC: already the 23rd in Auckland
    assert "November 23, 2026" in field_value(element, dict(DATA, completed_at=late), template)
    assert "November 22, 2026" in field_value(element, dict(DATA, completed_at=late), default_template())


def _default_images() -> dict[str, bytes]:
    from certificate_render.template import PACKAGE_DIR

    return {"default-logo.png": (PACKAGE_DIR / "default-logo.png").read_bytes()}
