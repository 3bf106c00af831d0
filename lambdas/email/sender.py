"""Send one email_batch exactly once per recipient, at the shared SES rate (docs/lambdas.md).

Order of work for a batch:

1. Validate; look every recipient up (read-only, ``send#c<company>#<job>#<recipient>``). Recipients
   already COMPLETED are reported again from the stored result, never resent; those held by
   another invocation are re-queued; stale ones (left in the crash window) are sent again
   once the SES Send watermark proves SES never accepted them, looked at again later while
   it does not yet, and reported ``outcome_unknown`` when no proof comes (``crash_window``).
2. Build each remaining recipient's message. Bad data (missing template variable, too large,
   altered reference) is a final failure for that recipient only.
3. Group: recipients sharing a bulk-capable content go through SendBulkEmail (at most 50,
   and at most the per-second rate, per call); the rest through SendEmail (Raw MIME).
4. Send in waves of up to ``parallel_sends`` units: claim the wave's recipients (INPROGRESS
   with a lease, the puts side by side) and drop any another invocation got first; then take
   their tokens from the shared rate limiter, booked for the second the calls reach SES
   (``pacing``; partial takes: units without tokens wait, claimed, for the next second), and
   make the wave's SES calls side by side. Right before those calls, read the job's cancel record
   (``cancel#<job>``, written by the bridge): once it exists the wave and the rest of the batch
   are closed ``job_cancelled`` and nothing more is sent. A crash leaves claims only on the wave whose calls
   were in flight. Stop starting calls when the invocation nears its timeout and re-queue what
   is left (claims of units that got no tokens are released first).
5. Right after a wave's calls, write COMPLETED for what SES accepted or finally refused (this
   closes the crash window); release claims SES did not accept and re-queue them (about a
   second for a rate throttle, backoff otherwise); leave claims whose outcome is unknown
   INPROGRESS.
6. Publish every outcome to the results queue.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lambdas.common.idempotency import Claim, ClaimState, IdempotencyStore
from lambdas.common.pacing import PacingTimeout, SharedRateLimiter
from lambdas.email.contents import ContentError, ObjectFetcher
from lambdas.email.crash_window import CrashWindowPolicy, SendEventProbe, StaleDecision, decide, given_up
from lambdas.email.mime import MAX_MESSAGE_BYTES, Attachment, build_mime, display_address, estimated_size
from lambdas.email.ses import MAX_BULK_DESTINATIONS, Outcome, SesSender
from lambdas.email.templating import (
    BulkTemplate,
    TemplateDataError,
    bulk_template,
    literal_bulk_template,
    render,
)
from lambdas.email.text import html_to_text
from lambdas.results.builder import recipient_result, result_batches
from lambdas.results.queue import ResultsQueue
from offload_contract import validate
from offload_contract.cloud_keys import send_key
from offload_contract.sealing import SealError, open_content

ONE_CLICK = "List-Unsubscribe=One-Click"
#: Error code of a recipient not sent because its job was cancelled (the bridge's
#: ``states.CANCELLED_IN_CLOUD``; the contract carries it as a permanent failure).
CANCELLED_CODE = "job_cancelled"
MAX_SQS_DELAY = 900


def tag_value(value: str) -> str:
    """SES tag values allow [A-Za-z0-9_.@-]; identifiers also allow ':' (never '@')."""
    return value.replace(":", "@")


def untag_value(value: str) -> str:
    return value.replace("@", ":")


def backoff_delay(attempt: int, throttled: bool, rate_only: bool = False) -> int:
    """Seconds before a re-queued recipient is tried again (exponential, jittered, ≤ 15 min).

    ``rate_only``: SES refused the call for the per-second rate, so the next second has room:
    1-2 s, doubling only if it keeps happening (a rate set above the account's real one)."""
    if rate_only:
        quick: int = min(MAX_SQS_DELAY, 2 ** max(0, attempt - 1) + random.randint(0, 1))  # noqa: S311
        return quick
    base = 30 if throttled else 10
    delay: int = min(MAX_SQS_DELAY, base * 2 ** max(0, attempt - 1) + random.randint(0, 10))  # noqa: S311
    return delay


@dataclass
class Requeue:
    recipients: list[dict[str, Any]]
    delay: int
    attempt: int


@dataclass
class BatchReport:
    results: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    throttled: int = 0
    replayed: int = 0
    deferred: int = 0
    #: Crash-window recipients proven unsent and sent again / still waiting for proof.
    stale_resent: int = 0
    stale_waiting: int = 0
    #: Recipients not sent because the bridge cancelled their job (``cancel#<job>``).
    cancelled: int = 0
    ses_latency_ms: list[float] = field(default_factory=list)
    #: Per wave: claims, token, SES calls and records (what infra's send_latency_ms stands for).
    wave_latency_ms: list[float] = field(default_factory=list)

    def merge(self, other: BatchReport) -> None:
        """Add a unit's report (made beside the others of its wave) to this one."""
        for name, value in vars(other).items():
            mine = getattr(self, name)
            setattr(self, name, mine + value)


@dataclass
class _Prepared:
    recipient: dict[str, Any]
    key: str
    bulk: BulkTemplate | None = None
    bulk_data: str = "{}"
    content: dict[str, Any] = field(default_factory=dict)
    subject: str = ""
    html: str = ""
    text: str = ""


class SendFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class EmailBatchSender:
    def __init__(
        self,
        *,
        store: IdempotencyStore,
        limiter: SharedRateLimiter,
        ses: SesSender,
        fetcher: ObjectFetcher,
        results: ResultsQueue,
        requeue: Callable[[dict[str, Any], int], None],
        lease_seconds: int,
        max_attempts: int = 8,
        safety_margin_ms: int = 15_000,
        clock: Callable[[], float] = time.time,
        allow_bulk: bool = True,
        tenants: Mapping[str, str] | None = None,
        crash_window: CrashWindowPolicy | None = None,
        parallel_sends: int = 8,
        seal_roots: Callable[[], Mapping[str, bytes]] | None = None,
    ) -> None:
        if parallel_sends < 1:
            raise ValueError("parallel_sends must be at least 1")
        #: SES calls (and claims) made side by side per wave; see send_latency in infra/config.py.
        self.parallel_sends = parallel_sends
        self._pool: ThreadPoolExecutor | None = None
        self.allow_bulk = allow_bulk
        #: Seal key sets (SEAL_SECRET_ARN), read only when a batch carries a sealed content.
        self.seal_roots = seal_roots
        self.crash_window = crash_window or CrashWindowPolicy()
        self.probe = SendEventProbe(store, ses, self.crash_window)
        #: The deployment's SES tenant per company id (SES_TENANT_NAMES); wins over the batch's.
        self.tenants = dict(tenants or {})
        self.store = store
        self.limiter = limiter
        self.ses = ses
        self.fetcher = fetcher
        self.results = results
        self.requeue = requeue
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.safety_margin_ms = safety_margin_ms
        self.clock = clock
        self._routes_known: set[str] = set()

    # ------------------------------------------------------------------------------------
    def process(self, batch: dict[str, Any], remaining_ms: Callable[[], int]) -> BatchReport:
        validate("email_batch", batch)
        report = BatchReport()
        job_id = batch["job_id"]
        if job_id not in self._routes_known:
            cb = batch["callback"]
            self.store.remember_job(job_id, batch["company_id"], cb["url"], cb["key_id"])
            self._routes_known.add(job_id)

        recipients = batch["recipients"]
        keys = [send_key(batch["company_id"], job_id, r["recipient_id"]) for r in recipients]
        # Read-only: nothing is claimed before its own SES call (docs/lambdas.md, crash window).
        known = self.store.lookup_many(keys, int(batch["attempt"]))
        requeues: list[Requeue] = []
        pending: list[tuple[dict[str, Any], str]] = []
        stale: list[tuple[dict[str, Any], Claim]] = []
        for recipient, key in zip(recipients, keys, strict=True):
            claim = known.get(key)
            if claim is None:
                pending.append((recipient, key))
            elif claim.state is ClaimState.STALE:
                stale.append((recipient, claim))
            else:
                self._not_claimed(batch, recipient, claim, requeues, report)
        takeovers = self._decide_stale(batch, stale, pending, requeues, report)

        prepared, finals = self._prepare(batch, pending)
        self._finish(batch, finals, requeues, report, takeovers)
        self._send_waves(batch, self._group(batch, prepared), remaining_ms, requeues, report, takeovers)

        merged: dict[int, Requeue] = {}
        for item in requeues:  # one message per attempt number, at the longest delay
            into = merged.setdefault(item.attempt, Requeue([], 0, item.attempt))
            into.recipients.extend(item.recipients)
            into.delay = max(into.delay, item.delay)
        for item in merged.values():
            self.requeue(self._subset(batch, item.recipients, item.attempt), item.delay)
        if report.results:
            cb = batch["callback"]
            self.results.publish(
                result_batches("email_sender", batch["company_id"], report.results, batch["batch_id"]),
                cb["url"],
                cb["key_id"],
            )
        return report

    def _map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``fn`` over ``items`` side by side (in order; one item runs here, without a thread)."""
        if len(items) <= 1 or self.parallel_sends == 1:
            return [fn(item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.parallel_sends, thread_name_prefix="ses")
        return list(self._pool.map(fn, items))

    def _send_waves(
        self,
        batch: dict[str, Any],
        units: list[list[_Prepared]],
        remaining_ms: Callable[[], int],
        requeues: list[Requeue],
        report: BatchReport,
        takeovers: dict[str, Claim],
    ) -> None:
        """Claim, take tokens, send and record, a wave of units at a time (module docstring, 4-5)."""
        waiting: deque[tuple[list[_Prepared], bool]] = deque((unit, False) for unit in units)
        while waiting and remaining_ms() >= self.safety_margin_ms:
            started = time.perf_counter()
            wave = [waiting.popleft() for _ in range(min(self.parallel_sends, len(waiting)))]
            ready = [unit for unit, claimed in wave if claimed]
            ready += self._claim_units(
                batch, [unit for unit, claimed in wave if not claimed], requeues, report, takeovers
            )
            if not ready:
                continue
            claimed_ms = (time.perf_counter() - started) * 1000
            deadline = self.clock() + (remaining_ms() - self.safety_margin_ms) / 1000
            try:
                tokens = self.limiter.take(sum(len(unit) for unit in ready), deadline).tokens
            except PacingTimeout:
                waiting.extendleft((unit, True) for unit in reversed(ready))
                break
            go: list[list[_Prepared]] = []
            back: list[list[_Prepared]] = []
            for unit in ready:
                if tokens >= len(unit):
                    go.append(unit)
                    tokens -= len(unit)
                elif tokens:  # a partial take: part of a bulk unit now, the rest next second
                    go.append(self._alone(unit[:tokens]))
                    back.append(self._alone(unit[tokens:]))
                    tokens = 0
                else:
                    back.append(unit)
            waiting.extendleft((unit, True) for unit in reversed(back))
            if self.store.job_cancelled(batch["job_id"]):  # read right before every wave's SES calls
                owned = [p for unit in go for p in unit] + [
                    p for unit, claimed in waiting if claimed for p in unit
                ]
                rest = [p for unit, claimed in waiting if not claimed for p in unit]
                self._close_cancelled(batch, owned, rest, requeues, report)
                return
            started = time.perf_counter()
            for unit_report, unit_requeues in self._map(lambda unit: self._send_and_record(batch, unit), go):
                report.merge(unit_report)
                requeues.extend(unit_requeues)
            sent_ms = (time.perf_counter() - started) * 1000  # waits for tokens left out:
            report.wave_latency_ms.append(claimed_ms + self.limiter.answer_time * 1000 + sent_ms)
        held = [p for unit, claimed in waiting if claimed for p in unit]
        if held:  # claimed for a call that will not be made now
            self.store.release_many([p.key for p in held])
        self._defer(batch, [p for unit, _ in waiting for p in unit], requeues, report)

    def _send_and_record(
        self, batch: dict[str, Any], unit: list[_Prepared]
    ) -> tuple[BatchReport, list[Requeue]]:
        """One SES call and, right after it, its records (COMPLETED closes the crash window)."""
        report, requeues = BatchReport(), list[Requeue]()
        started = time.perf_counter()
        outcomes = self._send_unit(batch, unit)
        report.ses_latency_ms.append((time.perf_counter() - started) * 1000)
        self._apply(batch, unit, outcomes, requeues, report)
        return report, requeues

    def _claim_units(
        self,
        batch: dict[str, Any],
        units: list[list[_Prepared]],
        requeues: list[Requeue],
        report: BatchReport,
        takeovers: dict[str, Claim],
    ) -> list[list[_Prepared]]:
        """Claim the units' recipients (the puts side by side); the units as far as we own them."""
        items = [p for unit in units for p in unit]
        if not items:
            return []
        claims = self.store.claim_many(
            [p.key for p in items], self.lease_seconds, int(batch["attempt"]), takeovers, mapper=self._map
        )
        owned_units: list[list[_Prepared]] = []
        for unit in units:
            owned: list[_Prepared] = []
            for item in unit:
                claim = claims[item.key]
                if claim.state is ClaimState.CLAIMED:
                    owned.append(item)
                else:  # claimed or finished by another invocation since the look-up
                    self._not_claimed(batch, item.recipient, claim, requeues, report)
            if owned:
                owned_units.append(self._alone(owned) if len(owned) < len(unit) else owned)
        return owned_units

    def _alone(self, unit: list[_Prepared]) -> list[_Prepared]:
        """A bulk unit cut down to one recipient is sent as a single message."""
        if len(unit) == 1 and unit[0].bulk is not None:
            unit[0].bulk = None
            if unit[0].content["kind"] == "template":
                self._render(unit[0])
        return unit

    def _decide_stale(
        self,
        batch: dict[str, Any],
        stale: list[tuple[dict[str, Any], Claim]],
        pending: list[tuple[dict[str, Any], str]],
        requeues: list[Requeue],
        report: BatchReport,
    ) -> dict[str, Claim]:
        """Crash-window recipients: send the proven-unsent ones (returned, to take over), hold
        the rest for a later look (probing the Send-event pipeline), give up on the expired."""
        if not stale:
            return {}
        watermark = self.store.send_watermark()
        now = int(self.clock())
        takeovers: dict[str, Claim] = {}
        waiting: list[dict[str, Any]] = []
        for recipient, claim in stale:
            decision = decide(claim, watermark, now, self.crash_window)
            if decision is StaleDecision.RESEND:
                takeovers[claim.key] = claim
                pending.append((recipient, claim.key))
                report.stale_resent += 1
            elif decision is StaleDecision.WAIT:
                waiting.append(recipient)
            else:
                self._not_claimed(batch, recipient, claim, requeues, report)
        if waiting:
            report.stale_waiting += len(waiting)
            requeues.append(Requeue(waiting, self.crash_window.recheck_seconds, int(batch["attempt"])))
            sender = batch["sender"]
            self.probe.send(display_address(sender["address"], sender.get("name")))
        return takeovers

    def _not_claimed(
        self,
        batch: dict[str, Any],
        recipient: dict[str, Any],
        claim: Claim,
        requeues: list[Requeue],
        report: BatchReport,
    ) -> None:
        """A recipient someone else holds or finished: report, re-queue or give up, never send."""
        attempt = int(batch["attempt"])
        if claim.state is ClaimState.COMPLETED:
            report.results.append(claim.result or {})
            report.replayed += 1
        elif claim.state is ClaimState.IN_FLIGHT:
            # Another invocation is sending it now; look again once its lease is over.
            requeues.append(Requeue([recipient], min(MAX_SQS_DELAY, self.lease_seconds + 5), attempt))
        elif claim.state is ClaimState.STALE and not given_up(claim, int(self.clock()), self.crash_window):
            # Crash window, still undecided (a takeover lost its race): the next look decides.
            requeues.append(Requeue([recipient], self.crash_window.recheck_seconds, attempt))
        elif claim.state is ClaimState.STALE:  # no proof either way in time: never guess (docs/lambdas.md)
            report.failed += 1
            report.results.append(
                recipient_result(
                    batch["job_id"], recipient["recipient_id"], "failed", attempt,
                    error_code="outcome_unknown",
                    error_message="an earlier attempt stopped between the SES call and its record, and "
                    "no SES Send event settled it in time; not resent to avoid a duplicate",
                    permanent=True,
                )
            )  # fmt: skip
        else:  # pragma: no cover - CLAIMED is handled by the callers
            raise ValueError("a claimed recipient is not reported here")

    # ------------------------------------------------------------------------------------
    def _content(self, batch: dict[str, Any], content_id: str, cache: dict[str, Any]) -> dict[str, Any]:
        if content_id not in cache:
            content = batch["contents"].get(content_id)
            if content is None:
                raise SendFailure("content_missing", "the recipient's content_id is not in the batch")
            if content["kind"] == "reference":
                try:
                    content = self.fetcher.content(content["ref"])
                except ContentError as exc:
                    raise SendFailure(exc.code, str(exc)) from None
            if content["kind"] == "sealed":
                content = self._open_sealed(batch, content_id, content)
            cache[content_id] = content
        result: dict[str, Any] = cache[content_id]
        return result

    def _open_sealed(self, batch: dict[str, Any], content_id: str, sealed: dict[str, Any]) -> dict[str, Any]:
        """A password mail's body, decrypted in memory right before it is rendered; never stored."""
        if self.seal_roots is None:
            raise SendFailure("seal_key_unavailable", "this sender has no seal key set (SEAL_SECRET_ARN)")
        try:
            return open_content(
                self.seal_roots(), int(batch["company_id"]), str(batch["job_id"]), content_id, sealed
            )
        except SealError as exc:
            raise SendFailure(exc.code, str(exc)) from None

    def _prepare(
        self, batch: dict[str, Any], claimed: list[tuple[dict[str, Any], str]]
    ) -> tuple[list[_Prepared], list[tuple[dict[str, Any], str, SendFailure]]]:
        cache: dict[str, Any] = {}
        prepared: list[_Prepared] = []
        finals: list[tuple[dict[str, Any], str, SendFailure]] = []
        campaign = batch["category"] == "campaign"
        for recipient, key in claimed:
            try:
                content = self._content(batch, recipient["content_id"], cache)
                item = _Prepared(recipient, key)
                data = recipient.get("data") or {}
                text_source = content.get("text")
                bulk_ok = self.allow_bulk and not recipient.get("attachments")
                item.content = content
                if content["kind"] == "template":
                    item.bulk = (
                        bulk_template(content["subject"], content["html"], text_source) if bulk_ok else None
                    )
                    if item.bulk is not None:
                        # Rendered by SES; locally only if it ends up sent alone.
                        item.bulk_data = item.bulk.replacement_data(data)
                        item.subject, item.html = item.bulk.subject, item.bulk.html + item.bulk_data
                    else:
                        self._render(item)
                else:
                    item.subject, item.html = content["subject"], content["html"]
                    item.text = text_source or html_to_text(item.html)
                    if bulk_ok:
                        item.bulk = literal_bulk_template(item.subject, item.html, item.text)
                if campaign and not recipient.get("unsubscribe_url"):
                    raise SendFailure("unsubscribe_missing", "campaign mail needs an unsubscribe URL")
                attachment_bytes = sum(int(a["ref"]["bytes"]) for a in recipient.get("attachments", []))
                if estimated_size(item.subject, item.html, item.text, attachment_bytes) > MAX_MESSAGE_BYTES:
                    raise SendFailure(
                        "message_too_large", "the message would exceed the SES size limit of 40 MB"
                    )
                prepared.append(item)
            except TemplateDataError as exc:
                finals.append((recipient, key, SendFailure("template_data", str(exc))))
            except SendFailure as exc:
                finals.append((recipient, key, exc))
        return prepared, finals

    @staticmethod
    def _render(item: _Prepared) -> None:
        content, data = item.content, item.recipient.get("data") or {}
        item.subject = render(content["subject"], data, html=False)
        item.html = render(content["html"], data, html=True)
        text_source = content.get("text")
        item.text = render(text_source, data, html=False) if text_source else html_to_text(item.html)

    def _group(self, batch: dict[str, Any], prepared: list[_Prepared]) -> list[list[_Prepared]]:
        per_call = max(1, min(MAX_BULK_DESTINATIONS, self.limiter.rate))
        groups: dict[tuple[str, str, str, str | None], list[_Prepared]] = {}
        units: list[list[_Prepared]] = []
        for item in prepared:
            if item.bulk is None:
                units.append([item])
                continue
            b = item.bulk
            groups.setdefault((item.recipient["content_id"], b.subject, b.html, b.text), []).append(item)
        for members in groups.values():
            if len(members) == 1:
                members[0].bulk = None
                if members[0].content["kind"] == "template":
                    self._render(members[0])
                units.append(members)
                continue
            units.extend(members[i : i + per_call] for i in range(0, len(members), per_call))
        return units

    def _tags(self, batch: dict[str, Any], recipient_id: str | None = None) -> dict[str, str]:
        tags = {"job_id": tag_value(batch["job_id"]), "company_id": str(batch["company_id"])}
        if recipient_id is not None:
            tags["recipient_id"] = tag_value(recipient_id)
        return tags

    def _send_unit(self, batch: dict[str, Any], unit: list[_Prepared]) -> list[Outcome]:
        sender = batch["sender"]
        content = unit[0].content  # a unit shares one content
        # The company template's display name and Reply-To (IOMAD rows) win over the batch's;
        # the From address stays the batch's verified sender.
        from_address = display_address(sender["address"], content.get("from_name") or sender.get("name"))
        reply_to = content.get("reply_to") or sender.get("reply_to", [])
        tenant = self.tenants.get(str(batch["company_id"])) or batch.get("ses_tenant")
        if len(unit) == 1 and unit[0].bulk is None:
            item = unit[0]
            r = item.recipient
            try:
                attachments = [
                    Attachment(a["filename"], a["content_type"], self.fetcher.fetch(a["ref"]))
                    for a in r.get("attachments", [])
                ]
            except ContentError as exc:
                return [Outcome("final", code=exc.code, message=str(exc))]
            raw = build_mime(
                from_address=from_address,
                to_address=display_address(r["to"], r.get("name")),
                reply_to=reply_to,
                subject=item.subject,
                html=item.html,
                text=item.text,
                unsubscribe_url=r.get("unsubscribe_url"),
                attachments=attachments,
            )
            if len(raw) > MAX_MESSAGE_BYTES:
                return [Outcome("final", code="message_too_large", message="the message exceeds 40 MB")]
            return [self.ses.send_raw(raw, r["to"], self._tags(batch, r["recipient_id"]), tenant)]
        bulk = unit[0].bulk
        if bulk is None:  # pragma: no cover - _group never builds such a unit
            raise ValueError("a bulk unit needs a bulk template")
        text = bulk.text if bulk.text is not None else html_to_text(bulk.html).replace("{{h_", "{{t_")
        entries: list[dict[str, Any]] = []
        for item in unit:
            r = item.recipient
            entry: dict[str, Any] = {
                "Destination": {"ToAddresses": [display_address(r["to"], r.get("name"))]},
                "ReplacementTags": [
                    {"Name": k, "Value": v} for k, v in self._tags(batch, r["recipient_id"]).items()
                ],
                "ReplacementEmailContent": {
                    "ReplacementTemplate": {"ReplacementTemplateData": item.bulk_data}
                },
            }
            if r.get("unsubscribe_url"):
                entry["ReplacementHeaders"] = [
                    {"Name": "List-Unsubscribe", "Value": f"<{r['unsubscribe_url']}>"},
                    {"Name": "List-Unsubscribe-Post", "Value": ONE_CLICK},
                ]
            entries.append(entry)
        return self.ses.send_bulk(
            from_address=from_address,
            reply_to=reply_to,
            subject=bulk.subject,
            html=bulk.html,
            text=text,
            entries=entries,
            default_tags=self._tags(batch),
            tenant=tenant,
        )

    # ------------------------------------------------------------------------------------
    def _apply(
        self,
        batch: dict[str, Any],
        unit: list[_Prepared],
        outcomes: list[Outcome],
        requeues: list[Requeue],
        report: BatchReport,
    ) -> None:
        job_id, attempt = batch["job_id"], int(batch["attempt"])
        done: list[tuple[str, dict[str, Any]]] = []
        release: list[str] = []
        retry: list[dict[str, Any]] = []
        unknown: list[dict[str, Any]] = []
        throttled = False
        rate_only = True
        for item, outcome in zip(unit, outcomes, strict=True):
            rid = item.recipient["recipient_id"]
            if outcome.kind == "sent":
                result = recipient_result(
                    job_id, rid, "sent", attempt, provider_message_id=outcome.message_id
                )
                done.append((item.key, result))
                report.sent += 1
            elif outcome.kind == "final" or (outcome.kind == "retry" and attempt >= self.max_attempts):
                message = outcome.message if outcome.kind == "final" else f"gave up after {attempt} attempts"
                result = recipient_result(
                    job_id,
                    rid,
                    "failed",
                    attempt,
                    error_code=outcome.code,
                    error_message=message,
                    permanent=True,
                )
                done.append((item.key, result))
                report.failed += 1
            elif outcome.kind == "retry":
                throttled = throttled or outcome.throttled
                rate_only = rate_only and outcome.rate_throttled
                report.throttled += int(outcome.throttled)
                release.append(item.key)
                retry.append(item.recipient)
                result = recipient_result(
                    job_id, rid, "retrying", attempt, error_code=outcome.code, error_message=outcome.message,
                    permanent=False,
                )  # fmt: skip
                report.retrying += 1
            else:  # unknown: keep the claim; the Send event or the lease decides later
                unknown.append(item.recipient)
                result = recipient_result(
                    job_id, rid, "retrying", attempt, error_code=outcome.code, error_message=outcome.message,
                    permanent=False,
                )  # fmt: skip
                report.retrying += 1
            report.results.append(result)
        if done:
            self.store.complete_many(done)  # closes the crash window for these recipients
        if release:
            self.store.release_many(release)
            delay = backoff_delay(attempt, throttled, rate_only)
            requeues.append(Requeue(retry, delay, min(100, attempt + 1)))
        if unknown:
            requeues.append(
                Requeue(unknown, min(MAX_SQS_DELAY, self.lease_seconds + 60), min(100, attempt + 1))
            )

    def _finish(
        self,
        batch: dict[str, Any],
        finals: list[tuple[dict[str, Any], str, SendFailure]],
        requeues: list[Requeue],
        report: BatchReport,
        takeovers: dict[str, Claim],
    ) -> None:
        if not finals:
            return
        # Claimed before recording, like a send: another invocation may hold or have finished one.
        claims = self.store.claim_many(
            [key for _, key, _ in finals], self.lease_seconds, int(batch["attempt"]), takeovers
        )
        done = []
        for recipient, key, failure in finals:
            if claims[key].state is not ClaimState.CLAIMED:
                self._not_claimed(batch, recipient, claims[key], requeues, report)
                continue
            result = recipient_result(
                batch["job_id"], recipient["recipient_id"], "failed", int(batch["attempt"]),
                error_code=failure.code, error_message=str(failure), permanent=True,
            )  # fmt: skip
            done.append((key, result))
            report.results.append(result)
            report.failed += 1
        self.store.complete_many(done)

    def _close_cancelled(
        self,
        batch: dict[str, Any],
        owned: list[_Prepared],
        rest: list[_Prepared],
        requeues: list[Requeue],
        report: BatchReport,
    ) -> None:
        """The bridge cancelled the job: record and report the claimed unit and every later one
        ``failed``/``job_cancelled`` (the bridge records them cancelled); nothing more is sent."""
        failure = SendFailure(CANCELLED_CODE, "the job was cancelled before this recipient was sent")
        done = []
        for item in owned:
            result = recipient_result(
                batch["job_id"], item.recipient["recipient_id"], "failed", int(batch["attempt"]),
                error_code=failure.code, error_message=str(failure), permanent=True,
            )  # fmt: skip
            done.append((item.key, result))
            report.results.append(result)
            report.cancelled += 1
        self.store.complete_many(done)
        before = report.failed
        self._finish(batch, [(p.recipient, p.key, failure) for p in rest], requeues, report, {})
        report.cancelled += report.failed - before
        report.failed = before

    def _defer(
        self, batch: dict[str, Any], items: list[_Prepared], requeues: list[Requeue], report: BatchReport
    ) -> None:
        """Out of time or rate budget: re-queue unsent units (not a failure; they hold no claim)."""
        if not items:
            return
        requeues.append(Requeue([p.recipient for p in items], 0, int(batch["attempt"])))
        report.deferred += len(items)

    @staticmethod
    def _subset(batch: dict[str, Any], recipients: list[dict[str, Any]], attempt: int) -> dict[str, Any]:
        used = {r["content_id"] for r in recipients}
        message = dict(batch)
        message["attempt"] = attempt
        message["recipients"] = recipients
        message["contents"] = {cid: c for cid, c in batch["contents"].items() if cid in used}
        validate("email_batch", message)
        return message
