"""API Gateway REST API: intake of signed batches, certificate verification, one-click unsubscribe
and its human page."""

from __future__ import annotations

import base64
from functools import cache
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.certificates.verification import CONTENT_SECURITY_POLICY
from lambdas.common.aws import client
from lambdas.common.idempotency import IdempotencyStore
from lambdas.common.keys import SecretKeySets
from lambdas.common.nonces import DynamoNonceStore
from lambdas.common.observability import logger, tracer
from lambdas.common.settings import settings
from lambdas.results.intake import Answer, Intake
from lambdas.results.queue import ResultsQueue
from offload_contract.signing import Verifier
from offload_contract.unsubscribe import page, page_security_policy

app = APIGatewayRestResolver()


@cache
def intake() -> Intake:
    s = settings()
    s.require(
        "jobs_queue_url",
        "certificates_queue_url",
        "results_queue_url",
        "idempotency_table",
        "hmac_secret_arn",
    )
    keys = SecretKeySets(client("secretsmanager"), s.hmac_secret_arn).get()
    dynamodb = client("dynamodb")
    return Intake(
        verifier=Verifier(keys.roots, DynamoNonceStore(dynamodb, s.idempotency_table)),
        sqs=client("sqs"),
        jobs_url=s.jobs_queue_url,
        certificates_url=s.certificates_queue_url,
        store=IdempotencyStore(dynamodb, s.idempotency_table),
        roots=keys.roots,
        results=ResultsQueue(client("sqs"), s.results_queue_url),
    )


def _respond(answer: Answer) -> Response[Any]:
    return Response(status_code=answer.status, content_type=content_types.APPLICATION_JSON, body=answer.body)


def _raw_body() -> bytes:
    event = app.current_event
    body = event.get("body") or ""
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode("utf-8")


@app.post("/v1/batches")
def submit_batch() -> Response[Any]:
    # The signature covers the path as the client sent it (with the stage prefix, if any).
    context = app.current_event.get("requestContext") or {}
    path = str(context.get("path") or app.current_event.path)
    answer = intake().submit(path, dict(app.current_event.headers or {}), _raw_body())
    logger.info("batch submission", extra={"status": answer.status, "error": answer.body.get("error")})
    return _respond(answer)


def wants_html() -> bool:
    """Browsers (a scanned QR code) get the page; ``?format=json`` or a JSON Accept get JSON."""
    event = app.current_event
    fmt = (event.query_string_parameters or {}).get("format")
    if fmt in ("json", "html"):
        return fmt == "html"
    accept = (event.headers or {}).get("accept") or (event.headers or {}).get("Accept") or ""
    return "text/html" in accept


@app.get("/v1/certificates/verify/<code>")
def verify_certificate(code: str) -> Response[Any]:
    if wants_html():
        headers = app.current_event.headers or {}
        language = headers.get("accept-language") or headers.get("Accept-Language") or ""
        status, html = intake().verify_page(code, language, _source_ip())
        return Response(
            status_code=status,
            content_type="text/html; charset=utf-8",
            body=html,
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            },
        )
    return _respond(intake().verify_certificate(code, _source_ip()))


def _source_ip() -> str:
    """The caller's address as API Gateway saw it: wrong verification codes are counted per address."""
    identity = (app.current_event.get("requestContext") or {}).get("identity") or {}
    return str(identity.get("sourceIp") or "")


def _unsubscribe_html(status: int, html: str) -> Response[Any]:
    return Response(
        status_code=status,
        content_type="text/html; charset=utf-8",
        body=html,
        headers={"Cache-Control": "no-store", "Content-Security-Policy": page_security_policy()},
    )


@app.get("/v1/unsubscribe/<token>")
def unsubscribe_page(token: str) -> Response[Any]:
    """The human page: a confirm button that POSTs back. A GET records nothing."""
    return _unsubscribe_html(*intake().unsubscribe_page(token))


@app.post("/v1/unsubscribe/<token>")
def unsubscribe(token: str) -> Response[Any]:
    """RFC 8058 one-click (JSON answer) or the page's confirm button (HTML answer for browsers)."""
    answer = intake().unsubscribe(token)
    logger.info("unsubscribe", extra={"status": answer.status})
    if wants_html():
        name = {200: "done", 404: "invalid"}.get(answer.status, "unavailable")
        return _unsubscribe_html(answer.status, page(name))
    return _respond(answer)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
