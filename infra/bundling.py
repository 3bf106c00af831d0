"""Build the Lambda code asset without Docker.

The asset is a directory holding ``lambdas/``, ``certificate_render/`` (with its fonts),
``offload_contract/`` and the ``lambdas`` extra's run-time dependencies, installed by pip as
manylinux aarch64 wheels for the Lambda runtime's Python. boto3/botocore come with the runtime
and are left out. The directory is cached under ``build/lambda-assets/<hash>``: the hash covers
the sources, pyproject.toml, constraints.txt, the target Python and platform, so a synth with
nothing changed copies nothing and installs nothing. ``mode="source"`` (tests) skips pip and needs no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Literal

BundleMode = Literal["full", "source"]

#: Lambda's Python runtime the bundle targets (python3.14, Amazon Linux 2023, glibc 2.34).
PYTHON_VERSION = "3.14"
#: pip expands no manylinux aliases for foreign platforms, so list each accepted tag.
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64")
SOURCE_PACKAGES = ("lambdas", "certificate_render", "offload_contract")
#: Provided by the Lambda runtime; never bundled.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer"})
#: Written by scripts/build_certificate_fonts.py; a full bundle without the fonts is refused.
FONT_MANIFEST = "certificate_render/fonts/manifest.json"
_IGNORED_PARTS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache"})


class BundlingError(RuntimeError):
    pass


def runtime_requirements(root: Path) -> list[str]:
    """The ``lambdas`` extra of pyproject.toml (it names the contract's dependency too), minus
    runtime ones. The base dependencies are the bridge's and never go into the bundle."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["optional-dependencies"]["lambdas"])
    return [r for r in requirements if _requirement_name(r) not in RUNTIME_PROVIDED]


def _requirement_name(requirement: str) -> str:
    name = requirement
    for sep in "<>=!~[; ":
        name = name.split(sep, 1)[0]
    return name.strip().lower().replace("_", "-")


def _source_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and not _IGNORED_PARTS.intersection(path.parts) and path.suffix != ".pyc":
                files.append(path)
    return files


def bundle_hash(root: Path, mode: BundleMode) -> str:
    digest = hashlib.sha256()
    digest.update(f"{mode}|{PYTHON_VERSION}|{','.join(PLATFORMS)}\n".encode())
    inputs = [root / "pyproject.toml", root / "constraints.txt"] if mode == "full" else []
    for path in [*inputs, *_source_files(root)]:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def build_lambda_asset(root: Path, mode: BundleMode = "full", build_dir: Path | None = None) -> Path:
    """Return the directory of a ready asset, building it only when its inputs changed."""
    build_dir = build_dir or root / "build" / "lambda-assets"
    if mode == "full" and not (root / FONT_MANIFEST).exists():
        raise BundlingError(
            f"{FONT_MANIFEST} is missing: the certificate fonts are built by `make setup` "
            "(scripts/build_certificate_fonts.py)"
        )
    target = build_dir / f"{mode}-{bundle_hash(root, mode)}"
    if (target / ".complete").exists():
        return target
    build_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=build_dir))
    try:
        for package in SOURCE_PACKAGES:
            shutil.copytree(
                root / package,
                staging / package,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache"),
            )
        if mode == "full":
            _pip_install(root, staging)
        (staging / ".complete").write_text("ok\n", encoding="ascii")
        try:
            staging.rename(target)
        except OSError:
            # Another process (a parallel test worker) finished the same bundle first.
            if not (target / ".complete").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    _prune_old(build_dir, keep=target, mode=mode)
    return target


#: Fixed timestamp for zip entries, so equal inputs give a byte-identical archive.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def build_lambda_zip(root: Path, mode: BundleMode = "full", build_dir: Path | None = None) -> Path:
    """The asset as one deterministic zip next to its directory.

    CDK fingerprints and copies a directory asset file by file on every synth (about 2,000
    files and 58 MB here); a single zip is hashed and staged in a fraction of that time.
    """
    directory = build_lambda_asset(root, mode, build_dir)
    archive = directory.with_name(directory.name + ".zip")
    if archive.exists():
        return archive
    partial = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != ".complete"):
            info = zipfile.ZipInfo(path.relative_to(directory).as_posix(), date_time=_ZIP_EPOCH)
            mode_bits = 0o755 if os.access(path, os.X_OK) else 0o644
            info.external_attr = (0o100000 | mode_bits) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    partial.replace(archive)
    return archive


def _pip_install(root: Path, target: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--target",
        str(target),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        *[arg for platform in PLATFORMS for arg in ("--platform", platform)],
        "--constraint",
        str(root / "constraints.txt"),
        *runtime_requirements(root),
    ]
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)  # noqa: S603
    if result.returncode != 0:
        raise BundlingError(f"pip could not build the Lambda bundle:\n{result.stderr[-4000:]}")
    for name in RUNTIME_PROVIDED:
        for leftover in target.glob(f"{name}*"):
            shutil.rmtree(leftover, ignore_errors=True)
    # Console scripts are useless in Lambda and carry the build machine's interpreter path.
    shutil.rmtree(target / "bin", ignore_errors=True)
    shutil.rmtree(target / "share", ignore_errors=True)


def _prune_old(build_dir: Path, keep: Path, mode: BundleMode, retain: int = 2) -> None:
    """Keep the newest few bundles of this mode so build/ does not grow without bound."""
    bundles = sorted(
        (p for p in build_dir.glob(f"{mode}-*") if p != keep and p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in bundles[retain:]:
        shutil.rmtree(old, ignore_errors=True)
        old.with_name(old.name + ".zip").unlink(missing_ok=True)
