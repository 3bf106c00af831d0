"""``/healthz``: does the database answer, and do the cloud targets?

The database is asked on every request (one ``SELECT 1``). The queues and intakes are asked at
most once per ``CLOUD_TTL_SECONDS``, so a load balancer polling every few seconds does not turn
into a stream of SQS calls. A cloud target that does not answer makes the service ``degraded``
(HTTP 200: the outbox keeps batches and retries, so restarting the service would not help); a
database that does not answer makes it ``unavailable`` (HTTP 503).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from moodle_bridge.config import BridgeConfig
from moodle_bridge.operations.probes import Check, ClientMaker, aws_clients, cloud_checks

CLOUD_TTL_SECONDS = 30


class HealthProbe:
    def __init__(
        self,
        engine: sa.Engine,
        config: BridgeConfig,
        *,
        clients: ClientMaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.config = config
        self._clients = clients
        self._clock = clock
        self._lock = threading.Lock()
        self._cloud: tuple[float, list[Check]] | None = None

    def _cloud_checks(self) -> list[Check]:
        with self._lock:
            now = self._clock()
            if self._cloud is None or now - self._cloud[0] >= CLOUD_TTL_SECONDS:
                clients = self._clients or aws_clients(self.config, timeout=3)
                self._cloud = (now, cloud_checks(self.config, clients))
            return self._cloud[1]

    def report(self) -> dict[str, Any]:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            database = "ok"
        except sa.exc.SQLAlchemyError:
            database = "unreachable"
        cloud = self._cloud_checks()
        targets = {c.name: ("ok" if c.ok else "unreachable") for c in cloud}
        if database != "ok":
            status = "unavailable"
        elif all(c.ok for c in cloud):
            status = "ok"
        else:
            status = "degraded"
        out: dict[str, Any] = {"status": status, "database": database}
        if targets:
            out["cloud"] = targets
        return out
