"""The prod stack with every option on: domain identity, tenants, alarm e-mail, pull mode."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match

from tests.infra.support import Synth, as_list, run_cfn_lint, statements, synthesize

pytestmark = pytest.mark.cdk

OPTIONS = {
    "ses_send_rate": 200,
    "sender_address": "learning@example.org",
    "domain": "mail.example.org",
    "mail_from_subdomain": "bounce",
    "tenants": [{"company_id": 3}, {"company_id": 7, "name": "acme"}],
    "alarm_email": "ops@example.org",
    "callback_mode": "pull",
    "reserve_concurrency": True,
}


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-prod"), "prod", OPTIONS)


def test_domain_identity_with_easy_dkim_and_custom_mail_from(prod: Synth) -> None:
    prod.template.has_resource_properties(
        "AWS::SES::EmailIdentity",
        {
            "EmailIdentity": "mail.example.org",
            "DkimAttributes": {"SigningEnabled": True},
            "DkimSigningAttributes": {"NextSigningKeyLength": "RSA_2048_BIT"},
            "MailFromAttributes": {
                "MailFromDomain": "bounce.mail.example.org",
                "BehaviorOnMxFailure": Match.any_value(),
            },
            "ConfigurationSetAttributes": Match.any_value(),
        },
    )
    assert {"DkimRecord1", "DkimRecord2", "DkimRecord3"} <= set(prod.raw["Outputs"])


def test_one_ses_tenant_per_configured_company(prod: Synth) -> None:
    tenants = {
        t["Properties"]["TenantName"]: t["Properties"] for t in prod.resources("AWS::SES::Tenant").values()
    }
    assert set(tenants) == {"iomad-company-3-prod", "acme-prod"}
    for props in tenants.values():
        assert len(props["ResourceAssociations"]) == 2  # configuration set + domain identity
        assert props["SuppressionAttributes"]["SuppressionScope"] == "TENANT"


def test_sender_knows_which_tenant_sends_for_which_company(prod: Synth) -> None:
    prod.template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "lambdas.handlers.email_sender.handler",
            "Environment": {
                "Variables": Match.object_like(
                    {"SES_TENANT_NAMES": '{"3":"iomad-company-3-prod","7":"acme-prod"}'}
                )
            },
        },
    )


def test_sender_may_send_through_the_tenants_and_identities(prod: Synth) -> None:
    send = next(s for _p, s in statements(prod.raw) if "ses:SendBulkEmail" in as_list(s["Action"]))
    text = str(send["Resource"])
    assert "TenantName" not in text  # tenants are referenced by ARN attribute
    assert sum("Tenant" in str(r) for r in send["Resource"]) == 2
    assert "identity/mail.example.org" in text and "identity/learning@example.org" in text


def test_pull_mode_disables_the_dispatcher_mapping_only(prod: Synth) -> None:
    enabled = [
        m["Properties"].get("Enabled", True)
        for m in prod.resources("AWS::Lambda::EventSourceMapping").values()
    ]
    assert sorted(enabled) == [False, True, True, True]


def test_sender_concurrency_follows_the_send_rate(prod: Synth) -> None:
    config = prod.stack.config
    assert config.sender_max_concurrency == 4  # ceil(1.5 x 200 / (8 parallel sends / 100 ms))
    prod.template.has_resource_properties(
        "AWS::Lambda::Function",
        {"Handler": "lambdas.handlers.email_sender.handler", "ReservedConcurrentExecutions": 4},
    )
    prod.template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping", {"BatchSize": 1, "ScalingConfig": {"MaximumConcurrency": 4}}
    )


def test_stateful_resources_are_retained(prod: Synth) -> None:
    for type_name in (
        "AWS::S3::Bucket",
        "AWS::DynamoDB::Table",
        "AWS::SecretsManager::Secret",
        "AWS::SQS::Queue",
    ):
        for resource in prod.resources(type_name).values():
            assert resource["DeletionPolicy"] == "Retain", type_name
    assert prod.stack.termination_protection is True


def test_alarm_email_is_subscribed(prod: Synth) -> None:
    prod.template.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.org"}
    )


def test_cfn_lint_reports_no_errors(prod: Synth) -> None:
    result = run_cfn_lint(prod.template_path)
    assert result.returncode == 0, result.stdout + result.stderr
