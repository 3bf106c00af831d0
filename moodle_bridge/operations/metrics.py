"""Prometheus/OpenMetrics figures of the bridge, served at ``/metrics`` by the receiver app.

Two kinds (docs/operations.md lists every series):

* **From the database at scrape time** (``DatabaseCollector``): outbox depth and age, jobs by
  status, claims by state, results ingested, bounce and complaint rates per company, the age of
  the oldest parked row. They are right whichever process did the work (cron ``tick`` or the
  service), because they read what the work left in the bridge's tables.
* **Counted in this process** (``PROCESS``): callbacks accepted and rejected by reason, and,
  when the claim loop runs in the same process (``run``), rows left local by reason and submit
  errors. They reset when the process restarts, as Prometheus counters may.

No series carries an address, a key, a URL or any message content; labels are company ids,
statuses and stable reason codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from moodle_bridge.storage.bridge_tables import BridgeTables

#: Bounce and complaint rates are taken over the jobs created in this many seconds.
RATE_WINDOW_SECONDS = 7 * 24 * 3600

PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)

CALLBACKS = Counter(
    "mrco_callbacks",
    "Result callbacks answered by the receiver, by outcome and reason code",
    ["outcome", "reason"],
    registry=PROCESS_REGISTRY,
)
LEFT_LOCAL = Counter(
    "mrco_rows_left_local",
    "IOMAD rows the claim pass left to IOMAD's own cron, by reason (this process)",
    ["reason"],
    registry=PROCESS_REGISTRY,
)
SUBMIT_ERRORS = Counter(
    "mrco_submit_errors",
    "Outbox batches the queue or intake did not accept on a try (retried later; this process)",
    registry=PROCESS_REGISTRY,
)
CLAIMED = Counter(
    "mrco_claim_pass_rows",
    "IOMAD rows claimed by claim passes of this process",
    registry=PROCESS_REGISTRY,
)


def observe_tick(report: Any) -> None:
    """Count one pass's claim and outbox figures (``commands.tick.TickReport``)."""
    claim = getattr(report, "claim", None)
    if claim is not None:
        CLAIMED.inc(int(getattr(claim, "claimed", 0) or 0))
        for reason, count in dict(getattr(claim, "left_local", {}) or {}).items():
            LEFT_LOCAL.labels(reason=str(reason)).inc(int(count))
    outbox = getattr(report, "outbox", None)
    if outbox is not None:
        failed = int(getattr(outbox, "retried", 0) or 0) + int(getattr(outbox, "abandoned", 0) or 0)
        if failed:
            SUBMIT_ERRORS.inc(failed)


class _ProcessCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        return PROCESS_REGISTRY.collect()


