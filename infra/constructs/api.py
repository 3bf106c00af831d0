"""REST API (intake, verification, one-click unsubscribe) and the bridge's IAM user."""

from __future__ import annotations

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from infra.config import OffloadConfig
from infra.constructs import retention
from infra.constructs.queues import OffloadQueues
from infra.constructs.storage import (
    CERTIFICATES_PREFIX,
    CONTENTS_PREFIX,
    TEMPLATES_PREFIX,
    CertificateStorage,
    HmacKeys,
    IdempotencyTable,
)
from infra.nag import acknowledge
from offload_contract.validation import schema_document

STAGE_NAME = "api"
INTAKE_PATH = "/v1/batches"
VERIFY_PATH = "/v1/certificates/verify"
UNSUBSCRIBE_PATH = "/v1/unsubscribe"
#: The bridge's calls on the sender's table (moodle_bridge/transports/cloud_records.py) and the
#: item keys it may touch (tests/infra/test_bridge_policy.py derives both from that module and the
#: key builders it imports from offload_contract/cloud_keys.py).
BRIDGE_TABLE_ACTIONS = ("dynamodb:BatchGetItem", "dynamodb:PutItem")
BRIDGE_TABLE_KEYS = ("cancel#*", "send#c*")
BRIDGE_SES_ACTIONS = ("ses:GetEmailIdentity",)
#: Revocation (moodle_bridge/transports/certificate_records.py): a conditional update of the
#: verification records only (tests/infra/test_bridge_policy.py derives both from that module).
BRIDGE_CERTIFICATE_ACTIONS = ("dynamodb:UpdateItem",)
BRIDGE_CERTIFICATE_KEYS = ("cert#*",)
#: `certificates template set|show|preview` read and write the templates the renderer reads.
BRIDGE_TEMPLATE_ACTIONS = ("s3:GetObject", "s3:PutObject")


def envelope_model_schema() -> apigw.JsonSchema:
    """A coarse API Gateway model of the contract envelope (draft-4 subset).

    The Lambda validates the full contract and the HMAC signature; this model only lets API
    Gateway turn away bodies that are obviously not envelopes before they cost an invocation.
    """
    envelope = schema_document()["definitions"]["envelope"]
    return apigw.JsonSchema(
        schema=apigw.JsonSchemaVersion.DRAFT4,
        type=apigw.JsonSchemaType.OBJECT,
        required=list(envelope["required"]),
        properties={
            "contract_version": apigw.JsonSchema(type=apigw.JsonSchemaType.INTEGER),
            "message_type": apigw.JsonSchema(
                type=apigw.JsonSchemaType.STRING, enum=list(envelope["properties"]["message_type"]["enum"])
            ),
            "message_id": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING),
            "sent_at": apigw.JsonSchema(type=apigw.JsonSchemaType.INTEGER),
            "message": apigw.JsonSchema(type=apigw.JsonSchemaType.OBJECT),
        },
    )


class OffloadApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: OffloadConfig,
        handler: lambda_.IFunction,
        removal: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=retention(config.log_retention_days),
            removal_policy=removal,
        )
        self.account_role = self._account_logging_role()
        self.api = apigw.RestApi(
            self,
            "RestApi",
            description=f"ManiReports Offload ({config.env_name})",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            cloud_watch_role=False,
            deploy_options=apigw.StageOptions(
                stage_name=STAGE_NAME,
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=True,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
                throttling_rate_limit=config.api_rate_limit,
                throttling_burst_limit=config.api_burst_limit,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,
                metrics_enabled=True,
                tracing_enabled=config.tracing,
                method_options={
                    f"{path}/{method}": apigw.MethodDeploymentOptions(
                        throttling_rate_limit=config.public_rate_limit,
                        throttling_burst_limit=config.public_burst_limit,
                    )
                    for path, method in (
                        (f"{VERIFY_PATH}/{{code}}", "GET"),
                        (f"{UNSUBSCRIBE_PATH}/{{token}}", "POST"),
                        (f"{UNSUBSCRIBE_PATH}/{{token}}", "GET"),
                    )
                },
            ),
        )
        # The stage may only be created once the account knows the logging role.
        self.api.deployment_stage.node.add_dependency(self.account)

        integration = apigw.LambdaIntegration(handler, proxy=True)
        body_validator = self.api.add_request_validator(
            "BodyValidator", validate_request_body=True, validate_request_parameters=True
        )
        params_validator = self.api.add_request_validator(
            "ParamsValidator", validate_request_body=False, validate_request_parameters=True
        )
        envelope = self.api.add_model(
            "Envelope", content_type="application/json", model_name="Envelope", schema=envelope_model_schema()
        )
        v1 = self.api.root.add_resource("v1")
        self.intake_method = v1.add_resource("batches").add_method(
            "POST",
            integration,
            authorization_type=apigw.AuthorizationType.IAM,
            request_validator=body_validator,
            request_models={"application/json": envelope},
        )
        self.verify_method = (
            v1.add_resource("certificates")
            .add_resource("verify")
            .add_resource("{code}")
            .add_method(
                "GET",
                integration,
                authorization_type=apigw.AuthorizationType.NONE,
                request_validator=params_validator,
                request_parameters={"method.request.path.code": True},
            )
        )
        unsubscribe = v1.add_resource("unsubscribe").add_resource("{token}")
        self.unsubscribe_method = unsubscribe.add_method(
            "POST",
            integration,
            authorization_type=apigw.AuthorizationType.NONE,
            request_validator=params_validator,
            request_parameters={"method.request.path.token": True},
        )
        # The human page (a confirm button; a GET changes nothing, since mail scanners fetch links).
        self.unsubscribe_page_method = unsubscribe.add_method(
            "GET",
            integration,
            authorization_type=apigw.AuthorizationType.NONE,
            request_validator=params_validator,
            request_parameters={"method.request.path.token": True},
        )
        self.web_acl = self._public_web_acl(config) if config.public_waf else None
        self._acknowledge(config)

    def _public_web_acl(self, config: OffloadConfig) -> wafv2.CfnWebACL:
        """Per-client throttling of the public routes (the stage throttle is shared by everyone).

        One rate-based rule: a source address that sends more than ``public_waf_limit_per_5min``
        verify or unsubscribe requests in 5 minutes is answered 429 until it slows down; other
        clients are unaffected. The signed intake is left to IAM and the stage throttle."""

        def starts_with(prefix: str) -> wafv2.CfnWebACL.StatementProperty:
            # Matched after percent-decoding and path normalisation (//, ./, ../), so a spelling
            # of the same route that API Gateway still routes is counted too.
            return wafv2.CfnWebACL.StatementProperty(
                byte_match_statement=wafv2.CfnWebACL.ByteMatchStatementProperty(
                    field_to_match=wafv2.CfnWebACL.FieldToMatchProperty(uri_path={}),
                    positional_constraint="STARTS_WITH",
                    search_string=prefix,
                    text_transformations=[
                        wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="URL_DECODE"),
                        wafv2.CfnWebACL.TextTransformationProperty(priority=1, type="NORMALIZE_PATH"),
                    ],
                )
            )

        # The stage URL carries the stage name (/api/v1/...); a custom domain mapped to the stage
        # (public_base_url) does not (/v1/...). Both count against the same client.
        public_prefixes = [
            prefix
            for path in (VERIFY_PATH, UNSUBSCRIBE_PATH)
            for prefix in (f"/{STAGE_NAME}{path}/", f"{path}/")
        ]

        def visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
            return wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=False
            )

        acl = wafv2.CfnWebACL(
            self,
            "PublicRoutesAcl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=visibility("offload-public-acl"),
            rules=[
                wafv2.CfnWebACL.RuleProperty(
                    name="PublicRoutesPerClient",
                    priority=0,
                    action=wafv2.CfnWebACL.RuleActionProperty(
                        block=wafv2.CfnWebACL.BlockActionProperty(
                            custom_response=wafv2.CfnWebACL.CustomResponseProperty(response_code=429)
                        )
                    ),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                            aggregate_key_type="IP",
                            limit=config.public_waf_limit_per_5min,
                            evaluation_window_sec=300,
                            scope_down_statement=wafv2.CfnWebACL.StatementProperty(
                                or_statement=wafv2.CfnWebACL.OrStatementProperty(
                                    statements=[starts_with(prefix) for prefix in public_prefixes]
                                )
                            ),
                        )
                    ),
                    visibility_config=visibility("offload-public-per-client"),
                )
            ],
        )
        wafv2.CfnWebACLAssociation(
            self,
            "PublicRoutesAclAssociation",
            resource_arn=self.api.deployment_stage.stage_arn,
            web_acl_arn=acl.attr_arn,
        )
        return acl

    @property
    def base_url(self) -> str:
        """The stage URL without a trailing slash, built from the API id only.

        ``RestApi.url`` references the stage, which depends on the methods, which reference
        the API function: putting it in that function's environment would be a cycle.
        """
        stack = Stack.of(self)
        return f"https://{self.api.rest_api_id}.execute-api.{stack.region}.{stack.url_suffix}/{STAGE_NAME}"

    def _account_logging_role(self) -> iam.Role:
        """API Gateway's account-level CloudWatch role, with a scoped inline policy.

        This replaces the AmazonAPIGatewayPushToCloudWatchLogs managed policy. The setting is
        per account and region: API Gateway writes execution logs of every API in the region
        with it, hence the API-Gateway-Execution-Logs_* scope.
        """
        stack = Stack.of(self)
        role = iam.Role(
            self,
            "AccountLoggingRole",
            assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
            description="API Gateway account logging role (execution and access logs)",
            inline_policies={
                "PushLogs": iam.PolicyDocument(
                    statements=[
                        iam.PolicyStatement(
                            actions=["logs:DescribeLogGroups"],
                            resources=[
                                stack.format_arn(
                                    service="logs",
                                    resource="log-group",
                                    resource_name="*",
                                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                                )
                            ],
                        ),
                        iam.PolicyStatement(
                            actions=[
                                "logs:CreateLogGroup",
                                "logs:CreateLogStream",
                                "logs:DescribeLogStreams",
                                "logs:PutLogEvents",
                                "logs:PutRetentionPolicy",
                            ],
                            resources=[
                                stack.format_arn(
                                    service="logs",
                                    resource="log-group",
                                    resource_name="API-Gateway-Execution-Logs_*",
                                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                                ),
                                stack.format_arn(
                                    service="logs",
                                    resource="log-group",
                                    resource_name="API-Gateway-Execution-Logs_*:log-stream:*",
                                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                                ),
                                self.access_logs.log_group_arn,
                            ],
                        ),
                    ]
                )
            },
        )
        self.account = apigw.CfnAccount(self, "Account", cloud_watch_role_arn=role.role_arn)
        acknowledge(
            role,
            id="AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:*]",
            reason="logs:DescribeLogGroups has no resource scope narrower than the account's log groups.",
        )
        for suffix in ("API-Gateway-Execution-Logs_*", "API-Gateway-Execution-Logs_*:log-stream:*"):
            acknowledge(
                role,
                id=f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:{suffix}]",
                reason="API Gateway names execution log groups API-Gateway-Execution-Logs_<api-id>/<stage>.",
            )
        return role

    def _acknowledge(self, config: OffloadConfig) -> None:
        if not config.public_waf:
            acknowledge(
                self.api,
                id="AwsSolutions-APIG3",
                reason=(
                    "public_waf is off in this deployment's configuration: the public routes are "
                    "throttled per stage only, and one client can exhaust that throttle for everyone "
                    "(docs/security.md). The intake is IAM-signed."
                ),
            )
        for method, why in (
            (
                self.verify_method,
                "Certificate verification is public by design: any certificate holder may check a code.",
            ),
            (
                self.unsubscribe_method,
                "RFC 8058 one-click unsubscribe is POSTed by mail clients without credentials; "
                "the token is HMAC-signed and bound to company, recipient and campaign.",
            ),
            (
                self.unsubscribe_page_method,
                "The unsubscribe page is opened from a mail link without credentials; it only shows a "
                "confirm button (a GET records nothing) and refuses tokens that are not HMAC-signed.",
            ),
        ):
            acknowledge(method, id="AwsSolutions-APIG4", reason=why)
            acknowledge(method, id="AwsSolutions-COG4", reason=why)
        acknowledge(
            self.intake_method,
            id="AwsSolutions-COG4",
            reason="The intake uses IAM (SigV4) authorization for the bridge's IAM user, not Cognito.",
        )


