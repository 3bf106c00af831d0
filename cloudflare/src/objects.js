// Signed object routes: the bridge's way into the Worker's R2 bucket (docs/cloudflare.md, "Objects").
//
//   PUT /v1/objects/{key}   signed (company key; the body is the object, its SHA-256 is signed):
//                           contents/company-<id>/… and templates/company-<id>/… of the signing
//                           company only; at most MAX_OBJECT_BYTES; the content type is kept
//   GET /v1/objects/{key}   signed (empty body): the same prefixes plus certificates/company-<id>/…,
//                           R2's body streamed back
//
// A key is checked before R2 is touched: printable path characters only, no percent-encoding (so
// no encoded slash or dot), no empty, "." or ".." segment, and under one of the company's prefixes.
// Anything else is 403 and reads or writes nothing.

import { IntakeError, jsonResponse, readSignedRequest } from "./intake.js";
import { sha256Hex } from "./signing.js";

export const OBJECTS_PREFIX = "/v1/objects/";
/** Largest object the bridge may put (a template image, a report, a content). */
export const MAX_OBJECT_BYTES = 8 * 1024 * 1024;

const WRITABLE = ["contents", "templates"];
const READABLE = ["contents", "templates", "certificates"];
const SEGMENT = /^[A-Za-z0-9._-]{1,200}$/;
const CONTENT_TYPE = /^[\x21-\x7e][\x20-\x7e]{0,254}$/;

const outOfScope = (message) => new IntakeError(403, "key_out_of_scope", message);

/**
 * The R2 key named by `pathname`, if the signing `company` may use it with this method; else 403.
 * The raw (still percent-encoded) path is checked, so "%2F" or "%2e%2e" never become a separator.
 */
export function scopedKey(pathname, company, prefixes) {
  const key = pathname.slice(OBJECTS_PREFIX.length);
  if (key.length === 0 || key.length > 1024) throw outOfScope("the object key is empty or too long");
  const segments = key.split("/");
  if (segments.some((s) => !SEGMENT.test(s) || s === "." || s === "..")) {
    throw outOfScope("object keys are plain path segments (letters, digits, . _ -), no encoding, no . or ..");
  }
  if (segments.length < 3 || !prefixes.includes(segments[0]) || segments[1] !== `company-${company}`) {
    throw outOfScope(`this key may only use ${prefixes.map((p) => `${p}/company-${company}/`).join(", ")}`);
  }
  return key;
}

function bucketOf(env) {
  if (!env.OFFLOAD_BUCKET) throw new IntakeError(503, "storage_unavailable", "the OFFLOAD_BUCKET binding is missing");
  return env.OFFLOAD_BUCKET;
}

async function putObject(request, env) {
  const { pathname } = new URL(request.url);
  const { verified, body } = await readSignedRequest(request, env, MAX_OBJECT_BYTES);
  const key = scopedKey(pathname, verified.company, WRITABLE);
  const contentType = (request.headers.get("content-type") ?? "application/octet-stream").trim();
  if (!CONTENT_TYPE.test(contentType)) throw new IntakeError(400, "bad_content_type", "Content-Type must be printable ASCII, at most 255 characters");
  const sha256 = await sha256Hex(body);
  // R2 is given the digest too (its put option), to check what it stores.
  await bucketOf(env).put(key, body, { httpMetadata: { contentType }, sha256 });
  return jsonResponse(200, { key, sha256, bytes: body.byteLength, content_type: contentType });
}

async function getObject(request, env) {
  const { pathname } = new URL(request.url);
  const { verified } = await readSignedRequest(request, env, 0);
  const key = scopedKey(pathname, verified.company, READABLE);
  const object = await bucketOf(env).get(key);
  if (object === null) return jsonResponse(404, { error: "not_found", message: "no such object" });
  return new Response(object.body, {
    status: 200,
    headers: {
      "content-type": object.httpMetadata?.contentType ?? "application/octet-stream",
      "content-length": String(object.size),
      etag: object.httpEtag,
      "cache-control": "no-store",
    },
  });
}

/** Answer a request under /v1/objects/ (the caller routes only those here). */
export async function handleObject(request, env) {
  if (request.method === "PUT") return putObject(request, env);
  if (request.method === "GET") return getObject(request, env);
  return jsonResponse(405, { error: "method_not_allowed", message: "use GET or PUT" }, { allow: "GET, PUT" });
}
