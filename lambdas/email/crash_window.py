"""When a claim left in the crash window may be sent again (docs/lambdas.md, "The crash window").

A *stale* claim (``INPROGRESS``, lease over) means its owner stopped between claiming a unit's
recipients and recording what SES did with them. SES either accepted the message or never saw
it. If SES accepted it, SES publishes a ``Send`` event and the events processor settles the claim
as ``sent`` (``lambdas/results/ses_events.py``) before it moves the *Send watermark* past that
event's time. So once the watermark has passed the dead owner's lease end while the claim is still
``INPROGRESS``, SES did not accept that message, and sending it now is the first send.

Margin: the owner's last SES call started at least 60 s before its lease ended (lease = remaining
invocation time + 60 s, and no call starts with less than the safety margin left), so the rule
tolerates a minute of reordering between two Send events on their way through EventBridge and SQS.

When no other mail is flowing nothing moves the watermark: the sender then has SES send one probe
message to SES's mailbox simulator (no quota, bounce or reputation effect), whose Send event does.
If the watermark never passes (the configuration set does not publish ``SEND`` events, or the
events pipeline is down), the claim is given up after ``give_up_seconds`` and reported
``outcome_unknown``: it under-sends rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from lambdas.common.idempotency import Claim, IdempotencyStore
from lambdas.email.ses import SesSender

#: SES's mailbox simulator address that accepts and delivers (docs: "Using the mailbox simulator").
SIMULATOR_SUCCESS = "success@simulator.amazonses.com"
#: The tag that marks a probe; the events processor and the demo's oracle recognise it.
PROBE_TAG = "offload_probe"


class StaleDecision(Enum):
    RESEND = "resend"  # proven unsent: take the claim over and send
    WAIT = "wait"  # not proven either way yet: look again later
    GIVE_UP = "give_up"  # no proof within the give-up time: report outcome_unknown


@dataclass(frozen=True)
class CrashWindowPolicy:
    #: Seconds before a stale recipient that could not be decided is looked at again.
    recheck_seconds: int = 60
    #: Seconds after the lease ended without proof before the recipient is reported outcome_unknown.
    give_up_seconds: int = 3600
    #: At most one probe per this many seconds across all invocations.
    probe_interval_seconds: int = 30


def given_up(claim: Claim, now: int, policy: CrashWindowPolicy) -> bool:
    """No proof came within the give-up time after the lease ended."""
    return now >= claim.lease_until + policy.give_up_seconds


def decide(claim: Claim, watermark: int, now: int, policy: CrashWindowPolicy) -> StaleDecision:
    """The fate of one stale claim, from the Send watermark (``mail.timestamp`` seconds)."""
    if watermark >= claim.lease_until:
        return StaleDecision.RESEND
    if given_up(claim, now, policy):
        return StaleDecision.GIVE_UP
    return StaleDecision.WAIT


class SendEventProbe:
    """Moves the Send watermark on when no other mail does (one message per interval, overall)."""

    def __init__(self, store: IdempotencyStore, ses: SesSender, policy: CrashWindowPolicy) -> None:
        self.store = store
        self.ses = ses
        self.policy = policy

    def send(self, from_address: str) -> bool:
        """Send a probe unless another invocation sent one within the interval."""
        if not self.store.take_probe_slot(self.policy.probe_interval_seconds):
            return False
        outcome = self.ses.send_probe(from_address, SIMULATOR_SUCCESS, {PROBE_TAG: "send_watermark"})
        return outcome.kind == "sent"