class BridgeAccess(Construct):
    """The IAM user the Moodle bridge uses (access keys are created by the operator, not here)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: OffloadConfig,
        api: OffloadApi,
        queues: OffloadQueues,
        storage: CertificateStorage,
        keys: HmacKeys,
        seal_keys: HmacKeys,
        table: IdempotencyTable | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.user = iam.User(self, "User")
        bucket_arn = storage.bucket.bucket_arn
        statements = [
            iam.PolicyStatement(
                sid="InvokeIntake",
                actions=["execute-api:Invoke"],
                resources=[api.api.arn_for_execute_api("POST", INTAKE_PATH, STAGE_NAME)],
            ),
            iam.PolicyStatement(
                sid="EnqueueBatches",
                actions=["sqs:SendMessage", "sqs:GetQueueAttributes"],
                resources=[queues.jobs.queue.queue_arn, queues.certificates.queue.queue_arn],
            ),
            iam.PolicyStatement(
                sid="DrainResults",
                actions=[
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                    "sqs:GetQueueAttributes",
                ],
                resources=[queues.results.queue.queue_arn, queues.results.dlq.queue_arn],
            ),
            iam.PolicyStatement(
                sid="OffloadContents",
                actions=["s3:PutObject"],
                resources=[f"{bucket_arn}/{CONTENTS_PREFIX}*"],
            ),
            iam.PolicyStatement(
                sid="FetchCertificates",
                actions=["s3:GetObject"],
                resources=[f"{bucket_arn}/{CERTIFICATES_PREFIX}*"],
            ),
            iam.PolicyStatement(
                sid="CertificateTemplates",
                actions=list(BRIDGE_TEMPLATE_ACTIONS),
                resources=[f"{bucket_arn}/{TEMPLATES_PREFIX}*"],
            ),
        ]
        if table is not None:
            # Job control and deadline reconciliation (moodle_bridge/transports/cloud_records.py):
            # read the sender's per-recipient records and write cancel records and the closing
            # record of a recipient nobody claimed. Only items whose key starts with these
            # prefixes (never pacing, nonces, job routes or certificates).
            statements.append(
                iam.PolicyStatement(
                    sid="JobRecords",
                    actions=list(BRIDGE_TABLE_ACTIONS),
                    resources=[table.table.table_arn],
                    conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": list(BRIDGE_TABLE_KEYS)}},
                )
            )
            # Certificate revocation: only verification records, only UpdateItem (conditional on the
            # record existing and belonging to the company, so nothing is created).
            statements.append(
                iam.PolicyStatement(
                    sid="RevokeCertificates",
                    actions=list(BRIDGE_CERTIFICATE_ACTIONS),
                    resources=[table.table.table_arn],
                    conditions={
                        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": list(BRIDGE_CERTIFICATE_KEYS)}
                    },
                )
            )
        # `company set --sender-address` asks SES whether the address (or its domain) is a verified
        # identity before routing a company's mail from it (moodle_bridge/commands/company_checks.py).
        statements.append(
            iam.PolicyStatement(
                sid="CheckSenders",
                actions=list(BRIDGE_SES_ACTIONS),
                resources=[Stack.of(self).format_arn(service="ses", resource="identity", resource_name="*")],
            )
        )
        if config.bridge_reads_hmac_secret:
            statements.append(
                iam.PolicyStatement(
                    sid="ReadHmacKeys",
                    actions=["secretsmanager:GetSecretValue"],
                    resources=[keys.secret.secret_arn, seal_keys.secret.secret_arn],
                )
            )
        self.policy = iam.Policy(self, "Policy", statements=statements, users=[self.user])
        stack = Stack.of(self)
        bucket_token = f"<{stack.get_logical_id(storage.bucket.node.default_child)}.Arn>"  # type: ignore[arg-type]
        acknowledge(
            self.policy,
            id="AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ses:<AWS::Region>:<AWS::AccountId>:identity/*]",
            reason="The bridge reads (never changes) whether a sender address or its domain is a verified "
            "identity; the address is the admin's input, so no narrower resource is known in advance.",
        )
        for prefix in (CONTENTS_PREFIX, CERTIFICATES_PREFIX, TEMPLATES_PREFIX):
            acknowledge(
                self.policy,
                id=f"AwsSolutions-IAM5[Resource::{bucket_token}/{prefix}*]",
                reason="The bridge writes and reads objects under one fixed prefix of this stack's bucket.",
            )
