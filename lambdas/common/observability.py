"""Powertools Logger (JSON), Metrics (EMF) and Tracer, one set per container.

Logs carry ids, counts and stable error codes only: never message bodies, template data,
addresses' contents beyond ids, or secrets (tests/lambdas/test_observability.py proves it).
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "manireports-offload"
logger = Logger(service=SERVICE)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "ManiReportsOffload", service=SERVICE
)
tracer = Tracer(service=SERVICE)

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]
