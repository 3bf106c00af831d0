"""Submission targets behind one interface, and the outbox that drives them."""

from moodle_bridge.transports.targets import (
    ApiGatewaySubmitter,
    SqsSubmitter,
    SubmitError,
    Submitter,
    WorkerSubmitter,
    build_envelope,
)

__all__ = [
    "ApiGatewaySubmitter",
    "SqsSubmitter",
    "SubmitError",
    "Submitter",
    "WorkerSubmitter",
    "build_envelope",
]
