"""SQS ``jobs`` queue -> SES, one email_batch per record (ReportBatchItemFailures)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common.aws import client
from lambdas.common.idempotency import IdempotencyStore
from lambdas.common.keys import SecretKeySets
from lambdas.common.observability import MetricUnit, logger, metrics, tracer
from lambdas.common.pacing import SharedRateLimiter, account_send_rate
from lambdas.common.settings import settings
from lambdas.email.contents import ObjectFetcher
from lambdas.email.crash_window import CrashWindowPolicy
from lambdas.email.sender import EmailBatchSender
from lambdas.email.ses import SesSender
from lambdas.results.queue import ResultsQueue
from offload_contract import decode_message, encode_message

processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def requeue_to(sqs: Any, queue_url: str) -> Any:
    def requeue(batch: dict[str, Any], delay: int) -> None:
        sqs.send_message(
            QueueUrl=queue_url, MessageBody=encode_message(batch).decode("utf-8"), DelaySeconds=delay
        )

    return requeue


@cache
def sender() -> EmailBatchSender:
    return build_sender(client)


def build_sender(client: Callable[[str], Any]) -> EmailBatchSender:
    """The sender of one container, from its clients (bench/pacing_bench.py runs one per poller)."""
    s = settings()
    s.require("jobs_queue_url", "results_queue_url", "idempotency_table")
    dynamodb = client("dynamodb")
    rate = account_send_rate(client("sesv2"), s.ses_max_send_rate)
    logger.info("SES send rate", extra={"max_send_rate": rate})
    seal_keys = SecretKeySets(client("secretsmanager"), s.seal_secret_arn) if s.seal_secret_arn else None
    return EmailBatchSender(
        store=IdempotencyStore(dynamodb, s.idempotency_table),
        limiter=SharedRateLimiter(dynamodb, s.idempotency_table, rate),
        ses=SesSender(client("sesv2"), s.configuration_set_name),
        fetcher=ObjectFetcher(client("s3"), s.content_bucket),
        results=ResultsQueue(client("sqs"), s.results_queue_url),
        requeue=requeue_to(client("sqs"), s.jobs_queue_url),
        lease_seconds=900,
        max_attempts=s.max_attempts,
        safety_margin_ms=s.safety_margin_ms,
        tenants=s.ses_tenant_names,
        crash_window=CrashWindowPolicy(
            recheck_seconds=s.crash_window_recheck_seconds,
            give_up_seconds=s.crash_window_give_up_seconds,
            probe_interval_seconds=s.crash_window_probe_interval_seconds,
        ),
        parallel_sends=s.sender_parallel_sends,
        seal_roots=(lambda: seal_keys.get().roots) if seal_keys is not None else None,
    )


@tracer.capture_method
def process_record(record: SQSRecord, context: LambdaContext) -> None:
    batch = decode_message(record.body)
    report = sender().process(batch, context.get_remaining_time_in_millis)
    metrics.add_metric(name="EmailsSent", unit=MetricUnit.Count, value=report.sent)
    metrics.add_metric(name="EmailsFailed", unit=MetricUnit.Count, value=report.failed)
    metrics.add_metric(name="EmailsThrottled", unit=MetricUnit.Count, value=report.throttled)
    metrics.add_metric(name="EmailsRetrying", unit=MetricUnit.Count, value=report.retrying)
    for latency in report.ses_latency_ms:
        metrics.add_metric(name="SesCallLatency", unit=MetricUnit.Milliseconds, value=latency)
    for latency in report.wave_latency_ms:  # sizes the sender's concurrency (infra: send_latency_ms)
        metrics.add_metric(name="SendWaveLatency", unit=MetricUnit.Milliseconds, value=latency)
    logger.info(
        "email batch processed",
        extra={
            "batch_id": batch.get("batch_id"),
            "job_id": batch.get("job_id"),
            "company_id": batch.get("company_id"),
            "attempt": batch.get("attempt"),
            "recipients": len(batch.get("recipients", [])),
            "sent": report.sent,
            "failed": report.failed,
            "retrying": report.retrying,
            "throttled": report.throttled,
            "replayed": report.replayed,
            "deferred": report.deferred,
            "cancelled": report.cancelled,
            "crash_window_resent": report.stale_resent,
            "crash_window_waiting": report.stale_waiting,
        },
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    # The lease of a claim outlives this invocation: remaining time now plus a minute.
    sender().lease_seconds = context.get_remaining_time_in_millis() // 1000 + 60
    return process_partial_response(
        event=event,
        record_handler=lambda record: process_record(record, context),
        processor=processor,
        context=context,
    )
