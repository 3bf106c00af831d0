// The certificate consumer: one certificate_batch from the queue -> one PDF per recipient in R2,
// its verification code recorded, `rendered` reported, and (delivery email_attachment /
// email_link) the completion mail handed to the email path. The Worker's counterpart of
// lambdas/certificates/processor.py (docs/cloudflare.md, "Certificates").
//
// Exactly once per (job, recipient): a claim in the job's certificate ledger (a SendLedger
// Durable Object named "cert:c<company>:<job>", apart from the job's mail claims, which use
// the same recipient ids) is written before rendering and completed with the exact result.
// A redelivered batch reports a completed recipient's stored result again and renders nothing;
// a live claim is re-queued for after its lease; a dead one is taken over (rendering again is
// harmless: same key, same design). The mail is forwarded again on redelivery too: the email
// path's own claims make it go out once.
//
// A recipient whose data cannot be printed fails alone with the Lambda's codes
// (`unsupported_characters`, `invalid_certificate_data`, `verification_code_taken`); a
// template that cannot be used fails the batch's recipients (`template_missing`,
// `template_invalid`). Missing renderer fonts, R2 or Durable Object errors throw: the queue
// retries the batch and then keeps it in the dead-letter queue.

import { COMPLETED } from "./ledger.js";
import {
  CertificateDataError,
  CertificateFonts,
  TemplateError,
  imageNames,
  parseTemplate,
  renderCertificate,
} from "./certificate-renderer.js";
import { publishResults } from "./results.js";
import { sha256Hex } from "./signing.js";
import defaultTemplateDocument from "../../certificate_render/templates/default.json";

export const LEASE_SECONDS = 120;
/**
 * Most recipients rendered per queue message: about 50 ms of CPU each (docs/benchmarks.md,
 * worker_certificates), so 100 stay well inside the Workers' default 30 s of CPU per
 * invocation; the rest of a larger batch goes back on the queue at once as its own message.
 */
export const MAX_RENDERS_PER_MESSAGE = 100;
export const MAX_QUEUE_DELAY_SECONDS = 900;
/** Where deployment puts the renderer's assets in the OFFLOAD_BUCKET (cloudflare/scripts/renderer-assets.mjs). */
export const RENDERER_PREFIX = "renderer/";
export const FONT_KEYS = { regular: "renderer/fonts/latin-Regular.ttf", bold: "renderer/fonts/latin-Bold.ttf" };
export const DEFAULT_IMAGE_PREFIX = "renderer/templates/";
/**
 * What the Worker's fonts cover (Noto Sans "latin" subset), as ISO 15924 codes. Only scripts
 * written left to right without complex shaping: Arabic, Hebrew and the rest go to AWS.
 */
export const RENDERED_SCRIPTS = Object.freeze(["Latn", "Grek", "Cyrl"]);

export class RendererAssetsMissing extends Error {
  constructor(key) {
    super(`the renderer asset ${key} is not in the OFFLOAD_BUCKET (deploy them: node cloudflare/scripts/renderer-assets.mjs --remote)`);
    this.name = "RendererAssetsMissing";
  }
}

export function certificateKey(companyId, jobId, recipientId) {
  return `certificates/company-${companyId}/${jobId}/${recipientId}.pdf`;
}

function certificateLedger(env, companyId, jobId) {
  return env.LEDGER.get(env.LEDGER.idFromName(`cert:c${companyId}:${jobId}`));
}

function publicRecords(env) {
  return env.PUBLIC_RECORDS.get(env.PUBLIC_RECORDS.idFromName("public"));
}

// Fonts stay in the isolate once read (two R2 reads per isolate, then none).
let fontCache = { bucket: null, fonts: null };

async function readBytes(bucket, key) {
  const object = await bucket.get(key);
  return object === null ? null : new Uint8Array(await object.arrayBuffer());
}

/** The renderer's fonts from R2, cached per isolate; throws RendererAssetsMissing. */
export async function loadFonts(bucket) {
  if (fontCache.bucket === bucket && fontCache.fonts) return fontCache.fonts;
  const [regular, bold] = await Promise.all([readBytes(bucket, FONT_KEYS.regular), readBytes(bucket, FONT_KEYS.bold)]);
  if (!regular) throw new RendererAssetsMissing(FONT_KEYS.regular);
  if (!bold) throw new RendererAssetsMissing(FONT_KEYS.bold);
  fontCache = { bucket, fonts: new CertificateFonts(regular, bold) };
  return fontCache.fonts;
}

/**
 * The code point ranges the renderer draws, or null when its fonts are not deployed (the
 * capabilities answer offers certificates only then).
 */
export async function rendererCoverage(bucket) {
  if (!bucket) return null;
  const heads = await Promise.all(Object.values(FONT_KEYS).map((key) => bucket.head(key)));
  if (heads.some((head) => head === null)) return null;
  return (await loadFonts(bucket)).codePointRanges();
}

/**
 * The company's template and its images, as on S3: templates/company-<id>/<template_id>.json
 * with the images beside it; "default" without a company override is the built-in default
 * (the Lambda's templates/default.json; its logo is a renderer asset in R2).
 */
