// Results back to the bridge, the routes, and the queue consumers, in workerd.
import { createExecutionContext, createMessageBatch, getQueueResult, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker, { PROCESSORS, QUEUES, consumeQueue } from "../src/index.js";
import { CallbackError, deliverCallback, publishResults } from "../src/results.js";
import { MemoryNonceStore, Verifier, decodeRootSecret } from "../src/signing.js";
import { validate } from "../src/contract.js";
import { processEmailBatch } from "../src/sender.js";
import { emailBatch, KEYSETS, ORIGIN, publishedResults, signedRequest, standInEnv } from "./helpers.js";
import { CloudflareEmailStandIn } from "./standins.js";

function resultBatch(company = 7, n = 2) {
  return {
    type: "result_batch",
    contract_version: 1,
    report_id: `rep-${crypto.randomUUID()}`,
    company_id: company,
    reporter: "cloudflare_worker",
    created_at: Math.floor(Date.now() / 1000),
    results: Array.from({ length: n }, (_, i) => ({
      job_id: "j-1",
      recipient_id: `r-${i}`,
      status: "sent",
      attempts: 1,
      occurred_at: Math.floor(Date.now() / 1000),
      provider_message_id: `m-${i}`,
    })),
  };
}

/** A bridge receiver: verifies like moodle_bridge's, answers scripted statuses. */
function bridge(statuses = []) {
  const roots = new Map(Object.entries(KEYSETS.keysets).map(([k, v]) => [k, decodeRootSecret(v)]));
  const verifier = new Verifier(roots, new MemoryNonceStore());
  const received = [];
  const fetchImpl = async (url, init) => {
    const body = new Uint8Array(init.body);
    const verified = await verifier.verify("POST", new URL(url).pathname, init.headers, body);
    const envelope = JSON.parse(new TextDecoder().decode(body));
    validate("envelope", envelope);
    received.push({ verified, envelope });
    return new Response("{}", { status: statuses.shift() ?? 200 });
  };
  return { received, fetchImpl };
}

describe("signed result_batch callbacks", () => {
  it("signs with the company key of the current key set, verifiable by the bridge", async () => {
    const { received, fetchImpl } = bridge();
    const batch = resultBatch(7);
    await deliverCallback(env, { callback_url: "https://moodle.example/callbacks/v1/results", key_id: "k2026.c7", result_batch: batch }, fetchImpl);
    expect(received).toHaveLength(1);
    expect(received[0].verified.keyId).toBe("k2026.c7");
    expect(received[0].envelope).toMatchObject({ message_type: "result_batch", message_id: batch.report_id, message: batch });
  });

  it("a lost callback (5xx, network error) throws so the queue retries; the bridge's duplicate is the same report", async () => {
    const { received, fetchImpl } = bridge([503]);
    const item = { callback_url: "https://moodle.example/callbacks/v1/results", key_id: "k2026.c7", result_batch: resultBatch(7) };
    await expect(deliverCallback(env, item, fetchImpl)).rejects.toThrow(CallbackError);
    await deliverCallback(env, item, fetchImpl);
    await deliverCallback(env, item, fetchImpl); // duplicated delivery: same report_id, fresh nonce
    expect(received.map((r) => r.envelope.message_id)).toEqual(Array(3).fill(item.result_batch.report_id));
    await expect(deliverCallback(env, item, async () => { throw new TypeError("connection refused"); })).rejects.toThrow("callback unreachable");
  });

  it("the results consumer retries failures, and the DLQ consumer keeps them for the pull route", async () => {
    const item = { callback_url: "https://unreachable.example/cb", key_id: "k2026.c9", result_batch: resultBatch(9, 1) };
    const batch = createMessageBatch(QUEUES.RESULTS, [{ id: "res-1", timestamp: new Date(), attempts: 1, body: item }]);
    const ctx = createExecutionContext();
    await consumeQueue(batch, env, { fetchImpl: async () => new Response("", { status: 500 }) });
    const result = await getQueueResult(batch, ctx);
    expect(result.retryMessages.map((m) => m.msgId)).toEqual(["res-1"]);

    const dead = createMessageBatch(QUEUES.RESULTS_DLQ, [
      { id: "dlq-1", timestamp: new Date(), attempts: 1, body: item },
      { id: "dlq-2", timestamp: new Date(), attempts: 1, body: item }, // the DLQ redelivered it
    ]);
    await consumeQueue(dead, env);
    expect((await getQueueResult(dead, ctx)).explicitAcks.sort()).toEqual(["dlq-1", "dlq-2"]);

    // The bridge pulls (signed with company 9's key), commits, then acknowledges.
    const first = await worker.fetch(await signedRequest("/v1/results/pull", JSON.stringify({ ack_through: null, max: 10 }), { company: 9 }), env);
    expect(first.status).toBe(200);
    const page = await first.json();
    expect(page.entries).toHaveLength(1); // kept once
    expect(page.entries[0].result_batch).toEqual(item.result_batch);
    const seq = page.entries[0].seq;
    const second = await worker.fetch(await signedRequest("/v1/results/pull", JSON.stringify({ ack_through: seq, max: 10 }), { company: 9 }), env);
    expect(await second.json()).toEqual({ entries: [], pending: 0 });
  });

  it("pull mode keeps results instead of calling back; another company's key sees none of them", async () => {
    const pullEnv = { ...env, RESULTS_MODE: "pull" };
    const item = { callback_url: "https://moodle.example/cb", key_id: "k2026.c11", result_batch: resultBatch(11, 3) };
    await consumeQueue(createMessageBatch(QUEUES.RESULTS, [{ id: "p-1", timestamp: new Date(), attempts: 1, body: item }]), pullEnv, {
      fetchImpl: async () => {
        throw new Error("pull mode never calls back");
      },
    });
    const other = await worker.fetch(await signedRequest("/v1/results/pull", "{}", { company: 12 }), env);
    expect((await other.json()).entries).toEqual([]);
    const mine = await worker.fetch(await signedRequest("/v1/results/pull", "{}", { company: 11 }), env);
    expect((await mine.json()).entries.map((e) => e.result_batch.report_id)).toEqual([item.result_batch.report_id]);
  });

  it("the pull route refuses unsigned and malformed requests", async () => {
    const unsigned = await worker.fetch(new Request(`${ORIGIN}/v1/results/pull`, { method: "POST", body: "{}" }), env);
    expect(unsigned.status).toBe(400);
    const bad = await worker.fetch(await signedRequest("/v1/results/pull", JSON.stringify({ max: 1000 })), env);
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ error: "bad_request" });
  });

  it("publishes at most 500 results per contract-valid result_batch", async () => {
    const { testEnv, queues } = standInEnv();
    const results = Array.from({ length: 1201 }, (_, i) => ({ ...resultBatch().results[0], recipient_id: `r-${i}` }));
    await publishResults(testEnv, { companyId: 7, callback: { url: "https://m.example/cb", key_id: "k2026.c7" }, results });
    expect(queues.results.sent.map((s) => s.body.result_batch.results.length)).toEqual([500, 500, 201]);
  });
});

