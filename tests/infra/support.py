"""Synthesis helpers shared by the infra test modules (one synth per module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Template

from infra.app import build_app, stack_name
from infra.stack import OffloadStack

ROOT = Path(__file__).resolve().parents[2]
_CFN_LINT = "import sys; from cfnlint.runner import main; sys.exit(main())"

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@dataclass
class Synth:
    stack: OffloadStack
    template: Template
    raw: dict[str, Any]
    outdir: Path
    template_path: Path

    def resources(self, type_name: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.raw["Resources"].items() if v["Type"] == type_name}


def base_context() -> dict[str, Any]:
    context: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())["context"]
    context["offload:bundle"] = "source"
    return context


def synthesize(outdir: Path, env_name: str, overrides: dict[str, Any] | None = None) -> Synth:
    context = base_context()
    context["env"] = env_name
    if overrides:
        context["offload"][env_name].update(overrides)
    app, stack = build_app(context, outdir=str(outdir))
    assembly = app.synth()  # raises if cdk-nag reports an unacknowledged finding
    artifact = assembly.get_stack_by_name(stack_name(env_name))
    raw = artifact.template
    return Synth(stack, Template.from_json(raw), raw, outdir, outdir / artifact.template_file)


def run_cfn_lint(template_path: Path) -> subprocess.CompletedProcess[str]:
    # W3005 (DependsOn already implied by GetAtt) comes from CDK's own Lambda construct,
    # which adds an explicit DependsOn on the role's policy ordering; it is harmless.
    # The template path goes first: --ignore-checks swallows the arguments that follow it.
    return subprocess.run(
        [sys.executable, "-c", _CFN_LINT, str(template_path), "--ignore-checks", "W3005"],
        capture_output=True,
        text=True,
        check=False,
    )


def statements(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(policy logical id, statement) for every IAM policy statement in the template."""
    found = []
    for logical_id, resource in raw["Resources"].items():
        props = resource.get("Properties", {})
        docs = []
        if resource["Type"] == "AWS::IAM::Policy":
            docs.append(props["PolicyDocument"])
        elif resource["Type"] == "AWS::IAM::Role":
            docs.extend(p["PolicyDocument"] for p in props.get("Policies", []))
        for doc in docs:
            for statement in doc["Statement"]:
                found.append((logical_id, statement))
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
