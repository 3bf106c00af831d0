// Fault harness with the per-recipient exactly-once oracle: many batches through a simulated
// queue (at-least-once, redeliveries, delays), the Worker killed mid-batch before and after the
// provider accepted, provider 429 bursts, provider events late and duplicated, callbacks lost
// and duplicated. Every recipient must be accepted by the provider exactly once, and the
// bridge must end up knowing every recipient as sent.
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { applyEvents, normaliseCloudflareEvent, normaliseSesEvent } from "../src/events.js";
import { deliverCallback } from "../src/results.js";
import { LEASE_SECONDS, processEmailBatch } from "../src/sender.js";
import { MemoryNonceStore, Verifier, decodeRootSecret } from "../src/signing.js";
import { CloudflareEmailStandIn } from "./standins.js";
import { KEYSETS, emailBatch, standInEnv } from "./helpers.js";

/** A small deterministic PRNG (mulberry32), so a failing seed can be replayed. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PROBE = "probe@ops.example.org";

async function runScenario({ provider, seed, batches = 5, perBatch = 6 }) {
  const random = prng(seed);
  const overrides = {
    ...(provider === "ses" ? { PROVIDERS: JSON.stringify({ transactional: "ses" }) } : {}),
    PROBE_ADDRESSES: JSON.stringify({ cloudflare: PROBE }),
  };
  const { testEnv, ses, cloudflare, fetchImpl, queues } = standInEnv(overrides);
  // Far ahead of every event other tests applied (the watermark is per provider and shared).
  let t = Math.floor(Date.now() / 1000) + 100_000 + seed * 10_000;
  const clock = () => t;

  // The simulated queue: {body, visibleAt}; a delivery that throws is redelivered later.
  const pending = [];
  const jobs = [];
  let duplicateDeliveries = 0;
  for (let i = 0; i < batches; i++) {
    const batch = emailBatch({ n: perBatch, jobId: `j-f${seed}-${provider}-${i}` });
    jobs.push(batch);
    pending.push({ body: batch, visibleAt: t });
    if (random() < 0.3) pending.push({ body: structuredClone(batch), visibleAt: t }); // duplicate delivery
    else continue;
    duplicateDeliveries += 1;
  }
  const eventsOut = []; // provider events not yet delivered
  let seenAccepted = 0;
  const acceptedList = () => (provider === "ses" ? ses.accepted : cloudflare.accepted);

  // The bridge: verifies, remembers the newest status per recipient, loses or duplicates callbacks.
  const roots = new Map(Object.entries(KEYSETS.keysets).map(([k, v]) => [k, decodeRootSecret(v)]));
  const verifier = new Verifier(roots, new MemoryNonceStore());
  const bridgeStatus = new Map();
  const reports = new Set();
  const bridgeFetch = async (url, init) => {
    if (random() < 0.2) {
      faults.lostCallbacks += 1;
      return new Response("", { status: 503 }); // lost
    }
    const body = new Uint8Array(init.body);
    await verifier.verify("POST", new URL(url).pathname, init.headers, body);
    const message = JSON.parse(new TextDecoder().decode(body)).message;
    reports.add(message.report_id);
    for (const r of message.results) {
      const key = `${r.job_id}/${r.recipient_id}`;
      if (bridgeStatus.get(key) !== "sent" || r.status !== "retrying") bridgeStatus.set(key, r.status === "failed" ? `failed:${r.error.code}` : r.status);
    }
    return new Response("{}", { status: 200 });
  };
  let callbackCursor = 0;
  const faults = { crashBefore: 0, crashAfter: 0, throttles: 0, lostCallbacks: 0, duplicateCallbacks: 0, duplicateDeliveries: 0 };

  for (let round = 0; round < 200 && (pending.length || eventsOut.length || callbackCursor < queues.results.sent.length); round++) {
    // Deliver what is visible, in random order.
    const visible = pending.filter((p) => p.visibleAt <= t);
    for (const item of visible) pending.splice(pending.indexOf(item), 1);
    visible.sort(() => random() - 0.5);
    for (const item of visible) {
      const burst = random() < 0.25;
      if (burst) faults.throttles += 1;
      if (provider === "ses" && burst) ses.failNext.push({ status: 429, type: "TooManyRequestsException" }, { status: 429, type: "TooManyRequestsException" });
      if (provider === "cloudflare" && burst) cloudflare.failNext.push({ code: "E_RATE_LIMIT_EXCEEDED", message: "rate limit" });
      const crashAt = random() < 0.3 ? Math.floor(random() * perBatch) + 1 : -1;
      const crashAfter = random() < 0.5;
      const crash = (r) => {
        if (r.recipient_id === `r-${crashAt}`) throw new Error("worker killed");
      };
      const before = queues.email.sent.length;
      try {
        await processEmailBatch(item.body, testEnv, {
          fetchImpl,
          clock,
          sleep: async () => {},
          ...(crashAfter ? { afterSend: crash } : { beforeSend: crash }),
        });
      } catch (error) {
        expect(error.message).toBe("worker killed");
        faults[crashAfter ? "crashAfter" : "crashBefore"] += 1;
        pending.push({ body: item.body, visibleAt: t + 30 }); // the queue redelivers after retry_delay
      }
      // A burst belongs to this delivery only.
      ses.failNext.length = 0;
      cloudflare.failNext.length = 0;
      // Re-queued subsets (retries, lease waits, rechecks) become visible after their delay.
      for (const sent of queues.email.sent.slice(before)) pending.push({ body: sent.body, visibleAt: t + sent.options.delaySeconds });
    }
    // The provider publishes events for what it accepted; they arrive late, some twice.
    for (const accepted of acceptedList().slice(seenAccepted)) {
      const event =
        provider === "ses"
          ? normaliseSesEvent(ses.event({ ...accepted, at: t }, "Send"))
          : normaliseCloudflareEvent(CloudflareEmailStandIn.event("delivered", accepted.messageId, accepted.to[0], {}, new Date(t * 1000)));
      eventsOut.push(event);
      if (random() < 0.2) eventsOut.push(event);
    }
    seenAccepted = acceptedList().length;
    if (eventsOut.length && random() < 0.7) {
      const now = eventsOut.splice(0, eventsOut.length);
      await applyEvents(testEnv, now);
    }
    // The results queue consumer: lost callbacks stay for a retry, some are delivered twice.
    while (callbackCursor < queues.results.sent.length) {
      const item = queues.results.sent[callbackCursor].body;
      try {
        await deliverCallback(testEnv, item, bridgeFetch);
        if (random() < 0.2) {
          faults.duplicateCallbacks += 1;
          await deliverCallback(testEnv, item, bridgeFetch).catch(() => {});
        }
        callbackCursor += 1;
      } catch {
        break; // retried next round
      }
    }
    t += 60 + Math.floor(random() * LEASE_SECONDS);
  }

  // The oracle.
  const perRecipient = new Map();
  let probes = 0;
  for (const accepted of acceptedList()) {
    if (accepted.tags?.probe === "1" || accepted.to?.[0] === PROBE) {
      probes += 1;
      continue;
    }
    const key = provider === "ses" ? `${accepted.tags.job_id}/${accepted.tags.recipient_id}` : accepted.to[0];
    perRecipient.set(key, (perRecipient.get(key) ?? 0) + 1);
  }
  const expected = jobs.flatMap((b) => b.recipients.map((r) => (provider === "ses" ? `${b.job_id}/${r.recipient_id}` : r.to)));
  faults.duplicateDeliveries = duplicateDeliveries;
  return { perRecipient, expected, bridgeStatus, jobs, pending, reports, probes, faults };
}

describe("exactly once under faults", () => {
  for (const provider of ["ses", "cloudflare"]) {
    for (const seed of [1, 2]) {
      it(`${provider}, seed ${seed}: every recipient accepted exactly once, and the bridge knows it`, async () => {
        const { perRecipient, expected, bridgeStatus, jobs, pending, faults } = await runScenario({ provider, seed });
        // The faults really happened (the seeds are fixed, so this is deterministic).
        for (const [name, count] of Object.entries(faults)) expect(count, name).toBeGreaterThan(0);
        expect(pending).toEqual([]);
        const duplicates = [...perRecipient.entries()].filter(([, n]) => n !== 1);
        expect(duplicates).toEqual([]);
        const missing = expected.filter((k) => !perRecipient.has(k));
        if (missing.length) console.log("MISSING", JSON.stringify(missing), JSON.stringify(jobs.flatMap((b) => b.recipients.filter((r) => missing.includes(r.to)).map((r) => [b.job_id, r.recipient_id, bridgeStatus.get(`${b.job_id}/${r.recipient_id}`)]))));
        expect([...perRecipient.keys()].sort()).toEqual([...expected].sort());
        const statuses = jobs.flatMap((b) => b.recipients.map((r) => bridgeStatus.get(`${b.job_id}/${r.recipient_id}`)));
        // sent, or a provider outcome that came after it (delivered) — never missing, never failed.
        expect(statuses.every((s) => s === "sent" || s === "delivered")).toBe(true);
      }, 60_000);
    }
  }
  it("keeps the shared test env untouched", () => {
    expect(env.RESULTS_MODE).toBe("push");
  });
});
