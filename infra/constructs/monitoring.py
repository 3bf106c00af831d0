"""Alarms (DLQ depth, Lambda error rate and throttles, API 5xx, SES reputation) and a dashboard."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infra.config import OffloadConfig
from infra.constructs.queues import OffloadQueues

#: Lambda errors / invocations above this fraction over 5 minutes raise an alarm.
ERROR_RATE_THRESHOLD = 0.05


class OffloadMonitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: OffloadConfig,
        queues: OffloadQueues,
        functions: dict[str, lambda_.Function],
        api: apigw.RestApi,
        removal: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        # CloudWatch must be able to use the topic's key; AWS-managed aws/sns keys cannot grant it.
        self.topic_key = kms.Key(
            self,
            "AlarmTopicKey",
            description="Encrypts the ManiReports Offload alarm topic",
            enable_key_rotation=True,
            removal_policy=removal,
        )
        self.topic_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarms",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            )
        )
        self.topic = sns.Topic(self, "AlarmTopic", master_key=self.topic_key, enforce_ssl=True)
        if config.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.alarm_email))
        action = actions.SnsAction(self.topic)
        self.alarms: list[cloudwatch.Alarm] = []

        def add(alarm: cloudwatch.Alarm) -> None:
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)
            self.alarms.append(alarm)

        for name, pair in queues.by_name.items():
            add(
                pair.dlq.metric_approximate_number_of_messages_visible(
                    period=Duration.minutes(1)
                ).create_alarm(
                    self,
                    f"{_camel(name)}DlqDepth",
                    alarm_description=f"Messages in the {name} dead-letter queue: inspect and redrive",
                    threshold=0,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    evaluation_periods=1,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                )
            )
        for name in ("jobs", "certificates"):
            add(
                queues.by_name[name]
                .queue.metric_approximate_age_of_oldest_message(
                    statistic="Maximum", period=Duration.minutes(5)
                )
                .create_alarm(
                    self,
                    f"{_camel(name)}Backlog",
                    alarm_description=(
                        f"The oldest {name} message waited more than {config.backlog_alarm_minutes} min: "
                        "sending is throttled, failing or paused"
                    ),
                    threshold=config.backlog_alarm_minutes * 60,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    evaluation_periods=1,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                )
            )
        for key, function in functions.items():
            error_rate = cloudwatch.MathExpression(
                expression="IF(invocations > 0, errors / invocations, 0)",
                using_metrics={
                    "errors": function.metric_errors(statistic="Sum", period=Duration.minutes(5)),
                    "invocations": function.metric_invocations(statistic="Sum", period=Duration.minutes(5)),
                },
                period=Duration.minutes(5),
                label=f"{key} error rate",
            )
            add(
                error_rate.create_alarm(
                    self,
                    f"{_camel(key)}ErrorRate",
                    alarm_description=f"{key}: more than {ERROR_RATE_THRESHOLD:.0%} of invocations failed",
                    threshold=ERROR_RATE_THRESHOLD,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    evaluation_periods=1,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                )
            )
            add(
                function.metric_throttles(statistic="Sum", period=Duration.minutes(5)).create_alarm(
                    self,
                    f"{_camel(key)}Throttles",
                    alarm_description=f"{key} was throttled (concurrency limit reached)",
                    threshold=0,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    evaluation_periods=1,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                )
            )
        add(
            api.metric_server_error(statistic="Sum", period=Duration.minutes(5)).create_alarm(
                self,
                "Api5xx",
                alarm_description="The API returned 5xx responses",
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
        )
        bounce_rate = cloudwatch.Metric(
            namespace="AWS/SES",
            metric_name="Reputation.BounceRate",
            statistic="Maximum",
            period=Duration.hours(1),
        )
        complaint_rate = cloudwatch.Metric(
            namespace="AWS/SES",
            metric_name="Reputation.ComplaintRate",
            statistic="Maximum",
            period=Duration.hours(1),
        )
        add(
            bounce_rate.create_alarm(
                self,
                "SesBounceRate",
                alarm_description=f"SES bounce rate reached {config.bounce_rate_alarm:.1%} (SES review: 5 %)",
                threshold=config.bounce_rate_alarm,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
        )
        add(
            complaint_rate.create_alarm(
                self,
                "SesComplaintRate",
                alarm_description=(
                    f"SES complaint rate reached {config.complaint_rate_alarm:.2%} (SES review: 0.1 %)"
                ),
                threshold=config.complaint_rate_alarm,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
        )

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", default_interval=Duration.hours(3))
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Queue depth",
                left=[
                    p.queue.metric_approximate_number_of_messages_visible() for p in queues.by_name.values()
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Dead-letter queues",
                left=[p.dlq.metric_approximate_number_of_messages_visible() for p in queues.by_name.values()],
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Lambda invocations", left=[f.metric_invocations() for f in functions.values()], width=8
            ),
            cloudwatch.GraphWidget(
                title="Lambda errors", left=[f.metric_errors() for f in functions.values()], width=8
            ),
            cloudwatch.GraphWidget(
                title="Lambda duration p90",
                left=[f.metric_duration(statistic="p90") for f in functions.values()],
                width=8,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="SES volume",
                left=[_ses_sum(n) for n in ("Send", "Delivery", "Bounce", "Complaint")],
                width=12,
            ),
            cloudwatch.GraphWidget(title="SES reputation", left=[bounce_rate, complaint_rate], width=6),
            cloudwatch.GraphWidget(
                title="API",
                left=[api.metric_count(), api.metric_client_error(), api.metric_server_error()],
                right=[api.metric_latency(statistic="p90")],
                width=6,
            ),
        )


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


def _ses_sum(name: str) -> cloudwatch.Metric:
    return cloudwatch.Metric(namespace="AWS/SES", metric_name=name, statistic="Sum")
