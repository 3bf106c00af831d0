"""The certificate's field values as printed: dates and grades in the certificate's language
(Babel's CLDR data, not hand-made month tables) and the company's time zone."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_decimal, format_percent

from certificate_render.template import CertificateTemplate, Element

#: 9999-12-31 23:59:59 UTC: later instants have no four-digit year.
MAX_TIMESTAMP = 253_402_300_799
DATE_STYLES = ("short", "medium", "long", "full")
_NUMERIC = re.compile(r"^[+-]?(\d+([.,]\d+)?|[.,]\d+)$")


class CertificateDataError(Exception):
    """One recipient's data cannot be printed; that recipient fails, the batch goes on."""

    def __init__(self, code: str, message: str, detail: list[str] | None = None) -> None:
        self.code = code
        self.detail = detail or []
        super().__init__(message)


@lru_cache(maxsize=64)
def locale_for(language: str | None, fallback: str = "en") -> Locale:
    for candidate in (language, fallback, "en"):
        if not candidate:
            continue
        try:
            return Locale.parse(candidate.replace("-", "_"))
        except (UnknownLocaleError, ValueError):
            continue
    return Locale.parse("en")


def completed_on(value: Any, element: Element, locale: Locale, timezone: str) -> str:
    try:
        stamp = int(value)
    except (TypeError, ValueError):
        raise CertificateDataError("invalid_certificate_data", "completed_at is not a Unix time") from None
    if not 0 <= stamp <= MAX_TIMESTAMP:
        hint = (
            " (it looks like milliseconds; the contract's unix_time is seconds)"
            if stamp // 1000 <= MAX_TIMESTAMP
            else ""
        )
        raise CertificateDataError(
            "invalid_certificate_data", f"completed_at {stamp} is outside the years 1970 to 9999{hint}"
        )
    moment = datetime.fromtimestamp(stamp, tz=UTC).astimezone(ZoneInfo(timezone))
    style = element.format
    if "%" in style:  # a strftime format of the first template version: the locale's long date
        style = "long"
    return str(format_date(moment.date(), format=style, locale=locale))


def grade_text(value: str, element: Element, locale: Locale) -> str:
    """A bare number gets the template's unit (percent by default) in the locale's style; a
    grade that is not a number ("NaN", "inf") prints nothing; any other text prints as is."""
    text = value.strip()
    if not text:
        return ""
    if _NUMERIC.match(text):
        number = float(text.replace(",", "."))
        if element.unit == "%":
            return str(format_percent(number / 100, locale=locale, decimal_quantization=False))
        formatted = str(format_decimal(number, locale=locale, decimal_quantization=False))
        return f"{formatted} {element.unit}".strip()
    try:
        if not math.isfinite(float(text)):
            return ""
    except ValueError:
        pass
    return text


def field_value(element: Element, data: dict[str, Any], template: CertificateTemplate) -> str:
    """The text an element prints (prefix and suffix included), or "" to print nothing."""
    if element.field == "static":
        return element.text
    value = data.get(element.field)
    if value is None or value == "":
        return ""
    locale = locale_for(data.get("language"), template.language)
    if element.field == "completed_at":
        text = completed_on(value, element, locale, template.timezone)
    elif element.field == "grade":
        text = grade_text(str(value), element, locale)
    else:
        text = str(value)
    if not text.strip():
        return ""
    return element.prefix + text + element.suffix
