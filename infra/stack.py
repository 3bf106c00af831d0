"""The offload stack: composes one construct per concern."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import Annotations, CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infra.bundling import BundleMode, build_lambda_zip
from infra.config import OffloadConfig
from infra.constructs.api import INTAKE_PATH, UNSUBSCRIBE_PATH, VERIFY_PATH, BridgeAccess, OffloadApi
from infra.constructs.email import EmailSending
from infra.constructs.functions import OffloadFunctions, queue_timeouts
from infra.constructs.monitoring import OffloadMonitoring
from infra.constructs.queues import OffloadQueues
from infra.constructs.storage import INITIAL_SEAL_KEYSET, CertificateStorage, HmacKeys, IdempotencyTable

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class OffloadStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: OffloadConfig,
        bundle_mode: BundleMode = "full",
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        removal = RemovalPolicy.RETAIN if config.retain_data else RemovalPolicy.DESTROY

        self.queues = OffloadQueues(self, "Queues", timeouts=queue_timeouts(), removal=removal)
        self.storage = CertificateStorage(self, "Storage", config=config, removal=removal)
        self.idempotency = IdempotencyTable(self, "Idempotency", removal=removal)
        self.keys = HmacKeys(self, "HmacKeys", removal=removal)
        # Readable by the email sender and the bridge only: password mail travels sealed under it.
        self.seal_keys = HmacKeys(
            self, "SealKeys", removal=removal, label="seal", initial_keyset=INITIAL_SEAL_KEYSET
        )
        self.email = EmailSending(self, "Email", config=config, ses_events=self.queues.ses_events)

        code = lambda_.Code.from_asset(str(build_lambda_zip(PROJECT_ROOT, bundle_mode)))
        self.functions = OffloadFunctions(
            self,
            "Functions",
            config=config,
            code=code,
            queues=self.queues,
            storage=self.storage,
            table=self.idempotency,
            keys=self.keys,
            seal_keys=self.seal_keys,
            email=self.email,
            removal=removal,
        )
        self.api = OffloadApi(
            self, "Api", config=config, handler=self.functions.functions["api"], removal=removal
        )
        public_base = config.public_base_url.rstrip("/") or self.api.base_url
        for function in self.functions.functions.values():
            function.add_environment("VERIFY_URL_BASE", f"{public_base}{VERIFY_PATH}/")
            function.add_environment("UNSUBSCRIBE_URL_BASE", f"{public_base}{UNSUBSCRIBE_PATH}/")
        self.bridge = BridgeAccess(
            self,
            "Bridge",
            config=config,
            api=self.api,
            queues=self.queues,
            storage=self.storage,
            keys=self.keys,
            seal_keys=self.seal_keys,
            table=self.idempotency,
        )
        self.monitoring = OffloadMonitoring(
            self,
            "Monitoring",
            config=config,
            queues=self.queues,
            functions=self.functions.functions,
            api=self.api.api,
            removal=removal,
        )
        self._outputs()
        if config.is_prod and config.sender_address.endswith(("@example.com", "@example.org")):
            Annotations.of(self).add_warning_v2(
                "offload:placeholder-sender",
                "sender_address is still a placeholder: set it (and domain) in cdk.json or the config file",
            )

    def _outputs(self) -> None:
        outputs = {
            "ApiBaseUrl": (self.api.base_url, "bridge: aws.api_gateway_url (api_gateway mode)"),
            "IntakeUrl": (f"{self.api.base_url}{INTAKE_PATH}", "POST endpoint for signed envelopes (SigV4)"),
            "JobsQueueUrl": (self.queues.jobs.queue.queue_url, "bridge: aws.jobs_queue_url"),
            "CertificatesQueueUrl": (
                self.queues.certificates.queue.queue_url,
                "bridge: aws.certificates_queue_url",
            ),
            "ResultsQueueUrl": (self.queues.results.queue.queue_url, "bridge: aws.results_queue_url"),
            "ResultsDlqUrl": (
                self.queues.results.dlq.queue_url,
                "bridge: aws.results_dlq_url (reconciliation)",
            ),
            "CertificateBucketName": (self.storage.bucket.bucket_name, "bridge: aws.content_bucket"),
            "IdempotencyTableName": (
                self.idempotency.table.table_name,
                "bridge: aws.idempotency_table (job cancel records, deadline reconciliation)",
            ),
            "HmacSecretArn": (
                self.keys.secret.secret_arn,
                "bridge: [secrets] keysets = secretsmanager:<this ARN> (or copy its value)",
            ),
            "SealSecretArn": (
                self.seal_keys.secret.secret_arn,
                "bridge: MRCO_SEAL_KEYSETS (copy the seal key set; only the email sender reads it in AWS)",
            ),
            "BridgeUserName": (self.bridge.user.user_name, "IAM user for the bridge; create its access key"),
            "ConfigurationSetName": (
                self.email.configuration_set.configuration_set_name,
                "SES configuration set used for every send",
            ),
            "AlarmTopicArn": (self.monitoring.topic.topic_arn, "SNS topic of all alarms"),
            "DashboardName": (self.monitoring.dashboard.dashboard_name, "CloudWatch dashboard"),
        }
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)
        if self.email.identity is not None:
            identity = self.email.identity
            for index, (record, value) in enumerate(
                (
                    (identity.dkim_dns_token_name1, identity.dkim_dns_token_value1),
                    (identity.dkim_dns_token_name2, identity.dkim_dns_token_value2),
                    (identity.dkim_dns_token_name3, identity.dkim_dns_token_value3),
                ),
                start=1,
            ):
                CfnOutput(
                    self,
                    f"DkimRecord{index}",
                    value=f"{record} CNAME {value}",
                    description="Easy DKIM record",
                )
        for company_id, tenant in self.email.tenants.items():
            CfnOutput(
                self,
                f"Tenant{company_id}Name",
                value=tenant.tenant_name,
                description=f"SES tenant of company {company_id}",
            )
