"""``moodle-offload certificates``: a company's template (set, show, preview), revocation, and a
job's certificates as one ZIP (``download``, in ``certificate_download.py``).

``template set`` validates with the renderer's own code (certificate_render/template.py: schema,
colours, sizes, boxes, time zone, language, images decoded and capped) before anything is
written, then stores the JSON and its images where the renderer reads them (AWS: the
certificate bucket ``aws.content_bucket``, ``templates/company-<id>/``; Cloudflare: the Worker's R2
under the same keys, through its signed object route). ``preview`` renders a PDF
and a PNG (poppler's ``pdftoppm``) locally and sends nothing. The renderer needs the
``certificates`` extra (``pip install 'moodle-offload[certificates]'``) and the built fonts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from moodle_bridge.certificate_templates import SAMPLE, PreviewUnavailable, png_of_pdf, store_template
from moodle_bridge.certificates import RevocationError, change_revocation
from moodle_bridge.commands._common import cli_actor, fail, open_database, require_migrated
from moodle_bridge.commands.certificate_download import run_download
from moodle_bridge.config import BridgeConfig, ConfigError
from moodle_bridge.storage import certificate_repo
from moodle_bridge.storage.database import now
from moodle_bridge.transports.certificate_records import (
    CertificateCloudError,
    certificate_records_from_config,
    template_s3_client,
    worker_certificate_records,
)
from moodle_bridge.transports.worker_objects import (
    WorkerObjectError,
    WorkerTemplateClient,
    worker_image_refusal,
    worker_objects,
)

RENDERER_MISSING = (
    "the certificate renderer's libraries are not installed: pip install 'moodle-offload[certificates]'"
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "certificates", help="certificate templates (set, show, preview), revocation"
    )
    actions = parser.add_subparsers(dest="certificates_action", metavar="ACTION", required=True)
    template = actions.add_parser("template", help="a company's certificate template")
    verbs = template.add_subparsers(dest="template_action", metavar="VERB", required=True)
    set_ = verbs.add_parser("set", help="validate a template JSON (and its images) and store it in the cloud")
    set_.add_argument("file", help="template JSON; the images it names are read from the same directory")
    show = verbs.add_parser("show", help="print the company's stored template JSON")
    preview = verbs.add_parser("preview", help="render a PDF and a PNG locally; nothing is sent")
    preview.add_argument("--file", help="render this local template JSON instead of the stored one")
    preview.add_argument("--user", type=int, help="real data: this Moodle user's newest certificate")
    preview.add_argument("--name", help="the learner's name (any supported script)")
    preview.add_argument("--course", help="the course name")
    preview.add_argument("--grade", help="the grade")
    preview.add_argument("--language", help="the certificate's language (e.g. de, ar, ja)")
    preview.add_argument("--output", default="certificate-preview", help="path prefix of the .pdf and .png")
    preview.add_argument("--fonts", help="directory of the built fonts (default: the package's fonts/)")
    for sub in (set_, show, preview):
        sub.add_argument("--company", type=int, required=True, help="the company id")
        sub.add_argument("--template-id", default="default", help="template id (default: default)")
    for verb, text in (
        ("revoke", "mark a certificate revoked"),
        ("unrevoke", "reinstate a revoked certificate"),
    ):
        sub = actions.add_parser(
            verb, help=f"{text}: the public verify page says so at once (AWS and the Worker)"
        )
        sub.add_argument("code", help="the verification code printed on the certificate")
        sub.add_argument(
            "--reason", required=True, help="why (kept in the audit log and, for revoke, the cloud)"
        )
    download = actions.add_parser("download", help="all stored certificates of a job as one ZIP")
    download.add_argument("job", type=int, help="job id (`moodle-offload jobs list`)")
    download.add_argument("-o", "--output", type=Path, required=True, help="the ZIP file to write")
    download.add_argument("--force", action="store_true", help="replace the output file if it exists")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, config: BridgeConfig) -> int:
    if args.certificates_action == "download":
        return run_download(args, config)
    if args.certificates_action in ("revoke", "unrevoke"):
        return _revoke(args, config, revoke=args.certificates_action == "revoke")
    try:
        from certificate_render.template import TemplateError  # noqa: PLC0415
    except ImportError:
        return fail(RENDERER_MISSING)
    try:
        if args.template_action == "set":
            return _set(args, config)
        if args.template_action == "show":
            return _show(args, config)
        return _preview(args, config)
    except TemplateError as exc:
        return fail(f"{exc.code}: {exc}")
    except WorkerObjectError as exc:  # the Worker's R2 (Cloudflare companies): one line, no body
        return fail(str(exc))


def _provider(config: BridgeConfig, company_id: int) -> str:
    engine, tables, _ = open_database(config)
    try:  # the dashboard calls this per request: its pool must not outlive the call
        require_migrated(engine, tables)
        s = tables.company_settings.c
        with engine.connect() as conn:
            provider = conn.execute(sa.select(s.provider).where(s.companyid == company_id)).scalar()
    finally:
        engine.dispose()
    return str(provider or "aws")


class _WorkerTemplates:
    """The Worker's template store: the renderer's ``TemplateStore`` over the Worker's object routes,
    refusing (before anything is written) images the Worker's renderer cannot draw."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def put(self, company_id: int, template_id: str, document: Any, images: dict[str, bytes]) -> Any:
        from certificate_render.template import TemplateError  # noqa: PLC0415

        why = worker_image_refusal(images)
        if why is not None:
            raise TemplateError("template_invalid", why)
        return self._store.put(company_id, template_id, document, images)

    def stored(self, company_id: int, template_id: str) -> tuple[Any, dict[str, bytes]] | None:
        found: tuple[Any, dict[str, bytes]] | None = self._store.stored(company_id, template_id)
        return found