export async function loadTemplate(bucket, companyId, templateId) {
  const prefix = `templates/company-${companyId}/`;
  const stored = await bucket.get(`${prefix}${templateId}.json`);
  let document;
  let imagePrefix = prefix;
  if (stored === null) {
    if (templateId !== "default") throw new TemplateError("template_missing", "the certificate template does not exist");
    document = defaultTemplateDocument;
    imagePrefix = DEFAULT_IMAGE_PREFIX;
  } else {
    try {
      document = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(await stored.arrayBuffer()));
    } catch {
      throw new TemplateError("template_invalid", "template is not UTF-8 JSON");
    }
  }
  const template = parseTemplate(document);
  const images = {};
  for (const [section, name] of imageNames(template)) {
    const bytes = await readBytes(bucket, imagePrefix + name);
    if (bytes === null) {
      if (imagePrefix === DEFAULT_IMAGE_PREFIX) throw new RendererAssetsMissing(imagePrefix + name);
      throw new TemplateError("template_invalid", `${section} image ${JSON.stringify(name)} is missing`);
    }
    images[name] = bytes;
  }
  return { template, images };
}

function result(batch, recipientId, status, at, fields = {}) {
  return { job_id: batch.job_id, recipient_id: recipientId, status, attempts: batch.attempt, occurred_at: at, ...fields };
}

function failure(batch, recipientId, code, message, permanent, at) {
  return result(batch, recipientId, "failed", at, { error: { code, message: String(message).slice(0, 1000), permanent } });
}

/** The completion mail of one rendered recipient, for the email path (as the Lambda forwards it). */
function mailRecipient(batch, recipient, artifact, verifyUrl) {
  const entry = {
    recipient_id: recipient.recipient_id,
    to: recipient.to,
    content_id: recipient.content_id,
    data: { ...recipient.certificate, certificate_url: verifyUrl },
  };
  if (recipient.name) entry.name = recipient.name;
  if (batch.delivery === "email_attachment") {
    entry.attachments = [{ filename: "certificate.pdf", content_type: "application/pdf", ref: artifact }];
  }
  return entry;
}

/** One email_batch for the email path (same job, batch and recipient ids; attempt 1). */
export function mailBatch(batch, recipients) {
  const used = new Set(recipients.map((r) => r.content_id));
  const message = {
    type: "email_batch",
    contract_version: batch.contract_version,
    batch_id: batch.batch_id,
    job_id: batch.job_id,
    company_id: batch.company_id,
    attempt: 1,
    created_at: batch.created_at,
    callback: batch.callback,
    category: "transactional",
    sender: batch.sender,
    contents: Object.fromEntries(Object.entries(batch.contents ?? {}).filter(([id]) => used.has(id))),
    recipients,
  };
  for (const optional of ["ses_tenant", "tags"]) if (optional in batch) message[optional] = batch[optional];
  return message;
}

/** Largest forwarded email_batch (the bridge packs Cloudflare batches to the same size). */
export const MAIL_BATCH_LIMIT_BYTES = 120_000;

/** Forward the mail as email_batch messages within the queue's size limit (halved until they fit). */
async function sendMail(env, batch, recipients) {
  const message = mailBatch(batch, recipients);
  const size = new TextEncoder().encode(JSON.stringify(message)).byteLength;
  if (size > MAIL_BATCH_LIMIT_BYTES && recipients.length > 1) {
    const half = Math.ceil(recipients.length / 2);
    await sendMail(env, batch, recipients.slice(0, half));
    await sendMail(env, batch, recipients.slice(half));
    return;
  }
  await env.EMAIL_QUEUE.send(message, { contentType: "json" });
}

/**
 * Render one certificate_batch. `deps` (tests): clock (unix seconds), beforeRender(recipient)
 * / afterStore(recipient) (throw to simulate a crash), maxRenders. Returns {results, rendered, requeued,
 * forwarded}. Throws when fonts, R2 or a Durable Object fail: the queue redelivers the batch.
 */
