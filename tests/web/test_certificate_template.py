"""The dashboard's certificate template page: a manager uploads a template (validated by the
renderer's own ``parse_template``) and it is stored where the Lambda's TemplateStore reads it (S3,
moto) and audited; bad templates are refused with the reason and store nothing; a preview renders
the PDF and PNG in memory for a typed name and stores nothing; roles, scope and CSRF as elsewhere."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws
from PIL import Image

from certificate_render.fonts import FONT_DIR
from certificate_render.template import TemplateStore
from tests.web.conftest import Site

BUCKET = "mrco-test-templates"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
needs_fonts = pytest.mark.skipif(
    not (FONT_DIR / "manifest.json").exists(), reason="the certificate fonts are built by make setup"
)


def png(size: tuple[int, int] = (120, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (31, 78, 121)).save(out, format="PNG")
    return out.getvalue()


def document(**changes: Any) -> dict[str, Any]:
    return {
        "page": {"size": "A4", "orientation": "landscape"},
        "language": "en",
        "logo": {"image": "logo.png", "x": 136.5, "y": 16, "w": 24},
        "elements": [
            {"field": "static", "text": "Certificate of Dashboard Design", "y": 48, "size": 30, "bold": True},
            {"field": "learner_name", "y": 80, "h": 18, "size": 34, "bold": True},
            {"field": "course_name", "y": 114, "h": 14, "size": 22},
        ],
        **changes,
    }


@pytest.fixture
def s3_site(site: Site, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Site, Any]]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        state = site.app.state.dashboard
        state.config = replace(
            state.config, aws=replace(state.config.aws, content_bucket=BUCKET, region="eu-west-1")
        )
        yield site, s3


def csrf(client: Any, company: int | None = None) -> str:
    page = client.get("/certificate-template", params={"company": company} if company else None)
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match
    return match.group(1)


def upload(
    client: Any, company: int, doc: Any, images: dict[str, bytes], *, action: str = "store",
    token: str | None = None, name: str = "", as_text: bool = False,
) -> Any:  # fmt: skip
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    files: list[tuple[str, tuple[str, bytes, str]]] = [
        ("images", (n, data, "image/png")) for n, data in images.items()
    ]
    data = {"csrf": token if token is not None else csrf(client, company), "action": action, "name": name}
    if as_text:
        data["template_json"] = body.decode()
    else:
        files.append(("template_file", ("template.json", body, "application/json")))
    return client.post(f"/certificate-template/{company}", data=data, files=files)


def keys(s3: Any) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def audited(site: Site) -> list[Any]:
    a = site.world.tables.audit_log.c
    with site.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(a.actor, a.companyid, a.sourceaddress, a.detail).where(
                    a.action == "certificate_template_set"
                )
            ).all()
        )


def test_a_manager_stores_a_valid_template_where_the_lambda_reads_it(s3_site: tuple[Site, Any]) -> None:
    site, s3 = s3_site
    w = site.world
    c1 = w.companies[0]
    manager = w.managers[c1]
    client = site.signed_in(manager, c1)
    before = client.get("/certificate-template")
    assert "the built-in default is used" in before.text and 'name="template_json"' in before.text
    stored = upload(client, c1, document(), {"logo.png": png(), "unused.png": png()})
    assert stored.status_code == 303, stored.text
    assert keys(s3) == [f"templates/company-{c1}/default.json", f"templates/company-{c1}/logo.png"]
    template = TemplateStore(s3, BUCKET).get(c1, "default")  # the Lambda's own reader
    assert template.elements[0].text == "Certificate of Dashboard Design" and template.images
    (entry,) = audited(site)
    assert entry.actor == f"dashboard:{manager}" and entry.companyid == c1
    detail = json.loads(entry.detail)
    assert detail["template_id"] == "default" and len(detail["sha256"]) == 64 and entry.sourceaddress
    assert set(detail["images"]) == {"logo.png"}  # only the images the template names
    after = client.get(stored.headers["location"])
    assert "stored (1 images)" in after.text and "The stored template:" in after.text
    assert "Certificate of Dashboard Design" in after.text


def test_the_site_admin_stores_any_companys_template_under_its_template_id(
    s3_site: tuple[Site, Any],
) -> None:
    site, s3 = s3_site
    w = site.world
    c2 = w.companies[1]
    with site.engine.begin() as conn:
        conn.execute(
            w.tables.company_settings.insert().values(
                companyid=c2, certtemplate="gold", timecreated=1, timemodified=1
            )
        )
    admin = site.signed_in(w.admin)
    assert "No template <code>gold</code> is stored" in admin.get(f"/certificate-template?company={c2}").text
    assert upload(admin, c2, document(), {"logo.png": png()}, as_text=True).status_code == 303
    assert f"templates/company-{c2}/gold.json" in keys(s3)
    assert TemplateStore(s3, BUCKET).get(c2, "gold").elements[1].field == "learner_name"
    assert audited(site)[0].actor == f"dashboard:{w.admin}"


CORRUPT = b"\x89PNG\r\n\x1a\n not really a png"
SIZE_AS_TEXT = [{"field": "learner_name", "y": 80, "size": "34"}]


@pytest.mark.parametrize(
    ("doc", "images", "message"),
    [
        (b'{"elements": [', {}, "template_invalid: the template is not valid JSON"),
        (document(border={"color": "navy"}), {"logo.png": png()}, "border/color:"),
        (document(), {"logo.png": CORRUPT}, "logo image &#39;logo.png&#39; is not a readable image"),
        (document(), {}, "the logo image &#39;logo.png&#39; was not uploaded"),
        (document(elements=SIZE_AS_TEXT), {"logo.png": png()}, "elements/0/size:"),
    ],
    ids=["invalid-json", "bad-colour", "corrupt-image", "missing-image", "size-as-text"],
)
def test_a_bad_template_is_refused_naming_the_problem_and_nothing_is_stored(
    s3_site: tuple[Site, Any], doc: Any, images: dict[str, bytes], message: str
) -> None:
    site, s3 = s3_site
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    refused = upload(client, c1, doc, images)
    assert refused.status_code == 400 and message in refused.text, refused.text
    assert 'role="alert"' in refused.text
    box = re.search(r"<textarea[^>]*>(.*?)</textarea>", refused.text, re.DOTALL)
    assert box and html.unescape(box.group(1)).encode() == (  # the text box keeps what was sent
        doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    )
    assert keys(s3) == [] and audited(site) == []


def test_scope_roles_and_csrf(s3_site: tuple[Site, Any]) -> None:
    site, s3 = s3_site
    w = site.world
    c1, c2 = w.companies
    other = site.signed_in(w.managers[c2], c2)
    assert upload(other, c1, document(), {"logo.png": png()}, token=csrf(other)).status_code == 404
    shown = other.get(f"/certificate-template?company={c1}")  # a manager sees only their own company
    assert f"Company {c2}:" in shown.text and f"Company {c1}:" not in shown.text
    department = site.signed_in(w.department_manager, c1)
    page = department.get("/certificate-template")
    assert page.status_code == 200 and "built-in default is used" in page.text
    assert "<textarea" not in page.text and "Validate and store" not in page.text
    assert upload(department, c1, document(), {"logo.png": png()}, token=csrf(department)).status_code == 404
    manager = site.signed_in(w.managers[c1], c1)
    assert upload(manager, c1, document(), {"logo.png": png()}, token="forged").status_code == 403
    assert keys(s3) == [] and audited(site) == []


def _pdftotext(pdf: bytes) -> str:
    done = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True)
    return done.stdout.decode()


def _inline(html: str, kind: str) -> bytes:
    match = re.search(rf'"data:{kind};base64,([A-Za-z0-9+/=]+)"', html)
    assert match, html
    return base64.b64decode(match.group(1))


@needs_fonts
def test_preview_renders_a_png_in_memory_for_the_typed_name_and_stores_nothing(
    s3_site: tuple[Site, Any],
) -> None:
    site, s3 = s3_site
    w = site.world
    c1 = w.companies[0]
    client = site.signed_in(w.managers[c1], c1)
    # The company's template (the built-in default: none stored) for a name in another script.
    shown = upload(client, c1, b"", {}, action="preview", name="Zoë 李小龍", as_text=True)
    assert shown.status_code == 200, shown.text
    assert _inline(shown.text, "image/png").startswith(b"\x89PNG\r\n\x1a\n")
    assert "Zoë 李小龍" in _pdftotext(_inline(shown.text, "application/pdf"))
    assert "img-src 'self' data:" in shown.headers["content-security-policy"]
    # An uploaded template is previewed without being stored.
    uploaded = upload(client, c1, document(), {"logo.png": png()}, action="preview", name="Ada Byron")
    assert uploaded.status_code == 200, uploaded.text
    text = _pdftotext(_inline(uploaded.text, "application/pdf"))
    assert "Ada Byron" in text and "Certificate of Dashboard Design" in text
    with Image.open(io.BytesIO(_inline(uploaded.text, "image/png"))) as image:
        assert image.format == "PNG" and image.width > image.height > 500
    assert "Certificate of Dashboard Design" in uploaded.text  # the text box keeps the upload
    assert keys(s3) == [] and audited(site) == []
    # Every other page keeps the strict policy.
    assert "data:" not in client.get("/certificate-template").headers["content-security-policy"]
    # A name the fonts cannot print is refused with the code points, not drawn as nothing.
    refused = upload(client, c1, b"", {}, action="preview", name="Ada \U0001f600", as_text=True)
    assert refused.status_code == 400 and "unsupported_characters" in refused.text
