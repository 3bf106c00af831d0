"""Offload share: of the recipients a site routed to the cloud, how many the cloud sent.

IOMAD's email task runs on Moodle's cron (every minute) on its real schedule, ``*/5``: it
loads every due row when it starts and holds its lock while it mails them (0.196 s per row,
measured on the live 4.3.7: 294 s for 1,500 rows). The bridge runs beside it:

- **cron**: ``moodle-offload tick`` once a minute;
- **service**: ``moodle-offload run``, a claim pass every 2 s;
- **strict**: service mode plus the insert trigger that parks cloud-routed rows at once
  (only when ``--strict`` is available, see docs/sending.md).

Workloads: bulk uploads queued at random moments (every row at once) and CSV uploads
trickling their rows over 10 minutes. Time is simulated (a clock the bridge and the IOMAD
stand-in both read), so an hour of cron runs in seconds; everything else is real: the bridge's
claim pass (``ClaimPass``, Moodle's lock and all) and the IOMAD stand-in's cron
(``iomad_sim.iomad_cron``) against one SQLite database. The lock's hold time while IOMAD mails
is modelled by the driver (a pass that starts inside it finds the lock busy, as it would).

Reported per mode: share of cloud-routed recipients the cloud took, duplicates (a (row,
address) mailed by both paths) and lost ones (by neither). Goal: >= 99 % in service mode,
100 % strict, always 0 duplicates and 0 lost.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import write_results
from iomad_sim.iomad_cron import run_iomad_email_cron
from iomad_sim.smtp_sink import RecordingSmtpSink
from moodle_bridge.config import BridgeConfig, DatabaseConfig, KeysConfig, SubmitConfig
from moodle_bridge.pipeline.claiming import ClaimPass
from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.database import create_bridge_engine
from moodle_bridge.storage.migrations import migrate
from offload_contract.signing import generate_root_secret
from tests.bridge.iomad_world import IomadWorld

IOMAD_SECONDS_PER_ROW = 294 / 1500
SERVICE_INTERVAL = 2
MODES = ("cron", "service", "strict")


@dataclass
class Outcome:
    routed: int = 0
    cloud: int = 0
    iomad: int = 0
    duplicates: int = 0
    lost: int = 0
    uploads_all_local: int = 0
    uploads: int = 0
    lock_busy_passes: int = 0
    passes: int = 0
    per_upload: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "uploads": self.uploads,
            "cloud_routed_recipients": self.routed,
            "sent_by_cloud": self.cloud,
            "sent_by_iomad": self.iomad,
            "offload_share_percent": round(100 * self.cloud / self.routed, 2) if self.routed else None,
            "uploads_entirely_on_iomads_path": self.uploads_all_local,
            "worst_upload_share_percent": round(min(self.per_upload), 2) if self.per_upload else None,
            "duplicates": self.duplicates,
            "lost": self.lost,
            "bridge_passes": self.passes,
            "passes_finding_iomads_lock": self.lock_busy_passes,
        }


class Site:
    """One SQLite IOMAD site with the bridge migrated, a company routed to the cloud."""

    def __init__(self, path: Path, strict: bool) -> None:
        url = f"sqlite:///{path}"
        self.engine = create_bridge_engine(url)
        migrate(self.engine, "mdl_")
        self.world = IomadWorld.create(self.engine)
        self.world.add_company(1)
        self.world.add_user(11, "boss@example.com", companyid=1, manager=True)
        self.repo = BridgeRepo(build_bridge_tables("mdl_"))
        with self.engine.begin() as conn:
            self.repo.set_offload_enabled(conn, True)
            self.repo.save_settings(conn, CompanySettings(1, cloudenabled=True), "bench")
        self.config = BridgeConfig(
            database=DatabaseConfig(url=url),
            keys=KeysConfig(current="k1", keysets={"k1": generate_root_secret()}),
            submit=SubmitConfig(sender_address="noreply@example.com"),
        )
        self.now = 1_800_000_000
        self.sink = RecordingSmtpSink()
        self.next_user = 1000
        self.strict = strict
        if strict:
            from moodle_bridge.storage.strict_mode import install_strict_mode  # noqa: PLC0415

            install_strict_mode(self.engine, self.world.tables, "mdl_")
        self.claimer = ClaimPass(self.engine, self.repo, self.world.tables, self.config, clock=self.clock)

    def clock(self) -> int:
        return self.now

    def learner(self) -> int:
        self.next_user += 1
        self.world.add_user(self.next_user, f"u{self.next_user}@example.com", companyid=1)
        return self.next_user

    def queue(self, userid: int) -> int:
        return self.world.queue("license_allocated", userid, 1, body=f"<p>{userid}</p>", due=self.now)

    def cloud_pairs(self, ids: list[int]) -> Counter[tuple[int, str]]:
        r = self.repo.t.recipients
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(r.c.emailid, r.c.address).where(
                    r.c.emailid.in_(ids), r.c.status.in_(("pending", "queued"))
                )
            ).all()
        return Counter((int(e), str(a).lower()) for e, a in rows)


def _simulate(
    site: Site,
    mode: str,
    arrivals: list[int],
    rng: random.Random,
    outcome: Outcome,
) -> None:
    """Run Moodle's cron and the bridge over one upload whose rows arrive at ``arrivals`` (sim s)."""
    start = site.now
    users = [site.learner() for _ in arrivals]
    pending = sorted(zip(arrivals, users, strict=True))
    ids: list[int] = []
    lock_until = -1
    horizon = start + max(arrivals) + 600
    t = start
    # Moodle's cron and the tick's cron line both start at :00; where the email task falls in
    # Moodle's pass, and how long the tick takes to start, vary: either may come first.
    iomad_offset = rng.uniform(0, 30)
    tick_offset = rng.uniform(0, 30)
    while t <= horizon:
        site.now = t
        while pending and start + pending[0][0] <= t:
            _, uid = pending.pop(0)
            ids.append(site.queue(uid))
        minute_start = t - (t % 60)
        if t % 300 == int(iomad_offset) and t >= lock_until:
            run = run_iomad_email_cron(
                site.engine, "mdl_", "", site.sink, now=t, tables=site.world.tables, clock=site.clock
            )
            if run.ran:
                lock_until = t + int(len(run.sent_rows) * IOMAD_SECONDS_PER_ROW) + 1
        bridge_due = (t - minute_start) == int(tick_offset) if mode == "cron" else (t % SERVICE_INTERVAL == 0)
        if bridge_due and ids:
            outcome.passes += 1
            if t < lock_until:
                outcome.lock_busy_passes += 1  # IOMAD's cron holds the task lock
            else:
                site.claimer.run()
        t += 1
    cloud = site.cloud_pairs(ids)
    iomad = Counter(
        (int(m.email_id or 0), m.address.lower()) for m in site.sink.messages if m.email_id in set(ids)
    )
    rows = site.world.rows()
    expected = {(e, f"u{rows[e].userid}@example.com") for e in ids} | {(e, "boss@example.com") for e in ids}
    both = cloud + iomad
    outcome.routed += len(expected)
    outcome.cloud += sum(1 for k in expected if cloud[k])
    outcome.iomad += sum(1 for k in expected if iomad[k])
    outcome.duplicates += sum(1 for k, n in both.items() if n > 1)
    outcome.lost += sum(1 for k in expected if not both[k])
    outcome.uploads += 1
    share = 100 * sum(1 for k in expected if cloud[k]) / len(expected)
    outcome.per_upload.append(share)
    if share == 0:
        outcome.uploads_all_local += 1
    site.now = horizon + rng.randint(1, 600)  # the next upload lands at another random moment


