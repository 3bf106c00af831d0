"""``python -m demo --provider cloudflare``: the offload end to end through the Cloudflare Worker.

1. The same IOMAD-shaped database as the AWS demo; company 1 is routed to Cloudflare (emails and
   certificates: the Worker renders Latin, Greek and Cyrillic names; completion rows whose names need
   another script stay with IOMAD, one line per tick), company 2 stays local.
2. The Worker under ``wrangler dev --local``: Queues, R2 and Durable Objects in Miniflare, mail
   through Miniflare's own ``send_email`` binding (Cloudflare Email Service), which logs every
   message: the exactly-once oracle counts them per address.
3. The bridge as cron runs it: ``migrate``, ``company set --provider cloudflare`` (checked against
   the Worker's signed capabilities), ``tick``, and ``serve`` receiving the Worker's signed
   callbacks — through a proxy that loses and duplicates some of them, unless ``--no-faults``.
4. Faults (unless ``--no-faults``): callbacks lost (the Worker's results queue retries them) and
   duplicated (the bridge applies a report once), and batches submitted twice (the Worker sends
   nobody twice). Worker crashes and provider 429 bursts need provider events to resolve, which
   Miniflare does not emit; they are proven in workerd by ``cloudflare/test/faults.test.js``.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from rich.table import Table

from demo.wrangler_dev import WorkerDev, WranglerUnavailable, free_port, wrangler_dev
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.transports.targets import WorkerSubmitter

PREFIX = "mdl_"


@dataclass
class CallbackFaults:
    """Every ``lose_every``-th callback is answered 503 unseen; every ``duplicate_every``-th twice."""

    enabled: bool
    lose_every: int = 2
    duplicate_every: int = 3
    seen: int = 0
    lost: int = 0
    duplicated: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def flaky_proxy(target: str, faults: CallbackFaults) -> Iterator[str]:
    """A loopback proxy in front of the bridge's receiver that loses and duplicates callbacks."""
    client = httpx.Client(timeout=20)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            with faults.lock:
                faults.seen += 1
                n = faults.seen
            if faults.enabled and n % faults.lose_every == 0:
                with faults.lock:
                    faults.lost += 1
                self.send_response(503)
                self.end_headers()
                return
            answer = client.post(target + self.path, content=body, headers=headers)
            if faults.enabled and n % faults.duplicate_every == 0:
                # The same signed request again: its nonce is refused (409), the report kept once.
                client.post(target + self.path, content=body, headers=headers)
                with faults.lock:
                    faults.duplicated += 1
            self.send_response(answer.status_code)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(answer.content)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        client.close()


def submit_twice(worker: WorkerSubmitter) -> list[tuple[str, str, int, bytes]]:
    """Record what the bridge submits, so the demo can submit one batch a second time."""
    submitted: list[tuple[str, str, int, bytes]] = []
    original = worker.submit

    def recording(message_type: str, batch_id: str, company_id: int, body: bytes) -> str:
        submitted.append((message_type, batch_id, company_id, body))
        return original(message_type, batch_id, company_id, body)

    worker.submit = recording  # type: ignore[method-assign]
    return submitted


