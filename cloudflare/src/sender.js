// The Worker's email sender: one email_batch from the queue -> one provider call per recipient,
// exactly once per (job, recipient), paced, with the AWS sender's retry and crash-window rules
// (docs/lambdas.md, "Exactly once"; docs/cloudflare.md, "Sending").

import { ContentError, readAttachments, resolveContents } from "./contents.js";
import { parseKeysets } from "./keysets.js";
import { COMPLETED, INPROGRESS, indexShardName } from "./ledger.js";
import { buildProvider, providerRate, providerRouting } from "./providers.js";
import { publishResults } from "./results.js";

/** A claim's life: the provider call (10 s timeout) plus the ledger write fit well inside. */
export const LEASE_SECONDS = 120;
/** A stale claim is looked at again after this long while its outcome is not proven. */
export const CRASH_WINDOW_RECHECK_SECONDS = 300;
/** Without proof this long after the lease ended, the recipient is reported failed / outcome_unknown. */
export const CRASH_WINDOW_GIVE_UP_SECONDS = 3600;
/**
 * How far past a dead claim's lease the provider's event watermark must be before the claim is
 * proven unsent. SES (Send) and SendGrid (processed) publish an event on acceptance; Cloudflare
 * Email Service publishes only delivery outcomes, which can lag by minutes.
 */
export const WATERMARK_SLACK_SECONDS = { ses: 0, sendgrid: 0, cloudflare: 900 };
export const MAX_SEND_ATTEMPTS = 8;
/** At most one probe per provider this often, across all consumers. */
export const CRASH_WINDOW_PROBE_INTERVAL_SECONDS = 300;
/**
 * Where probes go when no other mail moves a provider's watermark. SES's mailbox simulator
 * exists for exactly this (no quota, bounce or reputation effect); for the others the operator
 * names an address it owns (PROBE_ADDRESSES), else no probe is sent and a stale claim waits for
 * other mail or gives up.
 */
export const DEFAULT_PROBE_ADDRESSES = { ses: "success@simulator.amazonses.com" };
export const MAX_QUEUE_DELAY_SECONDS = 900;
/** Longest a consumer waits for the token bucket before deferring the rest of its batch. */
export const MAX_PACE_WAIT_MS = 10_000;