describe("capabilities", () => {
  it("answers a signed request with what this deployment processes for the company", async () => {
    const answer = await worker.fetch(await signedRequest("/v1/capabilities", undefined, { method: "GET" }), env);
    expect(answer.status).toBe(200);
    const body = await answer.json();
    validate("capabilities", body);
    expect(body).toMatchObject({
      message_types: ["email_batch"],
      email: { content_kinds: ["rendered", "reference"], categories: ["transactional"], attachments: true, providers: { transactional: "cloudflare", campaign: null } },
      results: { mode: "push", pull_path: "/v1/results/pull" },
    });
    // The certificate renderer has a processor, but its fonts are not in this test's R2: not offered
    // (test/certificates.test.js seeds them).
    expect([...PROCESSORS.keys()]).toContain("certificate_batch");
    expect(body.certificates).toBeUndefined();
  });

  it("names per-company providers, and campaign mail only when a campaign provider exists", async () => {
    const configured = standInEnv({
      PROVIDERS: JSON.stringify({ transactional: "cloudflare", campaign: "ses", companies: { 8: { transactional: "sendgrid", campaign: "sendgrid" } } }),
    }).testEnv;
    const eight = await (await worker.fetch(await signedRequest("/v1/capabilities", undefined, { method: "GET", company: 8 }), configured)).json();
    expect(eight.email).toMatchObject({ categories: ["transactional", "campaign"], providers: { transactional: "sendgrid", campaign: "sendgrid" } });
    const seven = await (await worker.fetch(await signedRequest("/v1/capabilities", undefined, { method: "GET", company: 7 }), configured)).json();
    expect(seven.email.providers).toEqual({ transactional: "cloudflare", campaign: "ses" });
  });

  it("offers no category whose provider this deployment cannot build (a missing secret)", async () => {
    const noSecrets = { ...env, PROVIDERS: JSON.stringify({ transactional: "sendgrid", campaign: "ses" }) };
    const body = await (await worker.fetch(await signedRequest("/v1/capabilities", undefined, { method: "GET" }), noSecrets)).json();
    validate("capabilities", body);
    expect(body.email).toMatchObject({ categories: [], providers: { transactional: null, campaign: null } });
  });

  it("refuses unsigned requests", async () => {
    const answer = await worker.fetch(new Request(`${ORIGIN}/v1/capabilities`), env);
    expect(answer.status).toBe(400);
    expect((await answer.json()).error).toBe("missing_header");
  });
});

