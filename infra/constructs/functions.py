"""The five Lambda functions, their least-privilege roles and SQS event source mappings."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.config import OffloadConfig
from infra.constructs import retention
from infra.constructs.email import EmailSending
from infra.constructs.queues import OffloadQueues, QueueWithDlq
from infra.constructs.storage import (
    CERTIFICATES_PREFIX,
    CONTENTS_PREFIX,
    TEMPLATES_PREFIX,
    CertificateStorage,
    HmacKeys,
    IdempotencyTable,
)
from infra.nag import acknowledge

RUNTIME = lambda_.Runtime.PYTHON_3_14
METRICS_NAMESPACE = "ManiReportsOffload"


@dataclass(frozen=True)
class FunctionSpec:
    key: str
    handler: str
    timeout: Duration
    memory_mb: int
    description: str


#: Timeouts drive the queues' visibility timeouts (6x), so they are defined here, once.
SPECS: dict[str, FunctionSpec] = {
    spec.key: spec
    for spec in (
        FunctionSpec(
            "email_sender",
            "lambdas.handlers.email_sender.handler",
            Duration.minutes(5),
            512,
            "Sends email_batch messages from the jobs queue through SES, paced to the send rate",
        ),
        FunctionSpec(
            "certificate_renderer",
            "lambdas.handlers.certificate_renderer.handler",
            Duration.minutes(5),
            1024,
            "Renders certificate_batch PDFs to S3",
        ),
        FunctionSpec(
            "ses_events",
            "lambdas.handlers.ses_events.handler",
            Duration.seconds(60),
            256,
            "Turns SES bounce/complaint/delivery events into result batches",
        ),
        FunctionSpec(
            "callback_dispatcher",
            "lambdas.handlers.callback_dispatcher.handler",
            Duration.seconds(60),
            256,
            "POSTs signed result batches to the Moodle bridge (push mode)",
        ),
        FunctionSpec(
            "api",
            "lambdas.handlers.api.handler",
            Duration.seconds(15),
            512,
            "REST API: batch intake, certificate verification, one-click unsubscribe",
        ),
    )
}

#: Which queue feeds which function.
QUEUE_CONSUMERS = {
    "jobs": "email_sender",
    "certificates": "certificate_renderer",
    "ses-events": "ses_events",
    "results": "callback_dispatcher",
}


def queue_timeouts() -> dict[str, Duration]:
    return {queue: SPECS[function].timeout for queue, function in QUEUE_CONSUMERS.items()}


class OffloadFunctions(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: OffloadConfig,
        code: lambda_.Code,
        queues: OffloadQueues,
        storage: CertificateStorage,
        table: IdempotencyTable,
        keys: HmacKeys,
        seal_keys: HmacKeys,
        email: EmailSending,
        removal: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        stack = Stack.of(self)
        self.functions: dict[str, lambda_.Function] = {}
        self.roles: dict[str, iam.Role] = {}
        self.log_groups: dict[str, logs.LogGroup] = {}
        environment = {
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            "LOG_LEVEL": "INFO" if config.is_prod else "DEBUG",
            "JOBS_QUEUE_URL": queues.jobs.queue.queue_url,
            "CERTIFICATES_QUEUE_URL": queues.certificates.queue.queue_url,
            "RESULTS_QUEUE_URL": queues.results.queue.queue_url,
            "IDEMPOTENCY_TABLE": table.table.table_name,
            "CERTIFICATE_BUCKET": storage.bucket.bucket_name,
            "CONTENT_BUCKET": storage.bucket.bucket_name,
            "CONFIGURATION_SET_NAME": email.configuration_set.configuration_set_name,
            "HMAC_SECRET_ARN": keys.secret.secret_arn,
            "SENDER_ADDRESS": config.sender_address,
            "SES_MAX_SEND_RATE": f"{config.ses_send_rate:g}",
            "SENDER_PARALLEL_SENDS": str(config.sender_parallel_sends),
        }
        for spec in SPECS.values():
            self._create(spec, code, environment, removal)
        # Only the sender opens sealed password mail (offload_contract/sealing.py).
        self.functions["email_sender"].add_environment("SEAL_SECRET_ARN", seal_keys.secret.secret_arn)
        if email.tenants:
            # Not in the agreed list: tells the sender which SES tenant sends for which company.
            self.functions["email_sender"].add_environment(
                "SES_TENANT_NAMES",
                json.dumps(
                    {str(cid): t.tenant_name for cid, t in sorted(email.tenants.items())},
                    separators=(",", ":"),
                ),
            )

        # The bucket's default encryption is SSE-S3; the renderer asks for the same per object
        # (its built-in default, aws:kms, would add a KMS request per PUT and GET).
        self.functions["certificate_renderer"].add_environment("SSE_ALGORITHM", "AES256")
        # Optional PAdES signing per company (lambdas/certificates/signing.py): a company's PKCS#12
        # is the secret <stack>/certificate-signing/company-<id>, created by the site (docs/lambdas.md).
        self.signing_secret_prefix = f"{stack.stack_name}/certificate-signing/company-"
        self.functions["certificate_renderer"].add_environment(
            "SIGNING_SECRET_PREFIX", self.signing_secret_prefix
        )

        # Each role gets exactly the calls its handler's code makes; tests/infra/test_iam_matches_code.py
        # derives those calls from lambdas/ and compares them with the synthesized policies.
        bucket_arn = storage.bucket.bucket_arn
        certificates_objects = f"{bucket_arn}/{CERTIFICATES_PREFIX}*"
        contents_objects = f"{bucket_arn}/{CONTENTS_PREFIX}*"
        templates_objects = f"{bucket_arn}/{TEMPLATES_PREFIX}*"
        table_arn = table.table.table_arn

        def items(*operations: str) -> iam.PolicyStatement:
            # TransactWriteItems has no IAM action of its own: each item needs its own action
            # (PutItem for the sender's claims).
            return iam.PolicyStatement(
                sid="IdempotencyAndPacing",
                actions=[f"dynamodb:{operation}" for operation in operations],
                resources=[table_arn],
            )

        read_keys = iam.PolicyStatement(
            sid="ReadHmacKeys", actions=["secretsmanager:GetSecretValue"], resources=[keys.secret.secret_arn]
        )

        def send_to(*targets: QueueWithDlq) -> iam.PolicyStatement:
            # SendMessageBatch is authorized by sqs:SendMessage.
            return iam.PolicyStatement(
                sid="SendToQueues",
                actions=["sqs:SendMessage"],
                resources=[t.queue.queue_arn for t in targets],
            )

        sender_domain = config.sender_address.rsplit("@", 1)[1]
        identity_arns = sorted(
            {
                stack.format_arn(service="ses", resource="identity", resource_name=name)
                for name in (
                    config.sender_address,
                    sender_domain,
                    *([config.domain] if config.domain else []),
                )
            }
        )
        self._allow(
            "email_sender",
            # Look-up of a batch's recipients (BatchGetItem), claims per SES call (PutItem),
            # completion (BatchWriteItem), release (DeleteItem), pacing (UpdateItem), look-ups (GetItem).
            items("BatchGetItem", "BatchWriteItem", "DeleteItem", "GetItem", "PutItem", "UpdateItem"),
            # Re-queued recipients go back to the jobs queue; outcomes to the results queue.
            send_to(queues.jobs, queues.results),
            iam.PolicyStatement(
                sid="SendThroughSes",
                actions=["ses:SendEmail", "ses:SendBulkEmail"],
                resources=[*identity_arns, email.configuration_set_arn, *email.tenant_arns],
            ),
            iam.PolicyStatement(sid="ReadSendQuota", actions=["ses:GetAccount"], resources=["*"]),
            iam.PolicyStatement(
                sid="ReadContentsAndAttachments",
                actions=["s3:GetObject"],
                resources=[contents_objects, certificates_objects],
            ),
        )
        self._allow(
            "certificate_renderer",
            items("PutItem"),
            # Completion mail is forwarded to the jobs queue; outcomes to the results queue.
            send_to(queues.jobs, queues.results),
            iam.PolicyStatement(
                sid="WriteCertificates", actions=["s3:PutObject"], resources=[certificates_objects]
            ),
            iam.PolicyStatement(sid="ReadTemplates", actions=["s3:GetObject"], resources=[templates_objects]),
            iam.PolicyStatement(
                sid="ReadSigningKeys",
                actions=["secretsmanager:GetSecretValue"],
                # Secrets Manager appends 6 random characters to a secret's name in its ARN.
                resources=[
                    stack.format_arn(
                        service="secretsmanager",
                        resource="secret",
                        resource_name=f"{self.signing_secret_prefix}*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            ),
        )
        self._allow(
            "ses_events",
            # Claims of a batch's Send events (BatchGetItem), crash-window settlement and the
            # Send watermark (UpdateItem), job routes (GetItem).
            items("BatchGetItem", "GetItem", "UpdateItem"),
            send_to(queues.results),
        )
        self._allow(
            "email_sender",
            iam.PolicyStatement(
                sid="ReadSealKeys",
                actions=["secretsmanager:GetSecretValue"],
                resources=[seal_keys.secret.secret_arn],
            ),
        )
        self._allow("callback_dispatcher", read_keys)
        self._allow(
            "api",
            # Nonces and unsubscribe records (PutItem), certificate verification and job routes
            # (GetItem), the per-source count of wrong verification codes (UpdateItem).
            items("GetItem", "PutItem", "UpdateItem"),
            read_keys,
            # Results: a confirmed unsubscribe is reported to the bridge as a result_batch.
            send_to(queues.jobs, queues.certificates, queues.results),
        )

        self._acknowledge_wildcards(storage)

        self.event_sources = {
            "jobs": sources.SqsEventSource(
                queues.jobs.queue,
                # One email_batch (up to 200 recipients) per invocation keeps pacing exact
                # and a failure small.
                batch_size=1,
                max_batching_window=Duration.seconds(0),
                max_concurrency=config.sender_max_concurrency,
                report_batch_item_failures=True,
            ),
            "certificates": sources.SqsEventSource(
                queues.certificates.queue,
                batch_size=1,
                max_batching_window=Duration.seconds(0),
                max_concurrency=10,
                report_batch_item_failures=True,
            ),
            "ses-events": sources.SqsEventSource(
                queues.ses_events.queue,
                batch_size=100,
                max_batching_window=Duration.seconds(5),
                max_concurrency=2,
                report_batch_item_failures=True,
            ),
            "results": sources.SqsEventSource(
                queues.results.queue,
                batch_size=10,
                max_batching_window=Duration.seconds(2),
                max_concurrency=5,
                report_batch_item_failures=True,
                # Pull mode: the bridge drains the results queue itself.
                enabled=config.callback_mode == "push",
            ),
        }
        for queue_name, function_key in QUEUE_CONSUMERS.items():
            self.functions[function_key].add_event_source(self.event_sources[queue_name])

    def _create(
        self, spec: FunctionSpec, code: lambda_.Code, environment: dict[str, str], removal: RemovalPolicy
    ) -> None:
        name = "".join(part.capitalize() for part in spec.key.split("_"))
        log_group = logs.LogGroup(
            self,
            f"{name}Logs",
            retention=retention(self._config.log_retention_days),
            removal_policy=removal,
        )
        role = iam.Role(
            self,
            f"{name}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"ManiReports Offload {spec.key} ({self._config.env_name})",
        )
        # Scoped replacement for the AWSLambdaBasicExecutionRole managed policy.
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteOwnLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[log_group.log_group_arn],
            )
        )
        function = lambda_.Function(
            self,
            name,
            description=spec.description,
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            handler=spec.handler,
            code=code,
            timeout=spec.timeout,
            memory_size=spec.memory_mb,
            role=role,
            log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            tracing=lambda_.Tracing.ACTIVE if self._config.tracing else lambda_.Tracing.DISABLED,
            reserved_concurrent_executions=(
                self._config.sender_reserved_concurrency if spec.key == "email_sender" else None
            ),
            environment={**environment, "POWERTOOLS_SERVICE_NAME": f"offload-{spec.key.replace('_', '-')}"},
        )
        self.functions[spec.key] = function
        self.roles[spec.key] = role
        self.log_groups[spec.key] = log_group

    def _allow(self, key: str, *statements: iam.PolicyStatement) -> None:
        for statement in statements:
            self.roles[key].add_to_policy(statement)

    def _acknowledge_wildcards(self, storage: CertificateStorage) -> None:
        bucket_token = f"<{Stack.of(self).get_logical_id(storage.bucket.node.default_child)}.Arn>"  # type: ignore[arg-type]
        prefix_reason = (
            "Objects are addressed by company/job/recipient under a fixed prefix; the grant is "
            "limited to that prefix of this stack's bucket."
        )
        needs_prefix = {
            "email_sender": (CONTENTS_PREFIX, CERTIFICATES_PREFIX),
            "certificate_renderer": (TEMPLATES_PREFIX, CERTIFICATES_PREFIX),
        }
        for key, role in self.roles.items():
            policy = role.node.try_find_child("DefaultPolicy")
            if policy is None:
                raise RuntimeError(f"role of {key} has no default policy")
            if self._config.tracing:
                acknowledge(
                    policy,
                    id="AwsSolutions-IAM5[Resource::*]",
                    reason=(
                        "X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level "
                        "permissions (Tracing.ACTIVE)."
                        + (" ses:GetAccount has no resource type either." if key == "email_sender" else "")
                    ),
                )
            elif key == "email_sender":
                acknowledge(
                    policy,
                    id="AwsSolutions-IAM5[Resource::*]",
                    reason="ses:GetAccount supports no resource-level permissions.",
                )
            if key == "certificate_renderer":
                acknowledge(
                    policy,
                    id=(
                        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:"
                        f"<AWS::AccountId>:secret:{self.signing_secret_prefix}*]"
                    ),
                    reason=(
                        "Each company's signing key is its own secret, named by company id under this "
                        "stack's fixed prefix; the grant covers only that prefix (read-only)."
                    ),
                )
            for prefix in needs_prefix.get(key, ()):
                acknowledge(
                    policy, id=f"AwsSolutions-IAM5[Resource::{bucket_token}/{prefix}*]", reason=prefix_reason
                )
