"""The Worker's certificate renderer draws the same certificate as the Lambda's.

The same template document and recipient go through the Lambda renderer (Python) and the
Worker's renderer module (cloudflare/src/certificate-renderer.js, run by
cloudflare/scripts/render-certificate.mjs under Node: V8, the engine workerd embeds; the
workerd suite runs the same module inside the Worker). Poppler reads both back: the text
(pdftotext) must be identical, and the rasterised pages (pdftoppm) must match within a small
tolerance outside the QR code. The QR code encodes the same URL but the two QR libraries pick
different (equally valid) masks, so its area is compared by ink only.

The raster check is what catches a PDF whose text layer is right but whose glyphs are not
drawn (a broken font subset extracts perfectly with pdftotext and prints blanks).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from certificate_render.fonts import font_library
from certificate_render.renderer import render_certificate
from certificate_render.template import default_document, default_template, parse_template

WORKER_DIR = Path(__file__).resolve().parents[2] / "cloudflare"
SCRIPT = WORKER_DIR / "scripts" / "render-certificate.mjs"
DPI = 40
QR_BOX_MM = (248.0, 157.0, 30.0)  # the default template's qr: x, y, size

pytestmark = pytest.mark.skipif(
    shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None, reason="poppler-utils is required"
)

RECIPIENTS: dict[str, dict[str, Any]] = {
    "latin": {
        "learner_name": "Zoë Łukasiewicz-Ångström",
        "course_name": "Safety at Work: Ladders & Scaffolds",
        "completed_at": 1764400000,
        "grade": "92.5",
        "verification_code": "ABCD2345EFGH",
        "issuer_name": "Acme Training",
    },
    "greek-cyrillic-long-course": {
        "learner_name": "Ελένη Жанна Παπαδοπούλου-Иванова",
        "course_name": "Advanced Occupational Health, Safety and Environmental Management for Site"
        " Supervisors and Team Leaders (Level 3)",
        "completed_at": 1795361900,
        "grade": "88",
        "verification_code": "XY12CD34EF56",
    },
}


def _require_node() -> None:
    if shutil.which("node") is None or not (WORKER_DIR / "node_modules" / "pdf-lib").exists():
        reason = "cloudflare/node_modules is not installed (run `make setup`)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)


def worker_render(
    tmp_path: Path, template: Any, data: dict[str, Any], verify_url: str
) -> bytes | dict[str, Any]:
    """The Worker renderer's PDF, or its error ({"error": code, "message": ...})."""
    job = tmp_path / "job.json"
    out = tmp_path / "worker.pdf"
    job.write_text(json.dumps({"template": template, "data": data, "verify_url": verify_url}), "utf-8")
    done = subprocess.run(
        ["node", str(SCRIPT), str(job), str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode == 3:
        error: dict[str, Any] = json.loads(done.stdout)
        return error
    assert done.returncode == 0, done.stderr[-2000:]
    return out.read_bytes()


def text_of(pdf: bytes, tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def gray_page(pdf: bytes, tmp_path: Path, name: str) -> tuple[int, int, bytes]:
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-r", str(DPI), "-gray", "-singlefile", str(path), str(tmp_path / name)], check=True
    )
    raw = (tmp_path / f"{name}.pgm").read_bytes()
    magic, size, _maxval, pixels = raw.split(b"\n", 3)
    assert magic == b"P5"
    width, height = (int(v) for v in size.split())
    return width, height, pixels[: width * height]


def words(lines: list[str]) -> list[str]:
    """The text as words: the Lambda marks each box with one /ActualText, so pdftotext gives a
    wrapped box as one line where the Worker's gives its lines."""
    return " ".join(lines).split()


def compare(
    a: tuple[int, int, bytes], b: tuple[int, int, bytes], page_mm: tuple[float, float] = (297.0, 210.0)
) -> dict[str, float]:
    """Mean difference and share of clearly different pixels outside the QR box; ink in it."""
    (wa, ha, pa), (wb, hb, pb) = a, b
    assert abs(wa - wb) <= 1 and abs(ha - hb) <= 1  # the page sizes round to whole pixels
    width, height = min(wa, wb), min(ha, hb)
    x, y, size = QR_BOX_MM
    x0, x1 = int(x / page_mm[0] * width) - 1, int((x + size) / page_mm[0] * width) + 2
    y0, y1 = int(y / page_mm[1] * height) - 1, int((y + size) / page_mm[1] * height) + 2
    total = strong = count = 0
    ink_a = ink_b = inside = 0
    for row in range(height):
        for col in range(width):
            i, j = row * wa + col, row * wb + col
            if x0 <= col < x1 and y0 <= row < y1:
                inside += 1
                ink_a += pa[i] < 128
                ink_b += pb[j] < 128
                continue
            d = abs(pa[i] - pb[j])
            total += d
            strong += d > 96
            count += 1
    return {
        "mean": total / count / 255,
        "strong": strong / count,
        "qr_ink_a": ink_a / inside,
        "qr_ink_b": ink_b / inside,
    }


@pytest.mark.parametrize("case", sorted(RECIPIENTS))
def test_worker_and_lambda_draw_the_same_certificate(case: str, tmp_path: Path) -> None:
    _require_node()
    data = RECIPIENTS[case]
    verify_url = f"https://offload.example.org/v1/certificates/verify/{data['verification_code']}"
    lambda_pdf = render_certificate(default_template(), data, verify_url, font_library())
    worker_pdf = worker_render(tmp_path, default_document(), data, verify_url)
    assert isinstance(worker_pdf, bytes), worker_pdf
    worker_text = text_of(worker_pdf, tmp_path, "worker")
    assert words(worker_text) == words(text_of(lambda_pdf, tmp_path, "lambda"))
    assert " ".join(data["learner_name"].split()) in worker_text
    diff = compare(gray_page(worker_pdf, tmp_path, "worker"), gray_page(lambda_pdf, tmp_path, "lambda"))
    # Measured: mean ~0.2 %, strong ~0.1 % (anti-aliasing, kerning); a page with blank glyphs is ~1.5 %.
    assert diff["mean"] < 0.006, diff
    assert diff["strong"] < 0.004, diff
    # Both QR codes are there and about as dark (a QR code is roughly half dark modules).
    assert 0.25 < diff["qr_ink_a"] < 0.75 and abs(diff["qr_ink_a"] - diff["qr_ink_b"]) < 0.12, diff


def test_a_custom_template_matches_too(tmp_path: Path) -> None:
    _require_node()
    document = {
        "page": {"size": "Letter", "orientation": "landscape"},
        "background": {"color": "#FDF6E3"},
        "border": {"color": "#8B0000", "width": 3, "inset": 10},
        "elements": [
            {"field": "static", "text": "Diploma", "y": 30, "size": 40, "bold": True, "color": "#8B0000"},
            {"field": "learner_name", "y": 70, "h": 20, "size": 30, "align": "L", "x": 30, "w": 200},
            {"field": "course_name", "y": 100, "size": 18, "align": "R", "x": 30, "w": 200},
            {"field": "completed_at", "y": 130, "size": 12, "format": "medium"},
            {"field": "verification_code", "y": 180, "size": 9},
        ],
        "qr": {"x": 248, "y": 157, "size": 30},
    }
    data = RECIPIENTS["latin"]
    verify_url = "https://offload.example.org/v1/certificates/verify/ABCD2345EFGH"
    lambda_pdf = render_certificate(parse_template(document, {}), data, verify_url, font_library())
    worker_pdf = worker_render(tmp_path, document, data, verify_url)
    assert isinstance(worker_pdf, bytes), worker_pdf
    assert words(text_of(worker_pdf, tmp_path, "worker")) == words(text_of(lambda_pdf, tmp_path, "lambda"))
    diff = compare(
        gray_page(worker_pdf, tmp_path, "worker"), gray_page(lambda_pdf, tmp_path, "lambda"), (279.4, 215.9)
    )
    assert diff["mean"] < 0.006 and diff["strong"] < 0.004, diff


@pytest.mark.parametrize("name", ["محمد عبد الله", "שרה כהן", "अनुराग शर्मा", "李小龍"])
def test_names_the_worker_cannot_shape_fail_there_and_render_on_the_lambda(name: str, tmp_path: Path) -> None:
    """The script rule's basis: the Lambda prints these names; the Worker refuses them (the
    bridge keeps such certificates away from it), never a certificate without the name."""
    _require_node()
    data = {**RECIPIENTS["latin"], "learner_name": name}
    # The Lambda prints it (its shaping and bidi order are held by test_certificate_scripts.py).
    pdf = render_certificate(default_template(), data, "https://v.example/X", font_library())
    assert pdf.startswith(b"%PDF")
    answer = worker_render(tmp_path, None, data, "https://v.example/X")
    assert isinstance(answer, dict)
    assert answer["error"] == "unsupported_characters"
    assert f"U+{ord(name[0]):04X}" in answer["message"]