def _store(config: BridgeConfig, company_id: int) -> Any:
    """The company's template store in the cloud: the certificate bucket (AWS) or the Worker's
    R2 through its signed object route (Cloudflare); the same validation either way."""
    from certificate_render.template import TemplateStore  # noqa: PLC0415

    provider = _provider(config, company_id)
    if provider == "cloudflare":
        objects = worker_objects(config)
        if objects is None:
            raise ConfigError(
                f"company {company_id} uses provider 'cloudflare': its templates are stored in the "
                "Worker's R2, and the Worker URL (cloudflare.intake_url / MRCO_CLOUDFLARE_INTAKE_URL) "
                "or the current key set is not configured"
            )
        return _WorkerTemplates(TemplateStore(WorkerTemplateClient(objects), "r2"))
    if provider != "aws":
        raise ConfigError(
            f"company {company_id} uses provider {provider!r}: it has no certificate template store"
        )
    if not config.aws.content_bucket:
        raise ConfigError(
            "aws.content_bucket (MRCO_CONTENT_BUCKET) is not set: templates live in that bucket"
        )
    return TemplateStore(template_s3_client(config), config.aws.content_bucket)


def _read_local(path: Path) -> tuple[Any, dict[str, bytes]]:
    """A template JSON file and the images it names, from the file's directory."""
    from certificate_render.template import TemplateError, image_names  # noqa: PLC0415

    try:
        document = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise TemplateError("template_invalid", f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise TemplateError("template_invalid", f"{path} is not UTF-8 JSON ({exc})") from None
    images: dict[str, bytes] = {}
    for section, name in image_names(document):
        image = path.parent / name
        if not image.is_file():
            raise TemplateError(
                "template_invalid", f"{section} image {name!r} is not a file beside {path.name}"
            )
        images[name] = image.read_bytes()
    return document, images


def _set(args: argparse.Namespace, config: BridgeConfig) -> int:
    document, images = _read_local(Path(args.file))
    from certificate_render.template import parse_template  # noqa: PLC0415

    parse_template(document, images)  # refused here, before the cloud is asked anything
    # AWS errors end the command with one line (moodle_bridge/cli.py); the images go first and
    # the JSON last, so a half-stored template is never one the renderer reads.
    engine, tables, _ = open_database(config)
    store_template(
        _store(config, args.company), engine, tables, company_id=args.company,
        template_id=args.template_id, document=document, images=images, actor=cli_actor(), now=now(),
    )  # fmt: skip
    print(f"template {args.template_id!r} of company {args.company} stored ({len(images)} images)")
    return 0


def _show(args: argparse.Namespace, config: BridgeConfig) -> int:
    from certificate_render.template import default_document  # noqa: PLC0415

    found = _store(config, args.company).stored(args.company, args.template_id)
    if found is None:
        if args.template_id != "default":
            return fail(f"company {args.company} has no template {args.template_id!r}")
        print("(no stored template: the built-in default is used)", file=sys.stderr)
        document = default_document()
    else:
        document = found[0]
    print(json.dumps(document, ensure_ascii=False, indent=2))
    return 0


def _preview(args: argparse.Namespace, config: BridgeConfig) -> int:
    from certificate_render.fonts import FONT_DIR, FontLibrary, FontsMissing  # noqa: PLC0415
    from certificate_render.renderer import render_certificate  # noqa: PLC0415
    from certificate_render.template import default_template, parse_template  # noqa: PLC0415
    from certificate_render.values import CertificateDataError  # noqa: PLC0415

    if args.file:
        template = parse_template(*_read_local(Path(args.file)))
    else:
        found = _store(config, args.company).stored(args.company, args.template_id)
        if found is None and args.template_id != "default":
            return fail(f"company {args.company} has no template {args.template_id!r}")
        template = default_template() if found is None else parse_template(*found)
    data: dict[str, Any] = {**SAMPLE, "completed_at": int(time.time())}
    if args.user is not None:
        engine, tables, _ = open_database(config)
        require_migrated(engine, tables)
        with engine.connect() as conn:
            real = certificate_repo.latest_certificate_data(conn, tables, args.user)
        if real is None:
            return fail(f"user {args.user} has no certificate issued through the bridge: use --name")
        data.update(real)
    for option, key in (
        ("name", "learner_name"),
        ("course", "course_name"),
        ("grade", "grade"),
        ("language", "language"),
    ):
        if getattr(args, option) is not None:
            data[key] = getattr(args, option)
    try:
        fonts = FontLibrary(Path(args.fonts) if args.fonts else FONT_DIR)
    except FontsMissing as exc:
        return fail(f"{exc} (or pass --fonts DIR)")
    verify_url = (config.submit.verify_url_base or "") + str(data["verification_code"])
    try:
        pdf = render_certificate(template, data, verify_url, fonts)
    except CertificateDataError as exc:
        detail = f" ({' '.join(exc.detail)})" if exc.detail else ""
        return fail(f"{exc.code}: {exc}{detail}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pdf_path = output.with_name(output.name + ".pdf")
    pdf_path.write_bytes(pdf)
    try:
        png = png_of_pdf(pdf)
    except PreviewUnavailable as exc:
        print(f"{pdf_path} written; no PNG: {exc}", file=sys.stderr)
        return 1
    png_path = output.with_name(output.name + ".png")
    png_path.write_bytes(png)
    print(f"{pdf_path} ({len(pdf)} bytes) and {png_path} written; nothing was sent")
    return 0


def _revoke(args: argparse.Namespace, config: BridgeConfig, *, revoke: bool) -> int:
    engine, tables, _ = open_database(config)
    require_migrated(engine, tables)
    try:
        done = change_revocation(
            engine,
            tables,
            certificate_records_from_config(config),
            worker_records=worker_certificate_records(config),
            code=args.code,
            revoke=revoke,
            reason=args.reason,
            actor=cli_actor(),
            now=now(),
        )
    except (RevocationError, CertificateCloudError) as exc:
        return fail(str(exc))
    state = "revoked" if done.revoked else "valid again"
    print(f"certificate {done.code} (company {done.companyid}, job {done.jobid}) is {state}")
    return 0
