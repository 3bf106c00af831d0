"""The stack grants each Lambda exactly the AWS calls its code makes, and sets what it reads.

The calls are derived from the code, not written down twice: for every handler module the test
follows its imports inside ``lambdas/``, takes the services it creates clients for
(``client("sqs")``) and finds every method call named like an operation of those services
(botocore's service models). A few operations are reachable through a shared module but never
executed by a given handler (the SES events processor imports the sender for one helper, so the
whole IdempotencyStore is in its import graph); those are listed in ``NOT_EXECUTED`` with the
reason, and the test fails when such an entry goes stale. Adding a boto3 call to a handler's code
therefore fails this test until the stack grants it (or it is classified here).

One synthesis for the whole module.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name

from infra.bundling import PLATFORMS, PYTHON_VERSION
from infra.constructs.functions import QUEUE_CONSUMERS, SPECS
from lambdas.common.settings import Settings
from tests.infra.support import ROOT, Synth, as_list, statements, synthesize

pytestmark = pytest.mark.cdk

#: IAM service prefix per boto3 service name.
IAM_PREFIX = {
    "dynamodb": "dynamodb",
    "sqs": "sqs",
    "s3": "s3",
    "sesv2": "ses",
    "secretsmanager": "secretsmanager",
}
#: Operations authorized by another action (AWS service authorization reference).
IAM_ACTION = {
    ("sqs", "SendMessageBatch"): "SendMessage",
    ("sqs", "DeleteMessageBatch"): "DeleteMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "ChangeMessageVisibility",
    ("dynamodb", "TransactGetItems"): "GetItem",
}
#: TransactWriteItems has no action of its own: each item needs the action of its kind.
TRANSACT_ITEM_ACTION = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}

#: Reachable in a handler's import graph, never executed by that handler (action: reason).
NOT_EXECUTED: dict[str, dict[str, str]] = {
    "certificate_renderer": {
        "dynamodb:GetItem": "the renderer only writes cert# items (IdempotencyStore.put_company_item)",
        "dynamodb:BatchGetItem": "the recipient look-up before sending is the sender's",
        "dynamodb:BatchWriteItem": "send claims are the sender's",
        "dynamodb:DeleteItem": "send claims are the sender's",
        "dynamodb:UpdateItem": "send claims and pacing are the sender's",
    },
    "ses_events": {
        "dynamodb:PutItem": "claims and probes are the sender's (imported for untag_value only)",
        "dynamodb:BatchWriteItem": "completion records are the sender's",
        "dynamodb:DeleteItem": "claim release is the sender's",
    },
    "api": {
        "dynamodb:BatchGetItem": "the API uses IdempotencyStore.get_item/put_item/add_failure only",
        "dynamodb:BatchWriteItem": "the API uses IdempotencyStore.get_item/put_item/add_failure only",
        "dynamodb:DeleteItem": "the API uses IdempotencyStore.get_item/put_item/add_failure only",
    },
}

#: S3 object prefixes per function and action. The renderer's are checked against its code
#: below; the sender reads the references a batch names (contract: contents/ and certificates/).
S3_PREFIXES: dict[str, dict[str, set[str]]] = {
    "email_sender": {"s3:GetObject": {"contents/", "certificates/"}},
    "certificate_renderer": {"s3:GetObject": {"templates/"}, "s3:PutObject": {"certificates/"}},
}
#: (module, literal prefix of an object key it builds) for the renderer's S3 prefixes.
RENDERER_KEY_LITERALS = {
    ("certificate_render/template.py", "templates/company-"),
    ("lambdas/certificates/processor.py", "certificates/company-"),
}

#: Settings a handler reads that may stay unset (empty means "not used").
OPTIONAL_SETTINGS = {
    "sse_kms_key_id": "only with SSE_ALGORITHM=aws:kms and a customer key; the stack writes SSE-S3",
    "ses_tenant_names": "set only when tenants are configured (tests/infra/test_stack_prod.py)",
}
#: Actions CDK's SqsEventSource grants on the consumed queue.
ESM_QUEUE_ACTIONS = {
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
}
QUEUE_FIELDS = {
    "jobs_queue_url": "jobs",
    "certificates_queue_url": "certificates",
    "results_queue_url": "results",
}


# --- the code side ----------------------------------------------------------------------


def _module_path(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


#: Packages of the Lambda bundle whose calls count as the handlers' (infra/bundling.py).
BUNDLED = ("lambdas", "certificate_render")


def import_closure(module: str) -> list[Path]:
    """The module and every module of the Lambda bundle (``lambdas``, ``certificate_render``) it
    imports, transitively."""
    seen: dict[Path, None] = {}
    pending = [module]
    while pending:
        path = _module_path(pending.pop())
        if path is None or path in seen:
            continue
        seen[path] = None
        for node in ast.walk(_tree(path)):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(BUNDLED):
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith(BUNDLED)]
            pending.extend(n for n in names if _module_path(n) is not None)
    return list(seen)


@functools.cache
def operations(service: str) -> dict[str, str]:
    """boto3 method name -> API operation name."""
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(op): op for op in model.operation_names}


def client_services(handler_module: Path) -> set[str]:
    found = set()
    for node in ast.walk(_tree(handler_module)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "client"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))
    return found


def _actions_of_call(service: str, operation: str, call: ast.Call) -> set[str]:
    prefix = IAM_PREFIX[service]
    if (service, operation) == ("dynamodb", "TransactWriteItems"):
        kinds = {
            key.value
            for node in ast.walk(call)
            if isinstance(node, ast.Dict)
            for key in node.keys
            if isinstance(key, ast.Constant) and key.value in TRANSACT_ITEM_ACTION
        }
        assert kinds, "a TransactWriteItems call whose item kinds cannot be read from the code"
        return {f"dynamodb:{TRANSACT_ITEM_ACTION[k]}" for k in kinds}
    return {f"{prefix}:{IAM_ACTION.get((service, operation), operation)}"}


@dataclasses.dataclass
class HandlerCode:
    services: set[str]
    actions: set[str]  # IAM actions of every call in the import graph
    settings_fields: set[str]


def handler_code(key: str) -> HandlerCode:
    module = SPECS[key].handler.rsplit(".", 1)[0]
    handler_path = _module_path(module)
    assert handler_path is not None, module
    services = client_services(handler_path)
    assert services <= IAM_PREFIX.keys(), f"{key} uses a service this test does not know: {services}"
    actions: set[str] = set()
    for path in import_closure(module):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                for service in services:
                    operation = operations(service).get(node.func.attr)
                    if operation is not None:
                        actions |= _actions_of_call(service, operation, node)
    fields = {f.name for f in dataclasses.fields(Settings)}
    used = set()
    for node in ast.walk(_tree(handler_path)):
        if isinstance(node, ast.Attribute) and node.attr in fields:
            used.add(node.attr)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "require"
        ):
            used |= {a.value for a in node.args if isinstance(a, ast.Constant) and a.value in fields}
    return HandlerCode(services, actions, used)


def needed_actions(key: str) -> set[str]:
    return handler_code(key).actions - NOT_EXECUTED.get(key, {}).keys()


class _Recorder(dict[str, str]):
    def __init__(self, values: dict[str, str] | None = None) -> None:
        super().__init__(values or {})
        self.read: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.read.append(key)
        return super().get(key, default)


@functools.cache
def settings_environment() -> dict[str, set[str]]:
    """Settings field -> the environment variables that set it (observed, not parsed)."""
    recorder = _Recorder()
    defaults = Settings.from_env(recorder)
    mapping: dict[str, set[str]] = {}
    for name in recorder.read:
        for sample in ("7", '{"7": "t"}'):
            try:
                changed = Settings.from_env({name: sample})
            except (ValueError, RuntimeError):
                continue
            for f in dataclasses.fields(Settings):
                if getattr(changed, f.name) != getattr(defaults, f.name):
                    mapping.setdefault(f.name, set()).add(name)
            break
    return mapping


# --- the stack side ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-iam"), "dev")


def _logical(synth: Synth, construct: Any) -> str:
    return synth.stack.get_logical_id(construct.node.default_child)


def _functions(dev: Synth) -> dict[str, dict[str, Any]]:
    """function key -> its template properties."""
    out = {}
    for props in (r["Properties"] for r in dev.resources("AWS::Lambda::Function").values()):
        key = next(k for k, spec in SPECS.items() if spec.handler == props["Handler"])
        out[key] = props
    return out


def granted(dev: Synth, key: str) -> dict[str, list[Any]]:
    """action -> resources granted to the function's role."""
    role = _functions(dev)[key]["Role"]["Fn::GetAtt"][0]
    out: dict[str, list[Any]] = {}
    for policy_id, statement in statements(dev.raw):
        props = dev.raw["Resources"][policy_id]["Properties"]
        if {"Ref": role} not in props.get("Roles", []) or statement["Effect"] != "Allow":
            continue
        for action in as_list(statement["Action"]):
            out.setdefault(action, []).extend(as_list(statement["Resource"]))
    return out


