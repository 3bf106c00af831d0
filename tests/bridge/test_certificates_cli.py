"""``moodle-offload certificates``: templates validated by the renderer's own code before they are
stored where the Lambda reads them (S3, moto), shown back, previewed locally as PDF and PNG for a
name in any script; revocation changes the cloud's verification record (DynamoDB, moto), the
bridge's row and the audit log, or nothing at all."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from moto import mock_aws
from PIL import Image

from certificate_render.fonts import FONT_DIR
from certificate_render.template import TemplateStore
from lambdas.certificates.verification import facts, page, record_item
from moodle_bridge.cli import main
from moodle_bridge.storage.bridge_tables import build_bridge_tables
from tests.web.world import add_job

T = build_bridge_tables("mdl_")
BUCKET = "mrco-certificates"
TABLE = "mrco-idempotency"
pytestmark = pytest.mark.sqlite
needs_fonts = pytest.mark.skipif(
    not (FONT_DIR / "manifest.json").exists(), reason="the certificate fonts are built by make setup"
)


class Cloud:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url)
        self.s3 = boto3.client("s3", region_name="eu-west-1")
        self.db = boto3.client("dynamodb", region_name="eu-west-1")

    def certificate(self, company: int, code: str, *, provider: str = "aws", in_cloud: bool = True) -> int:
        """A rendered certificate of ``company``: the bridge's rows and (``in_cloud``) its record."""
        with self.engine.begin() as conn:
            job = add_job(conn, T, company, [100 + company], ["rendered"])
            conn.execute(
                T.jobs.update().where(T.jobs.c.id == job).values(jobtype="certificate", provider=provider)
            )
            rid = conn.execute(sa.select(T.recipients.c.id).where(T.recipients.c.jobid == job)).scalar_one()
            data = {"learner_name": "Ada Lovelace", "course_name": "Safety", "completed_at": 1790000000,
                    "grade": "92", "verification_code": code}  # fmt: skip
            conn.execute(
                T.recipients.update()
                .where(T.recipients.c.id == rid)
                .values(data=json.dumps({"certificate": data}))
            )
            conn.execute(
                T.certificates.insert().values(
                    companyid=company,
                    userid=100 + company,
                    recipientid=rid,
                    verifycode=code,
                    timeissued=1790000000,
                )
            )
        if in_cloud:
            key = f"certificates/company-{company}/j{job}/{rid}.pdf"
            item = record_item(company, str(job), str(rid), key, data)
            self.db.put_item(TableName=TABLE, Item={"id": {"S": f"cert#{code}"}, **item})
        return job

    def record(self, code: str) -> dict[str, Any]:
        item: dict[str, Any] = self.db.get_item(TableName=TABLE, Key={"id": {"S": f"cert#{code}"}})["Item"]
        return item

    def audit(self, action: str) -> list[dict[str, Any]]:
        a = T.audit_log.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(a.actor, a.companyid, a.detail).where(a.action == action)).all()
        return [{"actor": r.actor, "companyid": r.companyid, **json.loads(r.detail or "{}")} for r in rows]


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    url = f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MRCO_DATABASE_URL", url)
    monkeypatch.setenv("MRCO_AWS_REGION", "eu-west-1")
    monkeypatch.setenv("MRCO_CONTENT_BUCKET", BUCKET)
    monkeypatch.setenv("MRCO_IDEMPOTENCY_TABLE", TABLE)
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        boto3.client("dynamodb", region_name="eu-west-1").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        assert main(["migrate"]) == 0
        yield Cloud(url)


