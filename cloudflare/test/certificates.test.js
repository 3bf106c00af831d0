// The certificate consumer in workerd: PDFs rendered into (Miniflare's) R2, verification codes
// recorded, exactly once under redelivery and crashes, per-recipient failures, the mail with
// its attachment through the email path, and the capabilities answer.
import { createExecutionContext, createMessageBatch, env, getQueueResult } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import worker from "../src/index.js";
import { validate } from "../src/contract.js";
import { certificateKey, processCertificateBatch } from "../src/certificates.js";
import { processEmailBatch } from "../src/sender.js";
import { sha256Hex } from "../src/signing.js";
import { ORIGIN, certificateBatch, publishedResults, seedRendererAssets, signedRequest, standInEnv } from "./helpers.js";
import { recordingQueue } from "./standins.js";

/** The R2 bucket, counting puts of certificate PDFs. */
function countingBucket(bucket) {
  const puts = [];
  return {
    puts,
    get: (...a) => bucket.get(...a),
    head: (...a) => bucket.head(...a),
    put: async (key, value, options) => {
      if (key.startsWith("certificates/")) puts.push(key);
      return bucket.put(key, value, options);
    },
  };
}

function certEnv(overrides = {}) {
  const stand = standInEnv(overrides);
  const bucket = countingBucket(env.OFFLOAD_BUCKET);
  const certificates = recordingQueue();
  stand.testEnv.OFFLOAD_BUCKET = bucket;
  stand.testEnv.CERTIFICATE_QUEUE = certificates;
  return { ...stand, bucket, certificates };
}

const text = (bytes) => new TextDecoder("latin1").decode(bytes);

beforeEach(async () => {
  await seedRendererAssets();
});