describe("public routes, as on AWS", () => {
  it("one-click unsubscribe refuses tokens that are not signed (the rest: unsubscribe.test.js)", async () => {
    const token = `tok_${crypto.randomUUID().replace(/-/g, "")}`;
    const answer = await worker.fetch(new Request(`${ORIGIN}/v1/unsubscribe/${token}`, { method: "POST", body: "List-Unsubscribe=One-Click" }), env);
    expect(answer.status).toBe(404);
    expect(await answer.json()).toEqual({ error: "unknown_token" });
    const stub = env.PUBLIC_RECORDS.get(env.PUBLIC_RECORDS.idFromName("public"));
    expect(await stub.unsubscribed(token)).toBeNull();
    expect((await worker.fetch(new Request(`${ORIGIN}/v1/unsubscribe/short`, { method: "POST" }), env)).status).toBe(404);
    expect((await worker.fetch(new Request(`${ORIGIN}/v1/unsubscribe/${token}`, { method: "DELETE" }), env)).status).toBe(405);
  });

  it("certificate verification answers a known code and 404 otherwise (never the storage key)", async () => {
    const stub = env.PUBLIC_RECORDS.get(env.PUBLIC_RECORDS.idFromName("public"));
    await runInDurableObject(stub, (instance) =>
      instance.putCertificate("ABCD2345EFGH", { company_id: 7, job_id: "j-1", recipient_id: "r-1", key: "certificates/company-7/j-1/r-1.pdf", learner_name: "محمد", course_name: "Safety", completed_at: 1790000000 }),
    );
    const asJson = { headers: { accept: "application/json" } };
    const known = await worker.fetch(new Request(`${ORIGIN}/v1/certificates/verify/ABCD2345EFGH`, asJson), env);
    expect(await known.json()).toEqual({ valid: true, code: "ABCD2345EFGH", learner_name: "محمد", course_name: "Safety", completed_at: 1790000000 });
    expect((await worker.fetch(new Request(`${ORIGIN}/v1/certificates/verify/NOPE0000NOPE`, asJson), env)).status).toBe(404);
    expect((await worker.fetch(new Request(`${ORIGIN}/v1/certificates/verify/bad`, asJson), env)).status).toBe(404);
  });

  it("a code shorter than 12 characters (under 60 bits) is never looked up, as on AWS", async () => {
    const stub = env.PUBLIC_RECORDS.get(env.PUBLIC_RECORDS.idFromName("public"));
    await runInDurableObject(stub, (instance) =>
      instance.putCertificate("SHORT2345E", { company_id: 7, job_id: "j-9", recipient_id: "r-9", key: "certificates/company-7/j-9/r-9.pdf", learner_name: "Ana", course_name: "Safety", completed_at: 1790000000 }),
    );
    const asJson = { headers: { accept: "application/json" } };
    const answer = await worker.fetch(new Request(`${ORIGIN}/v1/certificates/verify/SHORT2345E`, asJson), env);
    expect(answer.status).toBe(404);
    expect(await answer.json()).toEqual({ valid: false });
  });

  it("a person scanning the QR code gets the verify page, as on AWS: their language, escaped, nothing loaded", async () => {
    const stub = env.PUBLIC_RECORDS.get(env.PUBLIC_RECORDS.idFromName("public"));
    await runInDurableObject(stub, (instance) => {
      instance.putCertificate("PAGE2345EFGH", { company_id: 7, job_id: "j-2", recipient_id: "r-2", key: "certificates/company-7/j-2/r-2.pdf", learner_name: "<script>alert(1)</script> Ana", course_name: "Safety & Health", completed_at: 1790000000, issuer_name: "Acme", language: "de" });
      instance.putCertificate("ARAB2345EFGH", { company_id: 7, job_id: "j-2", recipient_id: "r-3", key: "certificates/company-7/j-2/r-3.pdf", learner_name: "محمد", course_name: "Safety", completed_at: 1790000000, language: "ar" });
    });
    const page = await worker.fetch(new Request(`${ORIGIN}/v1/certificates/verify/PAGE2345EFGH`, { headers: { accept: "text/html" } }), env);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toContain("text/html");
    expect(page.headers.get("content-security-policy")).toBe("default-src 'none'; style-src 'unsafe-inline'");
    const html = await page.text();
    expect(html).toContain('<html lang="de" dir="ltr">');
    expect(html).toContain("Gültiges Zertifikat");
    expect(html).toContain("&lt;script&gt;alert(1)&lt;/script&gt; Ana");
    expect(html).not.toContain("<script>");
    expect(html).toContain("Safety &amp; Health");
    expect(html).toContain("2026"); // the completion date, written in German by Intl
    const arabic = await (await worker.fetch(new Request(`${ORIGIN}/v1/certificates/verify/ARAB2345EFGH`), env)).text();
    expect(arabic).toContain('<html lang="ar" dir="rtl">');
    expect(arabic).toContain("شهادة صالحة");
    const unknown = await worker.fetch(new Request(`${ORIGIN}/v1/certificates/verify/NOPE0000NOPE`, { headers: { "accept-language": "fr-FR,fr;q=0.9" } }), env);
    expect(unknown.status).toBe(404);
    expect(await unknown.text()).toContain("Aucun certificat ne porte ce code");
  });
});

