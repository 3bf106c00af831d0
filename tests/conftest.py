"""Shared fixtures: per-engine databases and the engine reachability policy.

- SQLite tests always run.
- MariaDB / PostgreSQL tests run when the server answers; otherwise one line names the
  skipped engine. With CI=true an unreachable server fails the whole run instead.
- The same holds for php-cli, Debian's chromium and Playwright: their tests skip without them on a
  developer's machine, and CI=true stops the run when one is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase
from sqlalchemy.engine import URL

from iomad_sim import scratch_databases as databases

_STATUS: dict[str, databases.ServerStatus] = {}

# Property tests: the suite is deterministic (profile "ci": the same examples on every run, no
# example database); `make explore` searches at random and keeps what fails in .hypothesis/
# (profile "explore"), so a failure found there is replayed by the next explore run until fixed.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=DirectoryBasedExampleDatabase(".hypothesis"))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    for engine in databases.ENGINES:
        _STATUS[engine] = databases.probe(engine)


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for engine, status in _STATUS.items():
        if status.reachable:
            lines.append(f"database engine {engine}: used ({status.detail})")
        else:
            lines.append(f"database engine {engine}: SKIPPED, server unreachable ({status.detail})")
    return lines


def missing_ci_tools() -> list[str]:
    """Tools whose tests skip on a developer's machine without them, but must run in CI."""
    chromium = os.environ.get("MRCO_CHROMIUM", "/usr/bin/chromium")
    missing = [] if shutil.which("php") else ["php-cli (php)"]
    if not os.access(chromium, os.X_OK):
        missing.append(f"chromium ({chromium})")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (Python)")
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _in_ci():
        return
    unreachable = [s for s in _STATUS.values() if not s.reachable]
    if unreachable:
        names = ", ".join(f"{s.engine} ({s.detail})" for s in unreachable)
        pytest.exit(
            f"CI=true requires every database engine, but these are unreachable: {names}", returncode=3
        )
    if tools := missing_ci_tools():
        pytest.exit(
            f"CI=true requires the tools scripts/bootstrap.sh installs, but these are missing: "
            f"{', '.join(tools)}",
            returncode=3,
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unreachable = {e: s for e, s in _STATUS.items() if not s.reachable}
    for item in items:
        for engine, status in unreachable.items():
            if item.get_closest_marker(engine):
                item.add_marker(pytest.mark.skip(reason=f"{engine} server unreachable: {status.detail}"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for engine, status in _STATUS.items():
        if not status.reachable:
            terminalreporter.write_line(
                f"SKIPPED ENGINE {engine}: server unreachable ({status.detail})", yellow=True
            )


ENGINE_PARAMS = [
    pytest.param(engine, marks=getattr(pytest.mark, engine), id=engine) for engine in databases.ENGINES
]


@pytest.fixture(params=ENGINE_PARAMS)
def db_engine_name(request: pytest.FixtureRequest) -> str:
    """The engine under test; every test using it runs once per engine."""
    return str(request.param)


@pytest.fixture
def db_url(db_engine_name: str) -> Iterator[URL]:
    """URL of an empty database of its own, dropped after the test."""
    url = databases.create_database(db_engine_name)
    try:
        yield url
    finally:
        databases.drop_database(db_engine_name, url)


@pytest.fixture
def db_engine(db_url: URL) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()
