"""Strangers cannot tie the receiver up: slow heads, bodies that never come, and big unauthenticated
bodies are cut off by deadlines and caps, and memory stays flat. Loopback only, bounded, self-stopping."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace

import pytest
import sqlalchemy as sa

from iomad_sim.hostile import RunningServer, body_flood, serve_in_thread, slow_clients, unsent_body
from moodle_bridge.results.receiver import create_app
from moodle_bridge.results.server import ReceiverServerSettings
from offload_contract.signing import HEADER_SIGNATURE
from tests.results.factory import make_tables
from tests.results.test_receiver import CLOCK, make_config, signed

pytestmark = pytest.mark.sqlite

SETTINGS = ReceiverServerSettings(
    header_timeout_seconds=0.5, body_timeout_seconds=0.5, keep_alive_seconds=1, max_connections=32
)
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def receiver() -> Iterator[RunningServer]:
    engine = sa.create_engine("sqlite://", poolclass=sa.StaticPool, connect_args={"check_same_thread": False})
    tables = make_tables(engine)
    config = make_config(max_body=5 * MiB)
    app = create_app(engine, tables, config, clock=lambda: CLOCK, body_timeout_seconds=0.5)
    with serve_in_thread(app, SETTINGS) as running:
        yield running
    engine.dispose()


def test_slow_heads_are_closed_and_connections_are_capped(receiver: RunningServer) -> None:
    report = slow_clients(
        receiver.host,
        receiver.port,
        80,
        duration=4.0,
        trickle_every=0.1,
        count_connections=receiver.open_connections,
    )
    assert report.max_server_connections <= SETTINGS.max_connections
    # Every connection is closed by the server: the 48 over the cap at once, the rest at the head
    # deadline although they keep sending a header byte every 100 ms.
    assert report.still_open == 0, report
    assert report.closed_by_server == 80
    assert report.seconds < 3.0, report


def test_a_body_that_never_comes_is_cut_off(receiver: RunningServer) -> None:
    body = b'{"not":"sent"}'
    headers = {**signed(body), "Content-Type": "application/json"}
    assert unsent_body(receiver.host, receiver.port, headers, len(body), wait=5.0) == "408"
    # Unsigned, declaring a large body: refused from the head, nothing read.
    stranger = {**headers, HEADER_SIGNATURE: "v1=" + "0" * 64}
    assert unsent_body(receiver.host, receiver.port, stranger, 900_000, wait=5.0) == "401"


@pytest.mark.parametrize("size", [5 * MiB, 1 * MiB], ids=["over-the-bound", "within-the-bound"])
def test_big_unauthenticated_bodies_leave_memory_flat(receiver: RunningServer, size: int) -> None:
    body = b"{}"
    stranger = {
        **signed(body),
        "Content-Type": "application/json",
        HEADER_SIGNATURE: "v1=" + "1" * 64,  # well-formed, known key set, wrong signature
    }
    gc.collect()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        report = body_flood(receiver.host, receiver.port, 40, size, stranger, duration=20.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Refused from the head: 413 over the contract's bound, 401 within it (or a reset when the
    # refusal closed the socket while the client was still sending).
    assert set(report.statuses) <= {"401", "413", "reset"}, report
    assert report.seconds < 20.0
    # 40 x 5 MiB were offered; before the fix up to 5 MiB each was buffered (200 MiB).
    assert peak - baseline < 8 * MiB, (peak - baseline) / MiB


def test_the_contract_bounds_the_body_whatever_the_configuration(receiver: RunningServer) -> None:
    body = b" " * (2 * MiB)
    headers = {**signed(body), "Content-Type": "application/json"}
    assert unsent_body(receiver.host, receiver.port, headers, len(body), wait=5.0) == "413"


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        replace(SETTINGS, header_timeout_seconds=0)
    with pytest.raises(ValueError):
        replace(SETTINGS, max_connections=0)


def test_serve_applies_every_limit_to_uvicorn() -> None:
    """`serve` (and any command using uvicorn_config) gets the settings' keep-alive and head limits."""
    from moodle_bridge.results.server import GuardedH11Protocol, uvicorn_config

    config = uvicorn_config(object(), host="127.0.0.1", port=0, settings=ReceiverServerSettings())
    assert config.timeout_keep_alive == 5
    assert config.h11_max_incomplete_event_size == 16 * 1024
    assert isinstance(config.http, type) and issubclass(config.http, GuardedH11Protocol)
    assert config.http.guard.max_connections == 256 and config.http.guard.header_timeout_seconds == 10


def test_an_unfinished_request_head_cannot_grow_past_the_limit(receiver: RunningServer) -> None:
    import socket

    with socket.create_connection((receiver.host, receiver.port), timeout=5) as sock:
        sock.sendall(b"POST /callbacks/v1/results HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000)
        answer = sock.recv(64)  # long before the head deadline
    assert answer.startswith(b"HTTP/1.1 400")


def test_service_mode_serves_the_receiver_with_the_same_limits() -> None:
    """`moodle-offload run` mounts the receiver in its own thread (service.Receiver): slow heads are cut
    off and connections capped there too, not only under `serve`."""
    from moodle_bridge.service import Receiver

    engine = sa.create_engine("sqlite://", poolclass=sa.StaticPool, connect_args={"check_same_thread": False})
    tables = make_tables(engine)
    app = create_app(engine, tables, make_config(), clock=lambda: CLOCK, body_timeout_seconds=0.5)
    receiver = Receiver(app, "127.0.0.1", 0, SETTINGS)
    receiver.start()
    try:
        host, port = receiver.server.servers[0].sockets[0].getsockname()[:2]
        report = slow_clients(
            host,
            port,
            48,
            duration=4.0,
            trickle_every=0.1,
            count_connections=lambda: len(receiver.server.server_state.connections),
        )
    finally:
        receiver.stop()
        engine.dispose()
    assert report.max_server_connections <= SETTINGS.max_connections
    assert report.still_open == 0, report
    assert report.seconds < 3.0, report