def _png(size: tuple[int, int] = (120, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (31, 78, 121)).save(out, format="PNG")
    return out.getvalue()


def _template(tmp_path: Path, **changes: Any) -> Path:
    document: dict[str, Any] = {
        "page": {"size": "A4", "orientation": "landscape"},
        "language": "en",
        "logo": {"image": "logo.png", "x": 136.5, "y": 16, "w": 24},
        "elements": [
            {"field": "static", "text": "Certificate of Completion", "y": 48, "size": 30, "bold": True},
            {"field": "learner_name", "y": 80, "h": 18, "size": 34, "bold": True},
            {"field": "course_name", "y": 114, "h": 14, "size": 22},
            {"field": "verification_code", "y": 184, "size": 9},
        ],
        "qr": {"x": 248, "y": 157, "size": 30},
        **changes,
    }
    (tmp_path / "logo.png").write_bytes(_png())
    path = tmp_path / "template.json"
    path.write_text(json.dumps(document), "utf-8")
    return path


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _stored_keys(cloud: Cloud) -> list[str]:
    return [o["Key"] for o in cloud.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_a_bad_template_is_refused_with_the_renderers_message_and_nothing_is_stored(
    cloud: Cloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_colour = _template(tmp_path, border={"color": "navy"})
    assert main(["certificates", "template", "set", str(bad_colour), "--company", "7"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "template_invalid: border/color:" in line and "must match pattern" in line
    size_as_text = _template(tmp_path, elements=[{"field": "learner_name", "y": 80, "size": "34"}])
    assert main(["certificates", "template", "set", str(size_as_text), "--company", "7"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "elements/0/size:" in line and "must be number" in line
    good = _template(tmp_path)
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert main(["certificates", "template", "set", str(good), "--company", "7"]) == 1
    assert "logo image 'logo.png' is not a readable image" in _one_line(capsys.readouterr().err)
    (tmp_path / "logo.png").unlink()
    assert main(["certificates", "template", "set", str(good), "--company", "7"]) == 1
    assert "logo image 'logo.png' is not a file beside template.json" in _one_line(capsys.readouterr().err)
    assert _stored_keys(cloud) == []
    assert cloud.audit("certificate_template_set") == []


def test_set_stores_where_the_renderer_reads_show_prints_it_and_the_change_is_audited(
    cloud: Cloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _template(tmp_path)
    assert (
        main(["certificates", "template", "set", str(path), "--company", "7", "--template-id", "gold"]) == 0
    )
    assert "template 'gold' of company 7 stored (1 images)" in capsys.readouterr().out
    assert sorted(_stored_keys(cloud)) == ["templates/company-7/gold.json", "templates/company-7/logo.png"]
    # The Lambda's own store reads it back as a valid template.
    template = TemplateStore(cloud.s3, BUCKET).get(7, "gold")
    assert [e.field for e in template.elements][:2] == ["static", "learner_name"] and template.images
    assert main(["certificates", "template", "show", "--company", "7", "--template-id", "gold"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(path.read_text("utf-8"))
    (entry,) = cloud.audit("certificate_template_set")
    assert entry["companyid"] == 7 and entry["actor"].startswith("cli:") and entry["template_id"] == "gold"
    assert len(entry["sha256"]) == 64 and set(entry["images"]) == {"logo.png"}
    # No stored default: show says the built-in one is used.
    assert main(["certificates", "template", "show", "--company", "7"]) == 0
    shown = capsys.readouterr()
    assert "built-in default" in shown.err and json.loads(shown.out)["elements"]
    assert main(["certificates", "template", "show", "--company", "7", "--template-id", "nope"]) == 1
    assert "company 7 has no template 'nope'" in _one_line(capsys.readouterr().err)


def test_a_cloudflare_company_without_a_worker_url_is_refused_and_nothing_is_stored(
    cloud: Cloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cloud.engine.begin() as conn:
        conn.execute(
            T.company_settings.insert().values(
                companyid=9, provider="cloudflare", timecreated=1, timemodified=1
            )
        )
    assert main(["certificates", "template", "set", str(_template(tmp_path)), "--company", "9"]) == 2
    # Its templates go to the Worker's R2 (tests/bridge/test_worker_objects_e2e.py); no URL here.
    line = _one_line(capsys.readouterr().err)
    assert "stored in the Worker's R2" in line and "MRCO_CLOUDFLARE_INTAKE_URL" in line
    assert _stored_keys(cloud) == []


def _pdftotext(path: Path) -> str:
    done = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    )
    return done.stdout


@needs_fonts
@pytest.mark.parametrize(
    ("name", "language"),
    [
        ("Zoë Ångström", "de"),
        ("محمد عبد الله", "ar"),
        ("देवनागरी नाम", "hi"),
        ("朱镕基", "zh"),
        ("김민준", "ko"),
        ("สมชาย ใจดี", "th"),
    ],
)
def test_preview_renders_a_pdf_and_a_png_for_a_name_in_any_script_and_sends_nothing(
    cloud: Cloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, language: str
) -> None:
    out = tmp_path / "out" / "preview"
    args = ["certificates", "template", "preview", "--company", "7", "--file", str(_template(tmp_path))]
    assert main([*args, "--name", name, "--language", language, "--output", str(out)]) == 0
    assert "nothing was sent" in capsys.readouterr().out
    pdf, png = out.with_name("preview.pdf"), out.with_name("preview.png")
    assert pdf.read_bytes().startswith(b"%PDF-")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > image.height > 500
    if language not in ("ar", "hi", "th"):  # shaped scripts: pdftotext's order differs, checked elsewhere
        assert name in _pdftotext(pdf)
    assert _stored_keys(cloud) == []


@needs_fonts
def test_preview_uses_real_data_and_the_stored_template(
    cloud: Cloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud.certificate(7, "REALCODE0001")
    assert main(["certificates", "template", "set", str(_template(tmp_path)), "--company", "7"]) == 0
    out = tmp_path / "real"
    assert (
        main(["certificates", "template", "preview", "--company", "7", "--user", "107", "--output", str(out)])
        == 0
    )
    text = _pdftotext(out.with_name("real.pdf"))
    assert "Ada Lovelace" in text and "Safety" in text and "REALCODE0001" in text
    capsys.readouterr()
    assert main(["certificates", "template", "preview", "--company", "7", "--user", "999"]) == 1
    assert "user 999 has no certificate issued through the bridge" in _one_line(capsys.readouterr().err)
    assert (
        main(
            [
                "certificates",
                "template",
                "preview",
                "--company",
                "7",
                "--name",
                "😀 Smile",
                "--output",
                str(out),
            ]
        )
        == 1
    )
    assert "unsupported_characters" in _one_line(capsys.readouterr().err)


def test_preview_names_missing_fonts(
    cloud: Cloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["certificates", "template", "preview", "--company", "7", "--fonts", str(tmp_path / "none")]
    assert main(args) == 1
    assert "manifest.json is missing" in _one_line(capsys.readouterr().err)


def test_revoke_marks_the_cloud_record_the_bridge_row_and_the_audit_and_unrevoke_reverses_it(
    cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    job = cloud.certificate(7, "ABCD2345EFGH")
    assert main(["certificates", "revoke", "abcd2345efgh", "--reason", "issued in error"]) == 0
    assert "certificate ABCD2345EFGH (company 7" in capsys.readouterr().out
    item = cloud.record("ABCD2345EFGH")
    assert (
        item["revoked_reason"] == {"S": "issued in error"} and facts("ABCD2345EFGH", item)["valid"] is False
    )
    assert "This certificate has been revoked" in page("ABCD2345EFGH", item)
    with cloud.engine.connect() as conn:
        assert conn.execute(sa.select(T.certificates.c.timerevoked)).scalar_one() is not None
    (entry,) = cloud.audit("certificate_revoked")
    assert entry == {"actor": entry["actor"], "companyid": 7, "code": "ABCD2345EFGH",
                     "recipient_id": entry["recipient_id"], "reason": "issued in error"}  # fmt: skip
    assert main(["certificates", "unrevoke", "ABCD2345EFGH", "--reason", "confirmed by HR"]) == 0
    item = cloud.record("ABCD2345EFGH")
    assert "revoked_at" not in item and facts("ABCD2345EFGH", item)["valid"] is True
    with cloud.engine.connect() as conn:
        assert conn.execute(sa.select(T.certificates.c.timerevoked)).scalar_one() is None
        jobs = conn.execute(
            sa.select(T.audit_log.c.jobid).where(T.audit_log.c.action.like("certificate_%"))
        ).scalars()
        assert set(jobs) == {job}
    assert [e["reason"] for e in cloud.audit("certificate_reinstated")] == ["confirmed by HR"]


def test_revocation_refuses_unknown_codes_missing_records_other_providers_and_blank_reasons(
    cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud.certificate(7, "NOTRENDERED1", in_cloud=False)
    cloud.certificate(8, "WORKERCERT01", provider="cloudflare")
    cloud.certificate(7, "VALIDCODE001")
    cases = [
        (["UNKNOWNCODE1", "--reason", "x"], "no certificate with code UNKNOWNCODE1"),
        (
            ["NOTRENDERED1", "--reason", "x"],
            "the cloud holds no verification record NOTRENDERED1 for company 7",
        ),
        # The Worker revokes too (tests/bridge/test_worker_objects_e2e.py); no Worker URL here.
        (["WORKERCERT01", "--reason", "x"], "the Worker's verification record cannot be changed"),
        (["VALIDCODE001", "--reason", "  "], "a reason is required"),
    ]
    for args, message in cases:
        assert main(["certificates", "revoke", *args]) == 1
        assert message in _one_line(capsys.readouterr().err)
    assert cloud.audit("certificate_revoked") == []
    assert "revoked_at" not in cloud.record("VALIDCODE001")
    # A record another company holds under the code is never touched.
    cloud.db.update_item(
        TableName=TABLE,
        Key={"id": {"S": "cert#VALIDCODE001"}},
        UpdateExpression="SET company_id = :c",
        ExpressionAttributeValues={":c": {"N": "99"}},
    )
    assert main(["certificates", "revoke", "VALIDCODE001", "--reason", "x"]) == 1
    assert "no verification record VALIDCODE001 for company 7" in _one_line(capsys.readouterr().err)
    assert "revoked_at" not in cloud.record("VALIDCODE001")
