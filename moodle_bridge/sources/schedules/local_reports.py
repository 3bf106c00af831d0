"""Report files for IOMAD to attach: a schedule's report that goes through Moodle's own mail.

IOMAD's cron attaches ``headers['attachment'] = {filepath, filename}`` by reading ``filepath``
when it sends (docs/iomad.md), so the file must be where Moodle's web server user can read it:
under Moodle's ``$CFG->dataroot`` (config ``database.moodle_dataroot``), at
``<dataroot>/temp/mrcloud_reports/<schedule>/<run>/<filename>``. Directories are created mode
0750 and the file 0640, both with the group of ``<dataroot>`` itself (the web server's group on
a standard install), so the bridge's user must be in that group. The reconciliation pass deletes
files older than ``KEEP_DAYS`` and the directories they leave empty.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: Under ``<dataroot>``: where the bridge writes report files for IOMAD.
SUBDIR = ("temp", "mrcloud_reports")
#: Days a report file is kept: long after IOMAD's cron (every 5 minutes) has attached it.
KEEP_DAYS = 7
DIR_MODE = 0o750
FILE_MODE = 0o640


class LocalReportError(RuntimeError):
    """The file cannot be written where Moodle can read it; the message says why and what to do."""


def reports_root(dataroot: str) -> Path:
    return Path(dataroot).joinpath(*SUBDIR)


def _owned(path: Path, gid: int, mode: int) -> None:
    os.chmod(path, mode)
    if path.stat().st_gid != gid:
        os.chown(path, -1, gid)


def write_report_file(dataroot: str, scheduleid: int, runid: int, filename: str, body: bytes) -> Path:
    """Write the file and return its absolute path; raises ``LocalReportError``."""
    root = Path(dataroot)
    if not root.is_absolute():
        raise LocalReportError(
            f"moodle_dataroot must be an absolute path (Moodle's $CFG->dataroot), not {dataroot!r}"
        )
    if not root.is_dir():
        raise LocalReportError(f"moodle_dataroot {dataroot} is not a directory (Moodle's $CFG->dataroot)")
    if "/" in filename or filename in ("", ".", ".."):
        raise LocalReportError("the report's file name is not a plain name")
    gid = root.stat().st_gid
    target = reports_root(dataroot) / str(int(scheduleid)) / str(int(runid))
    try:
        current = root
        for part in (*SUBDIR, str(int(scheduleid)), str(int(runid))):
            current = current / part
            if not current.is_dir():
                current.mkdir(mode=DIR_MODE)
                _owned(current, gid, DIR_MODE)
        path = target / filename
        tmp = target / f".{filename}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            out.write(body)
        _owned(tmp, gid, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        raise LocalReportError(
            f"cannot write the report under {target} ({type(exc).__name__}: {exc.strerror}); the bridge's "
            "user needs write access to <dataroot>/temp and membership of the dataroot's group"
        ) from None
    return path


def purge_report_files(dataroot: str, *, now: float | None = None, keep_days: int = KEEP_DAYS) -> int:
    """Delete report files older than ``keep_days`` and the run directories left empty;
    returns how many files. Nothing to do without a dataroot or before the first file."""
    if not dataroot:
        return 0
    root = reports_root(dataroot)
    if not root.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - keep_days * 86400
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if Path(dirpath) != root:
            try:
                if Path(dirpath).stat().st_mtime < cutoff:
                    Path(dirpath).rmdir()  # only when empty
            except OSError:
                pass
    return removed
