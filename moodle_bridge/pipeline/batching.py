"""Contract messages from recipient rows: the same code packs at claim time and rebuilds at
submit time, so an outbox row needs no copy of the body (bodies hold temporary passwords).

Content keys on recipients say which body a recipient gets:

- ``e<emailid>``: IOMAD's rendered row, as queued (the row's own user);
- ``e<emailid>r``: the same row with the temporary password redacted (fan-out copies of
  password mail: managers, supervisors, To/Cc);
- ``t<jobid>``: the jinja2 template of a list job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from offload_contract.codec import encode_message
from offload_contract.limits import QueueLimits
from offload_contract.packing import ContentOffloader, PackItem, PackResult, pack_batches
from offload_contract.sealing import seal_content
from offload_contract.signing import make_key_id

#: Bytes kept free in every packed batch, so that a header rebuilt at submit time (a new
#: callback URL, a longer sender name) can never push a packed batch over the queue limit.
HEADER_SLACK_BYTES = 2_048
#: Placeholder recipient id used when packing before the rows have ids: as long as any id.
ID_PLACEHOLDER = "9" * 19
#: ``mrcloud_jobs.source`` of the certificate jobs made from completions IOMAD does not mail
#: (``pipeline/store_only.py``); their batches carry ``delivery = store_only``.
STORE_ONLY_SOURCE = "completion"
STORE_ONLY_DELIVERY = "store_only"


def email_content_key(emailid: int, redacted: bool) -> str:
    return f"e{emailid}r" if redacted else f"e{emailid}"


def template_content_key(jobid: int) -> str:
    return f"t{jobid}"


def batch_key(jobid: int, attempt: int, seq: int) -> str:
    return f"j{jobid}-a{attempt}-b{seq}"


def message_type_for(jobtype: str) -> str:
    return "certificate_batch" if jobtype == "certificate" else "email_batch"


@dataclass(frozen=True)
class Sender:
    address: str
    name: str | None = None

    def as_contract(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address}
        if self.name:
            out["name"] = self.name[:256]
        return out


@dataclass(frozen=True)
class JobHeader:
    jobid: int
    companyid: int
    jobtype: str
    attempt: int
    category: str
    created_at: int
    callback_url: str
    keyset: str
    sender: Sender
    ses_tenant: str | None = None
    cert_template: str = "default"
    verify_url_base: str | None = None
    #: Certificate jobs: ``email_attachment`` (with the completion mail) or ``store_only``
    #: (rendered and stored, no mail: completions IOMAD does not mail).
    delivery: str = "email_attachment"
    #: Campaign mail: the one-click unsubscribe URL of a recipient id (RFC 8058).
    unsubscribe_url: Callable[[str], str] | None = field(default=None, compare=False, repr=False)
    #: Contract attachments (stored objects, by reference) every recipient of the job gets:
    #: a scheduled report's file (docs/schedules.md). Never the file's bytes.
    attachments: tuple[dict[str, Any], ...] = ()

    def header(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "type": message_type_for(self.jobtype),
            "contract_version": 1,
            "job_id": str(self.jobid),
            "company_id": self.companyid,
            "attempt": self.attempt,
            "created_at": self.created_at,
            "callback": {"url": self.callback_url, "key_id": make_key_id(self.keyset, self.companyid)},
            "sender": self.sender.as_contract(),
        }
        if self.ses_tenant:
            header["ses_tenant"] = self.ses_tenant
        if self.jobtype == "certificate":
            header["template_id"] = self.cert_template
            header["delivery"] = self.delivery
            if self.verify_url_base:
                header["verify_url_base"] = self.verify_url_base
        else:
            header["category"] = self.category
        return header


def rendered_content(
    subject: str, html: str, from_name: str | None = None, reply_to: Sequence[str] = ()
) -> dict[str, Any]:
    """An IOMAD row's mail, with its template's sender display name and Reply-To if any."""
    content: dict[str, Any] = {"kind": "rendered", "subject": subject[:998], "html": html}
    if from_name:
        content["from_name"] = from_name[:256]
    if reply_to:
        content["reply_to"] = list(reply_to)[:10]
    return content


def sealed_if_secret(
    content: dict[str, Any],
    *,
    holds_password: bool,
    seal_root: tuple[str, bytes] | None,
    companyid: int,
    jobid: int,
    content_key: str,
) -> dict[str, Any]:
    """The user's own copy of a password mail leaves the bridge sealed (offload_contract/sealing.py).

    Claim-time packing and submit-time building both go through here, so a batch is sized with
    the sealed form (its size depends only on the plaintext's size)."""
    if not holds_password:
        return content
    if seal_root is None:
        raise ValueError("a password mail needs a seal key set (MRCO_SEAL_KEYSETS) to leave the bridge")
    keyset, root = seal_root
    return seal_content(root, keyset, companyid, str(jobid), content_key, content)


def template_content(template_json: str) -> dict[str, Any]:
    source = json.loads(template_json)
    content: dict[str, Any] = {
        "kind": "template",
        "engine": "jinja2",
        "subject": source["subject"],
        "html": source["html"],
    }
    if source.get("text"):
        content["text"] = source["text"]
    return content


def reference_for(
    bucket: str | None, companyid: int, jobid: int
) -> Callable[[str, dict[str, Any], bytes], dict[str, Any]]:
    """A placeholder offloader: the reference the content will have, without uploading.

    Used at claim time for sizing; the submit-time offloader uploads to the same key, so the
    rebuilt message is the same size. ``bucket`` None: the Worker's R2 (no bucket is named).
    """
    store: dict[str, Any] = {"store": "r2"} if bucket is None else {"store": "s3", "bucket": bucket}

    def offload(content_id: str, _content: dict[str, Any], encoded: bytes) -> dict[str, Any]:
        return {
            "kind": "reference",
            "ref": {
                **store,
                "key": f"contents/company-{companyid}/{jobid}/{content_id}.json",
                "sha256": hashlib.sha256(encoded).hexdigest(),
                "bytes": len(encoded),
                "content_type": "application/json",
            },
        }

    return offload


def recipient_entry(
    recipient_id: str,
    address: str,
    fullname: str,
    contentkey: str | None,
    data: Mapping[str, Any] | None,
    jobtype: str,
    unsubscribe_url: Callable[[str], str] | None = None,
    attachments: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    entry: dict[str, Any] = {"recipient_id": recipient_id}
    if jobtype == "certificate":
        if contentkey:  # the certificate travels with a mail; a store-only one names nobody to mail
            entry["to"] = address
            entry["content_id"] = contentkey
        if fullname:
            entry["name"] = fullname[:256]
        entry["certificate"] = dict((data or {})["certificate"])
        return entry
    entry["to"] = address
    if fullname:
        entry["name"] = fullname[:256]
    entry["content_id"] = contentkey
    if data:
        entry["data"] = dict(data)
    if unsubscribe_url is not None:
        entry["unsubscribe_url"] = unsubscribe_url(recipient_id)
    if attachments:
        entry["attachments"] = [dict(a) for a in attachments]
    return entry


def job_attachments(template_json: str | None) -> tuple[dict[str, Any], ...]:
    """The attachments a job's template JSON names (``{"attachments": [...]}``), if any."""
    if not template_json:
        return ()
    try:
        source = json.loads(template_json)
    except ValueError:
        return ()
    found = source.get("attachments") if isinstance(source, dict) else None
    return tuple(dict(a) for a in found) if isinstance(found, list) else ()


def pack(
    job: JobHeader,
    items: Sequence[PackItem],
    limits: QueueLimits,
    *,
    first_seq: int,
    offload: ContentOffloader | None,
) -> PackResult:
    budget = QueueLimits(max(limits.max_bytes - HEADER_SLACK_BYTES, 4_096), limits.max_recipients)
    return pack_batches(
        job.header(),
        items,
        budget,
        make_batch_id=lambda i: batch_key(job.jobid, job.attempt, first_seq + i),
        offload=offload,
    )


def encode_batch(
    job: JobHeader, batchkey: str, contents: Mapping[str, Any], recipients: list[dict[str, Any]]
) -> bytes:
    message = {**job.header(), "batch_id": batchkey}
    if contents:
        message["contents"] = dict(contents)
    message["recipients"] = recipients
    return encode_message(message)
