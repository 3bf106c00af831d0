"""How long a job's unsent mail still takes at the SES account's send rate.

SES sends at most ``MaxSendRate`` recipients per second for the whole account, and the cloud
side paces to exactly that (docs/lambdas.md, "Pacing"), so the rate is what a job's time is
made of: 50,000 recipients take 60 minutes at 14/s and 30 minutes at 28/s. The bridge knows
the rate from its configuration (``[aws] ses_send_rate``, ``MRCO_SES_SEND_RATE``: the same
number as the stack's ``ses_send_rate``); without it no ETA is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from moodle_bridge.storage.statuses import COUNTER_BUCKETS


def unsent(counters: Mapping[str, int | None]) -> int:
    """Recipients of a job without a final result yet (from the job's counter columns)."""
    total = int(counters.get("recipientstotal") or 0)
    return max(0, total - sum(int(counters.get(column) or 0) for column in COUNTER_BUCKETS))


def eta_seconds(unsent_recipients: int, send_rate: float) -> int | None:
    """Seconds the unsent recipients need at ``send_rate`` per second; None when the rate is unknown."""
    if send_rate <= 0:
        return None
    return math.ceil(unsent_recipients / send_rate)
