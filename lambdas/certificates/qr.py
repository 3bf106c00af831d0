"""QR codes drawn as vector rectangles (segno matrix -> one rectangle per dark run)."""

from __future__ import annotations

import segno
from fpdf import FPDF


def draw_qr(pdf: FPDF, data: str, x: float, y: float, size: float) -> None:
    qr = segno.make(data, error="m", micro=False)
    matrix = [list(row) for row in qr.matrix]
    border = 2
    count = len(matrix) + 2 * border
    module = size / count
    pdf.set_fill_color(255, 255, 255)
    pdf.rect(x, y, size, size, style="F")
    pdf.set_fill_color(0, 0, 0)
    for r, row in enumerate(matrix):
        c = 0
        while c < len(row):
            if row[c]:
                start = c
                while c < len(row) and row[c]:
                    c += 1
                pdf.rect(
                    x + (start + border) * module,
                    y + (r + border) * module,
                    (c - start) * module,
                    module,
                    style="F",
                )
            else:
                c += 1