def _object_arns(dev: Synth, prefixes: set[str]) -> list[Any]:
    bucket = _logical(dev, dev.stack.storage.bucket)
    return [{"Fn::Join": ["", [{"Fn::GetAtt": [bucket, "Arn"]}, f"/{p}*"]]} for p in sorted(prefixes)]


def _queue_arn(dev: Synth, name: str) -> Any:
    queue = getattr(dev.stack.queues, name.replace("-", "_")).queue
    return {"Fn::GetAtt": [_logical(dev, queue), "Arn"]}


def _same(left: list[Any], right: list[Any]) -> bool:
    return sorted(map(repr, left)) == sorted(map(repr, right))


# --- tests ------------------------------------------------------------------------------


def test_the_code_scan_finds_the_calls_we_know_of() -> None:
    """Guards the scanner itself against finding nothing."""
    sender = handler_code("email_sender")
    assert sender.services == {"dynamodb", "sqs", "s3", "sesv2", "secretsmanager"}  # + the seal key sets
    assert {
        "ses:SendBulkEmail",
        "ses:GetAccount",
        "dynamodb:BatchWriteItem",
        "sqs:SendMessage",
    } <= sender.actions
    assert "dynamodb:PutItem" in sender.actions  # from TransactWriteItems' Put items (and claim_one)
    assert handler_code("callback_dispatcher").actions == {"secretsmanager:GetSecretValue"}
    assert settings_environment()["max_attempts"] == {"MAX_SEND_ATTEMPTS"}
    assert settings_environment()["content_bucket"] == {"CONTENT_BUCKET", "CERTIFICATE_BUCKET"}


