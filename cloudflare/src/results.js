// Results back to the bridge, with the AWS path's guarantees (docs/lambdas.md, "Results"):
//
// 1. Every outcome becomes a contract recipient_result; they travel in result_batch messages of
//    at most 500 on the RESULTS_QUEUE (the durable record), with the callback URL and key id.
// 2. The results consumer signs each one (company key of the current key set, as the AWS
//    dispatcher) and POSTs it to the bridge's callback. Any non-2xx answer or network error
//    retries the message; what never gets through lands in the results dead-letter queue.
// 3. What the bridge cannot receive (RESULTS_MODE = "pull", or the dead-letter queue) is kept
//    in the company's ResultLog; the bridge pulls it with a signed POST /v1/results/pull and
//    acknowledges what it has committed, as it drains the SQS results queue on AWS.

import { validate } from "./contract.js";
import { parseKeysets } from "./keysets.js";
import { deriveCompanyKey, importHmacKey, makeKeyId, signRequest } from "./signing.js";

export const RESULTS_PER_MESSAGE = 500;
export const PULL_PATH = "/v1/results/pull";
export const MAX_PULL = 100;

const encoder = new TextEncoder();

/** Queue result_batch messages for `results` (contract-valid, at most 500 each). */
export async function publishResults(env, { companyId, callback, batchId, results, reporter = "cloudflare_worker" }) {
  for (let i = 0; i < results.length; i += RESULTS_PER_MESSAGE) {
    const message = {
      type: "result_batch",
      contract_version: 1,
      report_id: `cfw-${crypto.randomUUID()}`,
      company_id: companyId,
      reporter,
      created_at: Math.floor(Date.now() / 1000),
      results: results.slice(i, i + RESULTS_PER_MESSAGE),
    };
    if (batchId) message.batch_id = batchId;
    validate("result_batch", message);
    await env.RESULTS_QUEUE.send(
      { callback_url: callback.url, key_id: callback.key_id, result_batch: message },
      { contentType: "json" },
    );
  }
}

function resultLogFor(env, companyId) {
  return env.RESULT_LOG.get(env.RESULT_LOG.idFromName(`results:c${companyId}`));
}

/** Keep a result batch for the bridge to pull (idempotent by report_id). */
export async function keepForPull(env, item) {
  const batch = item.result_batch;
  await resultLogFor(env, batch.company_id).append(batch.report_id, JSON.stringify(batch));
}

let cachedSigner = { secret: null, keys: new Map(), current: null, root: null };

async function companyKey(env, companyId) {
  if (cachedSigner.secret !== env.HMAC_KEYSETS) {
    const { current, roots } = parseKeysets(env.HMAC_KEYSETS);
    cachedSigner = { secret: env.HMAC_KEYSETS, keys: new Map(), current, root: roots.get(current) };
  }
  let key = cachedSigner.keys.get(companyId);
  if (!key) {
    key = await importHmacKey(await deriveCompanyKey(cachedSigner.root, companyId));
    cachedSigner.keys.set(companyId, key);
  }
  return { key, keyId: makeKeyId(cachedSigner.current, companyId) };
}

export class CallbackError extends Error {
  constructor(message) {
    super(message);
    this.name = "CallbackError";
  }
}

/**
 * POST one result batch to its callback, signed. Resolves on 2xx; throws CallbackError
 * otherwise (the status only, never the body) so the queue retries it.
 */
export async function deliverCallback(env, item, fetchImpl = (...args) => fetch(...args)) {
  const batch = item.result_batch;
  validate("result_batch", batch);
  const url = new URL(item.callback_url);
  const envelope = {
    contract_version: 1,
    message_type: "result_batch",
    message_id: batch.report_id,
    sent_at: Math.floor(Date.now() / 1000),
    message: batch,
  };
  const body = encoder.encode(JSON.stringify(envelope));
  const { key, keyId } = await companyKey(env, batch.company_id);
  const headers = await signRequest({ key, keyId, method: "POST", path: url.pathname, body });
  let response;
  try {
    response = await fetchImpl(url.toString(), {
      method: "POST",
      headers: { ...headers, "content-type": "application/json" },
      body,
      signal: AbortSignal.timeout(20_000),
    });
  } catch (error) {
    throw new CallbackError(`callback unreachable (${error?.name ?? "Error"})`);
  }
  await response.body?.cancel();
  if (response.status < 200 || response.status >= 300) {
    throw new CallbackError(`callback answered HTTP ${response.status}`);
  }
}

/** The results queue consumer: push (callback) or keep for pull, by RESULTS_MODE. */
export async function processResultsMessage(env, item, deps = {}) {
  if ((env.RESULTS_MODE ?? "push") === "pull") {
    await keepForPull(env, item);
    return;
  }
  await deliverCallback(env, item, deps.fetchImpl);
}

/**
 * Signed POST /v1/results/pull: {"ack_through": <seq> | null, "max": 1-100}. Drops what the
 * bridge committed, answers the next entries of the signing key's company:
 * {"entries": [{"seq": n, "result_batch": {...}}], "pending": n}.
 */
export async function pullResults(env, company, request) {
  const ackThrough = request.ack_through ?? null;
  const max = request.max ?? MAX_PULL;
  if (ackThrough !== null && !(Number.isSafeInteger(ackThrough) && ackThrough >= 0)) {
    return { status: 400, body: { error: "bad_request", message: "ack_through must be a non-negative integer or null" } };
  }
  if (!(Number.isSafeInteger(max) && max >= 1 && max <= MAX_PULL)) {
    return { status: 400, body: { error: "bad_request", message: `max must be 1-${MAX_PULL}` } };
  }
  const answer = await resultLogFor(env, company).pull(ackThrough, max);
  return {
    status: 200,
    body: {
      entries: answer.entries.map((e) => ({ seq: e.seq, result_batch: JSON.parse(e.body) })),
      pending: answer.pending,
    },
  };
}
