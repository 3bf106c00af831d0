// The email sender in workerd: real Durable Objects (ledger, index, pacer), R2, stand-in providers.
import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { htmlToText } from "../src/contents.js";
import { applyEvents, normaliseCloudflareEvent, normaliseSesEvent } from "../src/events.js";
import { validate } from "../src/contract.js";
import {
  CRASH_WINDOW_GIVE_UP_SECONDS,
  LEASE_SECONDS,
  MAX_SEND_ATTEMPTS,
  backoffDelay,
  ledgerFor,
  processEmailBatch,
} from "../src/sender.js";
import { sha256Hex } from "../src/signing.js";
import { CloudflareEmailStandIn } from "./standins.js";
import { emailBatch, publishedResults, standInEnv } from "./helpers.js";

const now = () => Math.floor(Date.now() / 1000);

describe("Cloudflare Email Service", () => {
  it("sends one call per recipient, records the messageId and reports sent", async () => {
    const { testEnv, cloudflare, queues } = standInEnv();
    const batch = emailBatch({ n: 3 });
    const report = await processEmailBatch(batch, testEnv);
    expect(report.calls).toBe(3);
    expect(cloudflare.accepted.map((m) => m.to)).toEqual([[batch.recipients[0].to], [batch.recipients[1].to], [batch.recipients[2].to]]);
    const first = cloudflare.accepted[0];
    expect(first.subject).toBe("Welcome — أهلا");
    expect(first.from).toEqual({ email: "noreply@example.org", name: "Acme Academy" });
    expect(first.text).toBe("Hello there & welcome.\n\n- one\n");
    expect(first.headers).toBeUndefined(); // transactional: no List-Unsubscribe
    const results = publishedResults(queues.results);
    expect(results.map((r) => r.status)).toEqual(["sent", "sent", "sent"]);
    expect(results[0].provider_message_id).toBe(first.messageId.replace(/^<|>$/g, ""));
    for (const sent of queues.results.sent) validate("result_batch", sent.body.result_batch);
    expect(queues.results.sent[0].body.callback_url).toBe(batch.callback.url);
    expect(queues.email.sent).toEqual([]);
  });

  it("works with the runtime's own send_email binding (Miniflare's Email Service)", async () => {
    const { testEnv, queues } = standInEnv({ EMAIL: env.EMAIL });
    await processEmailBatch(emailBatch({ n: 2 }), testEnv);
    const results = publishedResults(queues.results);
    expect(results.map((r) => r.status)).toEqual(["sent", "sent"]);
    expect(results[0].provider_message_id).toMatch(/@/);
    expect(results[0].provider_message_id).not.toMatch(/^<|>$/);
  });

  it("filters suppressed addresses before the call (one suppressed recipient fails the whole call)", async () => {
    const { testEnv, cloudflare, queues } = standInEnv();
    const first = emailBatch({ n: 2 });
    await processEmailBatch(first, testEnv);
    const hard = first.recipients[0].to;
    // A hard bounce arrives through the event subscription: the address goes on the list.
    const messageId = cloudflare.accepted[0].messageId;
    await applyEvents(testEnv, [normaliseCloudflareEvent(CloudflareEmailStandIn.event("bounced", messageId, hard, { bounce: { type: "hard" } }))]);
    cloudflare.suppressed.add(hard.toLowerCase());

    const second = emailBatch({ n: 2 });
    second.recipients[0].to = hard;
    const before = cloudflare.calls;
    await processEmailBatch(second, testEnv);
    expect(cloudflare.calls - before).toBe(1); // only the other recipient reached the provider
    const results = publishedResults(queues.results).filter((r) => r.job_id === second.job_id);
    expect(results.find((r) => r.recipient_id === "r-1")).toMatchObject({
      status: "failed",
      error: { code: "suppressed", permanent: true },
    });
    expect(results.find((r) => r.recipient_id === "r-2").status).toBe("sent");
  });

  it("turns its events into recipient statuses, by messageId (angle brackets or not)", async () => {
    const { testEnv, cloudflare, queues } = standInEnv();
    const batch = emailBatch({ n: 3 });
    await processEmailBatch(batch, testEnv);
    const [a, b, c] = cloudflare.accepted;
    queues.results.sent.length = 0;
    const counts = await applyEvents(testEnv, [
      normaliseCloudflareEvent(CloudflareEmailStandIn.event("delivered", a.messageId.slice(1, -1), a.to[0])),
      normaliseCloudflareEvent(CloudflareEmailStandIn.event("bounced", b.messageId, b.to[0], { bounce: { type: "soft" } })),
      normaliseCloudflareEvent(CloudflareEmailStandIn.event("complained", c.messageId, c.to[0])),
      normaliseCloudflareEvent(CloudflareEmailStandIn.event("delivered", "<stranger@cloudflare.email>", "x@y.example")),
    ]);
    expect(counts).toMatchObject({ applied: 3, unknown: 1 });
    const results = publishedResults(queues.results);
    expect(results.map((r) => [r.recipient_id, r.status])).toEqual([
      ["r-1", "delivered"],
      ["r-2", "bounced"],
      ["r-3", "complained"],
    ]);
    expect(results[1].error).toMatchObject({ code: "bounce.soft", permanent: false });
    expect(queues.results.sent[0].body.result_batch.reporter).toBe("cloudflare_worker");
  });

  it("maps binding errors: rate limits retry with backoff, validation errors are final", async () => {
    const { testEnv, cloudflare, queues } = standInEnv();
    cloudflare.failNext.push({ code: "E_RATE_LIMIT_EXCEEDED", message: "rate limit exceeded" });
    cloudflare.failNext.push({ code: "E_SENDER_NOT_VERIFIED", message: "sender domain is not verified" });
    const batch = emailBatch({ n: 3 });
    await processEmailBatch(batch, testEnv);
    const results = publishedResults(queues.results);
    expect(results.map((r) => r.status)).toEqual(["retrying", "failed", "sent"]);
    expect(results[1].error).toEqual({ code: "E_SENDER_NOT_VERIFIED", message: "sender domain is not verified", permanent: true });
    expect(queues.email.sent).toHaveLength(1);
    const requeued = queues.email.sent[0];
    expect(requeued.body.attempt).toBe(2);
    expect(requeued.body.recipients.map((r) => r.recipient_id)).toEqual(["r-1"]);
    expect(requeued.options.delaySeconds).toBeGreaterThanOrEqual(30); // throttled: base 30 s
    validate("email_batch", requeued.body);
  });
});

