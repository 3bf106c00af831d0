"""SQS ``ses-events`` queue (EventBridge rule on the configuration set) -> results queue."""

from __future__ import annotations

import json
import time
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common.aws import client
from lambdas.common.idempotency import IdempotencyStore
from lambdas.common.observability import MetricUnit, logger, metrics, tracer
from lambdas.common.settings import settings
from lambdas.results.queue import ResultsQueue
from lambdas.results.ses_events import SesEventProcessor


@cache
def events_processor() -> SesEventProcessor:
    s = settings()
    s.require("results_queue_url", "idempotency_table")
    return SesEventProcessor(
        IdempotencyStore(client("dynamodb"), s.idempotency_table),
        ResultsQueue(client("sqs"), s.results_queue_url),
        time.time,
    )


#: Stands for a body that is not JSON: its record fails (the DLQ keeps it for inspection).
_MALFORMED = object()


def _parse(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return _MALFORMED


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, list[dict[str, str]]]:
    """One pass over the whole SQS batch, so results are aggregated across its events."""
    records = [(str(r["messageId"]), _parse(str(r.get("body") or ""))) for r in event.get("Records", [])]
    malformed = [record_id for record_id, body in records if body is _MALFORMED]
    report = events_processor().process([(i, b) for i, b in records if b is not _MALFORMED])
    failed = set(report.failed) | set(malformed)
    metrics.add_metric(name="SesEventsReceived", unit=MetricUnit.Count, value=len(records))
    for status, count in report.by_status.items():
        metrics.add_metric(name=f"SesEvent_{status}", unit=MetricUnit.Count, value=count)
    if report.unroutable:
        metrics.add_metric(name="SesEventUnroutable", unit=MetricUnit.Count, value=report.unroutable)
        logger.warning("SES events for an unknown job", extra={"count": report.unroutable})
    if failed:
        metrics.add_metric(name="SesEventRecordsFailed", unit=MetricUnit.Count, value=len(failed))
        logger.warning(
            "SES event records failed; SQS redelivers them",
            extra={"failed": len(failed), "malformed": len(malformed)},
        )
    logger.info(
        "SES events processed",
        extra={"records": len(records), "results": report.mapped, "messages": report.messages},
    )
    # Lambda's ReportBatchItemFailures response: only these records return to the queue.
    return {"batchItemFailures": [{"itemIdentifier": i} for i, _ in records if i in failed]}
