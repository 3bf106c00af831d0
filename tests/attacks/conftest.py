"""The attack suite reuses the moto-backed AWS fixtures of the Lambda tests."""

from tests.lambdas.conftest import aws  # noqa: F401 (fixture)
from tests.lambdas.test_api import configured  # noqa: F401 (fixture)
