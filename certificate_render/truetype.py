"""Per-document TrueType subsets without re-parsing: glyph IDs kept, only used outlines copied.

A shipped TrueType (``glyf``) font is read once per container into its tables and per-glyph
byte ranges. A document's subset is then a few byte copies: the used glyphs (and the
components of composite glyphs) in ``glyf``, a ``loca`` pointing every other glyph at an
empty outline, an ``hmtx`` with zeros for unused glyphs, and the font's own ``head``,
``hhea`` and ``maxp``. Glyph IDs are unchanged, so text is shown as 2-byte glyph IDs
(Identity-H, CIDToGIDMap Identity) and the static layer's content stays valid in every
document. Fonts with CFF outlines (the CJK font) are drawn as Type 3 glyphs instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_ARG_WORDS = 0x0001
_HAVE_SCALE = 0x0008
_MORE = 0x0020
_XY_SCALE = 0x0040
_TWO_BY_TWO = 0x0080


@dataclass(frozen=True)
class TrueTypeSource:
    tables: dict[bytes, bytes]
    glyph_ranges: list[tuple[int, int]]
    num_glyphs: int
    metrics: list[tuple[int, int]]  # (advance, left side bearing) per glyph
    bbox: tuple[int, int, int, int]

    @classmethod
    def parse(cls, data: bytes) -> TrueTypeSource | None:
        """The tables of a TrueType font, or None for a font without ``glyf`` (CFF)."""
        (num_tables,) = struct.unpack_from(">H", data, 4)
        tables: dict[bytes, bytes] = {}
        for i in range(num_tables):
            tag, _, offset, length = struct.unpack_from(">4sIII", data, 12 + 16 * i)
            tables[tag] = data[offset : offset + length]
        if b"glyf" not in tables or b"loca" not in tables:
            return None
        head = tables[b"head"]
        long_loca = struct.unpack_from(">h", head, 50)[0] == 1
        (num_glyphs,) = struct.unpack_from(">H", tables[b"maxp"], 4)
        loca = tables[b"loca"]
        if long_loca:
            offsets = list(struct.unpack_from(f">{num_glyphs + 1}I", loca))
        else:
            offsets = [2 * v for v in struct.unpack_from(f">{num_glyphs + 1}H", loca)]
        ranges = [(offsets[i], offsets[i + 1]) for i in range(num_glyphs)]
        (long_metrics,) = struct.unpack_from(">H", tables[b"hhea"], 34)
        hmtx = tables[b"hmtx"]
        metrics = [struct.unpack_from(">Hh", hmtx, 4 * i) for i in range(long_metrics)]
        last_advance = metrics[-1][0]
        for i in range(num_glyphs - long_metrics):
            (lsb,) = struct.unpack_from(">h", hmtx, 4 * long_metrics + 2 * i)
            metrics.append((last_advance, lsb))
        bbox = struct.unpack_from(">hhhh", head, 36)
        return cls(tables, ranges, num_glyphs, metrics, bbox)

    def closure(self, gids: set[int]) -> set[int]:
        """The glyphs and every component of the composite ones among them."""
        glyf = self.tables[b"glyf"]
        todo = list(gids)
        result = set(gids)
        while todo:
            gid = todo.pop()
            start, end = self.glyph_ranges[gid]
            if end - start < 10 or struct.unpack_from(">h", glyf, start)[0] >= 0:
                continue
            pos = start + 10
            while True:
                flags, component = struct.unpack_from(">HH", glyf, pos)
                pos += 4 + (4 if flags & _ARG_WORDS else 2)
                pos += (
                    2 if flags & _HAVE_SCALE else 4 if flags & _XY_SCALE else 8 if flags & _TWO_BY_TWO else 0
                )
                if component not in result:
                    result.add(component)
                    todo.append(component)
                if not flags & _MORE:
                    break
        return result

    def subset(self, gids: set[int]) -> bytes:
        """A TrueType font program with only these glyphs' outlines (IDs unchanged)."""
        keep = sorted(self.closure(gids | {0}))
        glyf_src = self.tables[b"glyf"]
        parts: list[bytes] = []
        loca: list[int] = []
        hmtx = bytearray(4 * self.num_glyphs)
        size = 0
        previous = -1
        for gid in keep:
            loca.extend([size] * (gid - previous))  # unused glyphs in between: empty outlines
            start, end = self.glyph_ranges[gid]
            data = glyf_src[start:end]
            pad = -len(data) % 4
            parts.append(data + b"\0" * pad if pad else data)
            size += len(data) + pad
            struct.pack_into(">Hh", hmtx, 4 * gid, *self.metrics[gid])
            previous = gid
        loca.extend([size] * (self.num_glyphs - previous))
        glyf = b"".join(parts)
        head = bytearray(self.tables[b"head"])
        struct.pack_into(">I", head, 8, 0)  # checkSumAdjustment: not checked by readers
        struct.pack_into(">h", head, 50, 1)  # long loca
        hhea = bytearray(self.tables[b"hhea"])
        struct.pack_into(">H", hhea, 34, self.num_glyphs)
        tables = {
            b"glyf": glyf,
            b"head": bytes(head),
            b"hhea": bytes(hhea),
            b"hmtx": bytes(hmtx),
            b"loca": struct.pack(f">{len(loca)}I", *loca),
            b"maxp": self.tables[b"maxp"],
        }
        return _font_file(tables)


def _checksum(data: bytes) -> int:
    padded = data + b"\0" * (-len(data) % 4)
    words: tuple[int, ...] = struct.unpack(f">{len(padded) // 4}I", padded)
    return sum(words) & 0xFFFFFFFF


def _font_file(tables: dict[bytes, bytes]) -> bytes:
    tags = sorted(tables)
    count = len(tags)
    power = 1
    while power * 2 <= count:
        power *= 2
    header = struct.pack(
        ">IHHHH", 0x00010000, count, power * 16, power.bit_length() - 1, count * 16 - power * 16
    )
    offset = 12 + 16 * count
    directory = bytearray()
    body = bytearray()
    for tag in tags:
        data = tables[tag]
        directory += struct.pack(">4sIII", tag, _checksum(data), offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    return header + bytes(directory) + bytes(body)
