"""The certificate template page in Debian's Chromium (Playwright): a company manager uploads a
template with its logo, sees the preview image for a typed name (the inline PNG is allowed by the
page's own CSP and decodes), stores it, and sees the stored JSON; S3 (moto) holds it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws

from tests.web.test_browser import (  # noqa: F401 - the fixture refuses requests to other hosts
    CHROMIUM,
    Served,
    _sign_in,
    nothing_from_other_hosts,
    sync_api,
)
from tests.web.test_certificate_template import BUCKET, document, needs_fonts, png
from tests.web.world import build_world

pytestmark = [pytest.mark.browser, needs_fonts]


@pytest.fixture
def served_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Served, Any]]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'site.sqlite3'}", connect_args={"timeout": 30})
    world = build_world(engine, now=int(time.time()))
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        with Served(engine, world) as served:
            state = served.app.state.dashboard
            state.config = replace(
                state.config, aws=replace(state.config.aws, content_bucket=BUCKET, region="eu-west-1")
            )
            yield served, s3
    engine.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_a_manager_previews_then_stores_a_template(
    browser: Any, served_s3: tuple[Served, Any], tmp_path: Path
) -> None:
    served, s3 = served_s3
    w = served.world
    c1 = w.companies[0]
    (tmp_path / "template.json").write_text(json.dumps(document()), "utf-8")
    (tmp_path / "logo.png").write_bytes(png())
    page = _sign_in(browser, served, w.managers[c1], c1)
    page.get_by_role("link", name="Certificate template").click()
    page.wait_for_url(re.compile(r"/certificate-template$"))
    assert page.get_by_text("the built-in default is used").is_visible()

    def choose_files() -> None:
        page.get_by_label("Template JSON file").set_input_files(str(tmp_path / "template.json"))
        page.get_by_label("Its images").set_input_files(str(tmp_path / "logo.png"))

    choose_files()
    page.get_by_label("Name to preview").fill("Zoë 李小龍")
    page.get_by_role("button", name="Preview").click()
    preview = page.get_by_role("img", name="Preview of the certificate for Zoë 李小龍")
    preview.wait_for()
    # Decoded by the browser: a blocked or broken image has no natural size.
    size = preview.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
    assert size[0] is True and size[1] > size[2] > 500
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0  # a preview stores nothing
    choose_files()
    page.get_by_role("button", name="Validate and store").click()
    page.wait_for_url(re.compile(r"/certificate-template\?company=\d+&msg="))
    assert page.get_by_text(f"Template 'default' of company {c1} stored (1 images).").is_visible()
    stored = page.get_by_label("Template JSON", exact=True).inner_text()
    assert json.loads(stored) == document()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == [f"templates/company-{c1}/default.json", f"templates/company-{c1}/logo.png"]
