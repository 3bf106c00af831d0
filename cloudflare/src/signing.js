// HMAC-SHA256 request signing for every signed HTTP crossing (spec: docs/callback-auth.md).
//
// The WebCrypto twin of offload_contract/signing.py: same key derivation, same canonical
// string, same headers, same checks in the same order, same error codes. Both check
// offload_contract/vectors/signing.json byte for byte.

export const SCHEME = "MRCO-HMAC-SHA256-1";
export const HEADER_KEY_ID = "X-Offload-Key-Id";
export const HEADER_TIMESTAMP = "X-Offload-Timestamp";
export const HEADER_NONCE = "X-Offload-Nonce";
export const HEADER_CONTENT_SHA256 = "X-Offload-Content-SHA256";
export const HEADER_SIGNATURE = "X-Offload-Signature";
export const SIGNATURE_PREFIX = "v1=";

/** Accept a request whose timestamp is within this many seconds of our clock. */
export const DEFAULT_WINDOW_SECONDS = 300;
/** A nonce outlives the last second its timestamp is accepted by this much (see nonceExpiry). */
export const NONCE_MARGIN_SECONDS = 60;
/** Derived company keys kept per isolate (LRU); key ids come from unauthenticated headers. */
export const KEY_CACHE_SIZE = 1024;

/**
 * When a nonce may be forgotten: `|now - timestamp| <= window` accepts up to `timestamp + window`
 * inclusive and stores treat `expiresAt <= now` as expired, so the nonce must live beyond it.
 */
export function nonceExpiry(timestamp, windowSeconds) {
  return timestamp + windowSeconds + NONCE_MARGIN_SECONDS;
}
/** HKDF salt: fixed, public, names the purpose so keys never collide with other uses. */
export const KDF_SALT = "manireports-cloud-offload";
export const MIN_ROOT_SECRET_BYTES = 32;

const KEY_ID = /^([a-z0-9-]{1,16})\.c([0-9]{1,19})$/;
const KEYSET = /^[a-z0-9-]{1,16}$/;
const NONCE = /^[A-Za-z0-9_-]{16,64}$/;
const TIMESTAMP = /^[0-9]{1,12}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const PATH = /^\/[\x21-\x7e]*$/;
// base64url as generated; standard base64 is accepted too, as Python's urlsafe_b64decode does.
const BASE64URL = /^[A-Za-z0-9_\-+/]*={0,2}$/;

const encoder = new TextEncoder();

/** A request failed authentication. `code` is stable and safe to log and audit. */
export class SignatureError extends Error {
  constructor(code, detail) {
    super(`${code}: ${detail}`);
    this.name = "SignatureError";
    this.code = code;
    this.detail = detail;
  }
}

// ---------------------------------------------------------------------------------------
// Bytes helpers

/** @param {Uint8Array|ArrayBuffer|string} body */
export function toBytes(body) {
  if (body === undefined || body === null) return new Uint8Array(0);
  if (typeof body === "string") return encoder.encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  throw new TypeError("body must be a string, Uint8Array or ArrayBuffer");
}

export function bytesToHex(bytes) {
  const view = toBytes(bytes);
  let out = "";
  for (let i = 0; i < view.length; i++) out += view[i].toString(16).padStart(2, "0");
  return out;
}