describe("provider event routes", () => {
  it("SES events need the API destination's bearer token", async () => {
    const { testEnv, ses, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "ses" }), SES_EVENTS_TOKEN: "t0ken-for-eventbridge-api-destination" });
    await processEmailBatch(emailBatch({ n: 1 }), testEnv, { fetchImpl });
    const event = JSON.stringify(ses.event(ses.accepted[0], "Delivery"));
    const refused = await worker.fetch(new Request(`${ORIGIN}/v1/events/ses`, { method: "POST", body: event, headers: { authorization: "Bearer wrong" } }), testEnv);
    expect(refused.status).toBe(401);
    queues.results.sent.length = 0;
    const accepted = await worker.fetch(
      new Request(`${ORIGIN}/v1/events/ses`, { method: "POST", body: event, headers: { authorization: "Bearer t0ken-for-eventbridge-api-destination" } }),
      testEnv,
    );
    expect(accepted.status).toBe(200);
    expect(publishedResults(queues.results).map((r) => r.status)).toEqual(["delivered"]);
  });

  it("SendGrid's Event Webhook is accepted only with a valid ECDSA signature", async () => {
    const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
    const publicKey = btoa(String.fromCharCode(...spki));
    const { testEnv, sendgrid, fetchImpl, queues } = standInEnv({ PROVIDERS: JSON.stringify({ transactional: "sendgrid" }), SENDGRID_WEBHOOK_PUBLIC_KEY: publicKey });
    await processEmailBatch(emailBatch({ n: 2 }), testEnv, { fetchImpl });
    const [a, b] = sendgrid.accepted;
    const body = JSON.stringify([
      sendgrid.event(a, "processed"),
      sendgrid.event(a, "delivered"),
      sendgrid.event(b, "bounce", { type: "bounce", reason: "550 unknown user" }),
      sendgrid.event(b, "open"),
    ]);
    const timestamp = String(Math.floor(Date.now() / 1000));
    const raw = new Uint8Array(await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, pair.privateKey, new TextEncoder().encode(timestamp + body)));
    const der = rawToDer(raw);
    const headers = { "x-twilio-email-event-webhook-signature": btoa(String.fromCharCode(...der)), "x-twilio-email-event-webhook-timestamp": timestamp };
    queues.results.sent.length = 0;
    const tampered = await worker.fetch(new Request(`${ORIGIN}/v1/events/sendgrid`, { method: "POST", body: body.replace("550", "551"), headers }), testEnv);
    expect(tampered.status).toBe(401);
    const ok = await worker.fetch(new Request(`${ORIGIN}/v1/events/sendgrid`, { method: "POST", body, headers }), testEnv);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ applied: 3, ignored: 1 });
    expect(publishedResults(queues.results).map((r) => [r.recipient_id, r.status])).toEqual([
      ["r-1", "delivered"],
      ["r-2", "bounced"],
    ]);
  });
});

