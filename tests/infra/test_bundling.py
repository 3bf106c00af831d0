"""The Docker-free Lambda bundle: cache keys, contents, and (slow) the real aarch64 build."""

from __future__ import annotations

import shutil
import time
import zipfile
from pathlib import Path

import pytest

from infra.bundling import (
    PYTHON_VERSION,
    build_lambda_asset,
    build_lambda_zip,
    bundle_hash,
    runtime_requirements,
)
from tests.infra.support import ROOT


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, root / name)
    (root / "lambdas").mkdir()
    (root / "lambdas" / "__init__.py").write_text("")
    (root / "certificate_render" / "fonts").mkdir(parents=True)
    (root / "certificate_render" / "__init__.py").write_text("")
    (root / "certificate_render" / "fonts" / "Sans.ttf").write_bytes(b"\0font")
    (root / "lambdas" / "__pycache__").mkdir()
    (root / "lambdas" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (root / "offload_contract").mkdir()
    (root / "offload_contract" / "__init__.py").write_text("")
    return root


def test_runtime_requirements_exclude_boto3_and_include_powertools() -> None:
    names = " ".join(runtime_requirements(ROOT))
    assert "aws-lambda-powertools" in names and "fpdf2" in names and "fastjsonschema" in names
    assert "boto3" not in names


def test_source_bundle_copies_the_whole_lambdas_tree_and_is_cached(fake_root: Path) -> None:
    first = build_lambda_asset(fake_root, "source")
    assert (first / "certificate_render" / "fonts" / "Sans.ttf").read_bytes() == b"\0font"
    assert (first / "offload_contract" / "__init__.py").exists()
    assert not (first / "lambdas" / "__pycache__").exists()
    stamp = (first / ".complete").stat().st_mtime_ns
    assert build_lambda_asset(fake_root, "source") == first
    assert (first / ".complete").stat().st_mtime_ns == stamp  # not rebuilt


def test_zip_is_deterministic_and_readable_by_lambda(fake_root: Path, tmp_path: Path) -> None:
    first = build_lambda_zip(fake_root, "source")
    data = first.read_bytes()
    first.unlink()
    assert build_lambda_zip(fake_root, "source").read_bytes() == data
    with zipfile.ZipFile(first) as zf:
        infos = {i.filename: i for i in zf.infolist()}
    assert set(infos) == {
        "lambdas/__init__.py",
        "certificate_render/__init__.py",
        "certificate_render/fonts/Sans.ttf",
        "offload_contract/__init__.py",
    }
    assert all((i.external_attr >> 16) & 0o444 == 0o444 for i in infos.values())


def test_the_hash_follows_sources_and_pins(fake_root: Path) -> None:
    before_full, before_source = bundle_hash(fake_root, "full"), bundle_hash(fake_root, "source")
    (fake_root / "constraints.txt").write_text("segno==0.0.1\n")
    assert bundle_hash(fake_root, "full") != before_full
    assert bundle_hash(fake_root, "source") == before_source  # pins do not matter without pip
    (fake_root / "lambdas" / "new.py").write_text("X = 1\n")
    assert bundle_hash(fake_root, "source") != before_source
    (fake_root / "lambdas" / "__pycache__" / "y.pyc").write_bytes(b"ignored")
    assert bundle_hash(fake_root, "source") == bundle_hash(fake_root, "source")


@pytest.mark.slow
def test_full_bundle_holds_aarch64_wheels_and_no_boto3() -> None:
    started = time.perf_counter()
    bundle = build_lambda_asset(ROOT, "full")
    elapsed = time.perf_counter() - started
    tag = f"cpython-{PYTHON_VERSION.replace('.', '')}-aarch64-linux-gnu"
    for package in (
        "fpdf",
        "segno",
        "aws_lambda_powertools",
        "jinja2",
        "fastjsonschema",
        "lambdas",
        "offload_contract",
    ):
        assert (bundle / package).is_dir(), package
    assert list((bundle / "uharfbuzz").glob("*aarch64*.so")) or list((bundle / "uharfbuzz").glob("*.abi3.so"))
    assert list((bundle / "PIL").glob(f"_imaging.{tag}.so"))
    assert not list(bundle.glob("boto3*")) and not list(bundle.glob("botocore*"))
    assert not list(bundle.rglob("*x86_64*.so"))
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert size < 250 * 1024 * 1024  # Lambda's unzipped limit
    archive = build_lambda_zip(ROOT, "full")
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
    assert "aws_lambda_powertools/__init__.py" in names and "lambdas/__init__.py" in names
    assert not any(n.startswith(("boto3/", "botocore/")) for n in names)
    print(f"full bundle: {size / 1e6:.1f} MB ({archive.stat().st_size / 1e6:.1f} MB zipped), {elapsed:.1f} s")