export function hexToBytes(hex) {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) throw new TypeError("not a hex string");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Standard or URL-safe base64, padding optional. */
export function base64ToBytes(text) {
  const standard = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = standard + "=".repeat((4 - (standard.length % 4)) % 4);
  const binary = atob(padded);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

export function bytesToBase64url(bytes) {
  let binary = "";
  for (const byte of toBytes(bytes)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export async function sha256Hex(body) {
  return bytesToHex(new Uint8Array(await crypto.subtle.digest("SHA-256", toBytes(body))));
}

/** Compare two strings without an early exit on the first differing character. */
export function constantTimeEqual(a, b) {
  const left = encoder.encode(a);
  const right = encoder.encode(b);
  if (left.length !== right.length) return false;
  if (typeof crypto.subtle.timingSafeEqual === "function") {
    return crypto.subtle.timingSafeEqual(left, right);
  }
  let diff = 0;
  for (let i = 0; i < left.length; i++) diff |= left[i] ^ right[i];
  return diff === 0;
}

// ---------------------------------------------------------------------------------------
// Keys

/** RFC 5869 HKDF-SHA256 through WebCrypto (checked against the RFC's test case 1). */
export async function hkdfSha256(ikm, salt, info, length = 32) {
  if (!(length > 0 && length <= 255 * 32)) throw new RangeError("HKDF length out of range");
  const base = await crypto.subtle.importKey("raw", toBytes(ikm), "HKDF", false, ["deriveBits"]);
  const bits = await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: toBytes(salt), info: toBytes(info) },
    base,
    length * 8,
  );
  return new Uint8Array(bits);
}

/** Decode a key set's root secret (base64url, padding optional); at least 32 bytes. */
export function decodeRootSecret(encoded) {
  const text = String(encoded).trim();
  if (!BASE64URL.test(text)) throw new Error("root secret is not valid base64url");
  let raw;
  try {
    raw = base64ToBytes(text.replace(/=+$/, ""));
  } catch {
    throw new Error("root secret is not valid base64url");
  }
  if (raw.length < MIN_ROOT_SECRET_BYTES) {
    throw new Error(`root secret must decode to at least ${MIN_ROOT_SECRET_BYTES} bytes`);
  }
  return raw;
}

export function generateRootSecret() {
  return bytesToBase64url(crypto.getRandomValues(new Uint8Array(32)));
}

/** Canonical decimal text of a company id (number, bigint or digit string; leading zeros dropped). */
function companyDecimal(companyId) {
  let value;
  if (typeof companyId === "bigint") value = companyId;
  else if (typeof companyId === "number" && Number.isSafeInteger(companyId)) value = BigInt(companyId);
  else if (typeof companyId === "string" && /^[0-9]{1,19}$/.test(companyId)) value = BigInt(companyId);
  else throw new RangeError("company_id must be a non-negative integer");
  if (value < 0n) throw new RangeError("company_id must be >= 0");
  return value.toString();
}

/** The company's signing key bytes: HKDF(root, salt, "callback-key:v1:company:<id>"). */
export function deriveCompanyKey(rootSecret, companyId) {
  return hkdfSha256(rootSecret, KDF_SALT, `callback-key:v1:company:${companyDecimal(companyId)}`, 32);
}

export function importHmacKey(keyBytes) {
  return crypto.subtle.importKey("raw", toBytes(keyBytes), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
    "verify",
  ]);
}

export function makeKeyId(keyset, companyId) {
  const keyId = `${keyset}.c${companyDecimal(companyId)}`;
  if (!KEY_ID.test(keyId)) throw new Error("key set names are 1-16 characters of a-z, 0-9 and '-'");
  return keyId;
}

/**
 * Split a key id into its key set and company. `companyId` is a Number (null when it does
 * not fit a safe integer); `company` is its canonical decimal text, always exact.
 */
export function parseKeyId(keyId) {
  const match = typeof keyId === "string" ? KEY_ID.exec(keyId) : null;
  if (!match) {
    throw new SignatureError("malformed_header", `${HEADER_KEY_ID} must look like <keyset>.c<company_id>`);
  }
  const company = BigInt(match[2]).toString();
  const asNumber = Number(company);
  return { keyset: match[1], company, companyId: Number.isSafeInteger(asNumber) ? asNumber : null };
}

// ---------------------------------------------------------------------------------------
// Signing

/** The exact text that is signed: seven lines joined by LF, no trailing newline. */
export function canonicalString(method, path, keyId, timestamp, nonce, bodySha256) {
  return [SCHEME, method.toUpperCase(), path, keyId, String(timestamp), nonce, bodySha256].join("\n");
}