describe("Amazon SES v2 over HTTPS", () => {
  it("signs with SigV4 and carries campaign mail with RFC 8058 headers, tags and the configuration set", async () => {
    const { testEnv, ses, cloudflare, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "cloudflare", campaign: "ses" }) });
    const batch = emailBatch({ n: 2, category: "campaign", jobId: `j:${Date.now()}` });
    await processEmailBatch(batch, testEnv, { fetchImpl });
    expect(cloudflare.calls).toBe(0); // campaign mail never goes to Cloudflare Email Service
    expect(ses.accepted).toHaveLength(2);
    const [first] = ses.accepted;
    const simple = first.payload.Content.Simple;
    expect(simple.Headers).toEqual([
      { Name: "List-Unsubscribe", Value: `<${batch.recipients[0].unsubscribe_url}>` },
      { Name: "List-Unsubscribe-Post", Value: "List-Unsubscribe=One-Click" },
    ]);
    expect(first.payload.ConfigurationSetName).toBe("mrco-events");
    expect(first.payload.Destination.ToAddresses[0]).toBe(`=?utf-8?b?${btoa(String.fromCharCode(...new TextEncoder().encode("Zoë Ørsted")))}?= <${batch.recipients[0].to}>`);
    expect(first.tags).toEqual({ job_id: batch.job_id.replace(":", "@"), recipient_id: "r-1", company_id: "7" });
    expect(publishedResults(queues.results).map((r) => r.status)).toEqual(["sent", "sent"]);
  });

  it("uses the company's SES tenant", async () => {
    const { testEnv, ses, fetchImpl } = standInEnv({
      PROVIDERS: JSON.stringify({ transactional: "ses" }),
      SES_TENANT_NAMES: JSON.stringify({ 7: "tenant-acme" }),
    });
    await processEmailBatch(emailBatch({ n: 1 }), testEnv, { fetchImpl });
    expect(ses.accepted[0].payload.TenantName).toBe("tenant-acme");
  });

  it("is refused by the stand-in when the signature does not match (the stand-in really checks)", async () => {
    const { testEnv, ses, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "ses" }), SES_SECRET_ACCESS_KEY: "wrong" });
    await processEmailBatch(emailBatch({ n: 1 }), testEnv, { fetchImpl });
    expect(ses.accepted).toHaveLength(0);
    expect(publishedResults(queues.results)[0]).toMatchObject({ status: "failed", error: { code: "SignatureDoesNotMatch" } });
  });

  it("retries throttles and daily quota with backoff; MessageRejected is final with its reason", async () => {
    const { testEnv, ses, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "ses" }) });
    ses.failNext.push({ status: 429, type: "TooManyRequestsException", message: "Maximum sending rate exceeded." });
    ses.failNext.push({ status: 400, type: "LimitExceededException", message: "Daily message quota exceeded." });
    const batch = emailBatch({ n: 3 });
    ses.rejected.add(batch.recipients[2].to);
    await processEmailBatch(batch, testEnv, { fetchImpl });
    const results = publishedResults(queues.results);
    expect(results.map((r) => r.status)).toEqual(["retrying", "retrying", "failed"]);
    expect(results[2].error).toEqual({ code: "MessageRejected", message: "Email address is not verified.", permanent: true });
    expect(queues.email.sent[0].body.recipients.map((r) => r.recipient_id)).toEqual(["r-1", "r-2"]);

    // The re-queued batch goes through once the provider recovers; r-3 is never retried.
    queues.results.sent.length = 0;
    await processEmailBatch(queues.email.sent[0].body, testEnv, { fetchImpl });
    expect(publishedResults(queues.results).map((r) => [r.recipient_id, r.status, r.attempts])).toEqual([
      ["r-1", "sent", 2],
      ["r-2", "sent", 2],
    ]);
    expect(ses.accepted.map((a) => a.address).sort()).toEqual([batch.recipients[0].to, batch.recipients[1].to].sort());
  });

  it("gives up after the last attempt: a retryable error becomes final", async () => {
    const { testEnv, ses, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "ses" }) });
    ses.failNext.push({ status: 503, type: "ServiceUnavailable" });
    await processEmailBatch(emailBatch({ n: 1, attempt: MAX_SEND_ATTEMPTS }), testEnv, { fetchImpl });
    expect(publishedResults(queues.results)[0]).toMatchObject({ status: "failed", error: { code: "ServiceUnavailable", permanent: true } });
    expect(queues.email.sent).toEqual([]);
  });

  it("settles from SES events: Delivery, Bounce and Complaint become statuses", async () => {
    const { testEnv, ses, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "ses" }) });
    await processEmailBatch(emailBatch({ n: 2 }), testEnv, { fetchImpl });
    queues.results.sent.length = 0;
    const [a, b] = ses.accepted;
    await applyEvents(testEnv, [
      normaliseSesEvent(ses.event(a, "Send")),
      normaliseSesEvent(ses.event(a, "Delivery")),
      normaliseSesEvent(ses.event(b, "Bounce", { bounce: { bounceType: "Permanent", bounceSubType: "General", bouncedRecipients: [{ diagnosticCode: "550 5.1.1 no such user" }] } })),
    ]);
    const results = publishedResults(queues.results);
    expect(results.map((r) => [r.recipient_id, r.status])).toEqual([
      ["r-1", "delivered"],
      ["r-2", "bounced"],
    ]);
    expect(results[1].error).toEqual({ code: "bounce.Permanent.General", message: "550 5.1.1 no such user", permanent: true });
  });
});

