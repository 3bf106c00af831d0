"""How the callback receiver is served: one place for the limits ``serve`` (and ``run``) apply.

uvicorn alone leaves a stranger able to hold connections open: ``timeout_keep_alive`` only covers
idle connections *between* requests, so a client that sends its headers a byte at a time, or never
finishes them, keeps the connection (and its buffers) forever. ``GuardedH11Protocol`` adds:

- a **connection cap**: a connection beyond ``max_connections`` is closed as soon as it is accepted;
- a **header deadline**: a connection must deliver a complete request head within
  ``header_timeout_seconds`` of being ready for one (accepted, or its previous response sent);
- bounded request heads (``h11_max_incomplete_event_size``).

The body deadline, the body size bound and the signature check before the body is read live in
the ASGI app (``receiver.create_app``), so they hold under any server that mounts it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from moodle_bridge.config import BridgeConfig


@dataclass(frozen=True)
class ReceiverServerSettings:
    """The receiver's connection limits (docs/security.md lists them with the measured effect)."""

    #: Complete request head within this many seconds of the connection being ready for one.
    header_timeout_seconds: float = 10.0
    #: Whole body within this many seconds of the head (enforced by the ASGI app).
    body_timeout_seconds: float = 30.0
    #: Idle keep-alive connections are closed after this many seconds.
    keep_alive_seconds: int = 5
    #: Open connections; the next one is closed on accept.
    max_connections: int = 256
    #: Largest request head (request line + headers) h11 buffers.
    max_header_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        if self.header_timeout_seconds <= 0 or self.body_timeout_seconds <= 0:
            raise ValueError("receiver timeouts must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def receiver_server_settings(config: BridgeConfig) -> ReceiverServerSettings:
    """The settings for this deployment (fixed defaults today; one place to make them configurable)."""
    del config
    return ReceiverServerSettings()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a connection cap and a request-head deadline."""

    guard: ReceiverServerSettings = ReceiverServerSettings()

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.guard.max_connections:
            self.connections.discard(self)
            transport.abort()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle_before = self.cycle
        super().data_received(data)
        if self.cycle is not cycle_before:  # a complete request head arrived
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.guard.header_timeout_seconds, self._header_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served; the body deadline governs it
        if not self.transport.is_closing():
            self.transport.abort()


def guarded_protocol(settings: ReceiverServerSettings) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": settings})


def uvicorn_config(
    app: Any, *, host: str, port: int, settings: ReceiverServerSettings, **extra: Any
) -> uvicorn.Config:
    """A uvicorn config with every limit of ``settings`` applied (h11 only, no HTTP/2, no websockets)."""
    options: dict[str, Any] = {
        "log_level": "info",
        "access_log": False,  # our own log lines carry the reason code; the access log adds nothing safe
        "proxy_headers": True,
        "server_header": False,
        **extra,
    }
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(settings),
        ws="none",
        timeout_keep_alive=settings.keep_alive_seconds,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        backlog=settings.max_connections,
        **options,
    )
