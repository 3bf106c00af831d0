#!/usr/bin/env python3
"""CDK entry point: ``npx cdk synth`` / ``cdk deploy`` (see docs/AWS_SETUP.md)."""

from infra.app import build_app

if __name__ == "__main__":
    app, _stack = build_app()
    app.synth()
