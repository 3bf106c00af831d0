"""Fixtures for the dashboard: a seeded site, the app and a signed-in client per role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.testclient import TestClient

from moodle_bridge.config import BridgeConfig, DashboardConfig, KeysConfig
from moodle_bridge.web.app import create_app
from offload_contract import dashboard_token
from offload_contract.signing import generate_root_secret
from tests.web.world import NOW, SHARED_KEY, World, build_world


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Site:
    engine: sa.Engine
    world: World
    clock: Clock
    config: BridgeConfig
    client: Callable[[], TestClient]
    app: Starlette

    def token(self, user: int, company: int = 0, lifetime: int = 60) -> str:
        return dashboard_token.sign(SHARED_KEY, user, company, now=int(self.clock.now), lifetime=lifetime)

    def signed_in(self, user: int, company: int = 0) -> TestClient:
        client = self.client()
        response = client.get("/signin", params={"token": self.token(user, company)})
        assert response.status_code == 200, response.text
        return client


def make_config(engine: sa.Engine, public_url: str = "https://testserver") -> BridgeConfig:
    base = BridgeConfig()
    return replace(
        base,
        database=replace(base.database, url=engine.url.render_as_string(hide_password=False)),
        dashboard=DashboardConfig(shared_key=SHARED_KEY, public_url=public_url),
    )


def with_campaign_sending(config: BridgeConfig) -> BridgeConfig:
    """What building a campaign job needs besides the dashboard: a callback keyset, a sender and
    the unsubscribe URL base (docs/campaigns.md)."""
    return replace(
        config,
        keys=KeysConfig(current="k1", keysets={"k1": generate_root_secret()}),
        submit=replace(
            config.submit,
            sender_address="training@example.org",
            unsubscribe_url_base="https://api.example.org/v1/unsubscribe",
        ),
    )


@pytest.fixture
def site_on(db_engine: sa.Engine) -> Iterator[Site]:
    """The seeded site on every database engine."""
    yield _site(db_engine)


@pytest.fixture
def site(tmp_path: object) -> Iterator[Site]:
    """The seeded site on SQLite (fast; most tests)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/site.sqlite3")
    try:
        yield _site(engine)
    finally:
        engine.dispose()


def _site(engine: sa.Engine) -> Site:
    world = build_world(engine)
    clock = Clock()
    config = make_config(engine)
    app = create_app(engine, world.tables, config, clock=clock)

    def client() -> TestClient:
        return TestClient(app, base_url="https://testserver", follow_redirects=False)

    return Site(engine, world, clock, config, client, app)
