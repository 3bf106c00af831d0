// POST /v1/batches: the bridge's Cloudflare intake (docs/cloudflare.md).
//
// A signed envelope (docs/callback-auth.md) carrying one email_batch or certificate_batch
// is checked in this order, each failure answering a 4xx JSON error and changing nothing:
// size -> content type -> signature (nonce recorded last) -> JSON -> envelope schema ->
// batch schema -> the key's company owns the batch -> queue size limit -> enqueue -> 202.

import { ContractError, validate } from "./contract.js";
import { KeysetConfigError, parseKeysets } from "./keysets.js";
import { durableNonceStore } from "./nonce-store.js";
import { SignatureError, Verifier, parseKeyId } from "./signing.js";

export const INTAKE_PATH = "/v1/batches";
export const DEFAULT_MAX_BODY_BYTES = 1_048_576;
/** Cloudflare Queues accept 128 KB per message (read as 1,000-byte KB, as the bridge's packer does). */
export const QUEUE_MAX_MESSAGE_BYTES = 128_000;

const QUEUE_BINDINGS = { email_batch: "EMAIL_QUEUE", certificate_batch: "CERTIFICATE_QUEUE" };

const SIGNATURE_STATUS = {
  missing_header: 400,
  malformed_header: 400,
  malformed_request: 400,
  stale_timestamp: 401,
  unknown_key: 401,
  body_hash_mismatch: 401,
  bad_signature: 401,
  replayed_nonce: 409,
};

const encoder = new TextEncoder();

/** An intake failure: HTTP status, stable error code, a message safe to show and log. */
export class IntakeError extends Error {
  constructor(status, code, message, extra = {}, headers = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.extra = extra;
    this.headers = headers;
  }
}

export function jsonResponse(status, payload, headers = {}) {
  return new Response(JSON.stringify(payload), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store", ...headers },
  });
}

export function errorResponse(error) {
  return jsonResponse(error.status, { error: error.code, message: error.message, ...error.extra }, error.headers);
}

// One Verifier per isolate and secret value: keeps derived company keys warm.
let cachedVerifier = { secret: null, namespace: null, verifier: null };

function verifierFor(env) {
  if (cachedVerifier.secret === env.HMAC_KEYSETS && cachedVerifier.namespace === env.NONCES) {
    return cachedVerifier.verifier;
  }
  if (!env.NONCES) throw new KeysetConfigError("the NONCES Durable Object binding is missing");
  const { roots } = parseKeysets(env.HMAC_KEYSETS);
  const verifier = new Verifier(roots, durableNonceStore(env.NONCES));
  cachedVerifier = { secret: env.HMAC_KEYSETS, namespace: env.NONCES, verifier };
  return verifier;
}

function maxBodyBytes(env) {
  const configured = Number(env.MAX_BODY_BYTES);
  return Number.isSafeInteger(configured) && configured > 0 ? configured : DEFAULT_MAX_BODY_BYTES;
}

/** Read the body, refusing (before and while reading) anything over `limit` bytes. */
async function readBody(request, limit) {
  const tooLarge = () =>
    new IntakeError(413, "body_too_large", `request bodies are limited to ${limit} bytes`, { limit_bytes: limit });
  const declared = request.headers.get("content-length");
  if (declared !== null) {
    if (!/^[0-9]{1,15}$/.test(declared)) throw new IntakeError(400, "bad_content_length", "Content-Length is invalid");
    if (Number(declared) > limit) throw tooLarge();
  }
  if (request.body === null) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel();
      throw tooLarge();
    }
    chunks.push(value);
  }
  const body = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return body;
}

function parseJson(body) {
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(body);
  } catch {
    throw new IntakeError(400, "invalid_json", "the body is not valid UTF-8");
  }
  try {
    return JSON.parse(text, (_key, value) => {
      if (typeof value === "number" && !Number.isFinite(value)) throw new RangeError("non-finite number");
      return value;
    });
  } catch {
    throw new IntakeError(400, "invalid_json", "the body is not valid JSON");
  }
}

function checkContract(messageType, message) {
  try {
    validate(messageType, message);
  } catch (error) {
    if (error instanceof ContractError) {
      throw new IntakeError(422, "contract_violation", error.message, {
        message_type: error.messageType,
        path: error.path,
        reason: error.reason,
      });
    }
    throw error;
  }
}

/** The key's company must own the batch and the key the workers will answer with. */
function checkCompany(verified, batch) {
  const owner = Number.isSafeInteger(batch.company_id) ? String(batch.company_id) : null;
  if (owner !== verified.company) {
    throw new IntakeError(403, "company_mismatch", "the batch belongs to another company than the signing key");
  }
  if (parseKeyId(batch.callback.key_id).company !== verified.company) {
    throw new IntakeError(403, "company_mismatch", "the callback key belongs to another company than the signing key");
  }
}

