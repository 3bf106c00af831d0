// Shared test helpers: batches, an env with stand-in providers and recording queues.
import { env } from "cloudflare:workers";
import { CloudflareEmailStandIn, SES_CREDENTIALS, SendgridStandIn, SesStandIn, recordingQueue } from "./standins.js";
import { deriveCompanyKey, decodeRootSecret, signRequest } from "../src/signing.js";

export const ORIGIN = "https://offload.example";
export const KEYSETS = JSON.parse(env.HMAC_KEYSETS);
export const SENDGRID_KEY = "SG.standin-key";
const encoder = new TextEncoder();

let counter = 0;
/** A unique job id per call: each test gets its own ledger. */
export const uniqueJob = () => `j-${Date.now().toString(36)}-${(counter += 1)}`;

export function emailBatch({ jobId = uniqueJob(), company = 7, n = 3, category = "transactional", content, attempt = 1, domain } = {}) {
  const dom = domain ?? `${jobId}.example.org`;
  const recipients = Array.from({ length: n }, (_, i) => {
    const r = { recipient_id: `r-${i + 1}`, to: `user${i + 1}@${dom}`, name: i === 0 ? "Zoë Ørsted" : `User ${i + 1}`, content_id: "c-1" };
    if (category === "campaign") r.unsubscribe_url = `https://moodle.example/unsub/${"t".repeat(20)}${i}`;
    return r;
  });
  return {
    type: "email_batch",
    contract_version: 1,
    batch_id: `b-${jobId}`,
    job_id: jobId,
    company_id: company,
    attempt,
    created_at: Math.floor(Date.now() / 1000),
    callback: { url: "https://moodle.example/callbacks/v1/results", key_id: `k2026.c${company}` },
    category,
    sender: { address: "noreply@example.org", name: "Acme Academy" },
    contents: {
      "c-1": content ?? { kind: "rendered", subject: "Welcome — أهلا", html: "<p>Hello <b>there</b> &amp; welcome.</p><ul><li>one</li></ul>" },
    },
    recipients,
  };
}

/** The Worker env with every provider replaced by a stand-in and every queue recorded. */
export function standInEnv(overrides = {}) {
  const cloudflare = new CloudflareEmailStandIn();
  const ses = new SesStandIn();
  const sendgrid = new SendgridStandIn(SENDGRID_KEY);
  const queues = { email: recordingQueue(), results: recordingQueue() };
  const testEnv = {
    ...env,
    EMAIL: cloudflare,
    EMAIL_QUEUE: queues.email,
    RESULTS_QUEUE: queues.results,
    SES_ACCESS_KEY_ID: SES_CREDENTIALS.accessKeyId,
    SES_SECRET_ACCESS_KEY: SES_CREDENTIALS.secretAccessKey,
    SES_REGION: SES_CREDENTIALS.region,
    SES_ENDPOINT: "https://ses.standin.test",
    SES_CONFIGURATION_SET: "mrco-events",
    SENDGRID_API_KEY: SENDGRID_KEY,
    SENDGRID_API_BASE: "https://sendgrid.standin.test",
    PROVIDER_RATES: JSON.stringify({ cloudflare: 1000, ses: 1000, sendgrid: 1000 }),
    ...overrides,
  };
  /** Routes the Worker's outbound fetches to the stand-in that owns the host. */
  const fetchImpl = async (input, init) => {
    const url = new URL(input instanceof Request ? input.url : input);
    if (url.host === "ses.standin.test") return ses.fetch(input, init);
    if (url.host === "sendgrid.standin.test") return sendgrid.fetch(input, init);
    throw new TypeError(`no stand-in for ${url.host}`);
  };
  return { testEnv, cloudflare, ses, sendgrid, queues, fetchImpl };
}

/** All results published to the recorded results queue. */
export function publishedResults(queue) {
  return queue.sent.flatMap((s) => s.body.result_batch.results);
}

export async function signedRequest(path, body, { company = 7, method = "POST", keyset = "k2026" } = {}) {
  const bytes = typeof body === "string" ? encoder.encode(body) : body ?? new Uint8Array(0);
  const key = await deriveCompanyKey(decodeRootSecret(KEYSETS.keysets[keyset]), company);
  const signed = await signRequest({ key, keyId: `${keyset}.c${company}`, method, path, body: bytes });
  return new Request(ORIGIN + path, {
    method,
    headers: { "content-type": "application/json", ...signed },
    body: method === "GET" ? undefined : bytes,
  });
}

/** Put the renderer's fonts and default logo into `bucket` (R2), as deployment does. */
export async function seedRendererAssets(bucket = env.OFFLOAD_BUCKET) {
  const assets = JSON.parse(env.TEST_RENDERER_ASSETS);
  for (const [key, b64] of Object.entries(assets)) {
    await bucket.put(key, Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
  }
}

/** A certificate_batch of `n` recipients (delivery email_attachment by default). */
export function certificateBatch({ jobId = uniqueJob(), company = 7, n = 2, delivery = "email_attachment", names, attempt = 1 } = {}) {
  const recipients = Array.from({ length: n }, (_, i) => ({
    recipient_id: `r-${i + 1}`,
    to: `learner${i + 1}@${jobId}.example.org`,
    name: names?.[i] ?? `Learner ${i + 1}`,
    content_id: "c-1",
    certificate: {
      learner_name: names?.[i] ?? `Learner ${i + 1}`,
      course_name: "Safety at Work: Ladders & Scaffolds",
      completed_at: 1764400000,
      grade: "92.5",
      verification_code: `V${jobId.replace(/[^A-Za-z0-9]/g, "").toUpperCase().slice(-12)}${String(i + 1).padStart(3, "0")}`.slice(0, 32),
      issuer_name: "Acme Academy",
    },
  }));
  return {
    type: "certificate_batch",
    contract_version: 1,
    batch_id: `b-${jobId}`,
    job_id: jobId,
    company_id: company,
    attempt,
    created_at: Math.floor(Date.now() / 1000),
    callback: { url: "https://moodle.example/callbacks/v1/results", key_id: `k2026.c${company}` },
    sender: { address: "noreply@example.org", name: "Acme Academy" },
    template_id: "default",
    verify_url_base: "https://offload.example/v1/certificates/verify/",
    delivery,
    contents: { "c-1": { kind: "rendered", subject: "Your certificate", html: "<p>Well done. Your certificate is attached.</p>" } },
    recipients,
  };
}
