"""``moodle-offload submit-list``: a job from a recipient list (plain Moodle sites, no IOMAD).

The list is CSV (header row; an ``email`` column, optional ``name``/``fullname`` and
``userid``, every other column becomes template data) or JSON (a list of objects with the
same keys). The template is jinja2; it is checked once, then test-rendered per recipient in
a sandbox, so a row missing a variable is recorded ``failed`` / ``template_error`` instead
of failing in the cloud. Bad rows get a recorded outcome; nothing is silently dropped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
import sqlalchemy as sa

from moodle_bridge.commands._common import cli_actor, fail, open_database
from moodle_bridge.config import BridgeConfig
from moodle_bridge.pipeline.jobs import (
    CreatedBatches,
    PlannedRecipient,
    create_template_job,
    fill_template_job,
)
from moodle_bridge.pipeline.outbox import BuildError, Outbox
from moodle_bridge.pipeline.routing import decide
from moodle_bridge.sources.iomad.addresses import address_problem
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.database import DatabaseUnavailable, check_connection, now
from moodle_bridge.transports.capabilities import worker_check

_RESERVED = {"email", "name", "fullname", "userid"}


class ListError(ValueError):
    """The list or template as a whole is unusable (the message says why)."""


@dataclass
class ListRow:
    line: int
    email: str
    name: str
    userid: int | None
    data: dict[str, Any]
    problem: str | None = None
    detail: str | None = None


def read_recipients(path: Path) -> list[ListRow]:
    try:
        text = path.read_text("utf-8-sig")
    except FileNotFoundError:
        raise ListError(f"recipient list {path} does not exist") from None
    except UnicodeDecodeError:
        raise ListError(f"recipient list {path} is not UTF-8") from None
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ListError(f"{path}: invalid JSON at line {exc.lineno}") from None
        if not isinstance(document, list):
            raise ListError(f"{path}: expected a JSON list of recipient objects")
        records: list[tuple[int, Any]] = list(enumerate(document, 1))
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "email" not in [f.strip().lower() for f in reader.fieldnames]:
            raise ListError(f"{path}: the CSV header needs an 'email' column")
        records = [
            (i + 2, {(k or "").strip().lower(): v for k, v in row.items()}) for i, row in enumerate(reader)
        ]
    rows: list[ListRow] = []
    for line, record in records:
        if not isinstance(record, dict):
            rows.append(ListRow(line, "", "", None, {}, "invalid_row", "not an object"))
            continue
        email = str(record.get("email") or "").strip()
        name = str(record.get("name") or record.get("fullname") or "").strip()
        userid: int | None = None
        problem = detail = None
        raw_userid = record.get("userid")
        if raw_userid not in (None, ""):
            try:
                userid = int(str(raw_userid))
            except ValueError:
                problem, detail = "invalid_row", "userid is not a number"
        data = {str(k): v for k, v in record.items() if k not in _RESERVED and k}
        row = ListRow(line, email, name, userid, data, problem, detail)
        if row.problem is None:
            code = address_problem(email)
            if code:
                row.problem, row.detail = code, "no usable email address"
        rows.append(row)
    return rows


def compile_template(subject: str, html: str, text: str | None) -> tuple[jinja2.Template, ...]:
    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)
    try:
        return tuple(env.from_string(s) for s in (subject, html, text or ""))
    except jinja2.TemplateSyntaxError as exc:
        raise ListError(f"template syntax error at line {exc.lineno}: {exc.message}") from None


def plan_list(
    rows: list[ListRow], templates: tuple[jinja2.Template, ...], contentkey: str
) -> list[PlannedRecipient]:
    planned: list[PlannedRecipient] = []
    seen: set[str] = set()
    for row in rows:
        key = f"list:{row.line}"
        p = PlannedRecipient(
            dedupekey=key,
            role="list",
            address=row.email[:254],
            fullname=row.name,
            userid=row.userid,
            contentkey=contentkey,
            data={**row.data, "name": row.name, "email": row.email},
        )
        lowered = row.email.lower()
        if row.problem:
            p.status, p.errorcode, p.errormessage = "failed", row.problem, f"line {row.line}: {row.detail}"
        elif lowered in seen:
            p.status, p.errorcode, p.errormessage = (
                "skipped",
                "duplicate_address",
                f"line {row.line}: listed twice",
            )
        else:
            try:
                for template in templates:
                    template.render(**(p.data or {}))
            except jinja2.TemplateError as exc:
                p.status, p.errorcode = "failed", "template_error"
                p.errormessage = f"line {row.line}: {type(exc).__name__}: {str(exc)[:200]}"
            else:
                seen.add(lowered)
        planned.append(p)
    return planned


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("submit-list", help="create a job from a CSV/JSON recipient list")
    parser.add_argument("recipients", type=Path, help="recipients.csv or recipients.json")
    parser.add_argument("--company", type=int, default=0, help="company id (0: plain Moodle site)")
    parser.add_argument("--template", type=Path, required=True, help="jinja2 HTML template file")
    parser.add_argument("--text-template", type=Path, help="optional jinja2 plain-text template file")
    parser.add_argument("--subject", required=True, help="jinja2 subject line")
    parser.add_argument(
        "--submit", action="store_true", help="submit the batches now instead of at the next tick"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, config: BridgeConfig) -> int:
    try:
        html = args.template.read_text("utf-8")
        text = args.text_template.read_text("utf-8") if args.text_template else None
    except (FileNotFoundError, UnicodeDecodeError) as exc:
        return fail(f"template: {type(exc).__name__}: {getattr(exc, 'filename', '') or ''}")
    try:
        templates = compile_template(args.subject, html, text)
        rows = read_recipients(args.recipients)
    except ListError as exc:
        return fail(str(exc))
    if not rows:
        return fail("the recipient list is empty")
    engine, _tables, repo = open_database(config)
    actor = cli_actor()
    try:
        check_connection(engine)
        result = create_list_job(
            engine, repo, config, args.company, args.subject, html, text, rows, templates, actor
        )
        if isinstance(result, str):
            return fail(result)
        jobid, created = result
        print(
            f"job {jobid}: {created.recipients} recipients, {created.pending} to send in "
            f"{created.batches} batches, {created.recipients - created.pending} with a recorded problem "
            f"(see `moodle-offload jobs show {jobid}`)"
        )
        if args.submit:
            from moodle_bridge.commands.tick import build_submitters  # noqa: PLC0415 - avoid a cycle

            report = Outbox(engine, repo, config, build_submitters(config)).submit_due()
            print(f"submitted {report.submitted} batches; {report.retried} will be retried")
    except (DatabaseUnavailable, ListError) as exc:
        return fail(str(exc))
    finally:
        engine.dispose()
    return 0


def create_list_job(
    engine: sa.Engine,
    repo: BridgeRepo,
    config: BridgeConfig,
    companyid: int,
    subject: str,
    html: str,
    text: str | None,
    rows: list[ListRow],
    templates: tuple[jinja2.Template, ...],
    actor: str,
) -> tuple[int, CreatedBatches] | str:
    """Create the job, its recipients and outbox batches in one transaction."""
    with engine.begin() as conn:
        settings = repo.get_settings(conn, companyid)
        decision = decide(repo.offload_enabled(conn), settings, "email", len(rows))
        if not decision.offload:
            return (
                f"company {companyid} is not routed to the cloud ({decision.reason}); "
                "see `moodle-offload company show`"
            )
        if settings is None:  # decide() never offloads without settings; keeps mypy informed
            return f"company {companyid} has no settings"
        if settings.provider == "cloudflare":
            refused = worker_check(config)(companyid, "list")
            if refused:
                return f"{refused}; the list is not submitted"
        template_json = json.dumps({"subject": subject, "html": html, "text": text or ""})
        try:
            new_job = create_template_job(
                conn,
                repo,
                config,
                settings,
                companyid=companyid,
                source="list",
                category="transactional",
                templatename=None,
                template_json=template_json,
                actor=actor,
                at=now(),
            )
        except BuildError as exc:
            raise ListError(str(exc)) from None
        jobid, contentkey = new_job.jobid, new_job.contentkey
        planned = plan_list(rows, templates, contentkey)
        created = fill_template_job(conn, repo, config, new_job, planned)
        audit.record(
            conn,
            repo.t,
            actor=actor,
            action=audit.JOB_CREATED,
            now=now(),
            companyid=companyid,
            jobid=jobid,
            detail={"source": "list", "recipients": created.recipients, "batches": created.batches},
        )
    return jobid, created
