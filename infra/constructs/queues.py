"""SQS queues with dead-letter queues, SSE and TLS-only policies."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from offload_contract.limits import SQS_MAX_MESSAGE_BYTES

#: Receives before a message is moved to its DLQ.
MAX_RECEIVE_COUNT = 5
#: Days a mail-carrying message may live in all (main queue + DLQ, from its first enqueue).
MAIL_DLQ_RETENTION_DAYS = 4
#: AWS guidance: visibility timeout >= 6 x the consuming function's timeout.
VISIBILITY_FACTOR = 6


@dataclass(frozen=True)
class QueueSpec:
    name: str
    consumer_timeout: Duration
    retention: Duration
    #: SQS keeps a message's original enqueue time in the DLQ, so this bounds its whole life.
    dlq_retention: Duration | None = None  # None: 14 days


class QueueWithDlq(Construct):
    """A standard queue, its DLQ (redrive after MAX_RECEIVE_COUNT receives), both encrypted.

    Encryption is SQS-managed SSE rather than a customer KMS key: the EventBridge -> SQS path
    (ses-events) would need a key policy for events.amazonaws.com, every producer and consumer
    would need kms:GenerateDataKey/Decrypt, and KMS requests would be billed per message.
    Messages do carry personal data (addresses, names, mail bodies), but never a plaintext
    temporary password: the bridge seals the user's copy of a password mail under a seal key
    only it and the email sender can read (offload_contract/sealing.py, tests/attacks). Queues
    that hold mail keep it briefly (``retention``; the DLQ's clock runs from the first enqueue).
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, spec: QueueSpec, removal: RemovalPolicy
    ) -> None:
        super().__init__(scope, construct_id)
        self.spec = spec
        self.dlq = sqs.Queue(
            self,
            "Dlq",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=spec.dlq_retention or Duration.days(14),
            max_message_size_bytes=SQS_MAX_MESSAGE_BYTES,
            removal_policy=removal,
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(spec.consumer_timeout.to_seconds() * VISIBILITY_FACTOR),
            retention_period=spec.retention,
            max_message_size_bytes=SQS_MAX_MESSAGE_BYTES,
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=MAX_RECEIVE_COUNT, queue=self.dlq),
            removal_policy=removal,
        )


class OffloadQueues(Construct):
    """jobs (email_batch), certificates (certificate_batch), results, ses-events."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        timeouts: dict[str, Duration],
        removal: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        # (retention, DLQ retention). Queues holding mail bodies keep them for as short a time as
        # operations allow: 2 days to be consumed, 4 in all for an operator to redrive a DLQ (the
        # DLQ alarm fires at once). Results are kept longer for pull mode (bridge offline).
        retention = {
            "jobs": (Duration.days(2), Duration.days(MAIL_DLQ_RETENTION_DAYS)),
            "certificates": (Duration.days(2), Duration.days(MAIL_DLQ_RETENTION_DAYS)),
            "results": (Duration.days(14), Duration.days(14)),
            "ses-events": (Duration.days(4), Duration.days(14)),
        }
        self.by_name: dict[str, QueueWithDlq] = {}
        for name, (days, dlq_days) in retention.items():
            construct_name = "".join(part.capitalize() for part in name.split("-"))
            self.by_name[name] = QueueWithDlq(
                self,
                construct_name,
                spec=QueueSpec(
                    name=name, consumer_timeout=timeouts[name], retention=days, dlq_retention=dlq_days
                ),
                removal=removal,
            )

    @property
    def jobs(self) -> QueueWithDlq:
        return self.by_name["jobs"]

    @property
    def certificates(self) -> QueueWithDlq:
        return self.by_name["certificates"]

    @property
    def results(self) -> QueueWithDlq:
        return self.by_name["results"]

    @property
    def ses_events(self) -> QueueWithDlq:
        return self.by_name["ses-events"]
