"""Recipient results and result batches, exactly as the contract defines them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from offload_contract import validate

#: Results per result_batch message: far below the contract's 5,000 and SQS's 1 MiB.
RESULTS_PER_MESSAGE = 500


def recipient_result(
    job_id: str,
    recipient_id: str,
    status: str,
    attempts: int,
    *,
    provider_message_id: str | None = None,
    error_code: str | None = None,
    error_message: str = "",
    permanent: bool = True,
    artifact: dict[str, Any] | None = None,
    occurred_at: int | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "job_id": job_id,
        "recipient_id": recipient_id,
        "status": status,
        "attempts": max(1, min(attempts, 1000)),
        "occurred_at": int(time.time()) if occurred_at is None else occurred_at,
    }
    if provider_message_id:
        result["provider_message_id"] = provider_message_id[:256]
    if error_code is not None:
        code = "".join(c if c.isalnum() or c in "_.:-" else "_" for c in error_code)[:64] or "error"
        result["error"] = {"code": code, "message": error_message[:1000], "permanent": permanent}
    if artifact is not None:
        result["artifact"] = artifact
    return result


def result_batches(
    reporter: str, company_id: int, results: Sequence[dict[str, Any]], batch_id: str | None = None
) -> list[dict[str, Any]]:
    batches: list[dict[str, Any]] = []
    for start in range(0, len(results), RESULTS_PER_MESSAGE):
        batch: dict[str, Any] = {
            "type": "result_batch",
            "contract_version": 1,
            "report_id": f"{reporter[:2]}-{uuid.uuid4().hex}",
            "company_id": company_id,
            "reporter": reporter,
            "created_at": int(time.time()),
            "results": list(results[start : start + RESULTS_PER_MESSAGE]),
        }
        if batch_id:
            batch["batch_id"] = batch_id
        validate("result_batch", batch)
        batches.append(batch)
    return batches
