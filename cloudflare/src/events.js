// Provider events become recipient statuses (docs/cloudflare.md, "Provider events"):
//
//   Cloudflare Email Service  its event subscription delivers to the EMAIL_EVENTS queue
//   Amazon SES                the configuration set's EventBridge rule, through an API
//                             destination, POSTs to /v1/events/ses with a bearer token
//   SendGrid                  the Event Webhook POSTs to /v1/events/sendgrid, ECDSA-signed
//
// Each event is normalised to {provider, kind, messageId, address, at, ref, error, suppress}
// and applied in one way: an acceptance settles a claim left INPROGRESS by a crash (then
// `sent` is reported), outcomes are reported as results, hard bounces and complaints go on
// the suppression list, and once a whole delivery of events is applied the provider's
// watermark moves forward (the crash-window proof, src/sender.js).

import { base64ToBytes } from "./signing.js";
import { publishResults } from "./results.js";
import { indexFor, ledgerFor, watermarkStore } from "./sender.js";

const stripBrackets = (id) => String(id ?? "").trim().replace(/^<|>$/g, "");
const toSeconds = (value) => {
  if (typeof value === "number") return Math.floor(value > 1e11 ? value / 1000 : value);
  const parsed = Date.parse(value);
  return Number.isFinite(parsed) ? Math.floor(parsed / 1000) : Math.floor(Date.now() / 1000);
};
const clip = (text, n = 1000) => String(text ?? "").slice(0, n);
const codeOf = (text) => clip(text, 64).replace(/[^A-Za-z0-9_.:-]/g, "_") || "unknown";

// ---------------------------------------------------------------------------------------
// Normalisers

/** Cloudflare Email Sending events: {type: "cf.email.sending.message.<x>", payload, metadata}. */
export function normaliseCloudflareEvent(event) {
  const kind = String(event?.type ?? "").split(".").pop();
  const payload = event?.payload ?? {};
  const base = {
    provider: "cloudflare",
    messageId: stripBrackets(payload.messageId),
    address: payload.recipient ? String(payload.recipient) : null,
    at: toSeconds(event?.metadata?.eventTimestamp),
    ref: null,
    error: null,
    suppress: null,
  };
  if (!base.messageId) return { ...base, kind: "ignore" };
  switch (kind) {
    case "delivered":
      return { ...base, kind: "delivered" };
    case "deferred":
      return { ...base, kind: "accepted" };
    case "bounced": {
      const type = String(payload.bounce?.type ?? "unknown");
      return {
        ...base,
        kind: "bounced",
        error: { code: codeOf(`bounce.${type}`), message: clip(payload.bounce?.reason ?? payload.reason ?? type), permanent: type === "hard" },
        suppress: type === "hard" ? "hard_bounce" : null,
      };
    }
    case "complained":
      return { ...base, kind: "complained", error: { code: "complaint", message: "the recipient reported the message", permanent: true }, suppress: "complaint" };
    case "rejected":
    case "failed":
      return {
        ...base,
        kind: "rejected",
        error: { code: codeOf(`${kind}.${payload.reason ?? "provider"}`), message: clip(payload.reason ?? kind), permanent: true },
      };
    default:
      return { ...base, kind: "ignore" };
  }
}

const tagValue = (tags, name) => {
  const value = tags?.[name];
  return Array.isArray(value) ? value[0] : value;
};

