"""Hostile HTTP clients and a loopback receiver, for the attack suite (tests/attacks) and the bench.

Every attack is bounded: a fixed number of sockets, a fixed number of bytes and a deadline after
which it stops by itself; it only ever connects to the address it is given (loopback in the suite).
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import uvicorn

from moodle_bridge.results.server import ReceiverServerSettings, uvicorn_config

_CHUNK = b"x" * 65_536  # one shared buffer: the attackers' own memory stays flat


@dataclass
class RunningServer:
    host: str
    port: int
    server: uvicorn.Server

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)


@contextmanager
def serve_in_thread(
    app: Any, settings: ReceiverServerSettings, *, config: uvicorn.Config | None = None
) -> Iterator[RunningServer]:
    """Run ``app`` on 127.0.0.1 (a free port) with the receiver's limits; stopped on exit."""
    config = config or uvicorn_config(app, host="127.0.0.1", port=0, settings=settings, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="receiver-under-attack", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the receiver did not start")
        time.sleep(0.01)
    sock = server.servers[0].sockets[0]
    host, port = sock.getsockname()[:2]
    try:
        yield RunningServer(host, port, server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class SlowClientReport:
    opened: int
    closed_by_server: int
    still_open: int
    max_server_connections: int
    seconds: float


def _closed(sock: socket.socket) -> bool:
    try:
        data = sock.recv(65_536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or False


def slow_clients(
    host: str,
    port: int,
    count: int,
    *,
    duration: float,
    head: bytes = b"POST /callbacks/v1/results HTTP/1.1\r\nHost: x\r\n",
    trickle_every: float = 0.5,
    count_connections: Any = None,
) -> SlowClientReport:
    """Open ``count`` connections that send ``head`` and then one header byte every ``trickle_every``
    seconds, never finishing; stop after ``duration`` seconds. Reports how many the server closed."""
    started = time.monotonic()
    sockets: list[socket.socket] = []
    for _ in range(count):
        sock = socket.create_connection((host, port), timeout=5)
        sock.setblocking(False)
        with suppress(OSError):
            sock.send(head)
        sockets.append(sock)
    selector = selectors.DefaultSelector()
    open_ = set(sockets)
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    peak = 0
    next_trickle = time.monotonic()
    try:
        while open_ and time.monotonic() - started < duration:
            for key, _ in selector.select(timeout=0.05):
                ready = key.fileobj
                if isinstance(ready, socket.socket) and ready in open_ and _closed(ready):
                    open_.discard(ready)
                    selector.unregister(ready)
                    closed += 1
            if count_connections is not None:
                peak = max(peak, int(count_connections()))
            if time.monotonic() >= next_trickle:
                next_trickle += trickle_every
                for sock in list(open_):
                    try:
                        sock.send(b"X")
                    except OSError:
                        open_.discard(sock)
                        selector.unregister(sock)
                        closed += 1
        return SlowClientReport(count, closed, len(open_), peak, round(time.monotonic() - started, 2))
    finally:
        selector.close()
        for sock in sockets:
            sock.close()


@dataclass
class BodyFloodReport:
    connections: int
    statuses: dict[str, int]
    bytes_sent: int
    seconds: float


def _request_head(path: str, headers: Mapping[str, str], length: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: receiver", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _flood_one(host: str, port: int, head: bytes, size: int, deadline: float) -> tuple[str, int]:
    sent = 0
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.sendall(head)
            while sent < size and time.monotonic() < deadline:
                chunk = _CHUNK[: min(len(_CHUNK), size - sent)]
                sock.sendall(chunk)
                sent += len(chunk)
            answer = sock.recv(256)
        except TimeoutError:
            return "timeout", sent
        except OSError:
            return "reset", sent  # the server answered and closed while we were still sending
        status = answer.split(b" ", 2)[1].decode("ascii", "replace") if answer.count(b" ") >= 2 else "none"
        return status, sent


def body_flood(
    host: str,
    port: int,
    connections: int,
    size: int,
    headers: Mapping[str, str],
    *,
    path: str = "/callbacks/v1/results",
    duration: float = 30.0,
) -> BodyFloodReport:
    """``connections`` concurrent requests, each declaring and trying to send ``size`` bytes."""
    head = _request_head(path, headers, size)
    started = time.monotonic()
    deadline = started + duration
    results: list[tuple[str, int]] = []
    lock = threading.Lock()

    def run() -> None:
        outcome = _flood_one(host, port, head, size, deadline)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.1, deadline - time.monotonic()) + 5)
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return BodyFloodReport(
        connections, statuses, sum(sent for _, sent in results), round(time.monotonic() - started, 2)
    )


def unsent_body(host: str, port: int, headers: Mapping[str, str], declared: int, wait: float) -> str:
    """Send a request head declaring ``declared`` bytes and no body; the status the server answers."""
    with socket.create_connection((host, port), timeout=wait) as sock:
        sock.sendall(_request_head("/callbacks/v1/results", headers, declared))
        try:
            answer = sock.recv(256)
        except TimeoutError:
            return "timeout"
        except OSError:
            return "reset"
    return answer.split(b" ", 2)[1].decode("ascii", "replace") if answer.count(b" ") >= 2 else "closed"


def buffering_baseline_app(limit: int) -> Any:
    """The receiver's behaviour before the fix, for the bench's baseline: buffer the whole body
    (up to ``limit``), then refuse it as unauthenticated."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False) and len(body) <= limit
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        del body

    return app
