"""The bridge's fixtures (migrated databases, SQS in moto) for the operations tests."""

from tests.bridge.conftest import aws, bridge_engine, repo  # noqa: F401 - re-exported fixtures