/** SES events as EventBridge delivers them (detail = the SES event). Tags carry job and recipient. */
export function normaliseSesEvent(event) {
  const detail = event?.detail ?? event;
  const mail = detail?.mail ?? {};
  const jobId = tagValue(mail.tags, "job_id");
  const recipientId = tagValue(mail.tags, "recipient_id");
  const companyId = Number(tagValue(mail.tags, "company_id"));
  const ref =
    jobId && recipientId && Number.isSafeInteger(companyId)
      ? { job_id: String(jobId).replace(/@/g, ":"), recipient_id: String(recipientId).replace(/@/g, ":"), company_id: companyId }
      : null;
  if (tagValue(mail.tags, "probe") === "1") {
    return { provider: "ses", kind: "probe", messageId: String(mail.messageId ?? ""), at: toSeconds(mail.timestamp), ref: null };
  }
  const base = {
    provider: "ses",
    messageId: String(mail.messageId ?? ""),
    address: Array.isArray(mail.destination) ? mail.destination[0] : null,
    at: toSeconds(mail.timestamp),
    ref,
    error: null,
    suppress: null,
  };
  if (!ref || !base.messageId) return { ...base, kind: "ignore" };
  switch (detail.eventType) {
    case "Send":
      return { ...base, kind: "accepted" };
    case "Delivery":
      return { ...base, kind: "delivered" };
    case "Bounce": {
      const bounce = detail.bounce ?? {};
      const diagnostic = bounce.bouncedRecipients?.[0]?.diagnosticCode ?? "";
      return {
        ...base,
        kind: "bounced",
        error: {
          code: codeOf(`bounce.${bounce.bounceType}.${bounce.bounceSubType}`),
          message: clip(diagnostic || `${bounce.bounceType} ${bounce.bounceSubType}`),
          permanent: bounce.bounceType === "Permanent",
        },
      };
    }
    case "Complaint":
      return {
        ...base,
        kind: "complained",
        error: { code: codeOf(`complaint.${detail.complaint?.complaintFeedbackType ?? "unknown"}`), message: "complaint", permanent: true },
      };
    case "Reject":
      return { ...base, kind: "rejected", error: { code: "reject", message: clip(detail.reject?.reason ?? "rejected"), permanent: true } };
    case "Rendering Failure":
      return {
        ...base,
        kind: "failed",
        error: { code: "rendering_failure", message: clip(detail.failure?.errorMessage ?? "rendering failure"), permanent: true },
      };
    default:
      return { ...base, kind: "ignore" };
  }
}

/** SendGrid Event Webhook entries; our custom_args arrive as top-level fields. */
export function normaliseSendgridEvent(event) {
  const companyId = Number(event?.company_id);
  const ref =
    event?.job_id && event?.recipient_id && Number.isSafeInteger(companyId)
      ? { job_id: String(event.job_id), recipient_id: String(event.recipient_id), company_id: companyId }
      : null;
  // sg_message_id is "<X-Message-Id>.<filter suffix>"; the part before the first dot is ours.
  const messageId = String(event?.sg_message_id ?? "").split(".")[0];
  if (event?.probe === "1") return { provider: "sendgrid", kind: "probe", messageId, at: toSeconds(event?.timestamp), ref: null };
  const base = {
    provider: "sendgrid",
    messageId,
    address: event?.email ? String(event.email) : null,
    at: toSeconds(event?.timestamp),
    ref,
    error: null,
    suppress: null,
  };
  if (!ref || !messageId) return { ...base, kind: "ignore" };
  switch (event.event) {
    case "processed":
    case "deferred":
      return { ...base, kind: "accepted" };
    case "delivered":
      return { ...base, kind: "delivered" };
    case "bounce": {
      const blocked = event.type === "blocked";
      return {
        ...base,
        kind: "bounced",
        error: { code: blocked ? "bounce.blocked" : "bounce.bounce", message: clip(event.reason ?? event.status ?? "bounce"), permanent: !blocked },
      };
    }
    case "dropped":
      return { ...base, kind: "rejected", error: { code: "dropped", message: clip(event.reason ?? "dropped"), permanent: true } };
    case "spamreport":
      return { ...base, kind: "complained", error: { code: "complaint.spamreport", message: "spam report", permanent: true } };
    default:
      return { ...base, kind: "ignore" };
  }
}

// ---------------------------------------------------------------------------------------
// Applying events

/**
 * Apply normalised events of one delivery. Answers counts; throws if a ledger or queue write
 * fails (the delivery is then retried whole, and applying an event twice changes nothing).
 * The watermark moves only after everything applied.
 */
