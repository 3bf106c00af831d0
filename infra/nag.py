"""cdk-nag 3.x glue: findings are acknowledged through CDK's native Validations API."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(construct: IConstruct, id: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding on ``construct``; every acknowledgement needs a reason."""
    if len(reason.strip()) < 20:
        raise ValueError(f"acknowledgement of {id} needs a written reason")
    qualified = f"AwsSolutions::{id}" if id.startswith("AwsSolutions-") else id
    Validations.of(construct).acknowledge(Acknowledgment(id=qualified, reason=reason))
