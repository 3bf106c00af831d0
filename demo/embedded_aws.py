"""An embedded AWS for the demo and the fault-injection tests: moto in server mode on loopback.

``EmbeddedAws`` starts moto's server on 127.0.0.1 (a free port), then provisions the same
resources the CDK stacks define — queues with DLQs and redrive, 1 MiB messages, the
certificate bucket, the idempotency table, the HMAC key-set secret and a verified SES
sender — and exposes the environment variables the Lambdas read.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import httpx
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from offload_contract.limits import SQS_MAX_MESSAGE_BYTES
from offload_contract.signing import generate_root_secret

REGION = "eu-west-1"
QUEUES = ("jobs", "certificates", "results", "ses-events")
SEAL_KEYSET = "s1"


@dataclass
class EmbeddedAws:
    endpoint_url: str
    region: str = REGION
    queue_urls: dict[str, str] = field(default_factory=dict)
    dlq_urls: dict[str, str] = field(default_factory=dict)
    bucket: str = "mrco-demo-certificates"
    table: str = "mrco-demo-idempotency"
    secret_arn: str = ""
    seal_secret_arn: str = ""
    seal_root: str = field(default="", repr=False)
    configuration_set: str = "mrco-demo"
    sender: str = "noreply@acme.example"

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's fixed test credentials
        )

    def provision(
        self, keyset: str, root_secret_b64: str, visibility_timeout: int = 30, max_receive: int = 5
    ) -> None:
        sqs = self.client("sqs")
        for name in QUEUES:
            dlq = sqs.create_queue(
                QueueName=f"mrco-{name}-dlq", Attributes={"MaximumMessageSize": str(SQS_MAX_MESSAGE_BYTES)}
            )["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            url = sqs.create_queue(
                QueueName=f"mrco-{name}",
                Attributes={
                    "MaximumMessageSize": str(SQS_MAX_MESSAGE_BYTES),
                    "VisibilityTimeout": str(visibility_timeout),
                    "RedrivePolicy": json.dumps(
                        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive)}
                    ),
                },
            )["QueueUrl"]
            self.queue_urls[name] = url
            self.dlq_urls[name] = dlq
        s3 = self.client("s3")
        s3.create_bucket(Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": self.region})
        dynamodb = self.client("dynamodb")
        dynamodb.create_table(
            TableName=self.table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.update_time_to_live(
            TableName=self.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
        )
        secrets = self.client("secretsmanager")
        self.secret_arn = secrets.create_secret(
            Name="mrco-demo-hmac-keys",
            SecretString=json.dumps({"current": keyset, "keysets": {keyset: root_secret_b64}}),
        )["ARN"]
        # The seal key set (offload_contract/sealing.py): the bridge seals password mail under it,
        # only the email sender opens it (the stack grants it to nobody else).
        self.seal_root = generate_root_secret()
        self.seal_secret_arn = secrets.create_secret(
            Name="mrco-demo-seal-keys",
            SecretString=json.dumps({"current": SEAL_KEYSET, "keysets": {SEAL_KEYSET: self.seal_root}}),
        )["ARN"]
        ses = self.client("ses")
        ses.verify_email_identity(EmailAddress=self.sender)
        ses.verify_domain_identity(Domain=self.sender.split("@", 1)[1])
        sesv2 = self.client("sesv2")
        sesv2.create_configuration_set(ConfigurationSetName=self.configuration_set)

    def lambda_environment(self) -> dict[str, str]:
        """The environment variables infra/ gives the functions, pointing at this emulator."""
        return {
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "POWERTOOLS_SERVICE_NAME": "manireports-offload-demo",
            "POWERTOOLS_METRICS_NAMESPACE": "ManiReportsOffload",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_DEV": "false",
            "LOG_LEVEL": "WARNING",
            "JOBS_QUEUE_URL": self.queue_urls["jobs"],
            "CERTIFICATES_QUEUE_URL": self.queue_urls["certificates"],
            "RESULTS_QUEUE_URL": self.queue_urls["results"],
            "IDEMPOTENCY_TABLE": self.table,
            "CERTIFICATE_BUCKET": self.bucket,
            "CONTENT_BUCKET": self.bucket,
            "CONFIGURATION_SET_NAME": self.configuration_set,
            "HMAC_SECRET_ARN": self.secret_arn,
            "SEAL_SECRET_ARN": self.seal_secret_arn,
            "SENDER_ADDRESS": self.sender,
            "VERIFY_URL_BASE": "https://offload.example/v1/certificates/verify",
            "UNSUBSCRIBE_URL_BASE": "https://offload.example/v1/unsubscribe",
        }

    def sent_emails(self) -> dict[str, list[dict[str, Any]]]:
        """What SES accepted, per kind (Message, RawMessage, TemplateMessage,
        BulkTemplateMessage), read from moto's backend over /moto-api/data.json."""
        data = httpx.get(f"{self.endpoint_url}/moto-api/data.json", timeout=60).json()
        ses = data.get("ses", {})
        kinds = ("Message", "RawMessage", "TemplateMessage", "BulkTemplateMessage")
        return {kind: list(ses.get(kind) or []) for kind in kinds}


@contextmanager
def embedded_aws() -> Iterator[EmbeddedAws]:
    """Start moto's server on a free loopback port; stop it afterwards.

    The server handles one request at a time. moto's backends are not thread-safe (its
    DynamoDB TransactWriteItems deep-copies the table while another thread may write it),
    and real AWS services are atomic per request, so serialising requests is the faithful
    choice. Clients still run concurrently; their requests simply queue.
    """
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request otherwise
    server: BaseWSGIServer = make_server(
        "127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=False
    )
    thread = threading.Thread(target=server.serve_forever, name="moto-server", daemon=True)
    thread.start()
    try:
        yield EmbeddedAws(endpoint_url=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join(timeout=10)