export async function processCertificateBatch(batch, env, deps = {}) {
  const clock = deps.clock ?? (() => Math.floor(Date.now() / 1000));
  const bucket = env.OFFLOAD_BUCKET;
  const owner = crypto.randomUUID();
  const ledger = certificateLedger(env, batch.company_id, batch.job_id);
  await ledger.remember({
    job_id: batch.job_id,
    company_id: batch.company_id,
    callback_url: batch.callback.url,
    key_id: batch.callback.key_id,
  });
  const verifyBase = batch.verify_url_base ?? env.VERIFY_URL_BASE ?? "";
  const wantsMail = batch.delivery !== "store_only";
  const results = [];
  const mail = [];
  const requeue = [];
  let rendered = 0;
  let delay = 0;

  const most = deps.maxRenders ?? MAX_RENDERS_PER_MESSAGE;
  const mine = batch.recipients.slice(0, most);
  const rest = batch.recipients.slice(most);
  if (rest.length) {
    // Queued first: if this invocation dies, its own message is redelivered and the rest is not lost.
    await env.CERTIFICATE_QUEUE.send({ ...batch, recipients: rest }, { contentType: "json" });
  }
  const existing = await ledger.lookup(mine.map((r) => r.recipient_id));
  let loaded = null; // {template, images} | {error}
  const template = async () => {
    if (loaded === null) {
      try {
        loaded = await loadTemplate(bucket, batch.company_id, batch.template_id);
      } catch (error) {
        if (!(error instanceof TemplateError)) throw error;
        loaded = { error };
      }
    }
    return loaded;
  };

  for (const recipient of mine) {
    const id = recipient.recipient_id;
    const code = recipient.certificate.verification_code;
    const verifyUrl = verifyBase ? verifyBase + code : code;
    const mailable = wantsMail && recipient.to && recipient.content_id;
    let takeover = null;
    const claim = existing[id];
    if (claim) {
      const t = clock();
      if (claim.state === COMPLETED) {
        if (claim.result) {
          results.push(claim.result); // reported again; the bridge applies it once
          if (claim.result.status === "rendered" && mailable) mail.push(mailRecipient(batch, recipient, claim.result.artifact, verifyUrl));
        }
        continue;
      }
      if (claim.lease_until >= t) {
        requeue.push(recipient);
        delay = Math.max(delay, claim.lease_until - t + 5);
        continue;
      }
      takeover = claim; // the renderer died mid-recipient: rendering again is harmless
    }
    const t = clock();
    const taken = await ledger.claim(id, { owner, leaseUntil: t + LEASE_SECONDS, provider: "renderer", address: recipient.to ?? "", takeover, at: t });
    if (!taken.claimed) {
      if (taken.claim.state === COMPLETED && taken.claim.result) results.push(taken.claim.result);
      else {
        requeue.push(recipient);
        delay = Math.max(delay, taken.claim.lease_until - t + 5);
      }
      continue;
    }
    const finish = async (outcome) => {
      await ledger.complete(id, owner, outcome);
      results.push(outcome);
    };
    const { template: tpl, images, error } = await template();
    if (error) {
      await finish(failure(batch, id, error.code, error.message, true, clock()));
      continue;
    }
    if (deps.beforeRender) await deps.beforeRender(recipient);
    let pdf;
    try {
      pdf = await renderCertificate(tpl, recipient.certificate, verifyUrl, await loadFonts(bucket), images);
    } catch (error) {
      if (error instanceof RendererAssetsMissing) throw error;
      if (error instanceof CertificateDataError) {
        // This recipient's data cannot be printed: it fails alone, nothing is stored.
        const message = error.detail.length ? `${error.message} (${error.detail.join(" ")})` : error.message;
        await finish(failure(batch, id, error.code, message, true, clock()));
      } else if (error instanceof TemplateError) {
        await finish(failure(batch, id, error.code, error.message, true, clock()));
      } else {
        console.error(JSON.stringify({ event: "certificate_render_failed", job_id: batch.job_id, recipient_id: id, error: error?.name }));
        await finish(failure(batch, id, "render_error", error?.name ?? "Error", false, clock()));
      }
      continue;
    }
    const key = certificateKey(batch.company_id, batch.job_id, id);
    await bucket.put(key, pdf, {
      httpMetadata: { contentType: "application/pdf", contentDisposition: 'attachment; filename="certificate.pdf"' },
    });
    const data = recipient.certificate;
    const owned = await publicRecords(env).putCertificate(code, {
      company_id: batch.company_id,
      job_id: batch.job_id,
      recipient_id: id,
      key,
      learner_name: data.learner_name,
      course_name: data.course_name,
      completed_at: data.completed_at,
      issuer_name: data.issuer_name ?? null,
      language: data.language ?? null,
    });
    if (deps.afterStore) await deps.afterStore(recipient);
    if (!owned) {
      // Another company's certificate holds this code: never overwrite it.
      await finish(failure(batch, id, "verification_code_taken", "the verification code belongs to another company", true, clock()));
      continue;
    }
    const artifact = {
      store: "r2",
      key,
      sha256: await sha256Hex(pdf),
      bytes: pdf.byteLength,
      content_type: "application/pdf",
    };
    await finish(result(batch, id, "rendered", clock(), { artifact }));
    rendered += 1;
    if (mailable) mail.push(mailRecipient(batch, recipient, artifact, verifyUrl));
  }

  if (requeue.length) {
    await env.CERTIFICATE_QUEUE.send(
      { ...batch, recipients: requeue },
      { contentType: "json", delaySeconds: Math.max(0, Math.min(MAX_QUEUE_DELAY_SECONDS, Math.ceil(delay))) },
    );
  }
  // Report first: the rendered results must not wait for (or depend on) the mail.
  if (results.length) {
    await publishResults(env, { companyId: batch.company_id, callback: batch.callback, batchId: batch.batch_id, results, reporter: "certificate_renderer" });
  }
  if (mail.length) await sendMail(env, batch, mail);
  return { results, rendered, requeued: requeue.length, forwarded: mail.length, deferred: rest.length };
}
