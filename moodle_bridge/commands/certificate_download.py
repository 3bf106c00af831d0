"""``moodle-offload certificates download JOB -o FILE.zip``: a job's certificates as one ZIP.

The ZIP is streamed: each PDF is read from the certificate bucket (a Cloudflare job's: the Worker's
R2, through its signed object route) in chunks and copied into the
archive as it arrives (``transports/certificate_store.py``), so memory stays at one chunk
whatever the job's size. It is written to ``FILE.zip.part`` and renamed when complete, so an
interrupted download never leaves a truncated ZIP under the asked name. Registered by
``commands/certificates.py`` (``certificates download``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from botocore.exceptions import BotoCoreError, ClientError

from moodle_bridge.commands._common import cli_actor, fail, open_database, require_migrated
from moodle_bridge.config import BridgeConfig
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_repo import BridgeRepo
from moodle_bridge.storage.database import now
from moodle_bridge.transports.certificate_store import (
    CertificateStoreMissing,
    ObjectReader,
    store_for,
    zip_stream,
)
from moodle_bridge.transports.worker_objects import WorkerObjectError

#: ``mrcloud_audit_log.action`` of a ZIP download (the dashboard records the same action).
CERTIFICATES_DOWNLOADED = "certificates_downloaded"


def certified_rows(engine: sa.Engine, repo: BridgeRepo, jobid: int, page: int = 1000) -> Iterator[Any]:
    """The job's certified recipients, a page per short connection (none is held while copying)."""
    after = 0
    while True:
        with engine.connect() as conn:
            rows = repo.certified_recipients(conn, jobid, after, page)
        yield from rows
        if len(rows) < page:
            return
        after = int(rows[-1].id)


def write_zip(
    engine: sa.Engine, repo: BridgeRepo, store: ObjectReader, jobid: int, output: Path
) -> tuple[int, int]:
    """Stream the job's certificates into ``output``; returns (certificates, bytes written)."""
    partial = output.with_name(output.name + ".part")
    count = written = 0

    def counted() -> Iterator[Any]:
        nonlocal count
        for row in certified_rows(engine, repo, jobid):
            count += 1
            yield row

    try:
        with partial.open("wb") as out:
            for chunk in zip_stream(store, counted()):
                out.write(chunk)
                written += len(chunk)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count, written


def run_download(args: argparse.Namespace, config: BridgeConfig) -> int:
    engine, tables, repo = open_database(config)
    try:
        require_migrated(engine, tables)
        with engine.connect() as conn:
            job = repo.job(conn, args.job)
            first = repo.certified_recipients(conn, args.job, 0, 1) if job is not None else []
        if job is None:
            return fail(f"job {args.job} does not exist (see `moodle-offload jobs list`)")
        if not first:
            return fail(f"job {args.job} has no stored certificates")
        output: Path = args.output
        if output.exists() and not args.force:
            return fail(f"{output} exists (use --force to replace it)")
        if not output.parent.is_dir():
            return fail(f"{output.parent} is not a directory")
        try:
            store = store_for(config, str(job.provider))
        except CertificateStoreMissing as exc:
            return fail(str(exc))
        try:
            count, written = write_zip(engine, repo, store, args.job, output)
        except (BotoCoreError, ClientError) as exc:
            return fail(f"a certificate could not be read from the certificate bucket ({type(exc).__name__})")
        except WorkerObjectError as exc:
            return fail(f"a certificate could not be read from the Worker's R2 ({exc})")
        except OSError as exc:
            return fail(f"{output}: {exc.strerror or type(exc).__name__}")
        with engine.begin() as conn:
            audit.record(
                conn,
                tables,
                actor=cli_actor(),
                action=CERTIFICATES_DOWNLOADED,
                now=now(),
                companyid=int(job.companyid),
                jobid=int(job.id),
                detail={"certificates": count},
            )
        print(f"wrote {count} certificates of job {args.job} to {output} ({written} bytes)")
        return 0
    finally:
        engine.dispose()
