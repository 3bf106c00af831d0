"""SES: configuration set -> EventBridge -> ses-events queue; optional domain and tenants."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_ses as ses
from constructs import Construct

from infra.config import OffloadConfig
from infra.constructs.queues import QueueWithDlq

#: Events the ses_events Lambda consumes. SEND is published although the send call already
#: reports ``sent``: it settles a claim left INPROGRESS when a sender stops between SES accepting
#: a message and recording it (the exactly-once crash window, docs/lambdas.md). That costs one
#: more event per recipient (EventBridge/SQS/Lambda; docs/AWS_SETUP.md §10), which correctness
#: is worth. OPEN/CLICK are left out on purpose: no tracking pixels or rewritten links in mail.
PUBLISHED_EVENTS = (
    ses.EmailSendingEvent.SEND,
    ses.EmailSendingEvent.REJECT,
    ses.EmailSendingEvent.BOUNCE,
    ses.EmailSendingEvent.COMPLAINT,
    ses.EmailSendingEvent.DELIVERY,
    ses.EmailSendingEvent.DELIVERY_DELAY,
    ses.EmailSendingEvent.RENDERING_FAILURE,
    ses.EmailSendingEvent.SUBSCRIPTION,
)


class EmailSending(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, config: OffloadConfig, ses_events: QueueWithDlq
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.configuration_set = ses.ConfigurationSet(
            self,
            "ConfigurationSet",
            reputation_metrics=True,
            sending_enabled=True,
            suppression_reasons=ses.SuppressionReasons.BOUNCES_AND_COMPLAINTS,
            tls_policy=ses.ConfigurationSetTlsPolicy.REQUIRE,
        )
        default_bus = events.EventBus.from_event_bus_name(self, "DefaultBus", "default")
        self.configuration_set.add_event_destination(
            "ToEventBridge",
            destination=ses.EventDestination.event_bus(default_bus),
            events=list(PUBLISHED_EVENTS),
        )
        self.rule = events.Rule(
            self,
            "SesEventsRule",
            description="SES events of this deployment's configuration set -> ses-events queue",
            event_pattern=events.EventPattern(
                source=["aws.ses"],
                detail={
                    "mail": {
                        "tags": {"ses:configuration-set": [self.configuration_set.configuration_set_name]}
                    }
                },
            ),
            targets=[
                targets.SqsQueue(
                    ses_events.queue,
                    dead_letter_queue=ses_events.dlq,
                    retry_attempts=185,
                    max_event_age=Duration.hours(24),
                )
            ],
        )

        self.identity: ses.EmailIdentity | None = None
        if config.domain:
            self.identity = ses.EmailIdentity(
                self,
                "DomainIdentity",
                identity=ses.Identity.domain(config.domain),
                configuration_set=self.configuration_set,
                dkim_signing=True,
                dkim_identity=ses.DkimIdentity.easy_dkim(ses.EasyDkimSigningKeyLength.RSA_2048_BIT),
                mail_from_domain=(
                    f"{config.mail_from_subdomain}.{config.domain}" if config.mail_from_subdomain else None
                ),
                mail_from_behavior_on_mx_failure=ses.MailFromBehaviorOnMxFailure.USE_DEFAULT_VALUE,
            )

        self.identity_arns: list[str] = []
        if self.identity is not None:
            self.identity_arns.append(self.identity.email_identity_arn)
        self.configuration_set_arn = stack.format_arn(
            service="ses",
            resource="configuration-set",
            resource_name=self.configuration_set.configuration_set_name,
        )

        self.tenants: dict[int, ses.CfnTenant] = {}
        for tenant in config.tenants:
            associations = [
                ses.CfnTenant.ResourceAssociationProperty(resource_arn=self.configuration_set_arn)
            ]
            associations += [
                ses.CfnTenant.ResourceAssociationProperty(resource_arn=arn) for arn in self.identity_arns
            ]
            self.tenants[tenant.company_id] = ses.CfnTenant(
                self,
                f"Tenant{tenant.company_id}",
                tenant_name=f"{tenant.name}-{config.env_name}",
                resource_associations=associations,
                suppression_attributes=ses.CfnTenant.TenantSuppressionAttributesProperty(
                    suppressed_reasons=["BOUNCE", "COMPLAINT"], suppression_scope="TENANT"
                ),
            )

    @property
    def tenant_arns(self) -> list[str]:
        return [t.attr_arn for t in self.tenants.values()]
