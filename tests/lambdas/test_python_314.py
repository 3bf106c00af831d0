"""The Lambda code type-checks against Python 3.14's standard library (the runtime in infra).

Tests run on 3.11 here; mypy with ``--python-version 3.14`` checks every use of the standard
library against typeshed's 3.14 stubs, which drop what 3.12-3.14 removed (``asyncore``, ``imp``,
``ast.Str``, ``pkgutil.find_loader``, ...), so such a use fails this test before it fails in Lambda.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infra.bundling import PYTHON_VERSION, SOURCE_PACKAGES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_lambda_packages_type_check_on_the_lambda_runtimes_python(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--python-version", PYTHON_VERSION,
            "--cache-dir", str(tmp_path / "mypy"), *SOURCE_PACKAGES,
        ],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
