"""QR codes drawn as a 1-bit image mask: one module per sample, scaled to size.

Each module is one sample of an inline image mask (a few hundred bytes per code instead of
a rectangle per dark run); PDF viewers scale a mask without smoothing, so the modules stay
square and sharp at any zoom.
"""

from __future__ import annotations

import segno

QUIET_ZONE = 2
MM = 72 / 25.4


def qr_ops(data: str, x: float, y: float, size: float, page_h: float) -> str:
    """Content-stream operators for a QR code of ``size`` mm at (x, y) mm from the top left."""
    # A fixed mask skips segno's scoring of all eight masks (any mask is valid).
    qr = segno.make(data, error="m", micro=False, mask=0, boost_error=False)
    rows = [list(row) for row in qr.matrix]
    n = len(rows)
    module = size / (n + 2 * QUIET_ZONE)
    hex_rows = []
    for row in rows:
        bits = "".join("0" if dark else "1" for dark in row)  # 0 paints (the mask's default Decode)
        bits += "1" * (-len(bits) % 8)
        hex_rows.append(f"{int(bits, 2):0{len(bits) // 4}X}")
    k = MM
    side = n * module * k
    left = (x + QUIET_ZONE * module) * k
    bottom = (page_h - y - (QUIET_ZONE + n) * module) * k
    return (
        f"q 1 g {x * k:.2f} {(page_h - y) * k:.2f} {size * k:.2f} {-size * k:.2f} re f 0 g\n"
        f"{side:.3f} 0 0 {side:.3f} {left:.3f} {bottom:.3f} cm\n"
        f"BI /W {n} /H {n} /IM true /BPC 1 /F /AHx ID\n{''.join(hex_rows)}>\nEI Q"
    )