def run_mode(mode: str, bulk: int, trickle: int, rows: int, seed: int, workdir: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    site = Site(workdir / f"{mode}.db", strict=mode == "strict")
    result: dict[str, Any] = {"mode": mode}
    workloads: list[tuple[str, int, Callable[[], list[int]]]] = [
        ("bulk_upload", bulk, lambda: [0] * rows),
        ("csv_trickle_10_minutes", trickle, lambda: sorted(rng.randint(0, 599) for _ in range(rows))),
    ]
    for name, count, arrivals_of in workloads:
        outcome = Outcome()
        t0 = time.perf_counter()
        for _ in range(count):
            _simulate(site, mode, arrivals_of(), rng, outcome)
        result[name] = {**outcome.figures(), "wall_seconds": round(time.perf_counter() - t0, 1)}
    site.engine.dispose()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.offload_share_bench")
    parser.add_argument("--bulk", type=int, default=40, help="bulk uploads per mode")
    parser.add_argument("--trickle", type=int, default=4, help="10-minute CSV uploads per mode")
    parser.add_argument("--rows", type=int, default=50, help="rows per upload (each: learner + manager)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        figures: dict[str, Any] = {
            "workload": {
                "bulk_uploads": args.bulk,
                "csv_uploads_over_10_minutes": args.trickle,
                "rows_per_upload": args.rows,
                "iomad_seconds_per_row": round(IOMAD_SECONDS_PER_ROW, 3),
                "service_interval_seconds": SERVICE_INTERVAL,
                "seed": args.seed,
            },
            "modes": [run_mode(m, args.bulk, args.trickle, args.rows, args.seed, Path(tmp)) for m in modes],
        }
    path = write_results("offload_share", figures)
    print(f"offload_share: {figures} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