async function asHmacKey(key) {
  return key instanceof CryptoKey ? key : importHmacKey(key);
}

export async function computeSignature(key, canonical) {
  const mac = await crypto.subtle.sign("HMAC", await asHmacKey(key), encoder.encode(canonical));
  return bytesToHex(new Uint8Array(mac));
}

export function newNonce() {
  return bytesToBase64url(crypto.getRandomValues(new Uint8Array(18)));
}

/**
 * Headers to send with `body`. `path` is the request path without query string; `key` is
 * the company key (bytes or an HMAC CryptoKey).
 */
export async function signRequest({ key, keyId, method, path, body, timestamp, nonce }) {
  const ts = timestamp ?? Math.floor(Date.now() / 1000);
  const usedNonce = nonce ?? newNonce();
  const digest = await sha256Hex(body);
  const signature = await computeSignature(key, canonicalString(method, path, keyId, ts, usedNonce, digest));
  return {
    [HEADER_KEY_ID]: keyId,
    [HEADER_TIMESTAMP]: String(ts),
    [HEADER_NONCE]: usedNonce,
    [HEADER_CONTENT_SHA256]: digest,
    [HEADER_SIGNATURE]: SIGNATURE_PREFIX + signature,
  };
}

// ---------------------------------------------------------------------------------------
// Nonce stores: `remember(keyId, nonce, expiresAt) -> Promise<boolean>` records the nonce
// and answers false when it was already recorded and has not expired.

/** A per-isolate nonce store for tests and single-instance use. */
export class MemoryNonceStore {
  constructor(clock = () => Date.now() / 1000) {
    this.seen = new Map();
    this.clock = clock;
  }

  async remember(keyId, nonce, expiresAt) {
    const now = Math.floor(this.clock());
    if (this.seen.size > 10_000) {
      for (const [entry, expiry] of this.seen) if (expiry <= now) this.seen.delete(entry);
    }
    const entry = `${keyId}\n${nonce}`;
    const existing = this.seen.get(entry);
    if (existing !== undefined && existing > now) return false;
    this.seen.set(entry, expiresAt);
    return true;
  }
}

// ---------------------------------------------------------------------------------------
// Verification

function readHeader(headers, name) {
  let value = null;
  if (typeof headers?.get === "function") {
    value = headers.get(name);
  } else if (headers) {
    const lowered = name.toLowerCase();
    for (const [key, candidate] of Object.entries(headers)) {
      if (key.toLowerCase() === lowered) {
        value = candidate;
        break;
      }
    }
  }
  if (value === null || value === undefined) throw new SignatureError("missing_header", `${name} is required`);
  return String(value);
}

/** Map of key set name to root secret: bytes, or base64url text. */
function normaliseRoots(rootSecrets) {
  const roots = new Map();
  const entries = rootSecrets instanceof Map ? rootSecrets.entries() : Object.entries(rootSecrets ?? {});
  for (const [keyset, secret] of entries) {
    if (!KEYSET.test(keyset)) throw new Error("key set names are 1-16 characters of a-z, 0-9 and '-'");
    roots.set(keyset, typeof secret === "string" ? decodeRootSecret(secret) : toBytes(secret));
  }
  return roots;
}

/**
 * Checks signed requests: well-formed headers, ±window clock skew, known key set, body
 * hash, HMAC, then the nonce. The nonce is recorded only after the signature is valid, so
 * unauthenticated traffic cannot fill the store. A nonce is kept until its timestamp can no
 * longer be accepted, plus a margin (nonceExpiry); derived keys are cached LRU, bounded.
 */