describe("SendGrid v3", () => {
  it("sends with custom_args and List-Unsubscribe, and survives a 429 burst", async () => {
    const { testEnv, sendgrid, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "sendgrid", campaign: "sendgrid" }) });
    sendgrid.failNext.push({ status: 429 }, { status: 429 }, { status: 429 });
    const batch = emailBatch({ n: 5, category: "campaign" });
    await processEmailBatch(batch, testEnv, { fetchImpl });
    expect(publishedResults(queues.results).map((r) => r.status)).toEqual(["retrying", "retrying", "retrying", "sent", "sent"]);
    await processEmailBatch(queues.email.sent[0].body, testEnv, { fetchImpl });
    const perRecipient = new Map();
    for (const a of sendgrid.accepted) perRecipient.set(a.tags.recipient_id, (perRecipient.get(a.tags.recipient_id) ?? 0) + 1);
    expect([...perRecipient.entries()].sort()).toEqual(batch.recipients.map((r) => [r.recipient_id, 1]));
    const first = sendgrid.accepted[0].payload;
    expect(first.headers).toMatchObject({ "List-Unsubscribe-Post": "List-Unsubscribe=One-Click" });
    expect(first.personalizations[0].custom_args).toMatchObject({ job_id: batch.job_id, company_id: "7" });
    expect(first.content.map((c) => c.type)).toEqual(["text/plain", "text/html"]);
  });

  it("retries a revoked key (the operator fixes it) instead of failing the job for good", async () => {
    const { testEnv, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "sendgrid" }), SENDGRID_API_KEY: "SG.revoked" });
    await processEmailBatch(emailBatch({ n: 1 }), testEnv, { fetchImpl });
    expect(publishedResults(queues.results)[0]).toMatchObject({ status: "retrying", error: { code: "sendgrid_401" } });
  });
});

