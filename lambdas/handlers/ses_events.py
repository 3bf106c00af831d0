"""SQS ``ses-events`` queue (EventBridge rule on the configuration set) -> results queue."""

from __future__ import annotations

import json
import time
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common.aws import client
from lambdas.common.idempotency import IdempotencyStore
from lambdas.common.observability import MetricUnit, logger, metrics, tracer
from lambdas.common.settings import settings
from lambdas.results.queue import ResultsQueue
from lambdas.results.ses_events import SesEventProcessor

processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@cache
def events_processor() -> SesEventProcessor:
    s = settings()
    s.require("results_queue_url", "idempotency_table")
    return SesEventProcessor(
        IdempotencyStore(client("dynamodb"), s.idempotency_table),
        ResultsQueue(client("sqs"), s.results_queue_url),
        time.time,
    )


@tracer.capture_method
def process_record(record: SQSRecord) -> None:
    report = events_processor().process([json.loads(record.body)])
    metrics.add_metric(name="SesEventsReceived", unit=MetricUnit.Count, value=1)
    for status, count in report.by_status.items():
        metrics.add_metric(name=f"SesEvent_{status}", unit=MetricUnit.Count, value=count)
    if report.unroutable:
        metrics.add_metric(name="SesEventUnroutable", unit=MetricUnit.Count, value=report.unroutable)
        logger.warning("SES event for an unknown job", extra={"message_id": record.message_id})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=process_record, processor=processor, context=context
    )