def report_cloudflare(
    engine: sa.Engine,
    dev: WorkerDev,
    console: Any,
    cloud_company: int,
    local_company: int,
    seeded_local: dict[int, int],
    faults: CallbackFaults,
    resubmitted: int,
    started: float,
) -> bool:
    t = build_bridge_tables(PREFIX)
    email = sa.table(
        "mdl_email", sa.column("id"), sa.column("companyid"), sa.column("sent"), sa.column("due")
    )
    with engine.connect() as conn:
        recipients = conn.execute(
            sa.select(t.recipients.c.address, t.recipients.c.status, t.recipients.c.role)
        ).all()
        certificates = conn.execute(
            sa.select(t.certificates.c.verifycode, t.recipients.c.artifactkey, t.recipients.c.fullname).join(
                t.recipients, t.recipients.c.id == t.certificates.c.recipientid
            )
        ).all()
        jobs = conn.execute(sa.select(t.jobs.c.id, t.jobs.c.jobtype, t.jobs.c.status)).all()
        cloud_rows = conn.execute(
            sa.select(sa.func.count(), sa.func.count(email.c.sent)).where(email.c.companyid == cloud_company)
        ).one()
        claimed = conn.execute(sa.select(sa.func.count()).select_from(t.claims)).scalar_one()
        local_rows = conn.execute(
            sa.select(email.c.id, email.c.due, email.c.sent).where(email.c.companyid == local_company)
        ).all()
    statuses = Counter(str(r.status) for r in recipients)
    table = Table(title=f"Mail offloaded for company {cloud_company} (Cloudflare Worker)")
    for column in ("recipients", *sorted(statuses)):
        table.add_column(column, justify="right")
    table.add_row(str(len(recipients)), *(str(statuses[s]) for s in sorted(statuses)))
    console.print(table)
    sent = dev.sent_to()
    expected = Counter(str(r.address).lower() for r in recipients if r.status == "sent")
    delivered = Counter({a.lower(): n for a, n in sent.items()})
    # Managers receive one copy per learner: compare per address, messages against recipients.
    twice = {a: n for a, n in delivered.items() if n > expected[a]}
    missing = [a for a in expected if delivered[a] < expected[a]]
    local_untouched = all(row.sent is None and row.due == seeded_local.get(row.id) for row in local_rows)
    console.print(f"Jobs: {', '.join(f'#{j.id} {j.jobtype} {j.status}' for j in jobs)}")
    console.print(
        f"IOMAD rows claimed for company {cloud_company}: {claimed}; marked sent now: "
        f"{cloud_rows[1]} of {cloud_rows[0]}"
    )
    console.print(
        f"Company {local_company} (local): rows left to IOMAD untouched: {'yes' if local_untouched else 'NO'}"
    )
    console.print(
        f"Messages handed to Miniflare's send_email binding: {sum(sent.values())}; recipients reported "
        f"sent: {sum(expected.values())} ("
        + (
            "exactly once each"
            if not twice and not missing
            else f"MISMATCH: {len(twice)} twice, {len(missing)} missing"
        )
        + ")"
    )
    # Each certificate is in R2 (its artifact key) and the Worker's public verify route answers its code.
    verified = 0
    for cert in certificates:
        answer = httpx.get(f"{dev.base_url}/v1/certificates/verify/{cert.verifycode}?format=json", timeout=10)
        verified += bool(
            cert.artifactkey and answer.status_code == 200 and answer.json().get("valid") is True
        )
    console.print(
        f"Certificates rendered into R2 and mailed attached: {len(certificates)}; "
        f"the Worker's verify route answers {verified} of them"
    )
    if faults.enabled:
        console.print(
            f"Faults injected: {faults.lost} callbacks lost, {faults.duplicated} duplicated, "
            f"{resubmitted} batch submitted twice"
        )
    console.print(f"Time taken: {time.monotonic() - started:.1f} s")
    ok = (
        not twice
        and not missing
        and local_untouched
        and statuses["sent"] == len(recipients) - statuses["skipped"]
        and all(j.status in ("completed",) for j in jobs)
        and len(certificates) > 0
        and verified == len(certificates)
        and (not faults.enabled or (faults.lost > 0 and faults.duplicated > 0 and resubmitted > 0))
    )
    console.print("[bold green]Demo OK[/]" if ok else "[bold red]Demo finished with problems (see above)[/]")
    return ok


__all__ = [
    "CallbackFaults",
    "WranglerUnavailable",
    "flaky_proxy",
    "report_cloudflare",
    "submit_twice",
    "wrangler_dev",
]


def worker_folder(output: Path) -> Path:
    return output / "worker"
