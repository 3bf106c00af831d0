"""The callback receiver: a Starlette ASGI app served by uvicorn (``moodle-offload serve``).

``POST /callbacks/v1/results`` takes a signed ``envelope`` whose message is a ``result_batch``.
Checks, in order, each failing with a 4xx and changing nothing but the audit log:

1. ``Content-Length`` above the limit (at most what the contract allows) -> 413, before reading;
2. the signature headers, key id and HMAC (over the claimed body digest) -> 401 + stable code,
   *before a byte of the body is read*, so strangers cannot make the receiver buffer anything;
3. the body, streamed within a deadline (408) and the size limit (413), hashed as it arrives;
   its digest must match the signed one, then the nonce is recorded (401 otherwise);
4. JSON (depth-bounded), envelope and result_batch contract, text without NUL or lone
   surrogates -> 400 / 422 naming the field (never its value);
5. company scope: the report's company and every job belong to the key's company -> 403;
6. ingestion in one transaction -> 200 with counts (503 if a concurrent writer got in the way).

Rejections are logged and audited with the reason code, key id and source address, never the body.
Audit rows for unauthenticated failures are rate-limited per (source, reason) so junk traffic cannot
flood the table.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moodle_bridge.config import BridgeConfig
from moodle_bridge.operations.health import HealthProbe
from moodle_bridge.operations.metrics import CALLBACKS, build_registry, exposition
from moodle_bridge.results.ingest import ConcurrentChange, ScopeError, ingest_result_batch
from moodle_bridge.results.iomad_link import IomadQueue
from moodle_bridge.results.nonce_store import DatabaseNonceStore
from moodle_bridge.results.openapi import openapi_document
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_tables import BridgeTables
from offload_contract import ContractError, validate
from offload_contract.codec import decode_message
from offload_contract.limits import MAX_SIGNED_RESULT_BODY_BYTES
from offload_contract.signing import HEADER_KEY_ID, PendingRequest, SignatureError, Verifier

log = logging.getLogger("moodle_bridge.results.receiver")

RESULTS_PATH = "/callbacks/v1/results"
_KEY_ID_SHAPE = re.compile(r"^[a-z0-9-]{1,16}\.c[0-9]{1,19}$")
#: One audit row per (source, reason) per this many seconds for unauthenticated rejections.
AUDIT_THROTTLE_SECONDS = 60
#: Whole body within this many seconds of the request head (ReceiverServerSettings overrides it).
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
#: Deepest JSON nesting a result_batch envelope needs is 5; anything past this is refused (400).
MAX_JSON_DEPTH = 32
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class Rejection(Exception):
    def __init__(
        self, status: int, code: str, detail: str, *, key_id: str = "", company_id: int | None = None
    ):
        self.status = status
        self.code = code
        self.detail = detail
        self.key_id = key_id
        self.company_id = company_id
        super().__init__(f"{status} {code}")


@dataclass
class ReceiverState:
    engine: sa.Engine
    tables: BridgeTables
    verifier: Verifier
    max_body_bytes: int
    clock: Callable[[], float]
    queue: IomadQueue | None
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS
    _throttle: dict[tuple[str, str], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def should_audit(self, source: str, code: str, authenticated: bool) -> bool:
        if authenticated:
            return True
        now = self.clock()
        with self._lock:
            if len(self._throttle) > 10_000:
                self._throttle.clear()
            last = self._throttle.get((source, code))
            if last is not None and now - last < AUDIT_THROTTLE_SECONDS:
                return False
            self._throttle[(source, code)] = now
            return True


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 19:
            raise Rejection(400, "bad_content_length", "Content-Length must be a decimal number")
        if int(declared) > limit:
            raise Rejection(413, "body_too_large", f"the body exceeds {limit} bytes")


async def _read_body(request: Request, limit: int, timeout: float) -> tuple[bytes, str]:
    """The body and its SHA-256, read within ``timeout`` seconds and ``limit`` bytes."""
    chunks: list[bytes] = []
    digest = hashlib.sha256()
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Rejection(413, "body_too_large", f"the body exceeds {limit} bytes")
                digest.update(chunk)
                chunks.append(chunk)
    except TimeoutError:
        raise Rejection(408, "body_timeout", f"the body did not arrive within {timeout:g} s") from None
    return b"".join(chunks), digest.hexdigest()


def _json_depth_ok(body: bytes, limit: int) -> bool:
    """True when brackets nest at most ``limit`` deep (strings skipped), checked before parsing."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def _bad_text_path(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) holding NUL or a lone surrogate, if any."""
    if isinstance(value, str):
        return path or "/" if _BAD_TEXT.search(value) else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _bad_text_path(item, f"{path}/{i}")
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if _BAD_TEXT.search(key):
                return path or "/"
            found = _bad_text_path(item, f"{path}/{key}")
            if found is not None:
                return found
    return None