describe("exactly once per (job, recipient)", () => {
  it("a redelivered batch sends nothing again and reports the stored results", async () => {
    const { testEnv, cloudflare, queues } = standInEnv();
    const batch = emailBatch({ n: 4 });
    await processEmailBatch(batch, testEnv);
    const first = publishedResults(queues.results);
    queues.results.sent.length = 0;
    const again = await processEmailBatch(structuredClone(batch), testEnv);
    expect(again.calls).toBe(0);
    expect(cloudflare.accepted).toHaveLength(4);
    expect(publishedResults(queues.results)).toEqual(first);
  });

  it("a crash after the provider accepted: the redelivery waits for the lease, the provider's event settles it, nobody gets two", async () => {
    const { testEnv, ses, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "ses" }) });
    const batch = emailBatch({ n: 4 });
    let t = now();
    const clock = () => t;
    // The Worker dies right after SES accepted r-2: r-1 is complete, r-2 INPROGRESS, r-3/r-4 untouched.
    await expect(
      processEmailBatch(batch, testEnv, {
        fetchImpl,
        clock,
        afterSend: (r) => {
          if (r.recipient_id === "r-2") throw new Error("worker killed");
        },
      }),
    ).rejects.toThrow("worker killed");
    expect(ses.accepted).toHaveLength(2);

    // Queue redelivery while the lease is live: r-2 is not sent, it is looked at again later.
    await processEmailBatch(batch, testEnv, { fetchImpl, clock });
    expect(ses.accepted.map((a) => a.tags.recipient_id)).toEqual(["r-1", "r-2", "r-3", "r-4"]);
    const requeued = queues.email.sent.at(-1);
    expect(requeued.body.recipients.map((r) => r.recipient_id)).toEqual(["r-2"]);
    expect(requeued.options.delaySeconds).toBeGreaterThan(0);

    // SES's Send event for r-2 settles the claim; the next look replays `sent`, no second copy.
    queues.results.sent.length = 0;
    await applyEvents(testEnv, [normaliseSesEvent(ses.event(ses.accepted[1], "Send"))]);
    expect(publishedResults(queues.results)).toMatchObject([{ recipient_id: "r-2", status: "sent", provider_message_id: ses.accepted[1].messageId }]);
    t += LEASE_SECONDS + 60;
    await processEmailBatch(requeued.body, testEnv, { fetchImpl, clock });
    expect(ses.accepted).toHaveLength(4);
  });

  it("a crash before the provider accepted: proven unsent by the watermark, then sent exactly once", async () => {
    const { testEnv, ses, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "ses" }) });
    const batch = emailBatch({ n: 2 });
    // Clocks run ahead of every event other tests applied: the watermark proves nothing yet.
    const crashAt = now() + 10_000_000;
    let t = crashAt;
    const clock = () => t;
    await expect(
      processEmailBatch(batch, testEnv, {
        fetchImpl,
        clock,
        beforeSend: (r) => {
          if (r.recipient_id === "r-1") throw new Error("worker killed");
        },
      }),
    ).rejects.toThrow("worker killed");
    expect(ses.accepted).toHaveLength(0);
    t = crashAt + LEASE_SECONDS + 10;

    // The lease is over but nothing proves r-1 unsent yet: look again later, do not send; a probe
    // to SES's mailbox simulator makes sure some Send event will come.
    await processEmailBatch(batch, testEnv, { fetchImpl, clock });
    const real = () => ses.accepted.filter((a) => a.tags.probe !== "1");
    expect(real().map((a) => a.tags.recipient_id)).toEqual(["r-2"]);
    const probes = ses.accepted.filter((a) => a.tags.probe === "1");
    expect(probes.map((p) => p.address)).toEqual(["success@simulator.amazonses.com"]);
    expect(queues.email.sent.at(-1).body.recipients.map((r) => r.recipient_id)).toEqual(["r-1"]);

    // The probe's Send event (sent after the dead claim's lease) moves the watermark past it: proven unsent.
    await applyEvents(testEnv, [normaliseSesEvent(ses.event({ ...probes[0], at: crashAt + LEASE_SECONDS + 5 }, "Send"))]);
    await processEmailBatch(queues.email.sent.at(-1).body, testEnv, { fetchImpl, clock });
    expect(real().map((a) => a.tags.recipient_id).sort()).toEqual(["r-1", "r-2"]);
    // And once more (a duplicate redelivery): still one each.
    await processEmailBatch(batch, testEnv, { fetchImpl, clock });
    expect(real()).toHaveLength(2);
  });

  it("without proof for an hour after the lease, the recipient is reported failed / outcome_unknown", async () => {
    const { testEnv, sendgrid, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "sendgrid" }) });
    const batch = emailBatch({ n: 1 });
    const crashAt = now() + 20_000_000; // ahead of any watermark other tests moved
    let t = crashAt;
    const clock = () => t;
    await expect(
      processEmailBatch(batch, testEnv, { fetchImpl, clock, beforeSend: () => { throw new Error("killed"); } }),
    ).rejects.toThrow("killed");
    t = crashAt + LEASE_SECONDS + CRASH_WINDOW_GIVE_UP_SECONDS + 1;
    await processEmailBatch(batch, testEnv, { fetchImpl, clock });
    expect(sendgrid.accepted).toHaveLength(0); // no probe address for SendGrid here, and no proof
    expect(publishedResults(queues.results)).toMatchObject([{ status: "failed", error: { code: "outcome_unknown", permanent: true } }]);
  });

  it("a Cloudflare crash-window claim is settled by its event through the address index", async () => {
    const { testEnv, cloudflare, queues } = standInEnv();
    const batch = emailBatch({ n: 1 });
    await expect(
      processEmailBatch(batch, testEnv, { afterSend: () => { throw new Error("killed"); } }),
    ).rejects.toThrow("killed");
    const [accepted] = cloudflare.accepted;
    // Its event names only the messageId (never recorded: the Worker died) and the address.
    await applyEvents(testEnv, [normaliseCloudflareEvent(CloudflareEmailStandIn.event("delivered", accepted.messageId, accepted.to[0]))]);
    const statuses = publishedResults(queues.results).map((r) => r.status);
    expect(statuses).toEqual(["sent", "delivered"]);
    const claims = await runInDurableObject(ledgerFor(testEnv, batch.company_id, batch.job_id), (instance) => instance.counts());
    expect(claims).toEqual([{ state: "COMPLETED", n: 1 }]);
  });
});