@pytest.mark.parametrize("key", sorted(NOT_EXECUTED))
def test_not_executed_entries_are_not_stale(key: str) -> None:
    code = handler_code(key).actions
    stale = NOT_EXECUTED[key].keys() - code
    assert not stale, f"{key}: {sorted(stale)} are no longer in its code; drop them from NOT_EXECUTED"


@pytest.mark.parametrize("key", sorted(SPECS))
def test_each_role_grants_exactly_the_calls_of_its_code(dev: Synth, key: str) -> None:
    services = {IAM_PREFIX[s] for s in handler_code(key).services} | set(IAM_PREFIX.values())
    grants = granted(dev, key)
    api_grants = {a for a in grants if a.split(":")[0] in services}
    if key in QUEUE_CONSUMERS.values():
        consumed = next(q for q, f in QUEUE_CONSUMERS.items() if f == key)
        for action in ESM_QUEUE_ACTIONS:
            assert grants.pop(action) == [_queue_arn(dev, consumed)], action
        api_grants -= ESM_QUEUE_ACTIONS
    needed = needed_actions(key)
    assert api_grants == needed, (
        f"{key}: granted but unused {sorted(api_grants - needed)}, "
        f"used but not granted {sorted(needed - api_grants)}"
    )


@pytest.mark.parametrize("key", sorted(SPECS))
def test_each_grant_is_scoped_to_the_resources_the_code_uses(dev: Synth, key: str) -> None:
    grants = granted(dev, key)
    table = {"Fn::GetAtt": [_logical(dev, dev.stack.idempotency.table), "Arn"]}
    secret = {"Ref": _logical(dev, dev.stack.keys.secret)}
    fields = handler_code(key).settings_fields
    if "seal_secret_arn" in fields:  # the email sender reads the seal key sets, never the HMAC ones
        secret = {"Ref": _logical(dev, dev.stack.seal_keys.secret)}
    for action in needed_actions(key):
        resources = grants[action]
        if action.startswith("dynamodb:"):
            assert resources == [table], action
        elif action == "secretsmanager:GetSecretValue" and "signing_secret_prefix" in fields:
            # The renderer reads only the companies' signing keys, under the stack's prefix.
            prefix = dev.stack.functions.signing_secret_prefix
            assert resources == [
                {
                    "Fn::Join": [
                        "",
                        [
                            "arn:", {"Ref": "AWS::Partition"}, ":secretsmanager:", {"Ref": "AWS::Region"},
                            ":", {"Ref": "AWS::AccountId"}, f":secret:{prefix}*",
                        ],
                    ]
                }
            ]  # fmt: skip
        elif action == "secretsmanager:GetSecretValue":
            assert resources == [secret]
        elif action == "sqs:SendMessage":
            queues = [_queue_arn(dev, q) for f, q in QUEUE_FIELDS.items() if f in fields]
            assert queues and _same(resources, queues), f"{key} sends to the queues whose URLs it reads"
        elif action.startswith("s3:"):
            assert _same(resources, _object_arns(dev, S3_PREFIXES[key][action])), action
        elif action == "ses:GetAccount":
            assert resources == ["*"]  # GetAccount has no resource type
        else:
            assert action in {"ses:SendEmail", "ses:SendBulkEmail"}, action
            assert "*" not in resources  # identities, configuration set, tenants: test_stack_*