describe("certificate_batch consumer", () => {
  it("renders each recipient into R2 under the S3 key layout, records the code and reports rendered", async () => {
    const { testEnv, queues, bucket } = certEnv();
    const batch = certificateBatch({ n: 2, names: ["Zoë Łukasiewicz-Ångström", "Дмитрий Шостакович"] });
    validate("certificate_batch", batch);
    const report = await processCertificateBatch(batch, testEnv);
    expect(report.rendered).toBe(2);
    const results = publishedResults(queues.results);
    expect(results.map((r) => [r.recipient_id, r.status])).toEqual([
      ["r-1", "rendered"],
      ["r-2", "rendered"],
    ]);
    expect(queues.results.sent[0].body.result_batch.reporter).toBe("certificate_renderer");
    for (const r of results) {
      const key = certificateKey(7, batch.job_id, r.recipient_id);
      expect(r.artifact).toMatchObject({ store: "r2", key, content_type: "application/pdf" });
      const object = await env.OFFLOAD_BUCKET.get(key);
      const pdf = new Uint8Array(await object.arrayBuffer());
      expect(text(pdf.slice(0, 5))).toBe("%PDF-");
      expect(object.httpMetadata.contentType).toBe("application/pdf");
      expect(pdf.byteLength).toBe(r.artifact.bytes);
      expect(await sha256Hex(pdf)).toBe(r.artifact.sha256);
      // Subset fonts: the whole Noto Sans Latin face is ~300 KB; the certificate carries only its glyphs.
      expect(text(pdf)).toContain("/FontFile2");
      expect(pdf.byteLength).toBeLessThan(80_000);
    }
    expect(bucket.puts).toHaveLength(2);
    // The public verify route answers for the code printed on the certificate.
    const code = batch.recipients[1].certificate.verification_code;
    const answer = await worker.fetch(new Request(`${ORIGIN}/v1/certificates/verify/${code}?format=json`), testEnv);
    expect(await answer.json()).toEqual({
      valid: true,
      code,
      learner_name: "Дмитрий Шостакович",
      course_name: "Safety at Work: Ladders & Scaffolds",
      completed_at: 1764400000,
      issuer_name: "Acme Academy",
    });
  });

  it("hands the completion mail, with the PDF attached by R2 reference, to the email path, which sends it once", async () => {
    const { testEnv, queues, cloudflare } = certEnv();
    const batch = certificateBatch({ n: 2 });
    await processCertificateBatch(batch, testEnv);
    expect(queues.email.sent).toHaveLength(1);
    const mail = queues.email.sent[0].body;
    validate("email_batch", mail);
    expect(mail).toMatchObject({ job_id: batch.job_id, category: "transactional", attempt: 1 });
    expect(mail.recipients.map((r) => r.attachments[0].ref.key)).toEqual([
      certificateKey(7, batch.job_id, "r-1"),
      certificateKey(7, batch.job_id, "r-2"),
    ]);
    await processEmailBatch(mail, testEnv);
    await processEmailBatch(mail, testEnv); // the mail forwarded again (a redelivered certificate batch) is not sent twice
    expect(cloudflare.accepted).toHaveLength(2);
    const stored = new Uint8Array(await (await env.OFFLOAD_BUCKET.get(certificateKey(7, batch.job_id, "r-1"))).arrayBuffer());
    const attachment = cloudflare.accepted.find((m) => m.to[0] === batch.recipients[0].to).attachments[0];
    expect(attachment).toMatchObject({ filename: "certificate.pdf", type: "application/pdf", disposition: "attachment" });
    expect(new Uint8Array(attachment.content)).toEqual(stored);
  });

  it("SES and SendGrid carry the PDF too (base64); an altered PDF fails its recipient, nothing sent", async () => {
    const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
    for (const provider of ["ses", "sendgrid"]) {
      const { testEnv, queues, ses, sendgrid, fetchImpl } = certEnv({ PROVIDERS: JSON.stringify({ transactional: provider }) });
      const batch = certificateBatch({ n: 2 });
      await processCertificateBatch(batch, testEnv);
      const mail = queues.email.sent[0].body;
      // r-2's stored PDF is replaced after rendering: it no longer matches the reported SHA-256.
      await env.OFFLOAD_BUCKET.put(mail.recipients[1].attachments[0].ref.key, new TextEncoder().encode("%PDF-altered"));
      queues.results.sent.length = 0;
      await processEmailBatch(mail, testEnv, { fetchImpl });
      const results = publishedResults(queues.results);
      expect(results.map((r) => [r.recipient_id, r.status, r.error?.code])).toEqual([
        ["r-1", "sent", undefined],
        ["r-2", "failed", "reference_mismatch"],
      ]);
      const stored = new Uint8Array(await (await env.OFFLOAD_BUCKET.get(mail.recipients[0].attachments[0].ref.key)).arrayBuffer());
      const accepted = (provider === "ses" ? ses : sendgrid).accepted;
      expect(accepted).toHaveLength(1);
      if (provider === "ses") {
        expect(accepted[0].payload.Content.Simple.Attachments).toEqual([
          { RawContent: b64(stored), FileName: "certificate.pdf", ContentType: "application/pdf", ContentDisposition: "ATTACHMENT" },
        ]);
      } else {
        expect(accepted[0].payload.attachments).toEqual([{ content: b64(stored), filename: "certificate.pdf", type: "application/pdf", disposition: "attachment" }]);
      }
    }
  });

  it("store_only stores and reports without mail", async () => {
    const { testEnv, queues } = certEnv();
    const report = await processCertificateBatch(certificateBatch({ n: 1, delivery: "store_only" }), testEnv);
    expect(report.rendered).toBe(1);
    expect(queues.email.sent).toEqual([]);
  });

  it("renders at most maxRenders recipients per message and queues the rest as its own message", async () => {
    const { testEnv, queues, certificates } = certEnv();
    const batch = certificateBatch({ n: 3, delivery: "store_only" });
    const report = await processCertificateBatch(batch, testEnv, { maxRenders: 2 });
    expect(report).toMatchObject({ rendered: 2, deferred: 1 });
    expect(certificates.sent.map((m) => m.body.recipients.map((r) => r.recipient_id))).toEqual([["r-3"]]);
    validate("certificate_batch", certificates.sent[0].body);
    await processCertificateBatch(certificates.sent[0].body, testEnv, { maxRenders: 2 });
    expect(publishedResults(queues.results).map((r) => r.recipient_id)).toEqual(["r-1", "r-2", "r-3"]);
  });

  it("splits the forwarded mail to fit the queue's message size", async () => {
    const { testEnv, queues } = certEnv();
    const batch = certificateBatch({ n: 4 });
    // Each recipient with its own 40 KB completion mail: four do not fit one queue message.
    batch.contents = {};
    batch.recipients.forEach((r, i) => {
      r.content_id = `c-${i + 1}`;
      batch.contents[r.content_id] = { kind: "rendered", subject: "Your certificate", html: `<p>${"x".repeat(40_000)}</p>` };
    });
    await processCertificateBatch(batch, testEnv);
    const sizes = queues.email.sent.map((m) => new TextEncoder().encode(JSON.stringify(m.body)).byteLength);
    expect(sizes.length).toBeGreaterThan(1);
    expect(sizes.every((n) => n <= 120_000)).toBe(true);
    expect(queues.email.sent.flatMap((m) => m.body.recipients.map((r) => r.recipient_id))).toEqual(["r-1", "r-2", "r-3", "r-4"]);
    for (const m of queues.email.sent) expect(Object.keys(m.body.contents).sort()).toEqual(m.body.recipients.map((r) => r.content_id).sort());
  });

  it("a redelivered batch renders nothing again: completed recipients are reported from the ledger", async () => {
    const { testEnv, queues, bucket } = certEnv();
    const batch = certificateBatch({ n: 3 });
    await processCertificateBatch(batch, testEnv);
    const first = publishedResults(queues.results);
    queues.results.sent.length = 0;
    const again = await processCertificateBatch(batch, testEnv);
    expect(again.rendered).toBe(0);
    expect(bucket.puts).toHaveLength(3);
    expect(publishedResults(queues.results)).toEqual(first);
  });

  it("a crash after storing: the live claim is re-queued, a dead one taken over; each recipient rendered once", async () => {
    const { testEnv, queues, bucket, certificates } = certEnv();
    const batch = certificateBatch({ n: 3 });
    const t0 = 1_800_000_000;
    const crash = async (recipient) => {
      if (recipient.recipient_id === "r-2") throw new Error("worker crashed");
    };
    await expect(processCertificateBatch(batch, testEnv, { clock: () => t0, afterStore: crash })).rejects.toThrow("worker crashed");
    // Redelivered at once: r-1 is done, r-2's claim is live (its owner may still be working), r-3 renders.
    await processCertificateBatch(batch, testEnv, { clock: () => t0 + 1 });
    expect(certificates.sent).toHaveLength(1);
    expect(certificates.sent[0].body.recipients.map((r) => r.recipient_id)).toEqual(["r-2"]);
    expect(certificates.sent[0].options.delaySeconds).toBeGreaterThan(100);
    // The re-queued message after the lease: r-2 is taken over and rendered.
    await processCertificateBatch(certificates.sent[0].body, testEnv, { clock: () => t0 + 200 });
    const rendered = publishedResults(queues.results).filter((r) => r.status === "rendered");
    expect(new Set(rendered.map((r) => r.recipient_id))).toEqual(new Set(["r-1", "r-2", "r-3"]));
    expect(bucket.puts.filter((k) => k.endsWith("/r-1.pdf"))).toHaveLength(1);
    expect(bucket.puts.filter((k) => k.endsWith("/r-3.pdf"))).toHaveLength(1);
    // r-2 was stored by the crashed owner and again by the one that took over (same key).
    expect(bucket.puts.filter((k) => k.endsWith("/r-2.pdf"))).toHaveLength(2);
  });

  it("a recipient whose name cannot be printed here fails alone with the Lambda's codes; nothing stored for it", async () => {
    const { testEnv, queues, bucket } = certEnv();
    const batch = certificateBatch({ n: 3, names: ["Ada Lovelace", "محمد علي", "\u200b"] });
    await processCertificateBatch(batch, testEnv);
    const results = Object.fromEntries(publishedResults(queues.results).map((r) => [r.recipient_id, r]));
    expect(results["r-1"].status).toBe("rendered");
    expect(results["r-2"]).toMatchObject({ status: "failed", error: { code: "unsupported_characters", permanent: true } });
    expect(results["r-2"].error.message).toContain("U+0645");
    expect(results["r-3"]).toMatchObject({ status: "failed", error: { code: "invalid_certificate_data", permanent: true } });
    expect(bucket.puts).toEqual([certificateKey(7, batch.job_id, "r-1")]);
    expect(queues.email.sent[0].body.recipients.map((r) => r.recipient_id)).toEqual(["r-1"]);
  });

  it("reads a company template (and its images) from R2 under the S3 keys; static texts are checked too", async () => {
    const { testEnv, queues } = certEnv();
    const document = {
      page: { size: "Letter", orientation: "portrait" },
      elements: [
        { field: "static", text: "Diploma", y: 30, size: 30 },
        { field: "learner_name", y: 60, h: 20, size: 24 },
      ],
      qr: { x: 20, y: 200, size: 30 },
    };
    await env.OFFLOAD_BUCKET.put("templates/company-7/diploma.json", JSON.stringify(document));
    await env.OFFLOAD_BUCKET.put("templates/company-7/arabic.json", JSON.stringify({ ...document, elements: [{ field: "static", text: "شهادة", y: 30 }] }));
    const batch = { ...certificateBatch({ n: 1, delivery: "store_only" }), template_id: "diploma" };
    await processCertificateBatch(batch, testEnv);
    const [diploma] = publishedResults(queues.results);
    expect(diploma.status).toBe("rendered");
    const pdf = text(new Uint8Array(await (await env.OFFLOAD_BUCKET.get(diploma.artifact.key)).arrayBuffer()));
    const [, width, height] = /\/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]/.exec(pdf);
    expect([Math.round(Number(width)), Math.round(Number(height))]).toEqual([612, 792]); // Letter, portrait
    queues.results.sent.length = 0;
    await processCertificateBatch({ ...certificateBatch({ n: 1, delivery: "store_only" }), template_id: "arabic" }, testEnv);
    expect(publishedResults(queues.results)[0]).toMatchObject({ status: "failed", error: { code: "unsupported_characters" } });
  });

  it("the QR code's URL comes from VERIFY_URL_BASE when the batch has none", async () => {
    const { testEnv, queues } = certEnv({ VERIFY_URL_BASE: "https://verify.example.org/c/" });
    const batch = certificateBatch({ n: 1 });
    delete batch.verify_url_base;
    await processCertificateBatch(batch, testEnv);
    const code = batch.recipients[0].certificate.verification_code;
    expect(queues.email.sent[0].body.recipients[0].data.certificate_url).toBe(`https://verify.example.org/c/${code}`);
  });

  it("attachments over 4,000,000 bytes fail their recipient before any provider call", async () => {
    const { testEnv, queues, cloudflare } = certEnv();
    const batch = certificateBatch({ n: 1 });
    await processCertificateBatch(batch, testEnv);
    const mail = queues.email.sent[0].body;
    mail.recipients[0].attachments[0].ref.bytes = 4_000_001;
    queues.results.sent.length = 0;
    await processEmailBatch(mail, testEnv);
    expect(publishedResults(queues.results)[0]).toMatchObject({ status: "failed", error: { code: "attachments_too_large" } });
    expect(cloudflare.accepted).toEqual([]);
  });

  it("an unknown template fails the batch's recipients with template_missing", async () => {
    const { testEnv, queues } = certEnv();
    const batch = { ...certificateBatch({ n: 2 }), template_id: "no-such-template" };
    await processCertificateBatch(batch, testEnv);
    expect(publishedResults(queues.results).map((r) => r.error.code)).toEqual(["template_missing", "template_missing"]);
  });

  it("a verification code held by another company is never taken over", async () => {
    const { testEnv, queues } = certEnv();
    const mine = certificateBatch({ n: 1, company: 7 });
    await processCertificateBatch(mine, testEnv);
    const theirs = certificateBatch({ n: 1, company: 8 });
    theirs.recipients[0].certificate.verification_code = mine.recipients[0].certificate.verification_code;
    queues.results.sent.length = 0;
    await processCertificateBatch(theirs, testEnv);
    expect(publishedResults(queues.results)[0]).toMatchObject({ status: "failed", error: { code: "verification_code_taken" } });
  });

  it("the queue consumer acks a rendered batch and retries when the fonts are not deployed", async () => {
    const { testEnv } = certEnv();
    const ok = createMessageBatch("mrco-certificate-batches", [{ id: "m-1", timestamp: new Date(), attempts: 1, body: certificateBatch({ n: 1 }) }]);
    let ctx = createExecutionContext();
    await worker.queue(ok, testEnv, ctx);
    expect((await getQueueResult(ok, ctx)).explicitAcks).toEqual(["m-1"]);

    const empty = { get: async () => null, head: async () => null, put: async () => {} };
    const noFonts = { ...testEnv, OFFLOAD_BUCKET: empty };
    const retried = createMessageBatch("mrco-certificate-batches", [{ id: "m-2", timestamp: new Date(), attempts: 1, body: certificateBatch({ n: 1 }) }]);
    ctx = createExecutionContext();
    await worker.queue(retried, noFonts, ctx);
    expect((await getQueueResult(retried, ctx)).retryMessages.map((m) => m.msgId)).toEqual(["m-2"]);
  });
});

