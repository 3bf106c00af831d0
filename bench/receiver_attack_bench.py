"""Benchmark: the callback receiver under slow clients and big unauthenticated bodies (issue 18).

Run alone: ``python -m bench.receiver_attack_bench`` (writes ``bench/results/receiver_attack.json``).

Two servers, each in its own process on 127.0.0.1, take the same two attacks:

* ``guarded``: the real receiver app (``create_app`` on SQLite) served with ``uvicorn_config`` and
  the default ``ReceiverServerSettings`` (``moodle-offload serve``);
* ``baseline``: uvicorn's defaults with an app that buffers the body before refusing it, i.e. the
  receiver's behaviour before the fix.

Attacks: 400 slow connections that send a request head a byte at a time for 15 s (longer than the
10 s head deadline), then 40 concurrent unauthenticated requests of 5 MiB each (over the contract's
body bound), then 40 of 1 MiB (within it: refused by the signature, checked from the head). Memory is the
server process's resident set (``VmRSS``), sampled every 50 ms; "added" is peak minus idle.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvicorn

from bench.common import write_results
from iomad_sim.hostile import body_flood, buffering_baseline_app, slow_clients
from moodle_bridge.results.receiver import create_app
from moodle_bridge.results.server import ReceiverServerSettings, uvicorn_config
from offload_contract.signing import HEADER_SIGNATURE
from tests.results.factory import make_tables
from tests.results.test_receiver import CLOCK, make_config, signed

MiB = 1024 * 1024
SLOW_CLIENTS = 400
SLOW_SECONDS = 15.0
FLOOD_CONNECTIONS = 40
FLOOD_BYTES = 5 * MiB
#: Under the contract's body bound, so it is the signature (checked from the head) that refuses it.
IN_LIMIT_BYTES = 1 * MiB


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _serve(kind: str, port_queue: Any, db_path: str) -> None:
    if kind == "guarded":
        settings = ReceiverServerSettings()
        engine = sa.create_engine(f"sqlite:///{db_path}")
        tables = make_tables(engine)
        app = create_app(
            engine,
            tables,
            make_config(max_body=5 * MiB),
            clock=lambda: CLOCK,
            body_timeout_seconds=settings.body_timeout_seconds,
        )
        config = uvicorn_config(app, host="127.0.0.1", port=0, settings=settings, log_level="error")
    else:
        config = uvicorn.Config(
            buffering_baseline_app(5 * MiB), host="127.0.0.1", port=0, log_level="error", lifespan="off"
        )
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started:
            time.sleep(0.01)
        port_queue.put(server.servers[0].sockets[0].getsockname()[1])

    threading.Thread(target=announce, daemon=True).start()
    server.run()


class Sampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb(self.pid))
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self.peak = _rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_one(kind: str) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        process = ctx.Process(target=_serve, args=(kind, ports, os.path.join(tmp, "bridge.db")), daemon=True)
        process.start()
        try:
            port = ports.get(timeout=60)
            if process.pid is None:
                raise RuntimeError("the server process did not start")
            time.sleep(0.5)
            idle = _rss_mb(process.pid)
            with Sampler(process.pid) as slow_sampler:
                slow = slow_clients("127.0.0.1", port, SLOW_CLIENTS, duration=SLOW_SECONDS, trickle_every=1.0)
            time.sleep(0.5)
            after_slow = _rss_mb(process.pid)
            stranger = {
                **signed(b"{}"),
                "Content-Type": "application/json",
                HEADER_SIGNATURE: "v1=" + "1" * 64,
            }
            floods: dict[str, Any] = {}
            for label, size in (("5mib", FLOOD_BYTES), ("1mib_within_limit", IN_LIMIT_BYTES)):
                with Sampler(process.pid) as flood_sampler:
                    flood = body_flood("127.0.0.1", port, FLOOD_CONNECTIONS, size, stranger, duration=60)
                time.sleep(0.5)
                floods[f"unauthenticated_{label}_bodies"] = {
                    **asdict(flood),
                    "rss_peak_mb": round(flood_sampler.peak, 1),
                    "rss_added_mb": round(flood_sampler.peak - idle, 1),
                }
            return {
                "name": kind,
                "rss_idle_mb": round(idle, 1),
                "slow_clients": {
                    # The server's own connection count is not visible from here (another process).
                    **{k: v for k, v in asdict(slow).items() if k != "max_server_connections"},
                    "rss_peak_mb": round(slow_sampler.peak, 1),
                    "rss_added_mb": round(slow_sampler.peak - idle, 1),
                    "rss_after_mb": round(after_slow, 1),
                },
                **floods,
            }
        finally:
            process.terminate()
            process.join(timeout=10)


def main() -> None:
    guarded = run_one("guarded")
    baseline = run_one("baseline")
    figures = {
        "attack": {
            "slow_clients": SLOW_CLIENTS,
            "slow_seconds": SLOW_SECONDS,
            "flood_connections": FLOOD_CONNECTIONS,
            "flood_bytes_each": FLOOD_BYTES,
        },
        "servers": [guarded, baseline],
        "ratios": {
            "flood_rss_added_guarded_over_baseline": round(
                max(guarded["unauthenticated_5mib_bodies"]["rss_added_mb"], 0.1)
                / max(baseline["unauthenticated_5mib_bodies"]["rss_added_mb"], 0.1),
                3,
            ),
            "slow_connections_held_guarded": guarded["slow_clients"]["still_open"],
            "slow_connections_held_baseline": baseline["slow_clients"]["still_open"],
        },
    }
    path = write_results("receiver_attack", figures)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
