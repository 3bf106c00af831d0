"""The receiver's OpenAPI 3.1 document (served at ``/openapi.json``; the fuzz tests use it too).

The request body schemas are the contract's own definitions, so the document cannot drift from
what the receiver validates.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

from offload_contract.validation import schema_document


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (v.replace("#/definitions/", "#/components/schemas/") if k == "$ref" else _rewrite_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/rejection"}}},
    }


@cache
def _document_text() -> str:
    definitions = copy.deepcopy(schema_document()["definitions"])
    schemas = _rewrite_refs(definitions)
    schemas["rejection"] = {
        "type": "object",
        "required": ["status", "error", "detail"],
        "properties": {
            "status": {"type": "string", "enum": ["rejected"]},
            "error": {"type": "string", "description": "stable reason code"},
            "detail": {"type": "string"},
        },
    }
    schemas["ingest_response"] = {
        "type": "object",
        "required": ["status", "report_id", "applied", "duplicates", "ignored", "duplicate_report"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "report_id": {"type": "string"},
            "applied": {"type": "integer", "minimum": 0},
            "duplicates": {"type": "integer", "minimum": 0},
            "ignored": {"type": "integer", "minimum": 0},
            "duplicate_report": {"type": "boolean"},
            "ignored_reasons": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    }
    headers = [
        ("X-Offload-Key-Id", "<keyset>.c<company_id>", r"^[a-z0-9-]{1,16}\.c[0-9]{1,19}$"),
        ("X-Offload-Timestamp", "unix seconds", r"^[0-9]{1,12}$"),
        ("X-Offload-Nonce", "16-64 base64url characters", r"^[A-Za-z0-9_-]{16,64}$"),
        ("X-Offload-Content-SHA256", "lowercase hex SHA-256 of the body", r"^[0-9a-f]{64}$"),
        ("X-Offload-Signature", "v1= + lowercase hex HMAC-SHA256", r"^v1=[0-9a-f]{64}$"),
    ]
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "ManiReports Cloud Offload bridge: result callbacks",
            "version": "1",
            "description": "Signed callbacks from the cloud workers (docs/results.md).",
        },
        "paths": {
            "/callbacks/v1/results": {
                "post": {
                    "operationId": "postResults",
                    "summary": "Apply a signed result_batch",
                    "parameters": [
                        {
                            "name": n,
                            "in": "header",
                            "required": True,
                            "description": d,
                            "schema": {"type": "string", "pattern": p},
                        }
                        for n, d, p in headers
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/envelope"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "applied (or recognised as a duplicate)",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ingest_response"}
                                }
                            },
                        },
                        "400": _error("the body is not JSON"),
                        "401": _error(
                            "authentication failed (missing_header, malformed_header, "
                            "stale_timestamp, unknown_key, body_hash_mismatch, bad_signature, "
                            "replayed_nonce)"
                        ),
                        "403": _error("a job or the report's company is outside the key's company"),
                        "408": _error("the body did not arrive within the body deadline"),
                        "409": _error("the same report is being applied concurrently; retry"),
                        "413": _error("the body is larger than the configured (or the contract's) limit"),
                        "415": _error("Content-Type is not application/json"),
                        "422": _error(
                            "the envelope or result_batch violates the contract (field named), or a text "
                            "holds NUL or an unpaired surrogate"
                        ),
                        "503": _error("a concurrent update got in the way; retry"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "responses": {
                        "200": {
                            "description": "the database answers; status ok, or degraded when a queue or "
                            "intake does not"
                        },
                        "503": {"description": "the database does not answer"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "responses": {
                        "200": {"description": "Prometheus text, or OpenMetrics when the Accept header asks"}
                    },
                }
            },
        },
        "components": {"schemas": schemas},
    }
    return json.dumps(document, sort_keys=True)


def openapi_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_document_text())
    return document
