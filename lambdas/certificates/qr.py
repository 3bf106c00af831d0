"""QR codes drawn as vector rectangles: one ``re`` per dark run, filled once."""

from __future__ import annotations

import segno

QUIET_ZONE = 2
MM = 72 / 25.4


def qr_ops(data: str, x: float, y: float, size: float, page_h: float) -> str:
    """Content-stream operators for a QR code of ``size`` mm at (x, y) mm from the top left."""
    # A fixed mask skips segno's scoring of all eight masks (any mask is valid).
    qr = segno.make(data, error="m", micro=False, mask=0, boost_error=False)
    rows = [list(row) for row in qr.matrix]
    module = size / (len(rows) + 2 * QUIET_ZONE)
    k = MM
    ops = ["q 1 g", f"{x * k:.2f} {(page_h - y) * k:.2f} {size * k:.2f} {-size * k:.2f} re f", "0 g"]
    for r, row in enumerate(rows):
        top = y + (r + QUIET_ZONE) * module
        c = 0
        while c < len(row):
            if not row[c]:
                c += 1
                continue
            start = c
            while c < len(row) and row[c]:
                c += 1
            left = x + (start + QUIET_ZONE) * module
            ops.append(
                f"{left * k:.2f} {(page_h - top) * k:.2f} {(c - start) * module * k:.2f} {-module * k:.2f} re"
            )
    ops.append("f Q")
    return "\n".join(ops)
