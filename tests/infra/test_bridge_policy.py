"""The bridge's IAM user may make exactly the DynamoDB and SES calls its code makes, on exactly
the item keys it builds with offload_contract/cloud_keys.py, shared with the sender (issue 12:
cancel records and deadline reconciliation; sender checks).

The calls are derived from the code (AST: method calls named like an operation of the service,
botocore's model), the key prefixes from the literal prefixes of the key builders, so a new call
or key fails this test until the stack grants it."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name

from infra.constructs.api import (
    BRIDGE_CERTIFICATE_ACTIONS,
    BRIDGE_CERTIFICATE_KEYS,
    BRIDGE_SES_ACTIONS,
    BRIDGE_TABLE_ACTIONS,
    BRIDGE_TABLE_KEYS,
    BRIDGE_TEMPLATE_ACTIONS,
)
from tests.infra.support import ROOT, Synth, as_list, synthesize

pytestmark = pytest.mark.cdk

CERTIFICATE_CODE = ROOT / "moodle_bridge/transports/certificate_records.py"
CODE = {
    "dynamodb": ROOT / "moodle_bridge/transports/cloud_records.py",
    "sesv2": ROOT / "moodle_bridge/commands/company_checks.py",
}
PREFIX = {"dynamodb": "dynamodb", "sesv2": "ses"}


def called_actions(service: str, path: Path) -> set[str]:
    names = {
        xform_name(op): op for op in botocore.session.get_session().get_service_model(service).operation_names
    }
    tree = ast.parse(path.read_text("utf-8"))
    return {
        f"{PREFIX[service]}:{names[node.func.attr]}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names
    }


KEYS = ROOT / "offload_contract/cloud_keys.py"


def key_builders(path: Path) -> set[str]:
    """The key builders (``*_key``) the bridge's module imports from ``offload_contract.cloud_keys``."""
    return {
        alias.name
        for node in ast.walk(ast.parse(path.read_text("utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module == "offload_contract.cloud_keys"
        for alias in node.names
        if alias.name.endswith("_key")
    }


def key_prefixes(path: Path, builders: set[str]) -> set[str]:
    """Literal prefixes of the f-strings the key builders named ``builders`` return."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.FunctionDef) and node.name in builders:
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and isinstance(ret.value, ast.JoinedStr):
                    first = ret.value.values[0]
                    assert isinstance(first, ast.Constant) and isinstance(first.value, str)
                    out.add(first.value + "*")
    return out


def test_the_code_makes_exactly_the_declared_calls() -> None:
    assert called_actions("dynamodb", CODE["dynamodb"]) == set(BRIDGE_TABLE_ACTIONS)
    builders = key_builders(CODE["dynamodb"])
    assert builders == {"cancel_key", "send_key"}
    assert key_prefixes(KEYS, builders) == set(BRIDGE_TABLE_KEYS)
    assert called_actions("sesv2", CODE["sesv2"]) == set(BRIDGE_SES_ACTIONS)


def test_revocation_makes_exactly_the_declared_call_on_verification_records_only() -> None:
    assert called_actions("dynamodb", CERTIFICATE_CODE) == set(BRIDGE_CERTIFICATE_ACTIONS)
    builders = key_builders(CERTIFICATE_CODE)
    assert builders == {"verification_key"}
    assert key_prefixes(KEYS, builders) == set(BRIDGE_CERTIFICATE_KEYS)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("bridge-policy"), "dev")


def _bridge_statements(dev: Synth) -> dict[str, dict[str, Any]]:
    policies = [
        p["Properties"] for p in dev.resources("AWS::IAM::Policy").values() if p["Properties"].get("Users")
    ]
    assert len(policies) == 1
    return {s["Sid"]: s for s in policies[0]["PolicyDocument"]["Statement"]}


def test_the_stack_grants_the_bridge_exactly_those(dev: Synth) -> None:
    by_sid = _bridge_statements(dev)
    records = by_sid["JobRecords"]
    assert set(as_list(records["Action"])) == set(BRIDGE_TABLE_ACTIONS)
    assert set(records["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]) == set(
        BRIDGE_TABLE_KEYS
    )
    table_arn = as_list(records["Resource"])
    assert len(table_arn) == 1 and "Fn::GetAtt" in table_arn[0]
    senders = by_sid["CheckSenders"]
    assert set(as_list(senders["Action"])) == set(BRIDGE_SES_ACTIONS)
    assert "IdempotencyTableName" in dev.raw["Outputs"]
    revoke = by_sid["RevokeCertificates"]
    assert set(as_list(revoke["Action"])) == set(BRIDGE_CERTIFICATE_ACTIONS)
    assert set(revoke["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]) == set(
        BRIDGE_CERTIFICATE_KEYS
    )
    assert as_list(revoke["Resource"]) == table_arn
    templates = by_sid["CertificateTemplates"]
    assert set(as_list(templates["Action"])) == set(BRIDGE_TEMPLATE_ACTIONS)
    (template_objects,) = as_list(templates["Resource"])
    assert json.dumps(template_objects).endswith('/templates/*"]]}')
    # Nothing else on the table: no pacing, nonces or routes for the bridge.
    assert not any(
        a.startswith("dynamodb:")
        for sid, s in by_sid.items()
        if sid not in ("JobRecords", "RevokeCertificates")
        for a in as_list(s["Action"])
    )
