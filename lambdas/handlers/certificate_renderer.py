"""SQS ``certificates`` queue -> PDFs in S3 (+ completion mail via the jobs queue)."""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from certificate_render.fonts import font_library
from certificate_render.template import TemplateStore
from lambdas.certificates.processor import CertificateBatchProcessor
from lambdas.certificates.signing import CompanySigners
from lambdas.common.aws import client
from lambdas.common.idempotency import IdempotencyStore
from lambdas.common.observability import MetricUnit, logger, metrics, tracer
from lambdas.common.settings import settings
from lambdas.results.queue import ResultsQueue
from offload_contract import decode_message, encode_message

processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@cache
def renderer() -> CertificateBatchProcessor:
    s = settings()
    s.require("certificate_bucket", "jobs_queue_url", "results_queue_url", "idempotency_table")
    sqs = client("sqs")
    sse = {"ServerSideEncryption": s.sse_algorithm}
    if s.sse_algorithm == "aws:kms" and s.sse_kms_key_id:
        sse["SSEKMSKeyId"] = s.sse_kms_key_id

    def forward(batch: dict[str, Any]) -> None:
        sqs.send_message(QueueUrl=s.jobs_queue_url, MessageBody=encode_message(batch).decode("utf-8"))

    return CertificateBatchProcessor(
        s3=client("s3"),
        bucket=s.certificate_bucket,
        templates=TemplateStore(client("s3"), s.certificate_bucket),
        fonts=font_library(),  # parsed once per container
        store=IdempotencyStore(client("dynamodb"), s.idempotency_table),
        results=ResultsQueue(sqs, s.results_queue_url),
        forward=forward,
        verify_url_base=s.verify_url_base,
        default_sender=s.sender_address,
        sse=sse,
        signers=CompanySigners(client("secretsmanager"), s.signing_secret_prefix)
        if s.signing_secret_prefix
        else None,
    )


@tracer.capture_method
def process_record(record: SQSRecord) -> None:
    batch = decode_message(record.body)
    report = renderer().process(batch)
    metrics.add_metric(name="CertificatesRendered", unit=MetricUnit.Count, value=report.rendered)
    metrics.add_metric(name="CertificatesFailed", unit=MetricUnit.Count, value=report.failed)
    for ms in report.render_ms:
        metrics.add_metric(name="CertificateRenderLatency", unit=MetricUnit.Milliseconds, value=ms)
    logger.info(
        "certificate batch processed",
        extra={
            "batch_id": batch.get("batch_id"),
            "job_id": batch.get("job_id"),
            "company_id": batch.get("company_id"),
            "rendered": report.rendered,
            "failed": report.failed,
            "forwarded_to_email": report.forwarded,
            "bytes": report.bytes_total,
        },
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=process_record, processor=processor, context=context
    )
