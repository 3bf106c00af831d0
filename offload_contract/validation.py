"""Validate messages against the JSON Schema (compiled once per message type)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, Final

import fastjsonschema

MESSAGE_TYPES: Final = ("email_batch", "certificate_batch", "result_batch", "envelope", "capabilities")


class ContractError(ValueError):
    """A message does not satisfy the contract. ``path`` points at the offending field."""

    def __init__(self, message_type: str, path: str, reason: str) -> None:
        self.message_type = message_type
        self.path = path
        self.reason = reason
        super().__init__(f"{message_type} violates contract v1 at {path}: {reason}")


@cache
def schema_document() -> dict[str, Any]:
    text = resources.files("offload_contract").joinpath("schemas/v1/contract.schema.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


@cache
def _validator(message_type: str) -> Any:
    if message_type not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {message_type!r}; expected one of {MESSAGE_TYPES}")
    wrapper = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": schema_document()["definitions"],
        "$ref": f"#/definitions/{message_type}",
    }
    return fastjsonschema.compile(wrapper)


def validate(message_type: str, message: Any) -> None:
    """Raise ``ContractError`` unless ``message`` is a valid ``message_type``.

    Reasons quote field names and rules, never field values: messages carry bodies and
    temporary passwords, which must not reach logs through an exception.
    """
    try:
        _validator(message_type)(message)
    except fastjsonschema.JsonSchemaValueException as exc:
        path = "/".join(str(part) for part in (exc.path or [])[1:]) or "(root)"
        rule = exc.rule or "schema"
        raise ContractError(message_type, path, f"fails rule {rule!r}") from None