def test_the_renderers_key_prefixes_are_the_ones_its_code_builds() -> None:
    for relative, literal in RENDERER_KEY_LITERALS:
        constants = [
            node.value
            for node in ast.walk(_tree(ROOT / relative))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        ]
        assert any(c.startswith(literal) for c in constants), (relative, literal)
    prefixes = {p for ps in S3_PREFIXES["certificate_renderer"].values() for p in ps}
    assert prefixes == {literal.split("/")[0] + "/" for _, literal in RENDERER_KEY_LITERALS}


@pytest.mark.parametrize("key", sorted(SPECS))
def test_every_setting_a_handler_reads_is_set_on_its_function(dev: Synth, key: str) -> None:
    variables = _functions(dev)[key]["Environment"]["Variables"]
    defaults = Settings()
    mapping = settings_environment()
    for field in sorted(handler_code(key).settings_fields):
        if field in OPTIONAL_SETTINGS or getattr(defaults, field):
            continue  # optional, or a working default (SAFETY_MARGIN_MS, MAX_SEND_ATTEMPTS, ...)
        assert mapping[field] & variables.keys(), f"{key} reads {field} ({mapping[field]}) but it is not set"
        assert all(variables[name] != "" for name in mapping[field] & variables.keys())


def test_runtime_architecture_and_bundle_target_agree(dev: Synth) -> None:
    for props in _functions(dev).values():
        assert props["Runtime"] == f"python{PYTHON_VERSION}"
        assert props["Architectures"] == ["arm64"]
    assert all(p.endswith("_aarch64") for p in PLATFORMS)


def test_the_renderer_writes_with_the_buckets_own_encryption(dev: Synth) -> None:
    # No KMS request per PUT/GET and no KMS grant needed: the objects use the bucket's SSE-S3.
    bucket = dev.raw["Resources"][_logical(dev, dev.stack.storage.bucket)]["Properties"]
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    algorithm = rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
    assert algorithm == _functions(dev)["certificate_renderer"]["Environment"]["Variables"]["SSE_ALGORITHM"]
    assert not any(a.startswith("kms:") for key in SPECS for a in granted(dev, key))
