"""Certificate templates: JSON layout plus images, per company, with a built-in default.

Stored templates live in the certificate bucket under
``templates/company-<id>/<template_id>.json`` with their images beside them; the default is
``templates/default.json`` in this package. A company may override the default with
``templates/company-<id>/default.json``. Layout units are millimetres from the top left of
the page (A4 or Letter, landscape or portrait).

``TemplateStore.put`` validates a template before it is stored (schema, colours, sizes,
boxes on the page, images decoded and capped), so a bad template is refused with a clear
message instead of failing every batch of its company. Images are decoded once, scaled down
to at most ``MAX_IMAGE_PIXELS_SIDE`` pixels and re-encoded for the PDF, so neither memory nor
the PDF grows with the size of the uploaded file.
"""

from __future__ import annotations

import io
import json
import re
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import fastjsonschema
from babel import Locale, UnknownLocaleError
from PIL import Image, ImageChops, UnidentifiedImageError

PACKAGE_DIR = Path(__file__).resolve().parent / "templates"
PAGE_SIZES = {"A4": (210.0, 297.0), "Letter": (215.9, 279.4)}  # portrait width, height in mm
FIELDS = (
    "static",
    "learner_name",
    "course_name",
    "completed_at",
    "grade",
    "verification_code",
    "issuer_name",
)
MAX_IMAGE_BYTES = 12 * 1024 * 1024  # what an upload may be
MAX_SOURCE_PIXELS = 50_000_000  # a decompression bomb is refused before decoding
MAX_IMAGE_PIXELS_SIDE = {"background": 2480, "logo": 1000, "signature": 1000}
MAX_XOBJECT_BYTES = 1_500_000  # the encoded image in each PDF
IMAGE_SECTIONS = ("background", "logo", "signature")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_COLOR = r"^#[0-9A-Fa-f]{6}$"

_NUMBER = {"type": "number", "minimum": 0, "maximum": 300}
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["elements"],
    "properties": {
        "name": {"type": "string", "maxLength": 128},
        "page": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "size": {"enum": list(PAGE_SIZES)},
                "orientation": {"enum": ["landscape", "portrait"]},
            },
        },
        "language": {"type": "string", "pattern": r"^[a-z]{2,3}([_-][A-Za-z0-9]{2,8})?$"},
        "timezone": {"type": "string", "maxLength": 64},
        "background": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "image": {"type": ["string", "null"], "pattern": _NAME},
                "color": {"type": ["string", "null"], "pattern": _COLOR},
            },
        },
        "border": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "color": {"type": "string", "pattern": _COLOR},
                "width": {"type": "number", "minimum": 0, "maximum": 20},
                "inset": {"type": "number", "minimum": 0, "maximum": 80},
                "inner_color": {"type": ["string", "null"], "pattern": _COLOR},
                "inner_width": {"type": "number", "minimum": 0, "maximum": 20},
                "inner_gap": {"type": "number", "minimum": 0, "maximum": 40},
            },
        },
        **{
            section: {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "image": {"type": ["string", "null"], "pattern": _NAME},
                    "x": _NUMBER,
                    "y": _NUMBER,
                    "w": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                },
            }
            for section in ("logo", "signature")
        },
        "elements": {
            "type": "array",
            "minItems": 1,
            "maxItems": 40,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["field", "y"],
                "properties": {
                    "field": {"enum": list(FIELDS)},
                    "x": _NUMBER,
                    "y": _NUMBER,
                    "w": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                    "h": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                    "size": {"type": "number", "minimum": 4, "maximum": 120},
                    "min_size": {"type": "number", "minimum": 4, "maximum": 120},
                    "bold": {"type": "boolean"},
                    "align": {"enum": ["L", "C", "R"]},
                    "color": {"type": "string", "pattern": _COLOR},
                    "text": {"type": "string", "maxLength": 1000},
                    "prefix": {"type": "string", "maxLength": 200},
                    "suffix": {"type": "string", "maxLength": 200},
                    "format": {"type": "string", "minLength": 1, "maxLength": 64},
                    "unit": {"type": "string", "maxLength": 16},
                },
            },
        },
        "qr": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "required": ["x", "y", "size"],
            "properties": {
                "x": _NUMBER,
                "y": _NUMBER,
                "size": {"type": "number", "minimum": 10, "maximum": 120},
            },
        },
    },
}
_validate = fastjsonschema.compile(_SCHEMA)


