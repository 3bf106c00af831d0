"""Per-company routing: the seed's decision, exactly, as a pure function.

Offload a unit of work to the cloud only when ALL of these hold:

1. the global switch (``mrcloud_config.offload_enabled``) is on;
2. the company has a settings row and its cloud is enabled;
3. the job type is allowed: ``allowemail`` for email jobs, ``allowcertificates`` for
   certificate jobs;
4. the recipient count is at least the company's threshold.

A company without a settings row stays local. Everything else stays with IOMAD.
"""

from __future__ import annotations

from dataclasses import dataclass

PROVIDERS = ("aws", "cloudflare")
JOB_TYPES = ("email", "certificate")


@dataclass(frozen=True)
class CompanySettings:
    companyid: int
    cloudenabled: bool = False
    provider: str = "aws"
    allowemail: bool = True
    allowcertificates: bool = False
    threshold: int = 0
    fallbacklocal: bool = True
    sesstenant: str | None = None
    senderaddress: str | None = None
    sendername: str | None = None
    certtemplate: str = "default"

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}")
        if self.threshold < 0:
            raise ValueError("threshold must be >= 0")
        if self.companyid < 0:
            raise ValueError("company id must be >= 0")


@dataclass(frozen=True)
class Decision:
    offload: bool
    #: Stable reason code, recorded in the audit log and shown by ``company show``.
    reason: str


def decide(
    global_enabled: bool, settings: CompanySettings | None, job_type: str, recipient_count: int
) -> Decision:
    """The routing decision for ``recipient_count`` recipients of one company and type."""
    if job_type not in JOB_TYPES:
        raise ValueError(f"job type must be one of {', '.join(JOB_TYPES)}")
    if not global_enabled:
        return Decision(False, "global_switch_off")
    if settings is None:
        return Decision(False, "no_company_settings")
    if not settings.cloudenabled:
        return Decision(False, "company_cloud_disabled")
    if job_type == "email" and not settings.allowemail:
        return Decision(False, "emails_not_allowed")
    if job_type == "certificate" and not settings.allowcertificates:
        return Decision(False, "certificates_not_allowed")
    if recipient_count < settings.threshold:
        return Decision(False, "below_threshold")
    return Decision(True, "offload")


def could_offload(global_enabled: bool, settings: CompanySettings | None, job_type: str) -> bool:
    """Whether any recipient count could route this company and type to the cloud."""
    return decide(global_enabled, settings, job_type, 2**62).offload
