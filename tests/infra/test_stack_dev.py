"""The dev stack: every resource and its security properties, cdk-nag and cfn-lint.

One synthesis for the whole module (CDK synthesis takes seconds).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from aws_cdk.assertions import Match

from infra.config import OffloadConfig
from infra.constructs.functions import QUEUE_CONSUMERS, SPECS
from offload_contract.limits import SQS_MAX_MESSAGE_BYTES
from tests.infra.support import Synth, as_list, run_cfn_lint, statements, synthesize

pytestmark = pytest.mark.cdk

REQUIRED_ENV = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "LOG_LEVEL",
    "JOBS_QUEUE_URL",
    "CERTIFICATES_QUEUE_URL",
    "RESULTS_QUEUE_URL",
    "IDEMPOTENCY_TABLE",
    "CERTIFICATE_BUCKET",
    "CONTENT_BUCKET",
    "CONFIGURATION_SET_NAME",
    "HMAC_SECRET_ARN",
    "SENDER_ADDRESS",
    "SES_MAX_SEND_RATE",
    "SENDER_PARALLEL_SENDS",
    "VERIFY_URL_BASE",
    "UNSUBSCRIBE_URL_BASE",
}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    started = time.perf_counter()
    synth = synthesize(tmp_path_factory.mktemp("cdk-dev"), "dev")
    print(f"dev synth: {time.perf_counter() - started:.1f} s")
    return synth


@pytest.fixture(scope="module")
def config(dev: Synth) -> OffloadConfig:
    return dev.stack.config


def _function_key(dev: Synth, logical_id: str) -> str:
    handler = dev.raw["Resources"][logical_id]["Properties"]["Handler"]
    return next(key for key, spec in SPECS.items() if spec.handler == handler)


def _role_to_function(dev: Synth) -> dict[str, str]:
    return {
        fn["Properties"]["Role"]["Fn::GetAtt"][0]: _function_key(dev, logical_id)
        for logical_id, fn in dev.resources("AWS::Lambda::Function").items()
    }


# --- queues ---------------------------------------------------------------------------


def test_eight_queues_all_encrypted_and_sized_to_the_contract(dev: Synth) -> None:
    queues = dev.resources("AWS::SQS::Queue")
    assert len(queues) == 8  # jobs, certificates, results, ses-events + one DLQ each
    for queue in queues.values():
        props = queue["Properties"]
        assert props["SqsManagedSseEnabled"] is True
        assert props["MaximumMessageSize"] == SQS_MAX_MESSAGE_BYTES


def test_every_main_queue_redrives_to_its_own_dlq(dev: Synth) -> None:
    queues = dev.resources("AWS::SQS::Queue")
    with_redrive = {k: v for k, v in queues.items() if "RedrivePolicy" in v["Properties"]}
    assert len(with_redrive) == 4
    targets = set()
    for props in (v["Properties"] for v in with_redrive.values()):
        assert props["RedrivePolicy"]["maxReceiveCount"] == 5
        targets.add(props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0])
    assert len(targets) == 4 and targets.isdisjoint(with_redrive)
    day = 24 * 3600
    for logical_id, resource in with_redrive.items():
        props = resource["Properties"]
        dlq = queues[props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]]["Properties"]
        if logical_id.startswith(("QueuesJobs", "QueuesCertificates")):
            # Mail bodies: consumed within 2 days, gone from the DLQ 4 days after the first enqueue.
            assert props["MessageRetentionPeriod"] == 2 * day, logical_id
            assert dlq["MessageRetentionPeriod"] == 4 * day, logical_id
        else:
            assert dlq["MessageRetentionPeriod"] == 14 * day, logical_id


def test_every_queue_denies_plain_http(dev: Synth) -> None:
    queues = set(dev.resources("AWS::SQS::Queue"))
    protected: set[str] = set()
    for policy in dev.resources("AWS::SQS::QueuePolicy").values():
        props = policy["Properties"]
        denies_http = any(
            s["Effect"] == "Deny"
            and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in props["PolicyDocument"]["Statement"]
        )
        if denies_http:
            protected.update(q["Ref"] for q in props["Queues"])
    assert protected == queues


def test_visibility_timeout_is_at_least_six_times_the_consumer_timeout(dev: Synth) -> None:
    queues = dev.resources("AWS::SQS::Queue")
    functions = dev.resources("AWS::Lambda::Function")
    mappings = dev.resources("AWS::Lambda::EventSourceMapping")
    assert len(mappings) == len(QUEUE_CONSUMERS) == 4
    for mapping in mappings.values():
        props = mapping["Properties"]
        queue = queues[props["EventSourceArn"]["Fn::GetAtt"][0]]["Properties"]
        function = functions[props["FunctionName"]["Ref"]]["Properties"]
        assert queue["VisibilityTimeout"] >= 6 * function["Timeout"]


# --- Lambda ---------------------------------------------------------------------------


def test_five_functions_arm64_python_314_with_the_agreed_handlers(dev: Synth) -> None:
    functions = dev.resources("AWS::Lambda::Function")
    assert sorted(f["Properties"]["Handler"] for f in functions.values()) == sorted(
        s.handler for s in SPECS.values()
    )
    for function in functions.values():
        props = function["Properties"]
        assert props["Runtime"] == "python3.14"
        assert props["Architectures"] == ["arm64"]
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["LoggingConfig"]["LogFormat"] == "JSON"
        assert "Ref" in props["LoggingConfig"]["LogGroup"]
        assert set(props["Environment"]["Variables"]) >= REQUIRED_ENV
        assert props["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"] == "ManiReportsOffload"


def test_log_groups_have_retention(dev: Synth, config: OffloadConfig) -> None:
    groups = dev.resources("AWS::Logs::LogGroup")
    assert len(groups) == 6  # five functions + API access logs
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == config.log_retention_days


def test_event_source_mappings_report_item_failures_and_bound_concurrency(
    dev: Synth, config: OffloadConfig
) -> None:
    by_function = {
        _function_key(dev, m["Properties"]["FunctionName"]["Ref"]): m["Properties"]
        for m in dev.resources("AWS::Lambda::EventSourceMapping").values()
    }
    assert set(by_function) == set(QUEUE_CONSUMERS.values())
    for props in by_function.values():
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert "BatchSize" in props and "MaximumBatchingWindowInSeconds" in props
        assert 2 <= props["ScalingConfig"]["MaximumConcurrency"] <= 1000
    assert by_function["email_sender"]["ScalingConfig"]["MaximumConcurrency"] == config.sender_max_concurrency
    assert by_function["email_sender"]["BatchSize"] == 1
    assert by_function["callback_dispatcher"]["Enabled"] is True  # push mode in dev


def test_roles_use_no_managed_policies(dev: Synth) -> None:
    for role in dev.resources("AWS::IAM::Role").values():
        assert "ManagedPolicyArns" not in role["Properties"]


def test_no_wildcard_actions_and_star_resources_only_where_aws_has_no_resource_type(dev: Synth) -> None:
    allowed_star = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "ses:GetAccount"}
    for _policy, statement in statements(dev.raw):
        actions = as_list(statement["Action"])
        assert all(a != "*" and not a.endswith(":*") for a in actions), actions
        if "*" in as_list(statement["Resource"]):
            assert set(actions) <= allowed_star, actions


def _secret_readers(dev: Synth, prefix: str) -> set[str]:
    secret = next(
        k
        for k in dev.resources("AWS::SecretsManager::Secret")
        if k.startswith(prefix) and "RootSeed" not in k
    )
    role_to_function = _role_to_function(dev)
    readers = set()
    for logical_id, statement in statements(dev.raw):
        if "secretsmanager:GetSecretValue" in as_list(statement["Action"]):
            if {"Ref": secret} not in as_list(statement["Resource"]):
                continue
            props = dev.raw["Resources"][logical_id]["Properties"]
            for role in props.get("Roles", []):
                readers.add(role_to_function[role["Ref"]])
            readers.update("bridge-user" for _ in props.get("Users", []))
    return readers


def test_hmac_secret_is_readable_only_by_signers_and_verifiers(dev: Synth) -> None:
    # The dispatcher signs callbacks, the API verifies intake; sender and renderer never read it.
    assert _secret_readers(dev, "HmacKeys5") == {"callback_dispatcher", "api", "bridge-user"}


def test_seal_secret_is_readable_only_by_the_email_sender_and_the_bridge(dev: Synth) -> None:
    assert _secret_readers(dev, "SealKeys") == {"email_sender", "bridge-user"}
    senders = [
        f["Properties"]["Environment"]["Variables"]
        for f in dev.resources("AWS::Lambda::Function").values()
        if "SEAL_SECRET_ARN" in f["Properties"]["Environment"]["Variables"]
    ]
    assert len(senders) == 1


def test_hmac_secret_value_is_generated_at_deploy_time_not_in_the_template(dev: Synth) -> None:
    secrets = dev.resources("AWS::SecretsManager::Secret")
    seed = next(v for k, v in secrets.items() if "RootSeed" in k)["Properties"]["GenerateSecretString"]
    assert seed["PasswordLength"] == 43 and seed["GenerateStringKey"] == "root"
    keys = next(v for k, v in secrets.items() if k.startswith("HmacKeys5"))["Properties"]["SecretString"]
    joined = json.dumps(keys)
    assert "{{resolve:secretsmanager:" in joined and '\\"current\\":\\"k1\\"' in joined


def test_only_the_email_sender_may_send_mail(dev: Synth) -> None:
    role_to_function = _role_to_function(dev)
    senders = set()
    for logical_id, statement in statements(dev.raw):
        if {"ses:SendEmail", "ses:SendBulkEmail"} & set(as_list(statement["Action"])):
            for role in dev.raw["Resources"][logical_id]["Properties"].get("Roles", []):
                senders.add(role_to_function[role["Ref"]])
            assert "*" not in as_list(statement["Resource"])
    assert senders == {"email_sender"}


# --- S3, DynamoDB ---------------------------------------------------------------------


def test_certificate_bucket_is_private_encrypted_logged_and_lifecycled(dev: Synth) -> None:
    dev.template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                ]
            },
            "LoggingConfiguration": {
                "DestinationBucketName": Match.any_value(),
                "LogFilePrefix": Match.any_value(),
            },
            "VersioningConfiguration": {"Status": "Enabled"},
            "LifecycleConfiguration": {
                "Rules": Match.array_with(
                    [
                        Match.object_like(
                            {"Id": "expire-contents", "Prefix": "contents/", "Status": "Enabled"}
                        ),
                        Match.object_like({"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}),
                    ]
                )
            },
        },
    )


def test_every_bucket_blocks_public_access_and_enforces_tls(dev: Synth) -> None:
    buckets = dev.resources("AWS::S3::Bucket")
    assert len(buckets) == 2
    for bucket in buckets.values():
        assert all(bucket["Properties"]["PublicAccessBlockConfiguration"].values())
        assert "AccessControl" not in bucket["Properties"]
    tls_only = set()
    for policy in dev.resources("AWS::S3::BucketPolicy").values():
        for s in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (
                s["Effect"] == "Deny"
                and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            ):
                tls_only.add(policy["Properties"]["Bucket"]["Ref"])
    assert tls_only == set(buckets)


def test_idempotency_table_matches_powertools_layout(dev: Synth) -> None:
    dev.template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "TimeToLiveSpecification": {"AttributeName": "expiration", "Enabled": True},
            "BillingMode": "PAY_PER_REQUEST",
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "SSESpecification": {"SSEEnabled": True},
        },
    )


# --- SES, EventBridge -----------------------------------------------------------------


def test_configuration_set_publishes_to_eventbridge_and_requires_tls(dev: Synth) -> None:
    dev.template.has_resource_properties(
        "AWS::SES::ConfigurationSet",
        {
            "ReputationOptions": {"ReputationMetricsEnabled": True},
            "SuppressionOptions": {"SuppressedReasons": Match.array_with(["BOUNCE", "COMPLAINT"])},
            "DeliveryOptions": {"TlsPolicy": "REQUIRE"},
        },
    )
    dev.template.has_resource_properties(
        "AWS::SES::ConfigurationSetEventDestination",
        {
            "EventDestination": Match.object_like(
                {
                    "Enabled": True,
                    "EventBridgeDestination": Match.any_value(),
                    "MatchingEventTypes": Match.any_value(),
                }
            )
        },
    )
    (destination,) = dev.resources("AWS::SES::ConfigurationSetEventDestination").values()
    published = set(destination["Properties"]["EventDestination"]["MatchingEventTypes"])
    # "send" settles the email sender's exactly-once crash window (docs/lambdas.md); no open
    # or click tracking in learners' mail.
    assert {"send", "reject", "bounce", "complaint", "delivery", "renderingFailure"} <= published
    assert not published & {"open", "click"}


def test_ses_events_rule_targets_the_ses_events_queue_with_a_dlq(dev: Synth) -> None:
    rule = next(iter(dev.resources("AWS::Events::Rule").values()))["Properties"]
    assert rule["EventPattern"]["source"] == ["aws.ses"]
    target = rule["Targets"][0]
    assert "SesEventsQueue" in target["Arn"]["Fn::GetAtt"][0]
    assert "SesEventsDlq" in target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
    assert dev.resources("AWS::SES::EmailIdentity") == {}  # no domain configured in dev
    assert dev.resources("AWS::SES::Tenant") == {}


# --- API Gateway ----------------------------------------------------------------------


def test_api_methods_auth_and_validation(dev: Synth) -> None:
    resources = {
        k: v["Properties"]["PathPart"] for k, v in dev.resources("AWS::ApiGateway::Resource").items()
    }
    methods = {}
    for method in dev.resources("AWS::ApiGateway::Method").values():
        props = method["Properties"]
        methods[(props["HttpMethod"], resources[props["ResourceId"]["Ref"]])] = props
    assert set(methods) == {("POST", "batches"), ("GET", "{code}"), ("POST", "{token}"), ("GET", "{token}")}
    assert methods[("POST", "batches")]["AuthorizationType"] == "AWS_IAM"
    assert "application/json" in methods[("POST", "batches")]["RequestModels"]
    assert methods[("GET", "{code}")]["AuthorizationType"] == "NONE"
    assert methods[("POST", "{token}")]["AuthorizationType"] == "NONE"
    assert methods[("GET", "{token}")]["AuthorizationType"] == "NONE"  # the unsubscribe page
    assert methods[("GET", "{token}")]["RequestParameters"] == {"method.request.path.token": True}
    assert all("RequestValidatorId" in m for m in methods.values())
    assert methods[("GET", "{code}")]["RequestParameters"] == {"method.request.path.code": True}


def test_api_stage_is_throttled_and_logged(dev: Synth, config: OffloadConfig) -> None:
    stage = next(iter(dev.resources("AWS::ApiGateway::Stage").values()))["Properties"]
    assert "DestinationArn" in stage["AccessLogSetting"] and "Format" in stage["AccessLogSetting"]
    by_path = {m["ResourcePath"]: m for m in stage["MethodSettings"] if m["ResourcePath"] == "/*"}
    settings = by_path["/*"]
    assert settings["ThrottlingRateLimit"] == config.api_rate_limit
    assert settings["ThrottlingBurstLimit"] == config.api_burst_limit
    assert settings["LoggingLevel"] == "ERROR" and settings["DataTraceEnabled"] is False
    assert dev.resources("AWS::ApiGateway::Account")
    public = {
        (m["ResourcePath"], m["HttpMethod"]): (m["ThrottlingRateLimit"], m["ThrottlingBurstLimit"])
        for m in stage["MethodSettings"]
        if m["ResourcePath"] != "/*"
    }
    limits = (config.public_rate_limit, config.public_burst_limit)
    assert {(method, limit) for (_, method), limit in public.items()} == {("GET", limits), ("POST", limits)}
    # Verification, the one-click POST and the unsubscribe page: each throttled per route.
    assert len(public) == 3
    assert all("verify" in path or "unsubscribe" in path for path, _ in public)


def test_bridge_user_has_no_access_key_in_the_template(dev: Synth) -> None:
    assert len(dev.resources("AWS::IAM::User")) == 1
    assert dev.resources("AWS::IAM::AccessKey") == {}


# --- monitoring -------------------------------------------------------------------------


def test_alarms_cover_dlqs_errors_throttles_and_ses_reputation(dev: Synth, config: OffloadConfig) -> None:
    alarms = [a["Properties"] for a in dev.resources("AWS::CloudWatch::Alarm").values()]
    dlq = [a for a in alarms if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"]
    throttles = [a for a in alarms if a.get("MetricName") == "Throttles"]
    error_rates = [a for a in alarms if "Metrics" in a]
    backlog = [a for a in alarms if a.get("MetricName") == "ApproximateAgeOfOldestMessage"]
    assert (len(dlq), len(throttles), len(error_rates), len(backlog)) == (4, 5, 5, 2)
    assert {a["Threshold"] for a in backlog} == {config.backlog_alarm_minutes * 60}
    bounce = next(a for a in alarms if a.get("MetricName") == "Reputation.BounceRate")
    complaint = next(a for a in alarms if a.get("MetricName") == "Reputation.ComplaintRate")
    assert bounce["Threshold"] == config.bounce_rate_alarm == 0.05
    assert complaint["Threshold"] == config.complaint_rate_alarm == 0.001
    assert all(a["AlarmActions"] for a in alarms)
    assert dev.resources("AWS::CloudWatch::Dashboard")


def test_alarm_topic_is_encrypted_with_a_rotating_key(dev: Synth) -> None:
    dev.template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    dev.template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


# --- rule packs and hygiene -----------------------------------------------------------


def test_cdk_nag_passes_and_every_acknowledgement_has_a_reason(dev: Synth) -> None:
    report = json.loads((dev.outdir / "validation-report.json").read_text())
    assert all(r["conclusion"] == "success" for r in report["pluginReports"])
    nag_report = next(r for r in report["pluginReports"] if r["pluginName"] == "AwsSolutions")
    assert nag_report["violations"] == []
    suppressed = nag_report["suppressedViolations"]
    assert len(suppressed) >= 15  # the findings the acknowledgements below answer
    assert all(len(v["reason"]) >= 40 for v in suppressed)
    metadata = json.loads((dev.outdir / f"{dev.stack.stack_name}.metadata.json").read_text())
    acknowledged = [
        (rule, reason)
        for entries in metadata.values()
        for entry in entries
        if entry["type"] == "aws:cdk:acknowledged-rules"
        for rule, reason in entry["data"].items()
    ]
    nag = [(rule, reason) for rule, reason in acknowledged if rule.startswith("AwsSolutions::")]
    assert nag, "the app applies AwsSolutionsChecks, so some acknowledgements are expected"
    assert all(len(reason) >= 40 for _rule, reason in nag)


def test_cfn_lint_reports_no_errors(dev: Synth) -> None:
    result = run_cfn_lint(dev.template_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_account_id_is_hard_coded(dev: Synth) -> None:
    text = dev.template_path.read_text()
    assert not re.search(r"arn:[^\"]*:[0-9]{12}:", text)
    assert not re.search(r"\"[0-9]{12}\"", text)
    assert "AWS::AccountId" in text
    assert dev.stack.account.startswith("${Token[")  # environment-agnostic


def test_outputs_name_every_bridge_setting(dev: Synth) -> None:
    assert {
        "ApiBaseUrl",
        "IntakeUrl",
        "JobsQueueUrl",
        "CertificatesQueueUrl",
        "ResultsQueueUrl",
        "ResultsDlqUrl",
        "CertificateBucketName",
        "HmacSecretArn",
        "BridgeUserName",
        "ConfigurationSetName",
        "AlarmTopicArn",
    } <= set(dev.raw["Outputs"])


def test_public_routes_are_throttled_per_client_by_a_waf_rate_rule(dev: Synth, config: OffloadConfig) -> None:
    (acl,) = dev.resources("AWS::WAFv2::WebACL").values()
    (rule,) = acl["Properties"]["Rules"]
    rate = rule["Statement"]["RateBasedStatement"]
    assert rule["Action"] == {"Block": {"CustomResponse": {"ResponseCode": 429}}}
    assert rate["AggregateKeyType"] == "IP" and rate["Limit"] == config.public_waf_limit_per_5min
    matches = [s["ByteMatchStatement"] for s in rate["ScopeDownStatement"]["OrStatement"]["Statements"]]
    # The stage URL and a custom domain mapped to the stage (no stage name in the path) both count.
    assert {m["SearchString"] for m in matches} == {
        "/api/v1/certificates/verify/",
        "/api/v1/unsubscribe/",
        "/v1/certificates/verify/",
        "/v1/unsubscribe/",
    }
    # Percent-encoded or un-normalised spellings of the routes are decoded before matching.
    for match in matches:
        kinds = [t["Type"] for t in sorted(match["TextTransformations"], key=lambda t: t["Priority"])]
        assert kinds == ["URL_DECODE", "NORMALIZE_PATH"]
    (association,) = dev.resources("AWS::WAFv2::WebACLAssociation").values()
    assert "restapis" in json.dumps(association["Properties"]["ResourceArn"])