def _raw_path(request: Request) -> str:
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes):
        return raw.split(b"?", 1)[0].decode("latin-1")
    return str(request.url.path)


def _process(state: ReceiverState, pending: PendingRequest, digest: str, body: bytes) -> dict[str, Any]:
    try:
        verified = state.verifier.complete(pending, digest)
    except SignatureError as exc:
        raise Rejection(401, exc.code, exc.detail) from None
    key_id, company_id = verified.key_id, verified.company_id
    if not _json_depth_ok(body, MAX_JSON_DEPTH):
        raise Rejection(
            400,
            "invalid_json",
            f"JSON nests deeper than {MAX_JSON_DEPTH}",
            key_id=key_id,
            company_id=company_id,
        )
    try:
        envelope = decode_message(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Rejection(
            400, "invalid_json", "the body is not UTF-8 JSON", key_id=key_id, company_id=company_id
        ) from None
    try:
        validate("envelope", envelope)
        if envelope["message_type"] != "result_batch":
            raise Rejection(
                422,
                "wrong_message_type",
                "message_type must be result_batch",
                key_id=key_id,
                company_id=company_id,
            )
        validate("result_batch", envelope["message"])
        bad_text = _bad_text_path(envelope)
        if bad_text is not None:
            raise Rejection(
                422,
                "invalid_text",
                f"envelope at {bad_text}: text must not contain NUL or unpaired surrogates",
                key_id=key_id,
                company_id=company_id,
            )
    except ContractError as exc:
        where = exc.path if exc.message_type == "envelope" else f"message/{exc.path}"
        raise Rejection(
            422,
            "contract_violation",
            f"{exc.message_type} at {where}: {exc.reason}",
            key_id=key_id,
            company_id=company_id,
        ) from None
    now = int(state.clock())
    try:
        with state.engine.begin() as conn:
            outcome = ingest_result_batch(
                conn,
                state.tables,
                envelope["message"],
                company_id=company_id,
                now=now,
                actor=f"callback:{key_id}",
                queue=state.queue,
            )
    except ScopeError as exc:
        raise Rejection(403, exc.code, exc.detail, key_id=key_id, company_id=company_id) from None
    except (ConcurrentChange, sa.exc.OperationalError) as exc:
        # Lock wait timeout / deadlock / serialisation failure: nothing was applied; the sender retries.
        log.warning(
            "callback %s from key %s not applied (%s); asking the sender to retry",
            envelope["message"]["report_id"],
            key_id,
            type(exc).__name__,
        )
        raise Rejection(
            503, "retry_later", "concurrent update, retry", key_id=key_id, company_id=company_id
        ) from None
    except sa.exc.DataError:
        # A value the database refuses (encoding, range): the client's data, not a server fault.
        raise Rejection(
            422, "invalid_value", "a value cannot be stored", key_id=key_id, company_id=company_id
        ) from None
    except sa.exc.IntegrityError:
        # The same report_id committed by a concurrent request between our check and insert.
        raise Rejection(
            409,
            "report_in_progress",
            "this report is being applied; retry",
            key_id=key_id,
            company_id=company_id,
        ) from None
    return {"status": "ok", "report_id": envelope["message"]["report_id"], **outcome.as_dict()}


def _audit_rejection(state: ReceiverState, rejection: Rejection, source: str, header_key: str) -> None:
    authenticated = bool(rejection.key_id)
    key_id = rejection.key_id or (header_key if _KEY_ID_SHAPE.match(header_key) else "")
    CALLBACKS.labels(outcome="rejected", reason=rejection.code).inc()
    log.warning(
        "callback rejected: status=%s code=%s key=%s source=%s",
        rejection.status,
        rejection.code,
        key_id or "-",
        source,
        extra={
            "status": rejection.status,
            "reason": rejection.code,
            "key_id": key_id or None,
            "company_id": rejection.company_id,
        },
    )
    if not state.should_audit(source, rejection.code, authenticated):
        return
    try:
        with state.engine.begin() as conn:
            audit.record(
                conn,
                state.tables,
                actor=f"callback:{key_id or 'unauthenticated'}",
                action=audit.CALLBACK_REJECTED,
                now=int(state.clock()),
                companyid=rejection.company_id,
                source=source,
                detail={
                    "reason": rejection.code,
                    "http_status": rejection.status,
                    "authenticated": authenticated,
                },
            )
    except sa.exc.SQLAlchemyError:
        log.exception("could not audit a rejected callback")


def create_app(
    engine: sa.Engine,
    tables: BridgeTables,
    config: BridgeConfig,
    *,
    clock: Callable[[], float] = time.time,
    queue: IomadQueue | None = None,
    health: HealthProbe | None = None,
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS,
) -> Starlette:
    """The receiver app. The body limit is the smaller of the configured one and the contract's."""
    verifier = Verifier(
        config.keys.root_secrets(),
        DatabaseNonceStore(engine, tables, clock),
        window_seconds=config.callbacks.window_seconds,
        clock=clock,
    )
    max_body = min(config.callbacks.max_body_bytes, MAX_SIGNED_RESULT_BODY_BYTES)
    state = ReceiverState(engine, tables, verifier, max_body, clock, queue, body_timeout_seconds)

    async def results(request: Request) -> Response:
        source = request.client.host if request.client else ""
        header_key = request.headers.get(HEADER_KEY_ID, "")
        try:
            content_type = request.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() != "application/json":
                raise Rejection(415, "unsupported_media_type", "Content-Type must be application/json")
            _check_declared_length(request, state.max_body_bytes)
            try:
                pending = state.verifier.verify_headers(
                    request.method, _raw_path(request), dict(request.headers.items())
                )
            except SignatureError as exc:
                raise Rejection(401, exc.code, exc.detail) from None
            body, digest = await _read_body(request, state.max_body_bytes, state.body_timeout_seconds)
            payload = await run_in_threadpool(_process, state, pending, digest, body)
        except Rejection as rejection:
            await run_in_threadpool(_audit_rejection, state, rejection, source, header_key)
            headers = {"Retry-After": "5"} if rejection.status in (409, 503) else {}
            if rejection.status in (401, 408, 413, 415):
                headers["Connection"] = "close"  # the body may be unread: do not wait for it
            return JSONResponse(
                {"status": "rejected", "error": rejection.code, "detail": rejection.detail},
                status_code=rejection.status,
                headers=headers,
            )
        CALLBACKS.labels(outcome="accepted", reason="ok").inc()
        log.info(
            "callback applied: report %s, %s results",
            payload["report_id"],
            payload.get("applied", "?"),
            extra={"report_id": payload["report_id"], "key_id": header_key},
        )
        return JSONResponse(payload)

    probe = health or HealthProbe(engine, config)

    async def healthz(request: Request) -> Response:
        """200 ok / 200 degraded (a cloud target does not answer) / 503 (the database does not)."""
        report = await run_in_threadpool(probe.report)
        return JSONResponse(report, status_code=503 if report["status"] == "unavailable" else 200)

    registry = build_registry(engine, tables, clock)

    async def metrics(request: Request) -> Response:
        body, content_type = await run_in_threadpool(exposition, registry, request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    return Starlette(
        routes=[
            Route(RESULTS_PATH, results, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ]
    )
