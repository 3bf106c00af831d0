"""``moodle-offload run``: the bridge as one long-running process (docs/sending.md, "Service mode").

Why: IOMAD's email task loads every due row when it starts (every 5 minutes). A bridge that
claims once a minute from cron loses every row queued in the minute before IOMAD's run; a
claim pass every few seconds shrinks that window to seconds. Each pass:

1. **claim**: one probe statement (``ClaimPass.anything_due``); only when something is due does
   the full pass take Moodle's lock and claim (docs/sending.md, I1/I9);
2. **outbox**: one statement for due batches; submits them when there are any;
3. **reconcile** (results queue, overdue jobs, settling rows) and the secrets sweep, every
   ``reconcile_every`` seconds rather than every pass. On the same period, before the outbox,
   due schedules fire (one indexed SELECT when none is due; docs/schedules.md).

An idle pass is therefore two statements (measured by ``bench.tick_bench``). The signed
callback receiver (``moodle_bridge.results.receiver.create_app``, mounted as is) runs in the
same process on uvicorn, in a thread. The service holds the tick lock for its lifetime, so a
``moodle-offload tick`` left in cron exits at once instead of racing it. ``stop()`` (SIGTERM /
SIGINT in ``commands/run.py``) ends the loop after the current pass and stops the receiver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig, ConfigError
from moodle_bridge.pipeline.claiming import ClaimPass, ClaimReport
from moodle_bridge.pipeline.iomad_contents import IomadRowContents
from moodle_bridge.pipeline.outbox import Outbox, OutboxReport
from moodle_bridge.results.reconcile import ReconcileReport, reconcile
from moodle_bridge.sources.iomad.schema import IomadTables, detect_iomad
from moodle_bridge.sources.schedules.runner import ScheduleRunReport, run_due
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from moodle_bridge.storage.migrations import LATEST_VERSION, current_version
from moodle_bridge.storage.secrets_at_rest import SecretBox
from moodle_bridge.transports.capabilities import WorkerCheck
from moodle_bridge.transports.targets import Submitter, WorkerSubmitter

if TYPE_CHECKING:
    from moodle_bridge.results.server import ReceiverServerSettings

log = logging.getLogger("moodle_bridge.service")


@dataclass
class PassReport:
    claim: ClaimReport | None = None
    outbox: OutboxReport | None = None
    reconciled: ReconcileReport | None = None
    secrets_cleared: int = 0
    schedules: list[ScheduleRunReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def busy(self) -> bool:
        """Whether this pass did anything (an idle pass did not)."""
        c, o = self.claim, self.outbox
        return bool(
            any(r.outcome not in ("nothing_due", "already_fired") for r in self.schedules)
            or (c is not None and (c.considered or c.lock_busy or c.lock_lost))
            or (o is not None and (o.submitted or o.retried or o.abandoned or o.settled or o.split))
        )


@dataclass
class ServiceStats:
    passes: int = 0
    busy_passes: int = 0
    errors: int = 0
    claimed: int = 0
    submitted: int = 0
    last_error: str = ""
    history: list[str] = field(default_factory=list)


class Service:
    """The claim loop, outbox and reconciliation on one schedule; the receiver beside them."""

    def __init__(
        self,
        engine: sa.Engine,
        config: BridgeConfig,
        *,
        submitters: dict[str, Submitter],
        upload: Callable[[str, bytes], None] | None = None,
        r2_upload: Callable[[str, bytes], None] | None = None,
        report_upload: Callable[[str, bytes, str], None] | None = None,
        interval: float = 2.0,
        reconcile_every: float = 30.0,
        clock: Callable[[], int] | None = None,
        reconcile_context: Callable[[Service], Any] | None = None,
    ) -> None:
        if interval <= 0 or reconcile_every <= 0:
            raise ConfigError("the service's interval and reconcile period must be positive")
        self.engine = engine
        self.config = config
        self.interval = interval
        self.reconcile_every = reconcile_every
        self.tables = build_bridge_tables(config.database.prefix)
        self.repo = BridgeRepo(self.tables)
        with engine.connect() as conn:
            version = current_version(conn, self.tables)
            if version != LATEST_VERSION:
                raise ConfigError(
                    f"bridge tables are at schema version {version}, this release needs {LATEST_VERSION}: "
                    "run `moodle-offload migrate`"
                )
            self.iomad: IomadTables | None = (
                detect_iomad(conn, config.database.prefix) if config.database.site == "iomad" else None
            )
        self.box = SecretBox(config.password_key_bytes()) if config.password_key else None
        self.submitters = submitters
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        self.claimer = (
            ClaimPass(engine, self.repo, self.iomad, config, box=self.box, **extra)
            if self.iomad is not None
            else None
        )
        self.outbox = Outbox(
            engine,
            self.repo,
            config,
            submitters,
            iomad=IomadRowContents(self.iomad) if self.iomad is not None else None,
            box=self.box,
            upload=upload,
            r2_upload=r2_upload,
            **extra,
        )
        self._reconcile_context = reconcile_context
        self._report_upload = report_upload
        self._clock = clock or (lambda: int(time.time()))
        self._next_reconcile = 0.0
        self._stop = threading.Event()
        self.stats = ServiceStats()

    # -- one pass ------------------------------------------------------------------------------

    def pass_once(self, *, reconcile_now: bool | None = None) -> PassReport:
        started = time.monotonic()
        report = PassReport()
        if self.claimer is not None:
            # The Worker's capabilities are asked afresh each pass (only a pass with rows due
            # asks at all: the probe comes first), as the tick does.
            worker = self.submitters.get("worker")
            check = WorkerCheck(worker if isinstance(worker, WorkerSubmitter) else None)
            self.claimer.worker_check = check
            self.claimer.certificate_check = check.certificate_refusal
            report.claim = self.claimer.run()
        due = started >= self._next_reconcile if reconcile_now is None else reconcile_now
        if due and self.iomad is not None:
            # Schedules are looked at on the reconcile period (one indexed SELECT), before the
            # outbox so this pass submits what they created; a slot fires once (docs/schedules.md).
            report.schedules = run_due(
                self.engine,
                self.repo,
                self.config,
                at=self._clock(),
                upload=self._report_upload,
                iomad=self.iomad,
            )
        report.outbox = self.outbox.submit_due()
        if due and self._reconcile_context is not None:
            report.reconciled = reconcile(self._reconcile_context(self))
            with self.engine.begin() as conn:
                report.secrets_cleared = self.repo.clear_final_secrets(conn)
            self._next_reconcile = started + self.reconcile_every
        report.seconds = time.monotonic() - started
        return report

    # -- the loop ------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, max_passes: int | None = None) -> ServiceStats:
        """Pass after pass until ``stop()``; a failing pass is logged and retried after a pause."""
        backoff = self.interval
        while not self._stop.is_set():
            try:
                report = self.pass_once()
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                # The database went away (fail-over, restart) or a transient I/O error: the
                # claim of that pass rolled back (I6, I9); try again, slower, until it is back.
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}"
                log.warning("service pass failed (%s); retrying in %.0f s", type(exc).__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            backoff = self.interval
            self.stats.passes += 1
            if report.busy:
                self.stats.busy_passes += 1
                self.stats.claimed += report.claim.claimed if report.claim else 0
                self.stats.submitted += report.outbox.submitted if report.outbox else 0
                log.info(
                    "pass: claimed %d rows, submitted %d batches in %.2f s",
                    report.claim.claimed if report.claim else 0,
                    report.outbox.submitted if report.outbox else 0,
                    report.seconds,
                )
            if max_passes is not None and self.stats.passes >= max_passes:
                break
            self._stop.wait(self.interval)
        return self.stats


class Receiver:
    """The callback receiver's ASGI app on uvicorn, in a thread of this process.

    Served with the same limits as ``moodle-offload serve`` (``results/server.py``: connection cap,
    request-head deadline, bounded heads, keep-alive), so service mode is no easier to tie up."""

    def __init__(self, app: Any, host: str, port: int, settings: ReceiverServerSettings) -> None:
        import uvicorn  # noqa: PLC0415 - only the service with a receiver needs it

        from moodle_bridge.results.server import uvicorn_config  # noqa: PLC0415 - imports uvicorn

        self.server = uvicorn.Server(
            uvicorn_config(
                app,
                host=host,
                port=port,
                settings=settings,
                log_config=None,  # uvicorn's lines go through the bridge's format (human or JSON)
            )
        )
        self.thread = threading.Thread(target=self.server.run, name="receiver", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("the callback receiver did not start (is the port in use?)")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
