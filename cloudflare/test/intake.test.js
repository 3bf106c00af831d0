// POST /v1/batches inside workerd: real Durable Object nonce store, real Queue bindings.
import { createExecutionContext, createMessageBatch, getQueueResult, runInDurableObject } from "cloudflare:test";
import { env, exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import messages from "../../offload_contract/vectors/messages.json";
import worker, { PROCESSORS } from "../src/index.js";
import { QUEUE_MAX_MESSAGE_BYTES, handleIntake } from "../src/intake.js";
import { deriveCompanyKey, decodeRootSecret, signRequest } from "../src/signing.js";

const ORIGIN = "https://offload.example";
const PATH = "/v1/batches";
const encoder = new TextEncoder();
const KEYSETS = JSON.parse(env.HMAC_KEYSETS);

const example = (name) => structuredClone(messages.examples.find((e) => e.name === name).message);
const EMAIL = "email batch, rendered IOMAD rows with shared fan-out content";
const CERTIFICATE = "certificate batch, Hebrew learner";

function envelopeOf(batch, messageType = batch.type) {
  return {
    contract_version: 1,
    message_type: messageType,
    message_id: `m-${crypto.randomUUID()}`,
    sent_at: Math.floor(Date.now() / 1000),
    message: batch,
  };
}

async function signedRequest(body, { keyset = "k2026", company = 7, method = "POST", path = PATH, headers = {} } = {}) {
  const bytes = typeof body === "string" ? encoder.encode(body) : body;
  const key = await deriveCompanyKey(decodeRootSecret(KEYSETS.keysets[keyset]), company);
  const signed = await signRequest({ key, keyId: `${keyset}.c${company}`, method, path, body: bytes });
  return new Request(ORIGIN + path, {
    method,
    headers: { "content-type": "application/json", ...signed, ...headers },
    body: method === "GET" ? undefined : bytes,
  });
}

function recordingQueue(real, sent) {
  return {
    async send(body, options) {
      sent.push({ body, options });
      return real.send(body, options);
    },
  };
}

/** The Worker's own env, with queue bindings that record what passes through to the real queues. */
function recordingEnv() {
  const sent = { email: [], certificate: [] };
  const testEnv = {
    HMAC_KEYSETS: env.HMAC_KEYSETS,
    MAX_BODY_BYTES: env.MAX_BODY_BYTES,
    NONCES: env.NONCES,
    EMAIL_QUEUE: recordingQueue(env.EMAIL_QUEUE, sent.email),
    CERTIFICATE_QUEUE: recordingQueue(env.CERTIFICATE_QUEUE, sent.certificate),
  };
  return { testEnv, sent };
}

function collectingLog() {
  const lines = [];
  const push = (line) => lines.push(line);
  return { lines, log: { info: push, warn: push, error: push } };
}

async function errorOf(response) {
  expect(response.headers.get("content-type")).toMatch(/^application\/json/);
  return { status: response.status, ...(await response.json()) };
}

describe("accepted batches", () => {
  it("queues an email batch on the email queue as JSON and answers 202 with its batch id", async () => {
    const batch = example(EMAIL);
    const { testEnv, sent } = recordingEnv();
    const response = await worker.fetch(await signedRequest(JSON.stringify(envelopeOf(batch))), testEnv);
    expect(response.status).toBe(202);
    expect(await response.json()).toEqual({ batch_id: batch.batch_id });
    expect(sent.email).toEqual([{ body: batch, options: { contentType: "json" } }]);
    expect(sent.certificate).toEqual([]);
  });

  it("queues a certificate batch on the certificate queue", async () => {
    const batch = example(CERTIFICATE);
    const { testEnv, sent } = recordingEnv();
    const response = await worker.fetch(await signedRequest(JSON.stringify(envelopeOf(batch))), testEnv);
    expect(response.status).toBe(202);
    expect(sent.certificate.map((s) => s.body.batch_id)).toEqual([batch.batch_id]);
    expect(sent.email).toEqual([]);
  });

  it("answers 202 through the deployed entry point (exports.default.fetch) with the real bindings", async () => {
    const batch = example(EMAIL);
    const response = await exports.default.fetch(await signedRequest(JSON.stringify(envelopeOf(batch))));
    expect(response.status).toBe(202);
    expect(await response.json()).toEqual({ batch_id: batch.batch_id });
  });

  it("accepts the previous key set while it is still configured (rotation)", async () => {
    const batch = example(EMAIL);
    batch.callback.key_id = "rot-b.c7";
    const response = await exports.default.fetch(
      await signedRequest(JSON.stringify(envelopeOf(batch)), { keyset: "rot-b" }),
    );
    expect(response.status).toBe(202);
  });
});

describe("signature failures answer 4xx and queue nothing", () => {
  it("rejects a replayed request with 409 replayed_nonce (nonce kept in the Durable Object)", async () => {
    const request = await signedRequest(JSON.stringify(envelopeOf(example(EMAIL))));
    const { testEnv, sent } = recordingEnv();
    expect((await worker.fetch(request.clone(), testEnv)).status).toBe(202);
    expect(await errorOf(await worker.fetch(request, testEnv))).toMatchObject({
      status: 409,
      error: "replayed_nonce",
    });
    expect(sent.email).toHaveLength(1);
  });

  it("rejects a tampered body, a forged signature, a stale clock, an unknown key set, missing headers", async () => {
    const body = JSON.stringify(envelopeOf(example(EMAIL)));
    const good = await signedRequest(body);
    const headers = Object.fromEntries(good.headers);
    const { testEnv, sent } = recordingEnv();
    const send = (overrides, payload = body) => {
      const merged = { ...headers, ...overrides };
      for (const [name, value] of Object.entries(merged)) if (value === undefined) delete merged[name];
      return worker.fetch(new Request(ORIGIN + PATH, { method: "POST", headers: merged, body: payload }), testEnv);
    };
    expect(await errorOf(await send({}, `${body} `))).toMatchObject({ status: 401, error: "body_hash_mismatch" });
    expect(await errorOf(await send({ "x-offload-signature": `v1=${"0".repeat(64)}` }))).toMatchObject({
      status: 401,
      error: "bad_signature",
    });
    expect(await errorOf(await send({ "x-offload-timestamp": "1700000000" }))).toMatchObject({
      status: 401,
      error: "stale_timestamp",
    });
    expect(await errorOf(await send({ "x-offload-key-id": "gone.c7" }))).toMatchObject({
      status: 401,
      error: "unknown_key",
    });
    expect(await errorOf(await send({ "x-offload-nonce": undefined }))).toMatchObject({
      status: 400,
      error: "missing_header",
    });
    expect(await errorOf(await send({ "x-offload-key-id": "k2026-c7" }))).toMatchObject({
      status: 400,
      error: "malformed_header",
    });
    // The request was never accepted, so its nonce was never recorded: the genuine one still passes.
    expect((await send({})).status).toBe(202);
    expect(sent.email).toHaveLength(1);
  });

  it("binds the signature to the intake path", async () => {
    const body = JSON.stringify(envelopeOf(example(EMAIL)));
    const signedForOther = await signedRequest(body, { path: "/v1/other" });
    const moved = new Request(ORIGIN + PATH, { method: "POST", headers: signedForOther.headers, body });
    expect(await errorOf(await exports.default.fetch(moved))).toMatchObject({ status: 401, error: "bad_signature" });
  });
});

describe("bad input answers a clear 4xx JSON error", () => {
  it("405 for other methods, 404 for other paths", async () => {
    const get = await exports.default.fetch(new Request(ORIGIN + PATH));
    expect(await errorOf(get)).toMatchObject({ status: 405, error: "method_not_allowed" });
    expect(get.headers.get("allow")).toBe("POST");
    expect(await errorOf(await exports.default.fetch(new Request(`${ORIGIN}/`)))).toMatchObject({
      status: 404,
      error: "not_found",
    });
  });

  it("415 unless the body is application/json", async () => {
    const request = await signedRequest("{}", { headers: { "content-type": "text/plain" } });
    expect(await errorOf(await exports.default.fetch(request))).toMatchObject({
      status: 415,
      error: "unsupported_media_type",
    });
  });

  it("413 from Content-Length alone, before reading any of the body", async () => {
    let pulled = false;
    const body = new ReadableStream({
      pull() {
        pulled = true;
        throw new Error("the body must not be read");
      },
    }, { highWaterMark: 0 }); // pull only when someone reads
    const request = new Request(ORIGIN + PATH, {
      method: "POST",
      headers: { "content-type": "application/json", "content-length": String(1_048_577) },
      body,
    });
    const { testEnv } = recordingEnv();
    const error = await errorOf(await handleIntake(request, testEnv, collectingLog().log));
    expect(error).toMatchObject({ status: 413, error: "body_too_large", limit_bytes: 1_048_576 });
    expect(pulled).toBe(false);
  });

  it("413 for a streamed body without Content-Length that grows past the limit", async () => {
    const chunk = new Uint8Array(64 * 1024);
    let chunks = 0;
    const body = new ReadableStream({
      pull(controller) {
        chunks += 1;
        controller.enqueue(chunk);
        if (chunks > 100) controller.close();
      },
    });
    const request = new Request(ORIGIN + PATH, { method: "POST", headers: { "content-type": "application/json" }, body });
    const { testEnv } = recordingEnv();
    expect(await errorOf(await handleIntake(request, testEnv, collectingLog().log))).toMatchObject({
      status: 413,
      error: "body_too_large",
    });
    expect(chunks).toBeLessThanOrEqual(18);
  });

  it("400 invalid_json for a signed body that is not UTF-8 JSON", async () => {
    for (const body of ["{not json", new Uint8Array([0x7b, 0xff, 0x7d]), '{"a": 1e999}']) {
      const response = await exports.default.fetch(await signedRequest(body));
      expect(await errorOf(response)).toMatchObject({ status: 400, error: "invalid_json" });
    }
  });

  it("422 naming the envelope field and rule", async () => {
    const envelope = envelopeOf(example(EMAIL));
    delete envelope.message_id;
    const response = await exports.default.fetch(await signedRequest(JSON.stringify(envelope)));
    expect(await errorOf(response)).toMatchObject({
      status: 422,
      error: "contract_violation",
      message_type: "envelope",
      path: "(root)",
      reason: "fails rule 'required'",
    });
  });

  it("422 naming the batch field and rule, never its value, in the answer or the log", async () => {
    const secret = "Temp-Pa55word!-never-logged";
    const batch = example(EMAIL);
    batch.contents["e-1"].html = `<p>password: ${secret}</p>`;
    batch.recipients[0].to = `not-an-address ${secret}`;
    const { testEnv, sent } = recordingEnv();
    const { lines, log } = collectingLog();
    const response = await handleIntake(await signedRequest(JSON.stringify(envelopeOf(batch))), testEnv, log);
    const text = await response.text();
    expect(response.status).toBe(422);
    expect(JSON.parse(text)).toMatchObject({ error: "contract_violation", path: "recipients/0/to", reason: "fails rule 'pattern'" });
    expect(text).not.toContain(secret);
    expect(lines.join("\n")).not.toContain(secret);
    expect(lines.join("\n")).toContain("contract_violation");
    expect(sent.email).toEqual([]);
  });

  it("422 when the envelope's type and its batch disagree", async () => {
    const envelope = envelopeOf(example(EMAIL), "certificate_batch");
    const response = await exports.default.fetch(await signedRequest(JSON.stringify(envelope)));
    expect(await errorOf(response)).toMatchObject({ status: 422, message_type: "certificate_batch" });
  });

  it("422 unsupported_message_type for a result batch", async () => {
    const result = structuredClone(messages.examples.find((e) => e.message_type === "result_batch" && e.valid).message);
    const response = await exports.default.fetch(await signedRequest(JSON.stringify(envelopeOf(result))));
    expect(await errorOf(response)).toMatchObject({ status: 422, error: "unsupported_message_type" });
  });

  it("403 when the signing key's company does not own the batch or its callback key", async () => {
    const batch = example(EMAIL);
    const otherCompany = await signedRequest(JSON.stringify(envelopeOf(batch)), { company: 8 });
    expect(await errorOf(await exports.default.fetch(otherCompany))).toMatchObject({
      status: 403,
      error: "company_mismatch",
    });
    batch.callback.key_id = "k2026.c8";
    const foreignCallback = await signedRequest(JSON.stringify(envelopeOf(batch)));
    expect(await errorOf(await exports.default.fetch(foreignCallback))).toMatchObject({
      status: 403,
      error: "company_mismatch",
    });
  });

  it("413 batch_too_large for a valid batch over the 128 KB queue message limit", async () => {
    const batch = example(EMAIL);
    batch.contents["e-1"].html = "<p>" + "x".repeat(QUEUE_MAX_MESSAGE_BYTES) + "</p>";
    const { testEnv, sent } = recordingEnv();
    const response = await worker.fetch(await signedRequest(JSON.stringify(envelopeOf(batch))), testEnv);
    const error = await errorOf(response);
    expect(error).toMatchObject({ status: 413, error: "batch_too_large", limit_bytes: QUEUE_MAX_MESSAGE_BYTES });
    expect(error.size_bytes).toBeGreaterThan(QUEUE_MAX_MESSAGE_BYTES);
    expect(sent.email).toEqual([]);
  });

  it("500 server_misconfigured without echoing the secret when HMAC_KEYSETS is wrong", async () => {
    const short = "c2hvcnQ";
    const broken = { ...recordingEnv().testEnv, HMAC_KEYSETS: JSON.stringify({ current: "k", keysets: { k: short } }) };
    const { lines, log } = collectingLog();
    const response = await handleIntake(await signedRequest("{}"), broken, log);
    const text = await response.text();
    expect(response.status).toBe(500);
    expect(JSON.parse(text).error).toBe("server_misconfigured");
    expect(text + lines.join("\n")).not.toContain(short);
  });
});

describe("nonce store Durable Object", () => {
  it("keeps a nonce until it expires, then forgets it", async () => {
    const stub = env.NONCES.get(env.NONCES.idFromName("k2026.c99"));
    const now = Math.floor(Date.now() / 1000);
    expect(await stub.remember("nonce-aaaaaaaaaaaaaaaa", now + 600)).toBe(true);
    expect(await stub.remember("nonce-aaaaaaaaaaaaaaaa", now + 600)).toBe(false);
    expect(await stub.remember("nonce-bbbbbbbbbbbbbbbb", now - 1)).toBe(true);
    await runInDurableObject(stub, async (instance) => {
      expect(instance.size()).toBe(2);
      // An expired entry is pruned on the next call and may be used again.
      expect(instance.remember("nonce-bbbbbbbbbbbbbbbb", now + 600)).toBe(true);
      expect(instance.size()).toBe(2);
    });
  });
});

describe("queue consumer", () => {
  it("acknowledges a valid message its processor handled, retries one it did not, and one that fails", async () => {
    const seen = [];
    const original = PROCESSORS.get("email_batch");
    PROCESSORS.set("email_batch", async (batch) => {
      seen.push(batch.batch_id);
      if (batch.batch_id === "b-fail") throw new Error("provider down");
    });
    try {
      const failing = example(EMAIL);
      failing.batch_id = "b-fail";
      const invalid = example(EMAIL);
      invalid.recipients = [];
      const batch = createMessageBatch("mrco-email-batches", [
        { id: "ok", timestamp: new Date(), attempts: 1, body: example(EMAIL) },
        { id: "fails", timestamp: new Date(), attempts: 1, body: failing },
        { id: "invalid", timestamp: new Date(), attempts: 1, body: invalid },
      ]);
      const ctx = createExecutionContext();
      await worker.queue(batch, env, ctx);
      const result = await getQueueResult(batch, ctx);
      expect(result.explicitAcks).toEqual(["ok"]);
      expect(result.retryMessages.map((m) => m.msgId).sort()).toEqual(["fails", "invalid"]);
      expect(seen).toEqual(["b-7-000001", "b-fail"]);
    } finally {
      PROCESSORS.set("email_batch", original);
    }
  });

  it("retries (so the dead-letter queue keeps) messages it has no processor for", async () => {
    const batch = createMessageBatch("mrco-certificate-batches", [
      { id: "m-1", timestamp: new Date(), attempts: 1, body: { type: "result_batch" } },
      { id: "m-2", timestamp: new Date(), attempts: 1, body: { type: "garbage" } },
      { id: "m-3", timestamp: new Date(), attempts: 1, body: { type: "constructor" } },
      { id: "m-4", timestamp: new Date(), attempts: 1, body: "not an object" },
    ]);
    const ctx = createExecutionContext();
    await worker.queue(batch, env, ctx);
    const result = await getQueueResult(batch, ctx);
    expect(result.explicitAcks).toEqual([]);
    expect(result.retryMessages.map((m) => m.msgId).sort()).toEqual(["m-1", "m-2", "m-3", "m-4"]);
  });
});