describe("contents", () => {
  it("reads contents by reference from R2, checked against size and SHA-256; templates are refused", async () => {
    const stored = JSON.stringify({ kind: "rendered", subject: "From R2", html: "<p>Stored 🎓</p>" });
    const bytes = new TextEncoder().encode(stored);
    const key = `contents/company-7/j-ref/${crypto.randomUUID()}.json`;
    await env.OFFLOAD_BUCKET.put(key, bytes);
    const ref = { store: "r2", key, sha256: await sha256Hex(bytes), bytes: bytes.byteLength };
    const { testEnv, cloudflare, queues } = standInEnv();
    const batch = emailBatch({ n: 3 });
    batch.contents = {
      "c-1": { kind: "reference", ref },
      "c-2": { kind: "reference", ref: { ...ref, sha256: "0".repeat(64) } },
      "c-3": { kind: "template", engine: "jinja2", subject: "Hi {{ name }}", html: "<p>{{ name }}</p>" },
    };
    batch.recipients[1].content_id = "c-2";
    batch.recipients[2].content_id = "c-3";
    await processEmailBatch(batch, testEnv);
    expect(cloudflare.accepted).toHaveLength(1);
    expect(cloudflare.accepted[0]).toMatchObject({ subject: "From R2", html: "<p>Stored 🎓</p>", text: "Stored 🎓\n" });
    const results = publishedResults(queues.results);
    expect(results.map((r) => [r.status, r.error?.code])).toEqual([
      ["sent", undefined],
      ["failed", "reference_mismatch"],
      ["failed", "template_unsupported"],
    ]);
  });

  it("generates the text part as the AWS sender does", () => {
    expect(htmlToText('<h1>Title</h1><p>See <a href="https://x.example/a">this</a><br>now</p><script>x()</script>')).toBe(
      "Title\n\nSee this (https://x.example/a)\nnow\n",
    );
  });

  it("refuses campaign mail when no campaign provider is configured, without calling anyone", async () => {
    const { testEnv, cloudflare, queues } = standInEnv();
    await processEmailBatch(emailBatch({ n: 1, category: "campaign" }), testEnv);
    expect(cloudflare.calls).toBe(0);
    expect(publishedResults(queues.results)[0]).toMatchObject({ status: "failed", error: { code: "campaign_unsupported" } });
  });
});

