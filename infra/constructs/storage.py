"""Certificate/content bucket (with its access-log bucket), idempotency table, HMAC keys."""

from __future__ import annotations

from aws_cdk import Duration, Fn, RemovalPolicy, SecretValue
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.config import OffloadConfig
from infra.nag import acknowledge

CERTIFICATES_PREFIX = "certificates/"
CONTENTS_PREFIX = "contents/"
#: Per-company certificate templates and their images (read by the renderer; docs/lambdas.md).
TEMPLATES_PREFIX = "templates/"
#: The key set the first deployment creates; rotation adds k2, k3, ... (docs/AWS_SETUP.md).
INITIAL_KEYSET = "k1"
#: 43 characters of [A-Za-z0-9] decode (base64url) to 32 bytes: the contract's minimum root.
ROOT_SECRET_LENGTH = 43


class CertificateStorage(Construct):
    """One bucket: ``certificates/`` (PDFs, kept) and ``contents/`` (by-reference, short-lived)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: OffloadConfig, removal: RemovalPolicy
    ) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            # S3 server access logging can only deliver to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(365)),
            ],
            removal_policy=removal,
            auto_delete_objects=False,
        )
        self.bucket = s3.Bucket(
            self,
            "Certificates",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="certificates-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="certificates-to-infrequent-access",
                    prefix=CERTIFICATES_PREFIX,
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                            transition_after=Duration.days(config.certificate_ia_after_days),
                        )
                    ],
                ),
                s3.LifecycleRule(
                    id="expire-contents",
                    prefix=CONTENTS_PREFIX,
                    expiration=Duration.days(config.content_expire_after_days),
                ),
                s3.LifecycleRule(
                    id="tidy-versions-and-uploads",
                    noncurrent_version_expiration=Duration.days(30),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                    expired_object_delete_marker=True,
                ),
            ],
            removal_policy=removal,
        )


class IdempotencyTable(Construct):
    """Powertools idempotency records and pacing items: pk ``id`` (S), TTL ``expiration``."""

    def __init__(self, scope: Construct, construct_id: str, *, removal: RemovalPolicy) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expiration",
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=removal,
        )


#: The first seal key set (offload_contract/sealing.py): password mail is sealed under it.
INITIAL_SEAL_KEYSET = "s1"


class HmacKeys(Construct):
    """A key-set secret (HMAC signing, or sealing), generated at deploy time, in the contract's shape.

    Secrets Manager can only generate a value into a top-level key, but the contract wants
    ``{"current": "k1", "keysets": {"k1": "<root>"}}``. So a seed secret is generated first
    and the key secret is composed from it with a CloudFormation dynamic reference: only the
    ``{{resolve:secretsmanager:...}}`` reference is in the template, never the value.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        removal: RemovalPolicy,
        label: str = "HMAC",
        initial_keyset: str = INITIAL_KEYSET,
    ) -> None:
        super().__init__(scope, construct_id)
        self.seed = secretsmanager.Secret(
            self,
            "RootSeed",
            description=(
                f"ManiReports Offload: generated root for the first {label} key set (read by nobody)."
            ),
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template='{"keyset": "' + initial_keyset + '"}',
                generate_string_key="root",
                password_length=ROOT_SECRET_LENGTH,
                exclude_punctuation=True,
                include_space=False,
                require_each_included_type=True,
            ),
            removal_policy=removal,
        )
        root = self.seed.secret_value_from_json("root").unsafe_unwrap()  # a dynamic reference
        self.secret = secretsmanager.Secret(
            self,
            "Keys",
            description=(
                f"ManiReports Offload: {label} key sets {{current, keysets{{name: base64url root}}}}."
            ),
            secret_string_value=SecretValue.unsafe_plain_text(
                Fn.join(
                    "", ['{"current":"', initial_keyset, '","keysets":{"', initial_keyset, '":"', root, '"}}']
                )
            ),
            removal_policy=removal,
        )
        for secret in (self.seed, self.secret):
            acknowledge(
                secret,
                id="AwsSolutions-SMG4",
                reason=(
                    f"{label} key sets are rotated by adding a new key set and switching 'current' "
                    "(docs/AWS_SETUP.md), because the bridge and the Lambdas must both hold a key "
                    "set before it is used; a single-value rotation Lambda would break in-flight "
                    "requests and messages."
                ),
            )
