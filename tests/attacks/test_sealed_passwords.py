"""No plaintext temporary password at rest in the cloud: the user's copy of a password mail travels
sealed and only the email sender, holding the seal key set, opens it right before rendering."""

from __future__ import annotations

import email
import email.policy
import json
from typing import Any

import pytest

from lambdas.common.settings import settings
from lambdas.handlers import email_sender
from offload_contract import encode_message, validate
from offload_contract.sealing import SealError, open_content, seal_content
from offload_contract.signing import decode_root_secret, generate_root_secret
from tests.lambdas.conftest import Aws, FakeContext, email_batch, sqs_event

PASSWORD = "Xq7#mP2v!Lw9"
SEAL_ROOT = generate_root_secret()
RENDERED = {"kind": "rendered", "subject": "Your account", "html": f"<p>password: {PASSWORD}</p>"}


def sealed_batch(job_id: str = "j-7-000001", company_id: int = 7) -> dict[str, Any]:
    content = seal_content(decode_root_secret(SEAL_ROOT), "s1", company_id, job_id, "e-1", RENDERED)
    recipients = [{"recipient_id": "r-1", "to": "zoe@example.org", "content_id": "e-1"}]
    return email_batch(recipients, {"e-1": content}, job_id=job_id, company_id=company_id)


@pytest.fixture
def run(aws: Aws, monkeypatch: pytest.MonkeyPatch):
    def invoke(batch: dict[str, Any], *, with_key: bool = True) -> dict[str, Any]:
        if with_key:
            arn = aws.secrets.create_secret(
                Name=f"seal-{len(aws.secrets.list_secrets()['SecretList'])}",
                SecretString=json.dumps({"current": "s1", "keysets": {"s1": SEAL_ROOT}}),
            )["ARN"]
            monkeypatch.setenv("SEAL_SECRET_ARN", arn)
        else:
            monkeypatch.delenv("SEAL_SECRET_ARN", raising=False)
        settings.cache_clear()
        email_sender.sender.cache_clear()
        result: dict[str, Any] = email_sender.handler(sqs_event(encode_message(batch)), FakeContext(300_000))
        return result

    yield invoke
    settings.cache_clear()
    email_sender.sender.cache_clear()


def test_the_queue_message_holds_no_password_and_the_sender_opens_it(aws: Aws, run) -> None:
    batch = sealed_batch()
    validate("email_batch", batch)
    assert PASSWORD not in encode_message(batch).decode("utf-8")
    assert run(batch) == {"batchItemFailures": []}
    (message,) = aws.ses.sent_messages()
    parsed = email.message_from_string(message.raw_data, policy=email.policy.default)
    html = next(p.get_content() for p in parsed.walk() if p.get_content_type() == "text/html")
    assert PASSWORD in html  # the learner gets the password
    assert [r["status"] for r in aws.results()] == ["sent"]


def test_without_the_seal_key_nothing_is_sent_and_the_row_goes_back(aws: Aws, run) -> None:
    assert run(sealed_batch(), with_key=False) == {"batchItemFailures": []}
    assert aws.ses.sent_count() == 0
    (result,) = aws.results()
    assert result["status"] == "failed" and result["error"]["code"] == "seal_key_unavailable"
    assert PASSWORD not in json.dumps(result)


def test_a_sealed_body_cannot_be_moved_to_another_job_or_company() -> None:
    roots = {"s1": decode_root_secret(SEAL_ROOT)}
    sealed = seal_content(roots["s1"], "s1", 7, "j-1", "e-1", RENDERED)
    assert open_content(roots, 7, "j-1", "e-1", sealed) == RENDERED
    for company, job, content_id in ((8, "j-1", "e-1"), (7, "j-2", "e-1"), (7, "j-1", "e-2")):
        with pytest.raises(SealError):
            open_content(roots, company, job, content_id, sealed)
    tampered = {
        **sealed,
        "ciphertext": sealed["ciphertext"][:-2] + ("AA" if sealed["ciphertext"][-2:] != "AA" else "BB"),
    }
    with pytest.raises(SealError) as info:
        open_content(roots, 7, "j-1", "e-1", tampered)
    assert PASSWORD not in str(info.value)