describe("pacing", () => {
  it("the shared bucket grants the rate, then makes callers wait, and refuses long waits", async () => {
    const pacer = env.PACER.get(env.PACER.idFromName(`pace:test-${crypto.randomUUID()}`));
    const at = Date.now();
    const grants = [];
    for (let i = 0; i < 5; i++) grants.push(await pacer.take(1, 5, 5, 10_000, at));
    expect(grants.every((g) => g.granted && g.waitMs === 0)).toBe(true);
    expect(await pacer.take(1, 5, 5, 10_000, at)).toEqual({ granted: true, waitMs: 200 }); // owed: one token at 5/s
    expect(await pacer.take(1, 5, 5, 10_000, at)).toEqual({ granted: true, waitMs: 400 });
    expect(await pacer.take(100, 5, 5, 1_000, at)).toMatchObject({ granted: false });
    // A second later five tokens have come back, less the two owed.
    expect(await pacer.take(3, 5, 5, 0, at + 1_000)).toEqual({ granted: true, waitMs: 0 });
    expect(await pacer.take(1, 5, 5, 0, at + 1_000)).toMatchObject({ granted: false });
  });

  it("a consumer sleeps for its tokens, and defers the rest of its batch when the wait is too long", async () => {
    const { testEnv, cloudflare, queues } = standInEnv({ PROVIDER_RATES: JSON.stringify({ cloudflare: 2 }) });
    // Another consumer just took the bucket: tokens are owed.
    const pacer = testEnv.PACER.get(testEnv.PACER.idFromName("pace:cloudflare"));
    await pacer.take(2, 2, 2, 60_000);
    const slept = [];
    await processEmailBatch(emailBatch({ n: 4 }), testEnv, { sleep: async (ms) => slept.push(ms), maxPaceWaitMs: 1_200 });
    expect(cloudflare.accepted.length).toBeGreaterThanOrEqual(1);
    expect(slept.length).toBeGreaterThanOrEqual(1);
    const deferred = queues.email.sent.flatMap((s) => s.body.recipients.map((r) => r.recipient_id));
    expect(cloudflare.accepted.length + deferred.length).toBe(4);
    expect(deferred.length).toBeGreaterThanOrEqual(1);
    expect(queues.email.sent.every((s) => s.body.attempt === 1)).toBe(true); // a deferral, not a retry
  });

  it("backs off exponentially, longer when throttled, capped at 900 s", () => {
    expect(backoffDelay(1, false, 0)).toBe(10);
    expect(backoffDelay(3, true, 0)).toBe(120);
    expect(backoffDelay(10, true, 0)).toBe(900);
  });
});
