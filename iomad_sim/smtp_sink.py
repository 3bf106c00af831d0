"""A recording mail sink standing in for SMTP (IOMAD's side) and for SES (the cloud's side).

It keeps (recipient, subject, sha256 of the body, email id, who sent it) so tests can assert
exactly-once delivery across IOMAD and the cloud. Bodies are hashed, never stored: they can
contain temporary passwords.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SentMessage:
    address: str
    subject: str
    body_sha256: str
    email_id: int | None
    source: str  # "iomad" | "cloud" | anything a test chooses
    attachment: str | None = None
    #: SHA-256 of the attached file's bytes as read at send time
    attachment_sha256: str | None = None


@dataclass
class RecordingSmtpSink:
    """Thread-safe in-memory sink. Addresses in ``fail_addresses`` make ``send`` return False."""

    messages: list[SentMessage] = field(default_factory=list)
    fail_addresses: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def send(
        self,
        address: str,
        subject: str,
        body: str,
        *,
        email_id: int | None = None,
        source: str = "iomad",
        attachment: str | None = None,
        attachment_sha256: str | None = None,
    ) -> bool:
        if address.lower() in {a.lower() for a in self.fail_addresses}:
            return False
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
        with self._lock:
            self.messages.append(
                SentMessage(address, subject, digest, email_id, source, attachment, attachment_sha256)
            )
        return True

    def deliveries(self) -> Counter[tuple[int | None, str]]:
        """(email id, lower-cased address) -> how many times it was delivered (any source)."""
        return Counter((m.email_id, m.address.lower()) for m in self.messages)

    def duplicates(self) -> dict[tuple[int | None, str], int]:
        return {k: n for k, n in self.deliveries().items() if n > 1}

    def by_source(self, source: str) -> list[SentMessage]:
        return [m for m in self.messages if m.source == source]

    def addresses_for(self, email_id: int) -> list[str]:
        return [m.address for m in self.messages if m.email_id == email_id]

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
