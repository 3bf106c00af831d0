"""The Worker under ``wrangler dev --local`` (workerd + Miniflare), for the demo and the tests.

Queues, R2 and Durable Objects are Miniflare's. Mail goes through Miniflare's own
``send_email`` binding, which logs every message it is handed (From, To, Subject and the
files holding the HTML and text), so what each recipient was sent can be counted from the log.
Wrangler runs with telemetry off, ``npx --no-install`` and local bindings only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

WORKER_DIR = Path(__file__).resolve().parent.parent / "cloudflare"
_MESSAGE = "send_email binding called with MessageBuilder:"


class WranglerUnavailable(RuntimeError):
    """cloudflare/node_modules is missing or wrangler did not start (the message says which)."""


@dataclass
class WorkerDev:
    base_url: str
    log: Path

    def _blocks(self) -> list[str]:
        return self.log.read_text("utf-8", errors="replace").split(_MESSAGE)[1:]

    def sent_to(self) -> Counter[str]:
        """Addresses Miniflare's send_email binding was handed, counted."""
        counts: Counter[str] = Counter()
        for block in self._blocks():
            match = re.search(r"^To: (.+)$", block, re.MULTILINE)
            if match:
                bracketed = re.findall(r"<([^<>]+)>", match.group(1))
                counts[(bracketed[-1] if bracketed else match.group(1)).strip()] += 1
        return counts

    def _block_to(self, address: str) -> str:
        for block in self._blocks():
            if re.search(rf"^To: .*{re.escape(address)}", block, re.MULTILINE):
                return block
        raise KeyError(f"nothing was sent to {address}")

    def subject_to(self, address: str) -> str:
        match = re.search(r"^Subject: (.*)$", self._block_to(address), re.MULTILINE)
        return match.group(1).strip() if match else ""

    def html_to(self, address: str) -> str:
        match = re.search(r"HTML: (\S+)", self._block_to(address))
        return Path(match.group(1)).read_text("utf-8") if match else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def wrangler_dev(
    folder: Path,
    keysets: Mapping[str, object],
    variables: Mapping[str, str] | None = None,
    *,
    renderer_assets: bool = False,
) -> Iterator[WorkerDev]:
    """Start the Worker on a free loopback port with its state in ``folder``; stop it after.

    ``renderer_assets``: first put the certificate renderer's fonts and logo into the local R2,
    as deployment does (cloudflare/scripts/renderer-assets.mjs), so the Worker renders certificates."""
    if shutil.which("npx") is None or not (WORKER_DIR / "node_modules" / ".bin" / "wrangler").exists():
        raise WranglerUnavailable("cloudflare/node_modules is not installed (run `make setup`)")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "wrangler.log"
    env = {**os.environ, "WRANGLER_SEND_METRICS": "false", "NO_COLOR": "1", "CI": "true"}
    if renderer_assets:
        upload = ["node", "scripts/renderer-assets.mjs", "--local", "--persist-to", str(folder / "state")]
        done = subprocess.run(upload, cwd=WORKER_DIR, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise WranglerUnavailable(f"the renderer assets did not upload: {done.stderr[-2000:]}")
    port = free_port()
    command = [
        *("npx", "--no-install", "wrangler", "dev", "--local", "--ip", "127.0.0.1"),
        *("--port", str(port), "--persist-to", str(folder / "state")),
        "--show-interactive-dev-session=false",
        *("--var", f"HMAC_KEYSETS:{json.dumps(keysets)}"),
    ]
    for name, value in (variables or {}).items():
        command += ["--var", f"{name}:{value}"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=WORKER_DIR, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(base + "/", timeout=2).status_code == 404:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text("utf-8", errors="replace")[-3000:]
                raise WranglerUnavailable(f"wrangler dev did not start:\n{tail}")
            time.sleep(0.5)
        yield WorkerDev(base, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