describe("capabilities with the renderer deployed", () => {
  it("offers certificate_batch with the scripts it draws, and attachments", async () => {
    const body = await (await worker.fetch(await signedRequest("/v1/capabilities", undefined, { method: "GET" }), env)).json();
    validate("capabilities", body);
    expect(body.message_types).toEqual(["email_batch", "certificate_batch"]);
    expect(body.certificates.scripts).toEqual(["Latn", "Grek", "Cyrl"]);
    // Exactly what the fonts draw: Latin, Greek and Cyrillic letters, not Arabic or Hebrew.
    const covers = (cp) => body.certificates.code_points.some(([lo, hi]) => lo <= cp && cp <= hi);
    expect(["A", "ë", "Ł", "Ω", "Ж", "ş"].every((ch) => covers(ch.codePointAt(0)))).toBe(true);
    expect(["م", "ש", "中"].some((ch) => covers(ch.codePointAt(0)))).toBe(false);
    expect(body.email.attachments).toBe(true);
  });

  it("does not offer certificates without a transactional provider to mail them", async () => {
    const noProvider = { ...env, PROVIDERS: JSON.stringify({ transactional: "sendgrid" }) }; // no SENDGRID_API_KEY
    const body = await (await worker.fetch(await signedRequest("/v1/capabilities", undefined, { method: "GET" }), noProvider)).json();
    expect(body.message_types).toEqual(["email_batch"]);
  });

  it("does not offer certificates when the fonts are not in R2", async () => {
    const empty = { ...env, OFFLOAD_BUCKET: { head: async () => null } };
    const body = await (await worker.fetch(await signedRequest("/v1/capabilities", undefined, { method: "GET" }), empty)).json();
    expect(body.message_types).toEqual(["email_batch"]);
    expect(body.certificates).toBeUndefined();
  });
});