export async function applyEvents(env, events) {
  const counts = { applied: 0, ignored: 0, unknown: 0, settled: 0 };
  const perJob = new Map(); // job_id -> {meta, results}
  const newest = new Map(); // provider -> newest acceptance time
  for (const event of events) {
    if (event.kind === "ignore") {
      counts.ignored += 1;
      continue;
    }
    if (event.kind === "accepted" || event.kind === "delivered" || event.kind === "probe") {
      newest.set(event.provider, Math.max(newest.get(event.provider) ?? 0, event.at));
    }
    if (event.kind === "probe") {
      counts.probes = (counts.probes ?? 0) + 1;
      continue;
    }
    let ref = event.ref;
    if (!ref && event.address) {
      ref = await (await indexFor(env, event.address)).resolve(event.messageId, event.address, event.at);
    }
    if (!ref) {
      counts.unknown += 1;
      continue;
    }
    if (event.suppress && event.address) await (await indexFor(env, event.address)).suppress(event.address, event.suppress);
    const ledger = ledgerFor(env, ref.company_id, ref.job_id);
    const jobKey = `${ref.company_id}:${ref.job_id}`;
    let entry = perJob.get(jobKey);
    if (!entry) {
      entry = { meta: await ledger.meta(), results: [] };
      perJob.set(jobKey, entry);
    }
    if (!entry.meta || entry.meta.company_id !== ref.company_id) {
      counts.unknown += 1; // not our job, or another company's tags: dropped
      continue;
    }
    const settled = await ledger.settle(ref.recipient_id, event.messageId, 1);
    if (settled.report && settled.result) {
      entry.results.push(settled.result);
      counts.settled += 1;
    }
    counts.applied += 1;
    if (event.kind === "accepted") continue;
    const attempts = settled.result?.attempts ?? 1;
    const result = {
      job_id: ref.job_id,
      recipient_id: ref.recipient_id,
      status: event.kind,
      attempts,
      occurred_at: event.at,
      provider_message_id: event.messageId,
    };
    if (event.error && event.kind !== "delivered") result.error = event.error;
    entry.results.push(result);
  }
  for (const { meta, results } of perJob.values()) {
    if (!meta || results.length === 0) continue;
    await publishResults(env, {
      companyId: meta.company_id,
      callback: { url: meta.callback_url, key_id: meta.key_id },
      results,
    });
  }
  const watermark = watermarkStore(env);
  for (const [provider, at] of newest) await watermark.advance(provider, at);
  return counts;
}

// ---------------------------------------------------------------------------------------
// SendGrid's signed Event Webhook: ECDSA P-256 / SHA-256 over timestamp + raw body, DER signature.

function derToRaw(der) {
  // SEQUENCE { INTEGER r, INTEGER s } -> r || s, each left-padded to 32 bytes.
  if (der[0] !== 0x30) throw new Error("not DER");
  let offset = der[1] & 0x80 ? 2 + (der[1] & 0x7f) : 2;
  const out = new Uint8Array(64);
  for (let part = 0; part < 2; part++) {
    if (der[offset] !== 0x02) throw new Error("not DER");
    const length = der[offset + 1];
    let value = der.subarray(offset + 2, offset + 2 + length);
    while (value.length > 32 && value[0] === 0) value = value.subarray(1);
    if (value.length > 32) throw new Error("not DER");
    out.set(value, part * 32 + (32 - value.length));
    offset += 2 + length;
  }
  return out;
}

let cachedSendgridKey = { text: null, key: null };

/** True when the webhook's signature headers verify over `body` with the configured public key. */
export async function verifySendgridSignature(publicKeyBase64, headers, body, { maxSkewSeconds = 600, clock } = {}) {
  const signature = headers.get("x-twilio-email-event-webhook-signature");
  const timestamp = headers.get("x-twilio-email-event-webhook-timestamp");
  if (!publicKeyBase64 || !signature || !timestamp || !/^[0-9]{1,12}$/.test(timestamp)) return false;
  const t = clock ? clock() : Math.floor(Date.now() / 1000);
  if (Math.abs(t - Number(timestamp)) > maxSkewSeconds) return false;
  if (cachedSendgridKey.text !== publicKeyBase64) {
    const key = await crypto.subtle.importKey(
      "spki",
      base64ToBytes(publicKeyBase64),
      { name: "ECDSA", namedCurve: "P-256" },
      false,
      ["verify"],
    );
    cachedSendgridKey = { text: publicKeyBase64, key };
  }
  let raw;
  try {
    raw = derToRaw(base64ToBytes(signature));
  } catch {
    return false;
  }
  const signed = new Uint8Array([...new TextEncoder().encode(timestamp), ...body]);
  return crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, cachedSendgridKey.key, raw, signed);
}