describe("queue consumers in the Worker's own queue() handler", () => {
  it("applies a delivery of Cloudflare events whole, and retries all of it if a write fails", async () => {
    const { testEnv, cloudflare, queues } = standInEnv();
    await processEmailBatch(emailBatch({ n: 1 }), testEnv);
    const [a] = cloudflare.accepted;
    const events = createMessageBatch(QUEUES.EMAIL_EVENTS, [
      { id: "e-1", timestamp: new Date(), attempts: 1, body: CloudflareEmailStandIn.event("delivered", a.messageId, a.to[0]) },
    ]);
    const ctx = createExecutionContext();
    await consumeQueue(events, testEnv);
    expect(await getQueueResult(events, ctx)).toMatchObject({ ackAll: true });
    const broken = createMessageBatch(QUEUES.EMAIL_EVENTS, [
      { id: "e-2", timestamp: new Date(), attempts: 1, body: CloudflareEmailStandIn.event("delivered", a.messageId, a.to[0]) },
    ]);
    await consumeQueue(broken, { ...testEnv, RESULTS_QUEUE: { send: async () => { throw new Error("queue down"); } } });
    expect(await getQueueResult(broken, ctx)).toMatchObject({ retryBatch: { retry: true } });
    expect(queues.results.sent.length).toBeGreaterThan(0);
  });

  it("sends an email batch from the queue and acknowledges it; a provider misconfiguration retries it", async () => {
    const { testEnv, cloudflare } = standInEnv();
    const batch = createMessageBatch(QUEUES.EMAIL_BATCHES, [{ id: "q-1", timestamp: new Date(), attempts: 1, body: emailBatch({ n: 2 }) }]);
    const ctx = createExecutionContext();
    await worker.queue(batch, testEnv, ctx);
    expect((await getQueueResult(batch, ctx)).explicitAcks).toEqual(["q-1"]);
    expect(cloudflare.accepted).toHaveLength(2);
    const noBinding = createMessageBatch(QUEUES.EMAIL_BATCHES, [{ id: "q-2", timestamp: new Date(), attempts: 1, body: emailBatch({ n: 2 }) }]);
    await worker.queue(noBinding, { ...testEnv, EMAIL: undefined }, ctx);
    expect((await getQueueResult(noBinding, ctx)).retryMessages.map((m) => m.msgId)).toEqual(["q-2"]);
  });
});



/** IEEE P1363 (r||s) -> DER, as SendGrid sends its signatures. */
function rawToDer(raw) {
  const integer = (bytes) => {
    let v = Array.from(bytes);
    while (v.length > 1 && v[0] === 0 && v[1] < 0x80) v = v.slice(1);
    if (v[0] >= 0x80) v = [0, ...v];
    return [0x02, v.length, ...v];
  };
  const body = [...integer(raw.slice(0, 32)), ...integer(raw.slice(32))];
  return new Uint8Array([0x30, body.length, ...body]);
}
