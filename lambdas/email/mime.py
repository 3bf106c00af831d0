"""MIME messages for SendEmail (Raw): exact bytes, headers and attachments under our control."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate

#: SESv2 accepts 40 MB per message after base64; keep 1 MB for what SES adds (DKIM, ids).
MAX_MESSAGE_BYTES = 39_000_000
ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


def display_address(address: str, name: str | None) -> str:
    """``Name <addr>`` with RFC 2047 encoding when the name is not ASCII."""
    return formataddr((name, address), charset="utf-8") if name else address


def estimated_size(subject: str, html: str, text: str, attachment_bytes: int) -> int:
    """Upper bound of the MIME size before building it (base64 grows 4/3, plus line ends)."""
    body = len(html.encode("utf-8")) + len(text.encode("utf-8")) + len(subject.encode("utf-8"))
    return int(body * 1.4) + (attachment_bytes * 4 // 3) * 77 // 76 + 4096


def build_mime(
    *,
    from_address: str,
    to_address: str,
    reply_to: Sequence[str],
    subject: str,
    html: str,
    text: str,
    unsubscribe_url: str | None,
    attachments: Sequence[Attachment] = (),
) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = from_address
    msg["To"] = to_address
    if reply_to:
        msg["Reply-To"] = ", ".join(reply_to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    if unsubscribe_url:
        # RFC 8058: both headers; SES's DKIM signature covers them.
        msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        msg["List-Unsubscribe-Post"] = ONE_CLICK
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    if attachments:
        msg.make_mixed()
        for item in attachments:
            maintype, _, subtype = item.content_type.partition("/")
            msg.add_attachment(
                item.data, maintype=maintype, subtype=subtype or "octet-stream", filename=item.filename
            )
    return msg.as_bytes()