export class Verifier {
  constructor(rootSecrets, nonceStore, { windowSeconds = DEFAULT_WINDOW_SECONDS, clock } = {}) {
    if (!nonceStore || typeof nonceStore.remember !== "function") {
      throw new TypeError("a nonce store with remember(keyId, nonce, expiresAt) is required");
    }
    this.roots = normaliseRoots(rootSecrets);
    this.nonces = nonceStore;
    this.window = windowSeconds;
    this.clock = clock ?? (() => Date.now() / 1000);
    this.keyCache = new Map();
  }

  async keyFor(keyId) {
    const cached = this.keyCache.get(keyId);
    if (cached) {
      this.keyCache.delete(keyId); // re-insert: Map keeps insertion order, so this is LRU
      this.keyCache.set(keyId, cached);
      return cached;
    }
    const { keyset, company } = parseKeyId(keyId);
    const root = this.roots.get(keyset);
    if (root === undefined) {
      throw new SignatureError("unknown_key", "the key set named in the key id is not configured");
    }
    const key = await importHmacKey(await deriveCompanyKey(root, company));
    this.keyCache.set(keyId, key);
    while (this.keyCache.size > KEY_CACHE_SIZE) this.keyCache.delete(this.keyCache.keys().next().value);
    return key;
  }

  /**
   * Verify one request. `headers` is a Headers object or a plain object (any case);
   * `body` is the exact raw bytes received. Resolves to {keyId, keyset, company,
   * companyId, timestamp, nonce}; rejects with SignatureError.
   */
  async verify(method, path, headers, body) {
    const keyId = readHeader(headers, HEADER_KEY_ID);
    const rawTimestamp = readHeader(headers, HEADER_TIMESTAMP);
    const nonce = readHeader(headers, HEADER_NONCE);
    const claimedDigest = readHeader(headers, HEADER_CONTENT_SHA256);
    const signature = readHeader(headers, HEADER_SIGNATURE);
    const { keyset, company, companyId } = parseKeyId(keyId);
    if (!TIMESTAMP.test(rawTimestamp)) {
      throw new SignatureError("malformed_header", `${HEADER_TIMESTAMP} must be unix seconds`);
    }
    if (!NONCE.test(nonce)) {
      throw new SignatureError("malformed_header", `${HEADER_NONCE} must be 16-64 base64url characters`);
    }
    if (!HEX64.test(claimedDigest)) {
      throw new SignatureError("malformed_header", `${HEADER_CONTENT_SHA256} must be lowercase hex`);
    }
    const signatureHex = signature.startsWith(SIGNATURE_PREFIX) ? signature.slice(SIGNATURE_PREFIX.length) : "";
    if (!HEX64.test(signatureHex)) {
      throw new SignatureError("malformed_header", `${HEADER_SIGNATURE} must be v1=<64 lowercase hex>`);
    }
    if (typeof path !== "string" || !PATH.test(path)) {
      throw new SignatureError("malformed_request", "path must be absolute printable ASCII");
    }
    const timestamp = Number(rawTimestamp);
    const now = Math.floor(this.clock());
    if (Math.abs(now - timestamp) > this.window) {
      throw new SignatureError("stale_timestamp", `timestamp is more than ${this.window}s from server time`);
    }
    const key = await this.keyFor(keyId);
    const actualDigest = await sha256Hex(body);
    if (!constantTimeEqual(actualDigest, claimedDigest)) {
      throw new SignatureError("body_hash_mismatch", "body does not match its SHA-256 header");
    }
    const canonical = canonicalString(method, path, keyId, timestamp, nonce, actualDigest);
    const valid = await crypto.subtle.verify("HMAC", key, hexToBytes(signatureHex), encoder.encode(canonical));
    if (!valid) throw new SignatureError("bad_signature", "signature does not match");
    if (!(await this.nonces.remember(keyId, nonce, nonceExpiry(timestamp, this.window)))) {
      throw new SignatureError("replayed_nonce", "this nonce was already used");
    }
    return { keyId, keyset, company, companyId, timestamp, nonce };
  }
}