class DatabaseCollector(Collector):
    """Reads the bridge's tables on each scrape: a handful of grouped, indexed queries."""

    def __init__(self, engine: sa.Engine, tables: BridgeTables, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.t = tables
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mrco_database_up", "1 when the bridge's database answered this scrape")
        try:
            with self.engine.connect() as conn:
                families = list(self._families(conn, int(self.clock())))
        except sa.exc.SQLAlchemyError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, conn: sa.Connection, now: int) -> Iterator[Metric]:
        t = self.t
        b = t.batches
        depth = GaugeMetricFamily("mrco_outbox_batches", "Outbox batches by status", labels=["status"])
        for status, count in conn.execute(sa.select(b.c.status, sa.func.count()).group_by(b.c.status)):
            depth.add_metric([str(status)], int(count))
        yield depth
        oldest, failing = conn.execute(
            sa.select(
                sa.func.min(b.c.timecreated),
                sa.func.count(b.c.lasterror),
            ).where(b.c.status == "pending")
        ).one()
        age = GaugeMetricFamily(
            "mrco_outbox_oldest_pending_age_seconds", "Age of the oldest batch not yet accepted by the cloud"
        )
        age.add_metric([], max(0, now - int(oldest)) if oldest is not None else 0)
        yield age
        erring = GaugeMetricFamily(
            "mrco_outbox_batches_failing", "Pending batches whose last submission failed (lasterror set)"
        )
        erring.add_metric([], int(failing or 0))
        yield erring

        j = t.jobs
        jobs = GaugeMetricFamily("mrco_jobs", "Jobs by status", labels=["status"])
        for status, count in conn.execute(sa.select(j.c.status, sa.func.count()).group_by(j.c.status)):
            jobs.add_metric([str(status)], int(count))
        yield jobs

        c = t.claims
        # A gauge: a row moves between states (claimed -> completed), and IOMAD's Resend replaces a
        # finished claim, so no state's count only grows.
        claims = GaugeMetricFamily(
            "mrco_claims", "IOMAD rows the bridge has a claim record for, by claim state", labels=["state"]
        )
        for state, count in conn.execute(sa.select(c.c.state, sa.func.count()).group_by(c.c.state)):
            claims.add_metric([str(state)], int(count))
        yield claims
        parked = conn.execute(sa.select(sa.func.min(c.c.timeclaimed)).where(c.c.state == "claimed")).scalar()
        parked_age = GaugeMetricFamily(
            "mrco_oldest_parked_row_age_seconds",
            "Age of the oldest IOMAD row parked by the bridge and not yet settled (0: none)",
        )
        parked_age.add_metric([], max(0, now - int(parked)) if parked is not None else 0)
        yield parked_age

        r = t.result_reports
        reports, results = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(r.c.resultcount), 0))
        ).one()
        ingested = CounterMetricFamily(
            "mrco_results_ingested", "Recipient results ingested (callbacks and pull)"
        )
        ingested.add_metric([], int(results or 0))
        yield ingested
        report_count = CounterMetricFamily("mrco_result_reports", "Result reports applied")
        report_count.add_metric([], int(reports or 0))
        yield report_count

        yield from self._rates(conn, now)

    def _rates(self, conn: sa.Connection, now: int) -> Iterator[Metric]:
        j = self.t.jobs
        reached_expr = j.c.recipientssent + j.c.recipientsbounced + j.c.recipientscomplained
        rows = conn.execute(
            sa.select(
                j.c.companyid,
                sa.func.sum(reached_expr),
                sa.func.sum(j.c.recipientsbounced),
                sa.func.sum(j.c.recipientscomplained),
            )
            .where(j.c.timecreated >= now - RATE_WINDOW_SECONDS, j.c.jobtype == "email")
            .group_by(j.c.companyid)
        ).all()
        window = f"over jobs created in the last {RATE_WINDOW_SECONDS // 86400} days"
        reached = GaugeMetricFamily(
            "mrco_recipients_reached", f"Recipients the provider accepted, {window}", labels=["company"]
        )
        bounce = GaugeMetricFamily(
            "mrco_bounce_rate", f"Bounced / reached recipients, {window}", labels=["company"]
        )
        complaint = GaugeMetricFamily(
            "mrco_complaint_rate", f"Complaints / reached recipients, {window}", labels=["company"]
        )
        for companyid, reached_sum, bounced, complained in rows:
            label = [str(int(companyid))]
            total = int(reached_sum or 0)
            reached.add_metric(label, total)
            bounce.add_metric(label, (int(bounced or 0) / total) if total else 0.0)
            complaint.add_metric(label, (int(complained or 0) / total) if total else 0.0)
        yield reached
        yield bounce
        yield complaint


def build_registry(
    engine: sa.Engine, tables: BridgeTables, clock: Callable[[], float] = time.time
) -> CollectorRegistry:
    """This process's counters plus the database's figures, for one ``/metrics`` endpoint."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessCollector())
    registry.register(DatabaseCollector(engine, tables, clock))
    return registry


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The scrape body in the format the scraper asked for (OpenMetrics or Prometheus text)."""
    from prometheus_client.exposition import choose_encoder  # noqa: PLC0415

    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
