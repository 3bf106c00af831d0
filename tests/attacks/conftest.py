"""The attack suite reuses the moto-backed AWS fixture of the Lambda tests."""

from tests.lambdas.conftest import aws  # noqa: F401 (fixture)