/**
 * Handle one request to the intake. `log` receives one structured record per outcome:
 * the error code, the key id and the source address, never the body.
 */
export async function handleIntake(request, env, log = console) {
  const url = new URL(request.url);
  const source = request.headers.get("cf-connecting-ip") ?? "unknown";
  // Logged as claimed until the signature proves it; the pattern keeps junk out of logs.
  const claimedKeyId = request.headers.get("x-offload-key-id");
  let keyId = claimedKeyId && /^[a-z0-9-]{1,16}\.c[0-9]{1,19}$/.test(claimedKeyId) ? claimedKeyId : null;
  try {
    if (request.method !== "POST") {
      throw new IntakeError(405, "method_not_allowed", "use POST", {}, { allow: "POST" });
    }
    const contentType = (request.headers.get("content-type") ?? "").split(";")[0].trim().toLowerCase();
    if (contentType !== "application/json") {
      throw new IntakeError(415, "unsupported_media_type", "the body must be application/json");
    }
    const limit = maxBodyBytes(env);
    const body = await readBody(request, limit);

    let verified;
    try {
      verified = await verifierFor(env).verify(request.method, url.pathname, request.headers, body);
    } catch (error) {
      if (error instanceof SignatureError) {
        throw new IntakeError(SIGNATURE_STATUS[error.code] ?? 401, error.code, error.detail);
      }
      throw error;
    }
    keyId = verified.keyId;

    const envelope = parseJson(body);
    checkContract("envelope", envelope);
    const messageType = envelope.message_type;
    const binding = QUEUE_BINDINGS[messageType];
    if (!binding) {
      throw new IntakeError(422, "unsupported_message_type", `the intake accepts ${Object.keys(QUEUE_BINDINGS)}`);
    }
    const batch = envelope.message;
    checkContract(messageType, batch);
    checkCompany(verified, batch);

    const encoded = JSON.stringify(batch);
    const size = encoder.encode(encoded).byteLength;
    if (size > QUEUE_MAX_MESSAGE_BYTES) {
      throw new IntakeError(413, "batch_too_large", `a batch must encode to at most ${QUEUE_MAX_MESSAGE_BYTES} bytes`, {
        limit_bytes: QUEUE_MAX_MESSAGE_BYTES,
        size_bytes: size,
      });
    }
    const queue = env[binding];
    if (!queue) throw new KeysetConfigError(`the ${binding} queue binding is missing`);
    try {
      await queue.send(batch, { contentType: "json" });
    } catch {
      throw new IntakeError(503, "queue_unavailable", "the batch could not be queued; retry later", {}, { "retry-after": "30" });
    }
    log.info?.(JSON.stringify({ event: "batch_accepted", key_id: keyId, batch_id: batch.batch_id, message_type: messageType, size_bytes: size }));
    return jsonResponse(202, { batch_id: batch.batch_id });
  } catch (error) {
    if (error instanceof IntakeError) {
      log.warn?.(JSON.stringify({ event: "batch_rejected", code: error.code, status: error.status, key_id: keyId, source }));
      return errorResponse(error);
    }
    if (error instanceof KeysetConfigError) {
      log.error?.(JSON.stringify({ event: "intake_misconfigured", detail: error.message }));
      return jsonResponse(500, { error: "server_misconfigured", message: "the intake is not configured" });
    }
    log.error?.(JSON.stringify({ event: "intake_failed", error: error?.name ?? "Error", key_id: keyId }));
    return jsonResponse(500, { error: "internal_error", message: "unexpected failure" });
  }
}

/**
 * Read and verify a signed request to another route than the intake (capabilities, results
 * pull). Resolves to {verified, body}; throws IntakeError with the intake's codes.
 */
export async function readSignedRequest(request, env, limit = 65_536) {
  const url = new URL(request.url);
  const body = await readBody(request, limit);
  try {
    const verified = await verifierFor(env).verify(request.method, url.pathname, request.headers, body);
    return { verified, body };
  } catch (error) {
    if (error instanceof SignatureError) {
      throw new IntakeError(SIGNATURE_STATUS[error.code] ?? 401, error.code, error.detail);
    }
    throw error;
  }
}

/** Answer an error thrown while serving a route, as the intake does. */
export function routeErrorResponse(error, log = console) {
  if (error instanceof IntakeError) return errorResponse(error);
  if (error instanceof KeysetConfigError) {
    log.error?.(JSON.stringify({ event: "route_misconfigured", detail: error.message }));
    return jsonResponse(500, { error: "server_misconfigured", message: "the Worker is not configured" });
  }
  log.error?.(JSON.stringify({ event: "route_failed", error: error?.name ?? "Error" }));
  return jsonResponse(500, { error: "internal_error", message: "unexpected failure" });
}

export { parseJson };