class TemplateError(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def rgb(color: str) -> tuple[int, int, int]:
    if not re.match(_COLOR, color):
        raise TemplateError("template_invalid", f"colour {color!r} is not #RRGGBB")
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@dataclass(frozen=True)
class Element:
    field: str
    y: float
    x: float = 20.0
    w: float = 257.0
    h: float = 10.0
    size: float = 14.0
    min_size: float = 6.0
    bold: bool = False
    align: str = "C"
    color: str = "#000000"
    text: str = ""
    prefix: str = ""
    suffix: str = ""
    format: str = "long"
    unit: str = "%"


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the PDF: pixel size, XObject dictionary entries, data, alpha."""

    width: int
    height: int
    extra: bytes
    data: bytes
    smask: bytes | None = None

    @property
    def nbytes(self) -> int:
        return len(self.data) + len(self.smask or b"")


@dataclass(frozen=True)
class PlacedImage:
    image: PreparedImage
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class CertificateTemplate:
    name: str
    elements: tuple[Element, ...]
    page_w: float = 297.0
    page_h: float = 210.0
    background_color: str = "#FFFFFF"
    background: PreparedImage | None = None
    border: dict[str, Any] | None = None
    images: tuple[PlacedImage, ...] = ()
    qr: dict[str, float] | None = field(default=None)
    language: str = "en"
    timezone: str = "UTC"


def prepare_image(data: bytes, *, role: str, name: str) -> PreparedImage:
    """Decode, cap and re-encode an image; TemplateError for anything that is not one."""
    if len(data) > MAX_IMAGE_BYTES:
        raise TemplateError(
            "template_invalid", f"{role} image {name!r} is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}"
        )
    try:
        with Image.open(io.BytesIO(data)) as source:
            if source.format not in ("PNG", "JPEG", "WEBP", "GIF"):
                raise TemplateError(
                    "template_invalid", f"{role} image {name!r} is not a PNG, JPEG or WebP image"
                )
            if source.width * source.height > MAX_SOURCE_PIXELS:
                raise TemplateError(
                    "template_invalid",
                    f"{role} image {name!r} is {source.width}x{source.height} pixels; "
                    f"the limit is {MAX_SOURCE_PIXELS} pixels",
                )
            was_jpeg = source.format == "JPEG"
            source.load()
            has_alpha = source.mode in ("RGBA", "LA", "PA") or "transparency" in source.info
            image = source.convert("RGBA" if has_alpha else "RGB")
    except TemplateError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise TemplateError("template_invalid", f"{role} image {name!r} is not a readable image") from None
    side = MAX_IMAGE_PIXELS_SIDE[role]
    if max(image.size) > side:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    smask = None
    w, h = image.size
    if has_alpha:
        alpha = image.getchannel("A")
        if alpha.getextrema() != (255, 255):
            smask, _, _ = _png_data(alpha)
        image = image.convert("RGB")
    flate = None if was_jpeg else _encode_flate(image)
    if flate is not None and len(flate[1]) <= MAX_XOBJECT_BYTES // 2:
        extra, payload = flate
    else:
        quality = 88
        while True:
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=quality, optimize=True)
            payload = out.getvalue()
            if len(payload) <= MAX_XOBJECT_BYTES or quality <= 40:
                break
            quality -= 12
        extra = b"/ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /DCTDecode"
    prefix = b"/Type /XObject /Subtype /Image /Width %d /Height %d " % (w, h)
    return PreparedImage(w, h, prefix + extra, payload, smask)


def _png_data(image: Image.Image) -> tuple[bytes, int, bytes]:
    """The image's PNG-filtered, deflated rows (PNG's IDAT data, which PDF's Flate filter with
    predictor 15 reads as is), its bit depth and palette (PLTE) if any."""
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    data = out.getvalue()
    pos, chunks, depth, palette = 8, [], 8, b""
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            depth = body[8]
        elif kind == b"PLTE":
            palette = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    return b"".join(chunks), depth, palette


def _encode_flate(image: Image.Image) -> tuple[bytes, bytes]:
    """(dictionary entries, data) for an RGB image: indexed when it has at most 256 colours
    and the palette image is exact (logos usually are), else PNG-predicted RGB."""
    w = image.width
    colors = image.getcolors(256)
    if colors is not None:
        indexed = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        if ImageChops.difference(indexed.convert("RGB"), image).getbbox() is None:
            data, depth, palette = _png_data(indexed)
            if palette:
                entries = (
                    b"/ColorSpace [/Indexed /DeviceRGB %d <%s>] /BitsPerComponent %d /Filter /FlateDecode"
                    b" /DecodeParms << /Predictor 15 /Colors 1 /BitsPerComponent %d /Columns %d >>"
                    % (len(palette) // 3 - 1, palette.hex().encode(), depth, depth, w)
                )
                return entries, data
    data, _, _ = _png_data(image)
    entries = (
        b"/ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /FlateDecode"
        b" /DecodeParms << /Predictor 15 /Colors 3 /BitsPerComponent 8 /Columns %d >>" % w
    )
    return entries, data


def _check_timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TemplateError("template_invalid", f"timezone {name!r} is not an IANA time zone") from None


def _check_language(language: str) -> None:
    try:
        Locale.parse(language.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        raise TemplateError("template_invalid", f"language {language!r} is not a known locale") from None


def parse_template(document: Any, images: dict[str, bytes]) -> CertificateTemplate:
    """Validate a template document and build it with the image bytes it names.

    Raises TemplateError (``template_invalid``) with a message naming what is wrong."""
    try:
        _validate(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        path = "/".join(str(p) for p in exc.path[1:]) or "template"
        raise TemplateError("template_invalid", f"{path}: {exc.message.replace('data.', '')}") from None
    page = document.get("page") or {}
    short, long = PAGE_SIZES[page.get("size", "A4")]
    page_w, page_h = (long, short) if page.get("orientation", "landscape") == "landscape" else (short, long)
    elements = []
    for index, raw in enumerate(document["elements"]):
        element = Element(**raw)
        if "w" not in raw:
            element = Element(
                **{**raw, "x": raw.get("x", 20.0), "w": max(1.0, page_w - 2 * raw.get("x", 20.0))}
            )
        if element.x + element.w > page_w + 0.01 or element.y + element.h > page_h + 0.01:
            raise TemplateError(
                "template_invalid", f"elements/{index}: the box runs off the {page_w:g}x{page_h:g} mm page"
            )
        if element.field == "static" and not element.text.strip():
            raise TemplateError("template_invalid", f"elements/{index}: a static element needs text")
        if element.min_size > element.size:
            raise TemplateError("template_invalid", f"elements/{index}: min_size is larger than size")
        elements.append(element)
    qr = document.get("qr")
    if qr and (qr["x"] + qr["size"] > page_w + 0.01 or qr["y"] + qr["size"] > page_h + 0.01):
        raise TemplateError("template_invalid", "qr: the code runs off the page")
    if document.get("timezone"):
        _check_timezone(document["timezone"])
    if document.get("language"):
        _check_language(document["language"])
    prepared: dict[str, PreparedImage] = {}
    for section, name in image_names(document):
        data = images.get(name)
        if data is None:
            raise TemplateError("template_invalid", f"{section} image {name!r} is missing")
        prepared[section] = prepare_image(data, role=section, name=name)
    placed = []
    for section in ("logo", "signature"):
        spec = document.get(section) or {}
        if section in prepared:
            img = prepared[section]
            x, y, w = float(spec.get("x", 136.5)), float(spec.get("y", 16)), float(spec.get("w", 24))
            h = w * img.height / img.width
            if x + w > page_w + 0.01 or y + h > page_h + 0.01:
                raise TemplateError("template_invalid", f"{section}: the image runs off the page")
            placed.append(PlacedImage(img, x, y, w, h))
    background = document.get("background") or {}
    return CertificateTemplate(
        name=str(document.get("name", "template")),
        elements=tuple(elements),
        page_w=page_w,
        page_h=page_h,
        background_color=background.get("color") or "#FFFFFF",
        background=prepared.get("background"),
        border=document.get("border"),
        images=tuple(placed),
        qr=qr,
        language=document.get("language") or "en",
        timezone=document.get("timezone") or "UTC",
    )


def image_names(document: Any) -> list[tuple[str, str]]:
    """(section, file name) of every image the template uses."""
    names = []
    if not isinstance(document, dict):
        return []
    for section in IMAGE_SECTIONS:
        spec = document.get(section)
        name = spec.get("image") if isinstance(spec, dict) else None
        if name:
            if not isinstance(name, str) or not re.match(_NAME, name):
                raise TemplateError("template_invalid", f"{section}: image names are simple file names")
            names.append((section, name))
    return names


def default_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((PACKAGE_DIR / "default.json").read_text("utf-8"))
    return document


def default_template() -> CertificateTemplate:
    document = default_document()
    return parse_template(document, {n: (PACKAGE_DIR / n).read_bytes() for _, n in image_names(document)})


def template_prefix(company_id: int) -> str:
    return f"templates/company-{company_id}/"


class TemplateStore:
    """Templates by (company, template id), cached per container for ``ttl`` seconds.

    At most ``capacity`` templates are kept (least recently used goes first), and each
    holds only its capped, re-encoded images, so the cache's memory is bounded."""

    def __init__(self, s3: Any, bucket: str, *, ttl: float = 300.0, capacity: int = 32) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._ttl = ttl
        self._capacity = capacity
        self._cache: OrderedDict[tuple[int, str], tuple[float, CertificateTemplate]] = OrderedDict()
        self._lock = threading.Lock()
        self._default = default_template()
        self.loads = 0

    def _read(self, key: str) -> bytes | None:
        try:
            data: bytes = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
            return data
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                return None
            raise

    def put(
        self, company_id: int, template_id: str, document: Any, images: dict[str, bytes]
    ) -> CertificateTemplate:
        """Validate, then store the template and its images; nothing is written if invalid."""
        if not re.match(_NAME, template_id) or template_id.endswith(".json"):
            raise TemplateError("template_invalid", "template ids are simple names (letters, digits, . _ -)")
        template = parse_template(document, images)
        prefix = template_prefix(company_id)
        for _, name in image_names(document):
            self._s3.put_object(Bucket=self._bucket, Key=prefix + name, Body=images[name])
        body = json.dumps(document, ensure_ascii=False, indent=1).encode()
        self._s3.put_object(Bucket=self._bucket, Key=f"{prefix}{template_id}.json", Body=body)
        with self._lock:
            self._cache.pop((company_id, template_id), None)
        return template

    def stored(self, company_id: int, template_id: str) -> tuple[Any, dict[str, bytes]] | None:
        """The stored document (parsed JSON, not validated) and the images it names that exist,
        or None when the company has no template of this id."""
        prefix = template_prefix(company_id)
        raw = self._read(f"{prefix}{template_id}.json")
        if raw is None:
            return None
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise TemplateError("template_invalid", "template is not UTF-8 JSON") from None
        images: dict[str, bytes] = {}
        for _, name in image_names(document):
            data = self._read(prefix + name)
            if data is not None:
                images[name] = data
        return document, images

    def get(self, company_id: int, template_id: str) -> CertificateTemplate:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get((company_id, template_id))
            if cached and now - cached[0] < self._ttl:
                self._cache.move_to_end((company_id, template_id))
                return cached[1]
        found = self.stored(company_id, template_id)
        if found is None:
            if template_id != "default":
                raise TemplateError("template_missing", "the certificate template does not exist")
            template = self._default
        else:
            self.loads += 1
            template = parse_template(*found)
        with self._lock:
            self._cache[(company_id, template_id)] = (now, template)
            self._cache.move_to_end((company_id, template_id))
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return template