export function backoffDelay(attempt, throttled, jitter = Math.floor(Math.random() * 11)) {
  const base = throttled ? 30 : 10;
  return Math.min(MAX_QUEUE_DELAY_SECONDS, base * 2 ** Math.max(0, attempt - 1) + jitter);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The job's ledger. Job ids are the bridge's; the company keeps one company's jobs apart from another's. */
export function ledgerFor(env, companyId, jobId) {
  return env.LEDGER.get(env.LEDGER.idFromName(`job:c${companyId}:${jobId}`));
}

export async function indexFor(env, address) {
  return env.EVENT_INDEX.get(env.EVENT_INDEX.idFromName(await indexShardName(address)));
}

export function watermarkStore(env) {
  return env.EVENT_INDEX.get(env.EVENT_INDEX.idFromName("watermark"));
}

function pacerFor(env, provider) {
  return env.PACER.get(env.PACER.idFromName(`pace:${provider}`));
}

function failed(batch, recipientId, code, message, permanent, at) {
  return {
    job_id: batch.job_id,
    recipient_id: recipientId,
    status: "failed",
    attempts: batch.attempt,
    occurred_at: at,
    error: { code, message: String(message).slice(0, 1000), permanent },
  };
}

/** The recipients of `batch` that must be tried again, as one email_batch (same batch_id). */
export function subsetBatch(batch, recipients, attempt) {
  const used = new Set(recipients.map((r) => r.content_id));
  return {
    ...batch,
    attempt,
    recipients,
    contents: Object.fromEntries(Object.entries(batch.contents).filter(([id]) => used.has(id))),
  };
}

/**
 * Send one email_batch. `deps` (tests and fault injection): fetchImpl, clock (unix seconds),
 * sleep, beforeSend(recipient) / afterSend(recipient, outcome) (throw to simulate a crash inside
 * the window, before or after the provider accepted the message),
 * maxPaceWaitMs. Returns {results, requeued, calls}. Throws when the ledger cannot be
 * written: the queue then redelivers the batch and the ledger decides what is left to do.
 */
export async function processEmailBatch(batch, env, deps = {}) {
  const clock = deps.clock ?? (() => Math.floor(Date.now() / 1000));
  const wait = deps.sleep ?? sleep;
  const fetchImpl = deps.fetchImpl ?? ((...args) => fetch(...args));
  const owner = crypto.randomUUID();
  const ledger = ledgerFor(env, batch.company_id, batch.job_id);
  await ledger.remember({
    job_id: batch.job_id,
    company_id: batch.company_id,
    callback_url: batch.callback.url,
    key_id: batch.callback.key_id,
  });

  const routing = providerRouting(env);
  const providerName = routing.pick(batch.category, batch.company_id);
  const contents = await resolveContents(batch, env.OFFLOAD_BUCKET, sealRoots(env));
  const existing = await ledger.lookup(batch.recipients.map((r) => r.recipient_id));
  const results = [];
  const requeues = []; // {recipient, attempt, delay}
  let calls = 0;
  let deferredFrom = -1;

  // A deployment that cannot build its provider (a missing secret or binding) throws: the queue
  // retries the batch and then keeps it in its dead-letter queue, nothing is claimed or lost.
  const provider = providerName === null ? null : buildProvider(providerName, env, fetchImpl);
  const rate = provider ? providerRate(env, provider.name) : 1;
  const tenantNames = env.SES_TENANT_NAMES ? JSON.parse(env.SES_TENANT_NAMES) : {};

  /** What an existing claim means for this delivery; true when the recipient is handled. */
  const handleExisting = async (recipient, claim) => {
    const t = clock();
    if (claim.state === COMPLETED) {
      if (claim.result) results.push(claim.result); // reported again; the bridge applies it once
      return { handled: true };
    }
    if (claim.lease_until >= t) {
      requeues.push({ recipient, attempt: batch.attempt, delay: Math.min(MAX_QUEUE_DELAY_SECONDS, claim.lease_until - t + 5) });
      return { handled: true };
    }
    // The owner died inside the crash window. Sent again only once proven unsent.
    const slack = WATERMARK_SLACK_SECONDS[claim.provider] ?? 0;
    const mark = await watermarkStore(env).watermark(claim.provider);
    if (mark > claim.lease_until + slack) return { handled: false, takeover: claim };
    if (t - claim.lease_until > CRASH_WINDOW_GIVE_UP_SECONDS) {
      const taken = await ledger.claim(recipient.recipient_id, {
        owner,
        leaseUntil: t + LEASE_SECONDS,
        provider: claim.provider,
        address: recipient.to,
        takeover: claim,
        at: t,
      });
      if (taken.claimed) {
        const result = failed(
          batch,
          recipient.recipient_id,
          "outcome_unknown",
          "the provider's events never proved whether the message was accepted",
          true,
          t,
        );
        await ledger.complete(recipient.recipient_id, owner, result);
        results.push(result);
      }
      return { handled: true };
    }
    await probe(claim.provider, t);
    requeues.push({ recipient, attempt: batch.attempt, delay: CRASH_WINDOW_RECHECK_SECONDS });
    return { handled: true };
  };

  /** When nothing else moves the provider's watermark, one probe message through it does. */
  const probe = async (name, t) => {
    const addresses = { ...DEFAULT_PROBE_ADDRESSES, ...(env.PROBE_ADDRESSES ? JSON.parse(env.PROBE_ADDRESSES) : {}) };
    const address = addresses[name];
    if (!address) return;
    const due = await watermarkStore(env).probeDue(name, t, CRASH_WINDOW_PROBE_INTERVAL_SECONDS);
    if (!due) return;
    const via = name === provider?.name ? provider : buildProvider(name, env, fetchImpl);
    await via.send({
      from: { address: batch.sender.address },
      replyTo: [],
      to: address,
      subject: "ManiReports Cloud Offload: event pipeline probe",
      html: "<p>Sent to confirm that provider events are flowing.</p>",
      text: "Sent to confirm that provider events are flowing.\n",
      headers: {},
      tags: { probe: "1" },
    });
  };

  /** Claim, then record a final failure decided before any provider call. */
  const failBeforeCall = async (recipient, code, message, takeover) => {
    const t = clock();
    const taken = await ledger.claim(recipient.recipient_id, {
      owner,
      leaseUntil: t + LEASE_SECONDS,
      provider: providerName ?? "none",
      address: recipient.to,
      takeover,
      at: t,
    });
    if (!taken.claimed) return;
    const result = failed(batch, recipient.recipient_id, code, message, true, t);
    await ledger.complete(recipient.recipient_id, owner, result);
    results.push(result);
  };

  for (let index = 0; index < batch.recipients.length; index++) {
    const recipient = batch.recipients[index];
    let takeover = null;
    const claim = existing[recipient.recipient_id];
    if (claim) {
      const decision = await handleExisting(recipient, claim);
      if (decision.handled) continue;
      takeover = decision.takeover;
    }
    const resolved = contents[recipient.content_id];
    if (resolved?.error) {
      await failBeforeCall(recipient, resolved.error.code, resolved.error.message, takeover);
      continue;
    }
    let attachments = [];
    if (recipient.attachments?.length) {
      // Attachments by R2 reference (the Worker's certificates), checked against size and SHA-256.
      try {
        attachments = await readAttachments(env.OFFLOAD_BUCKET, recipient.attachments);
      } catch (error) {
        if (!(error instanceof ContentError)) throw error;
        await failBeforeCall(recipient, error.code, error.message, takeover);
        continue;
      }
    }
    if (provider === null) {
      await failBeforeCall(
        recipient,
        "campaign_unsupported",
        "this Worker has no campaign provider (Cloudflare Email Service carries transactional mail only)",
        takeover,
      );
      continue;
    }
    const ref = { job_id: batch.job_id, recipient_id: recipient.recipient_id, company_id: batch.company_id };
    const index_ = provider.tagsInEvents ? null : await indexFor(env, recipient.to);
    if (index_) {
      // Cloudflare Email Service refuses a whole call when one recipient is suppressed: filter first.
      const reason = await index_.suppression(recipient.to);
      if (reason) {
        await failBeforeCall(recipient, "suppressed", `the address is on the suppression list (${reason})`, takeover);
        continue;
      }
    }

    const pace = await pacerFor(env, provider.name).take(1, rate, Math.max(1, Math.ceil(rate)), deps.maxPaceWaitMs ?? MAX_PACE_WAIT_MS);
    if (!pace.granted) {
      deferredFrom = index;
      break;
    }
    if (pace.waitMs > 0) await wait(pace.waitMs);

    const t = clock();
    const leaseUntil = t + LEASE_SECONDS;
    const taken = await ledger.claim(recipient.recipient_id, {
      owner,
      leaseUntil,
      provider: provider.name,
      address: recipient.to,
      takeover,
      at: t,
    });
    if (!taken.claimed) {
      await handleExisting(recipient, taken.claim);
      continue;
    }
    if (index_) await index_.expect(recipient.to, ref);

    const content = resolved.content;
    const headers = {};
    if (batch.category === "campaign") {
      headers["List-Unsubscribe"] = `<${recipient.unsubscribe_url}>`;
      headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click";
    }
    const mail = {
      from: { address: batch.sender.address, name: content.from_name ?? batch.sender.name },
      replyTo: content.reply_to ?? batch.sender.reply_to ?? [],
      to: recipient.to,
      toName: recipient.name,
      subject: content.subject,
      html: content.html,
      text: content.text,
      headers,
      tags: { job_id: batch.job_id, recipient_id: recipient.recipient_id, company_id: String(batch.company_id) },
      tenant: tenantNames[String(batch.company_id)] ?? batch.ses_tenant,
    };
    if (attachments.length) mail.attachments = attachments;
    if (deps.beforeSend) await deps.beforeSend(recipient);
    calls += 1;
    const result = await provider.send(mail);
    if (deps.afterSend) await deps.afterSend(recipient, result);
    const at = clock();
    if (result.kind === "sent") {
      const sent = {
        job_id: batch.job_id,
        recipient_id: recipient.recipient_id,
        status: "sent",
        attempts: batch.attempt,
        occurred_at: at,
        provider_message_id: result.messageId,
      };
      await ledger.complete(recipient.recipient_id, owner, sent);
      if (index_) await index_.record(result.messageId, recipient.to, ref);
      results.push(sent);
    } else if (result.kind === "final" || (result.kind === "retry" && batch.attempt >= MAX_SEND_ATTEMPTS)) {
      const final = failed(batch, recipient.recipient_id, result.code, result.message, true, at);
      await ledger.complete(recipient.recipient_id, owner, final);
      if (index_) await index_.forget(ref);
      results.push(final);
    } else if (result.kind === "retry") {
      await ledger.release(recipient.recipient_id, owner);
      if (index_) await index_.forget(ref);
      const next = Math.min(100, batch.attempt + 1);
      requeues.push({ recipient, attempt: next, delay: backoffDelay(batch.attempt, result.throttled) });
      results.push({
        job_id: batch.job_id,
        recipient_id: recipient.recipient_id,
        status: "retrying",
        attempts: batch.attempt,
        occurred_at: at,
        error: { code: result.code, message: result.message, permanent: false },
      });
    } else {
      // unknown: the claim is kept; the recipient is looked at again after its lease.
      requeues.push({ recipient, attempt: batch.attempt, delay: LEASE_SECONDS + 30 });
    }
  }
  if (deferredFrom >= 0) {
    // The bucket is empty for longer than a consumer should sleep: the rest goes back, unclaimed.
    for (const recipient of batch.recipients.slice(deferredFrom)) {
      requeues.push({ recipient, attempt: batch.attempt, delay: 5 });
    }
  }

  const merged = new Map(); // one message per attempt number, at the longest delay
  for (const item of requeues) {
    const into = merged.get(item.attempt) ?? { recipients: [], delay: 0 };
    into.recipients.push(item.recipient);
    into.delay = Math.max(into.delay, item.delay);
    merged.set(item.attempt, into);
  }
  for (const [attempt, item] of merged) {
    await env.EMAIL_QUEUE.send(subsetBatch(batch, item.recipients, attempt), {
      contentType: "json",
      delaySeconds: Math.max(0, Math.min(MAX_QUEUE_DELAY_SECONDS, Math.ceil(item.delay))),
    });
  }
  if (results.length) {
    await publishResults(env, {
      companyId: batch.company_id,
      callback: batch.callback,
      batchId: batch.batch_id,
      results,
    });
  }
  return { results, requeued: requeues.length, calls };
}

export { INPROGRESS };

/** The SEAL_KEYSETS secret's roots, or null when it is not set (sealed contents then fail). */
function sealRoots(env) {
  if (typeof env.SEAL_KEYSETS !== "string" || env.SEAL_KEYSETS.trim() === "") return null;
  try {
    return parseKeysets(env.SEAL_KEYSETS).roots;
  } catch {
    return null;
  }
}
