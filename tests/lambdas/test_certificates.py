"""Certificate renderer: PDFs in S3, fonts parsed once, scripts shaped, name where the template says."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops

from certificate_render.fonts import font_library
from certificate_render.renderer import StaticLayers, render_certificate
from certificate_render.template import default_template
from lambdas.handlers import certificate_renderer, email_sender
from offload_contract import encode_message
from tests.lambdas.conftest import CALLBACK, Aws, FakeContext, sqs_event

NAMES = ["Zoë Ørsted-Łukasiewicz", "محمد عبد الله", "שרה כהן", "李小龍"]
DATA = {
    "learner_name": NAMES[0],
    "course_name": "Workplace Safety 101",
    "completed_at": 1795361900,
    "grade": "92%",
    "verification_code": "AB12CD34EF",
    "issuer_name": "Acme Training Ltd",
}
DPI = 50
MM = DPI / 25.4


def certificate_batch(delivery: str = "email_attachment", template_id: str = "default") -> dict[str, Any]:
    return {
        "type": "certificate_batch",
        "contract_version": 1,
        "batch_id": "cb-7-000001",
        "job_id": "cj-7-000001",
        "company_id": 7,
        "attempt": 1,
        "created_at": 1795361900,
        "callback": dict(CALLBACK),
        "template_id": template_id,
        "delivery": delivery,
        "sender": {"address": "noreply@acme.example", "name": "Acme Training"},
        "contents": {
            "c-1": {
                "kind": "template",
                "engine": "jinja2",
                "subject": "Your certificate for {{ course_name }}",
                "html": "<p>Well done {{ learner_name }}! Verify at {{ certificate_url }}</p>",
            }
        },
        "recipients": [
            {
                "recipient_id": f"r-{i}",
                "to": f"learner{i}@example.org",
                "name": name,
                "content_id": "c-1",
                "certificate": dict(DATA, learner_name=name, verification_code=f"CODE{i:04d}X"),
            }
            for i, name in enumerate(NAMES)
        ],
    }


@pytest.fixture
def handlers(aws: Aws):
    certificate_renderer.renderer.cache_clear()
    email_sender.sender.cache_clear()
    yield
    certificate_renderer.renderer.cache_clear()
    email_sender.sender.cache_clear()


def to_png(pdf: bytes, tmp_path: Path, name: str, mode: str = "L") -> Image.Image:
    source = tmp_path / f"{name}.pdf"
    source.write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-r", str(DPI), "-png", "-singlefile", str(source), str(tmp_path / name)], check=True
    )
    return Image.open(tmp_path / f"{name}.png").convert(mode)


def test_store_and_mail_with_attachment_through_the_email_path(aws: Aws, handlers) -> None:
    response = certificate_renderer.handler(sqs_event(encode_message(certificate_batch())), FakeContext())
    assert response == {"batchItemFailures": []}
    results = aws.results()
    assert [r["status"] for r in results] == ["rendered"] * 4
    for result in results:
        artifact = result["artifact"]
        assert artifact["key"] == f"certificates/company-7/cj-7-000001/{result['recipient_id']}.pdf"
        head = aws.s3.head_object(Bucket=artifact["bucket"], Key=artifact["key"])
        assert head["ServerSideEncryption"] == "AES256"
        body = aws.s3.get_object(Bucket=artifact["bucket"], Key=artifact["key"])["Body"].read()
        assert body.startswith(b"%PDF-") and hashlib.sha256(body).hexdigest() == artifact["sha256"]
        assert len(body) <= 60_000
    (forwarded,) = aws.drain(aws.jobs_url)
    mail = json.loads(forwarded["Body"])
    assert mail["type"] == "email_batch" and mail["job_id"] == "cj-7-000001"
    assert all(r["attachments"][0]["ref"]["key"].endswith(".pdf") for r in mail["recipients"])
    email_sender.handler(sqs_event(forwarded["Body"]), FakeContext())
    raws = [m.raw_data for m in aws.ses.sent_messages()]
    assert len(raws) == 4
    assert all("application/pdf" in raw and 'filename="certificate.pdf"' in raw for raw in raws)
    sent = [r for r in aws.results() if r["status"] == "sent"]
    assert len(sent) == 4
    record = aws.dynamodb.get_item(TableName="offload-idempotency", Key={"id": {"S": "cert#CODE0001X"}})[
        "Item"
    ]
    assert record["learner_name"]["S"] == NAMES[1]


def test_email_link_delivery_puts_the_verify_url_in_the_template_data(aws: Aws, handlers) -> None:
    certificate_renderer.handler(sqs_event(encode_message(certificate_batch("email_link"))), FakeContext())
    (forwarded,) = aws.drain(aws.jobs_url)
    recipient = json.loads(forwarded["Body"])["recipients"][0]
    assert "attachments" not in recipient
    assert recipient["data"]["certificate_url"] == "https://offload.example/v1/certificates/verify/CODE0000X"


def test_store_only_reports_without_mail_and_missing_template_fails_cleanly(aws: Aws, handlers) -> None:
    certificate_renderer.handler(sqs_event(encode_message(certificate_batch("store_only"))), FakeContext())
    assert aws.drain(aws.jobs_url) == []
    assert len(aws.results()) == 4
    certificate_renderer.handler(
        sqs_event(encode_message(certificate_batch("store_only", template_id="gold"))), FakeContext()
    )
    results = aws.results()
    assert {r["status"] for r in results} == {"failed"}
    assert {r["error"]["code"] for r in results} == {"template_missing"}


def test_company_template_from_s3_with_background_and_logo(aws: Aws, handlers, tmp_path: Path) -> None:
    background = Image.new("RGB", (297, 210), (250, 240, 200))
    buffer = io.BytesIO()
    background.save(buffer, format="PNG")
    logo = (
        Path(__file__).resolve().parents[2] / "certificate_render/templates/default-logo.png"
    ).read_bytes()
    document = json.loads(
        (Path(__file__).resolve().parents[2] / "certificate_render/templates/default.json").read_text()
    )
    document["background"] = {"image": "bg.png"}
    document["border"] = None
    document["logo"] = {"image": "logo.png", "x": 20, "y": 15, "w": 20}
    prefix = "templates/company-7/"
    aws.s3.put_object(
        Bucket="offload-certificates", Key=prefix + "gold.json", Body=json.dumps(document).encode()
    )
    aws.s3.put_object(Bucket="offload-certificates", Key=prefix + "bg.png", Body=buffer.getvalue())
    aws.s3.put_object(Bucket="offload-certificates", Key=prefix + "logo.png", Body=logo)
    certificate_renderer.handler(
        sqs_event(encode_message(certificate_batch("store_only", template_id="gold"))), FakeContext()
    )
    result = aws.results()[0]
    body = aws.s3.get_object(Bucket="offload-certificates", Key=result["artifact"]["key"])["Body"].read()
    page = to_png(body, tmp_path, "gold", "RGB")
    assert page.getpixel((int(150 * MM), int(30 * MM))) == pytest.approx((250, 240, 200), abs=3)


def test_each_script_finds_its_font() -> None:
    library = font_library()
    assert [f for f, _ in library.itemize("Zoë Ørsted-Łukasiewicz, Żółć")] == ["latin"]
    assert [f for f, _ in library.itemize("Nguyễn Ελένη Жанна")] == ["latin"]
    assert [f for f, _ in library.itemize("محمد שרה")] == ["arabic", "hebrew"]
    assert [f for f, _ in library.itemize("李小龍 さくら 김민준")] == ["cjk"]
    assert [f for f, _ in library.itemize("अनुराग ராம் สมชาย")] == ["devanagari", "tamil", "thai"]


def test_static_layer_is_built_once_per_template_and_output_is_deterministic() -> None:
    library = font_library()
    layers = StaticLayers()
    template = default_template()
    outputs = [
        render_certificate(template, dict(DATA, learner_name=name), "https://v/x", library, layers=layers)
        for name in NAMES * 2
    ]
    assert layers.builds == 1  # once per template, not per document
    assert all(out.startswith(b"%PDF-") for out in outputs)
    assert outputs[0] == outputs[4]  # deterministic: a re-render stores the same bytes


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) is required")
@pytest.mark.parametrize("name", [*NAMES, "Nguyễn Thị Ánh", "Ελένη Παπαδοπούλου"])
def test_rendered_page_is_not_blank_and_the_name_is_where_the_template_puts_it(
    name: str, tmp_path: Path
) -> None:
    template = default_template()
    library = font_library()
    element = next(e for e in template.elements if e.field == "learner_name")
    no_name = dataclasses.replace(template, elements=tuple(e for e in template.elements if e is not element))
    with_name = to_png(
        render_certificate(template, dict(DATA, learner_name=name), "https://v/x", library), tmp_path, "a"
    )
    without = to_png(render_certificate(no_name, DATA, "https://v/x", library), tmp_path, "b")
    dark = sum(with_name.histogram()[:128])
    assert dark > 2_000  # border, title, texts and QR: not a blank page
    diff = ImageChops.difference(with_name, without).point(lambda p: 255 if p > 64 else 0)
    box = diff.getbbox()
    assert box is not None, "the name left no ink"
    left, top, right, bottom = (v / MM for v in box)
    assert element.y - 1 <= top and bottom <= element.y + element.h + 1
    assert element.x <= left and right <= element.x + element.w
    assert abs((left + right) / 2 - (element.x + element.w / 2)) < 8  # centred, as the template says


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) is required")
def test_qr_code_on_the_page_matches_the_verification_url_module_for_module(tmp_path: Path) -> None:
    import segno

    template = default_template()
    assert template.qr is not None
    url = "https://offload.example/v1/certificates/verify/AB12CD34EF"
    pdf = render_certificate(template, DATA, url, font_library())
    source = tmp_path / "qr.pdf"
    source.write_bytes(pdf)
    dpi = 200
    subprocess.run(
        ["pdftoppm", "-r", str(dpi), "-png", "-singlefile", str(source), str(tmp_path / "qr")], check=True
    )
    page = Image.open(tmp_path / "qr.png").convert("L")
    matrix = [list(row) for row in segno.make(url, error="m", micro=False, mask=0, boost_error=False).matrix]
    module = float(template.qr["size"]) / (len(matrix) + 4)
    px = dpi / 25.4
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            x = (float(template.qr["x"]) + (c + 2.5) * module) * px
            y = (float(template.qr["y"]) + (r + 2.5) * module) * px
            luminance = page.getpixel((int(x), int(y)))
            assert isinstance(luminance, int)
            assert (luminance < 128) == bool(dark), (r, c)
