"""SQS ``results`` queue -> signed HTTPS callbacks to the bridge ("push" mode)."""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common.aws import client
from lambdas.common.keys import SecretKeySets
from lambdas.common.observability import MetricUnit, logger, metrics, tracer
from lambdas.common.settings import settings
from lambdas.results.dispatcher import CallbackDispatcher, CallbackError

processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@cache
def dispatcher() -> CallbackDispatcher:
    s = settings()
    s.require("hmac_secret_arn")
    return CallbackDispatcher(SecretKeySets(client("secretsmanager"), s.hmac_secret_arn).get)


def _attribute(record: SQSRecord, name: str) -> str:
    value = (record.raw_event.get("messageAttributes") or {}).get(name) or {}
    text = value.get("stringValue")
    if not isinstance(text, str) or not text:
        raise CallbackError(f"message attribute {name} is missing")
    return text


@tracer.capture_method
def process_record(record: SQSRecord) -> None:
    key_id = _attribute(record, "key_id")
    try:
        status = dispatcher().dispatch(record.body, _attribute(record, "callback_url"), key_id)
    except CallbackError as exc:
        metrics.add_metric(name="CallbacksFailed", unit=MetricUnit.Count, value=1)
        logger.warning("callback not delivered", extra={"key_id": key_id, "reason": str(exc)})
        raise
    metrics.add_metric(name="CallbacksDelivered", unit=MetricUnit.Count, value=1)
    logger.info("callback delivered", extra={"key_id": key_id, "status": status})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=process_record, processor=processor, context=context
    )
