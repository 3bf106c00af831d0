"""Builds the CDK app: reads the configuration, adds the stack and the cdk-nag rule pack."""

from __future__ import annotations

import json
import os
from typing import Any

from aws_cdk import App, Environment, Tags, Validations
from cdk_nag import AwsSolutionsChecks

from infra.bundling import BundleMode
from infra.config import ConfigError, load_config
from infra.stack import PROJECT_ROOT, OffloadStack

#: Context keys (set in cdk.json or with -c key=value).
CONTEXT_ENV = "env"
CONTEXT_BLOCKS = "offload"
CONTEXT_FILE = "offload:config-file"
#: "source" skips pip (tests, quick looks); deployable assets need "full".
CONTEXT_BUNDLE = "offload:bundle"


def stack_name(env_name: str) -> str:
    return f"ManiReportsOffload-{env_name}"


#: Feature flags the stack relies on, whatever cdk.json says.
REQUIRED_FLAGS = {
    # Access-log delivery through a bucket policy instead of the legacy LogDeliveryWrite ACL.
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
}


def cdk_json_context() -> dict[str, Any]:
    """The ``context`` block of cdk.json (the CLI passes it itself; ``python app.py`` does not)."""
    context: dict[str, Any] = json.loads((PROJECT_ROOT / "cdk.json").read_text(encoding="utf-8"))["context"]
    return context


def build_app(context: dict[str, Any] | None = None, outdir: str | None = None) -> tuple[App, OffloadStack]:
    if context is None and "CDK_CONTEXT_JSON" not in os.environ:
        context = cdk_json_context()
    app = App(context={**(context or {}), **REQUIRED_FLAGS}, outdir=outdir)
    env_name = str(app.node.try_get_context(CONTEXT_ENV) or "dev")
    config = load_config(
        env_name, app.node.try_get_context(CONTEXT_BLOCKS), app.node.try_get_context(CONTEXT_FILE)
    )
    bundle_mode = str(app.node.try_get_context(CONTEXT_BUNDLE) or "full")
    if bundle_mode not in ("full", "source"):
        raise ConfigError(f"{CONTEXT_BUNDLE} must be 'full' or 'source'")
    account = os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = os.environ.get("CDK_DEFAULT_REGION")
    stack = OffloadStack(
        app,
        stack_name(env_name),
        config=config,
        bundle_mode=_mode(bundle_mode),
        # Environment-agnostic unless the CLI resolved an account (no ids in the code).
        env=Environment(account=account, region=region) if account and region else None,
        description=f"ManiReports Cloud Offload: email and certificate offload ({env_name})",
        termination_protection=config.is_prod,
    )
    Tags.of(stack).add("project", "manireports-cloud-offload")
    Tags.of(stack).add("environment", env_name)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack


def _mode(value: str) -> BundleMode:
    return "source" if value == "source" else "full"
