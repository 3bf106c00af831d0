"""Certificate templates: JSON layout plus images, per company, with a built-in default.

Stored templates live in the certificate bucket under
``templates/company-<id>/<template_id>.json`` with their images beside them; the default is
``templates/default.json`` in this package. A company may override the default with
``templates/company-<id>/default.json``. Layout units are millimetres on A4 landscape
(297 x 210).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent / "templates"
FIELDS = {
    "static",
    "learner_name",
    "course_name",
    "completed_at",
    "grade",
    "verification_code",
    "issuer_name",
}
_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class TemplateError(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def rgb(color: str) -> tuple[int, int, int]:
    if not _COLOR.match(color):
        raise TemplateError("template_invalid", "colours are #RRGGBB")
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@dataclass(frozen=True)
class Element:
    field: str
    y: float
    x: float = 20.0
    w: float = 257.0
    h: float = 10.0
    size: float = 14.0
    bold: bool = False
    align: str = "C"
    color: str = "#000000"
    text: str = ""
    prefix: str = ""
    format: str = "%d %B %Y"


@dataclass(frozen=True)
class CertificateTemplate:
    name: str
    elements: tuple[Element, ...]
    background_color: str = "#FFFFFF"
    background_image: bytes | None = None
    border: dict[str, Any] | None = None
    logo_image: bytes | None = None
    logo_box: tuple[float, float, float] = (136.5, 16.0, 24.0)
    qr: dict[str, float] | None = field(default=None)


def parse_template(document: dict[str, Any], images: dict[str, bytes]) -> CertificateTemplate:
    """Build a template from its JSON and the image bytes it names; raises TemplateError."""
    try:
        elements = []
        for raw in document["elements"]:
            element = Element(**raw)
            if element.field not in FIELDS or element.align not in ("L", "C", "R"):
                raise TemplateError("template_invalid", "unknown element field or alignment")
            rgb(element.color)
            elements.append(element)
        background = document.get("background") or {}
        logo = document.get("logo") or {}
        border = document.get("border")
        if border:
            rgb(border.get("color", "#000000"))
        return CertificateTemplate(
            name=str(document.get("name", "template")),
            elements=tuple(elements),
            background_color=background.get("color") or "#FFFFFF",
            background_image=images.get(background["image"]) if background.get("image") else None,
            border=border,
            logo_image=images.get(logo["image"]) if logo.get("image") else None,
            logo_box=(float(logo.get("x", 136.5)), float(logo.get("y", 16)), float(logo.get("w", 24))),
            qr=document.get("qr"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TemplateError("template_invalid", f"template is malformed ({type(exc).__name__})") from None


def image_names(document: dict[str, Any]) -> list[str]:
    names = []
    for section in ("background", "logo"):
        name = (document.get(section) or {}).get("image")
        if name:
            if not isinstance(name, str) or not _NAME.match(name):
                raise TemplateError("template_invalid", "image names are simple file names")
            names.append(name)
    return names


def default_template() -> CertificateTemplate:
    document = json.loads((PACKAGE_DIR / "default.json").read_text("utf-8"))
    return parse_template(document, {n: (PACKAGE_DIR / n).read_bytes() for n in image_names(document)})


class TemplateStore:
    """Templates by (company, template id), cached per container for ``ttl`` seconds."""

    def __init__(self, s3: Any, bucket: str, *, ttl: float = 300.0) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._ttl = ttl
        self._cache: dict[tuple[int, str], tuple[float, CertificateTemplate]] = {}
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

    def get(self, company_id: int, template_id: str) -> CertificateTemplate:
        now = time.monotonic()
        cached = self._cache.get((company_id, template_id))
        if cached and now - cached[0] < self._ttl:
            return cached[1]
        prefix = f"templates/company-{company_id}/"
        raw = self._read(f"{prefix}{template_id}.json")
        if raw is None:
            if template_id != "default":
                raise TemplateError("template_missing", "the certificate template does not exist")
            template = self._default
        else:
            self.loads += 1
            try:
                document = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise TemplateError("template_invalid", "template is not UTF-8 JSON") from None
            images: dict[str, bytes] = {}
            for name in image_names(document):
                data = self._read(prefix + name)
                if data is None:
                    raise TemplateError("template_invalid", "an image the template names is missing")
                images[name] = data
            template = parse_template(document, images)
        self._cache[(company_id, template_id)] = (now, template)
        return template
